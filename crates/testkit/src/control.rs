//! A `tether server` process on a data directory of its own, and a tiny JSON client for its
//! API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::Value;

use crate::Client;
use crate::logged::LoggedChild;

/// The data directory inside the test's temporary directory: left for the server to create.
const DATA: &str = "data";

pub struct ControlPlane {
    bin: String,
    extra_args: Vec<String>,
    data: tempfile::TempDir,
    process: LoggedChild,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The admin token the server wrote to its data directory.
    pub token: String,
    client: Client,
}

/// A whole answer: its status and its body, as JSON when it is JSON.
#[derive(Debug)]
pub struct JsonReply {
    pub status: StatusCode,
    /// `Value::Null` when the body is empty or not JSON.
    pub body: Value,
    pub text: String,
}

impl JsonReply {
    /// The error body's `field` (the field to blame), if any.
    pub fn field(&self) -> Option<&str> {
        self.body["field"].as_str()
    }
}

impl ControlPlane {
    /// Starts `tether server --listen 127.0.0.1:0` on a new temporary data directory and waits
    /// until it answers `/healthz`.
    pub async fn start(bin: &str) -> anyhow::Result<Self> {
        Self::start_with(bin, &[]).await
    }

    /// As [`start`](Self::start), with more arguments (such as `--store etcd://…`).
    pub async fn start_with(bin: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(bin, "127.0.0.1:0", extra_args).await
    }

    /// As [`start_with`](Self::start_with), listening on `listen` (such as the gateway of
    /// emulated hosts, `198.18.N.1:0`).
    pub async fn start_on(bin: &str, listen: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let process = spawn_at(bin, listen, &data.path().join(DATA), &extra_args)?;
        let mut control = Self {
            bin: bin.to_owned(),
            extra_args,
            data,
            process,
            addr: ([0, 0, 0, 0], 0).into(),
            token: String::new(),
            client: Client::http1().timeout(Duration::from_secs(10)),
        };
        control.wait_ready(Duration::from_secs(20)).await?;
        Ok(control)
    }

    /// Stops the server with SIGTERM (it must exit cleanly) and starts it again on the same data
    /// directory. The address changes; the token does not.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.terminate();
        match self.wait_exit(Duration::from_secs(15)).await {
            Some(status) if status.success() => {}
            Some(status) => bail!("tether server exited with {status} on SIGTERM:\n{}", self.log()),
            None => bail!("tether server did not exit within 15 s of SIGTERM:\n{}", self.log()),
        }
        self.process = spawn(&self.bin, &self.data_dir(), &self.extra_args)?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// Starts the server again, after [`kill`](Self::kill), on the same data directory and the
    /// same address (what proxies were told), and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let listen = self.addr.to_string();
        self.process = spawn_at(&self.bin, &listen, &self.data_dir(), &self.extra_args)?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited()? {
                bail!("tether server exited with {status} before it was ready:\n{}", self.log());
            }
            if let Some(addr) = api_addr(&self.log()) {
                self.addr = addr;
                let healthy = self.client.get(&format!("http://{addr}/healthz")).await;
                if healthy.is_ok_and(|r| r.status == 200) {
                    let path = self.data_dir().join("admin.token");
                    let token = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    self.token = token.trim().to_owned();
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("tether server not ready within {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's `--data` directory, which the server itself created.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join(DATA)
    }

    /// `http://IP:PORT`, for `--server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<JsonReply> {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<JsonReply> {
        self.call(Method::PUT, path, Some(body.to_string())).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<JsonReply> {
        self.call(Method::POST, path, Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<JsonReply> {
        self.call(Method::DELETE, path, None).await
    }

    /// A request with the admin token and an optional raw body.
    pub async fn call(&self, method: Method, path: &str, body: Option<String>) -> anyhow::Result<JsonReply> {
        self.request(method, path, body, Some(&self.token)).await
    }

    /// A request with any token (or none) and any body, for tests of what the API refuses.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> anyhow::Result<JsonReply> {
        let mut request = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let reply = self.client.request(request).await?;
        let text = reply.text();
        Ok(JsonReply { status: reply.status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text })
    }
}

fn spawn(bin: &str, data: &Path, extra_args: &[String]) -> anyhow::Result<LoggedChild> {
    spawn_at(bin, "127.0.0.1:0", data, extra_args)
}

fn spawn_at(bin: &str, listen: &str, data: &Path, extra_args: &[String]) -> anyhow::Result<LoggedChild> {
    let mut command = Command::new(bin);
    command
        .args(["server", "--listen", listen, "--data"])
        .arg(data)
        .args(extra_args)
        .env("TETHER_LOG", "debug");
    LoggedChild::spawn(command)
}

/// The address in the last `listening kind=api addr=IP:PORT` line.
fn api_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .rev()
        .filter(|l| l.contains("listening") && l.contains("kind=api"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok()))
}
