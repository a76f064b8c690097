//! A [`Backend`](crate::Backend) in a separate process (the `backend` binary of this crate), for
//! tests that kill it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::workspace_path;

pub struct BackendProcess {
    pub addr: SocketAddr,
    pub name: String,
    child: Child,
}

impl BackendProcess {
    /// Starts `backend NAME` and waits for its address. The first call in a test process
    /// builds the binary (`cargo build -p tether-testkit --bin backend`): `cargo test -p
    /// tether` builds only this crate's library.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(binary()?)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the backend binary")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("backend {name} said {line:?} instead of its address");
        };
        Ok(Self { addr: addr.parse()?, name: name.into(), child })
    }

    /// SIGKILL: the process dies at once, its sockets closed by the kernel.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `backend` binary, built once per test process.
fn binary() -> anyhow::Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BINARY.get_or_init(|| build().map_err(|e| format!("{e:#}")));
    match built {
        Ok(path) => Ok(path),
        Err(e) => bail!("building the backend binary: {e}"),
    }
}

fn build() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--quiet", "--locked", "-p", "tether-testkit", "--bin", "backend"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_path("."))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build failed with {}", output.status);
    }
    // One JSON message a line; the binary's artifact names its executable.
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "backend")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for the backend binary")
}
