//! A real Prometheus server, started by the test with a config of its own and killed when the
//! handle drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Client;
use crate::net::free_port;

/// Where Debian's `prometheus` package puts the server.
const DEFAULT_BINARY: &str = "/usr/bin/prometheus";
/// Overrides [`DEFAULT_BINARY`].
const BINARY_ENV: &str = "TETHER_TEST_PROMETHEUS";
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at a free port (another process may take the one picked before Prometheus binds it).
const START_ATTEMPTS: usize = 3;

pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    client: Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each `(job, address)` every second, and waits
    /// until it is ready. Fails (never skips) when Prometheus is not installed.
    pub async fn start(jobs: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        let binary = binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary, jobs).await {
                Ok(prometheus) => return Ok(prometheus),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn try_start(binary: &PathBuf, jobs: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n".to_owned();
        for (job, addr) in jobs {
            config += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n");
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut prometheus =
            Self { child, dir, addr, client: Client::http1().timeout(Duration::from_secs(5)) };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited with {status} before it was ready:\n{}", self.log());
            }
            if self.client.get(&url).await.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("prometheus not ready within {READY_WITHIN:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `promql` now and returns the value of its single series, `None` when the result
    /// is empty. Fails on more than one series: wrap the query in `sum(…)`.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let url = format!("http://{}/api/v1/query?query={}", self.addr, percent_encode(promql));
        let reply = self.client.get(&url).await?;
        let json: serde_json::Value = serde_json::from_slice(&reply.body)
            .with_context(|| format!("{}: {}", reply.status, reply.text()))?;
        if json["status"] != "success" {
            bail!("query `{promql}` failed: {json}");
        }
        let result = json["data"]["result"].as_array().context("a vector result")?;
        match result.as_slice() {
            [] => Ok(None),
            [series] => {
                let value = series["value"][1].as_str().context("a sample value")?;
                Ok(Some(value.parse()?))
            }
            _ => bail!("query `{promql}` returned {} series; aggregate it", result.len()),
        }
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(BINARY_ENV).map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "Prometheus is not installed at {}: install it (`sudo apt-get install prometheus` on Debian/Ubuntu; CI does) \
         or point {BINARY_ENV} at a `prometheus` binary",
        path.display()
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
