//! A `tether proxy` process started from a config the test writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Client;
use crate::logged::LoggedChild;

pub struct Sidecar {
    process: LoggedChild,
    _dir: tempfile::TempDir,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

impl Sidecar {
    /// Writes `yaml` to a file, starts `tether proxy --config` on it and waits until it is
    /// ready. Listeners may use port 0; [`Sidecar::addr`] tells where they ended up.
    pub async fn start(bin: &str, yaml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml)?;
        let path = path.to_str().context("a temporary path is UTF-8")?.to_owned();
        Self::spawn(bin, &["proxy", "--config", &path], dir).await
    }

    /// Starts `tether proxy --server URL …` for a task, with its state in `state_dir`, outbound
    /// listeners on 127.0.0.1 with ports of the system's choosing, and waits until it is ready
    /// (it has a config, from the control plane or from its saved snapshot).
    pub async fn start_fed(
        bin: &str,
        server: &str,
        token: &str,
        (namespace, service, task): (&str, &str, &str),
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let args = fed_args(server, token, (namespace, service, task), state_dir)?;
        Self::spawn(bin, &args, tempfile::tempdir()?).await
    }

    /// Starts `tether proxy --server URL …` as [`start_fed`](Self::start_fed) does, without
    /// waiting for anything: for a sidecar the control plane is expected to refuse, which
    /// never gets a config to serve (nor an admin endpoint).
    pub fn spawn_fed(
        bin: &str,
        server: &str,
        token: &str,
        task: (&str, &str, &str),
        state_dir: &Path,
    ) -> anyhow::Result<LoggedChild> {
        let mut command = Command::new(bin);
        command.args(fed_args(server, token, task, state_dir)?).env("TETHER_LOG", "debug");
        LoggedChild::spawn(command)
    }

    async fn spawn(bin: &str, args: &[&str], dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command.args(args).env("TETHER_LOG", "debug");
        let process = LoggedChild::spawn(command)?;
        let mut sidecar =
            Self { process, _dir: dir, admin: ([0, 0, 0, 0], 0).into(), listeners: HashMap::new() };
        sidecar.wait_ready(Duration::from_secs(10)).await?;
        Ok(sidecar)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited()? {
                bail!("tether exited with {status} before it was ready:\n{}", self.log());
            }
            self.listeners = parse_listening(&self.log());
            if let Some(admin) = self.listeners.get("admin").copied() {
                self.admin = admin;
                let ready = Client::http1().get(&format!("http://{admin}/ready")).await;
                if ready.is_ok_and(|r| r.status == 200) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("tether not ready within {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the listener named `name` (an inbound portName or outbound dnsName) listens.
    pub fn addr(&self, name: &str) -> SocketAddr {
        // tether logs every `listening` line before it serves `/ready`, but the thread copying
        // its stderr into the log may still lag behind on a loaded machine: look again, briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The log's last word first: a sidecar fed by the control plane moves its listeners.
            let found = parse_listening(&self.log()).get(name).copied();
            if let Some(addr) = found.or_else(|| self.listeners.get(name).copied()) {
                return addr;
            }
            if Instant::now() >= deadline {
                panic!("no listener `{name}` in:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where the listener named `name` listens, if the log says it does yet.
    pub fn try_addr(&self, name: &str) -> Option<SocketAddr> {
        parse_listening(&self.log()).get(name).copied()
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// The admin endpoint's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = Client::http1().get(&format!("http://{}/metrics", self.admin)).await;
        reply.map(|r| r.text()).unwrap_or_default()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The arguments of `tether proxy --server` for a task, with its state in `state_dir`, the
/// admin endpoint and the outbound listeners on loopback ports of the system's choosing.
fn fed_args<'a>(
    server: &'a str,
    token: &'a str,
    (namespace, service, task): (&'a str, &'a str, &'a str),
    state_dir: &'a Path,
) -> anyhow::Result<[&'a str; 17]> {
    let state = state_dir.to_str().context("a temporary path is UTF-8")?;
    Ok([
        "proxy",
        "--server",
        server,
        "--token",
        token,
        "--namespace",
        namespace,
        "--service",
        service,
        "--task",
        task,
        "--admin",
        "127.0.0.1:0",
        "--outbound-ip",
        "127.0.0.1",
        "--state-dir",
        state,
    ])
}

/// `listening kind=outbound name=web addr=127.0.0.1:4000` lines → name → address.
fn parse_listening(log: &str) -> HashMap<String, SocketAddr> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .filter_map(|l| {
            let field = |key: &str| l.split_whitespace().find_map(|w| w.strip_prefix(key));
            Some((field("name=")?.to_owned(), field("addr=")?.parse().ok()?))
        })
        .collect()
}

/// The value of the sample `name{labels…}` in Prometheus text, summed over every sample whose
/// labels include all of `labels` (`key="value"` pairs).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A path inside the workspace, for test assets.
pub fn workspace_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}
