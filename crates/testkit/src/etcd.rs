//! Real etcd servers, started by the test: one member, or a cluster whose members a test stops
//! and starts again to take quorum away and give it back. Every member listens on loopback and
//! keeps its data in a temporary directory; all are killed when the handle drops.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Client;
use crate::net::free_port;

/// Where Debian's `etcd-server` package puts the server.
const DEFAULT_BINARY: &str = "/usr/bin/etcd";
/// Overrides [`DEFAULT_BINARY`].
const BINARY_ENV: &str = "TETHER_TEST_ETCD";
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts with fresh ports (another process may take a port picked before etcd binds it).
const START_ATTEMPTS: usize = 3;

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    binary: PathBuf,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
}

impl EtcdCluster {
    /// One member, ready to serve. Its election timeout is short (a lone member has no peers to
    /// miss), so it starts in a fraction of a second and grants leases from 1 s.
    pub async fn single() -> anyhow::Result<Self> {
        Self::start_with(1, Timing { heartbeat_ms: 20, election_ms: 200 }).await
    }

    /// `members` members (3 for a quorum that survives one loss), ready to serve, with etcd's
    /// default timing so a busy test machine does not cause elections.
    pub async fn cluster(members: usize) -> anyhow::Result<Self> {
        Self::start_with(members, Timing { heartbeat_ms: 100, election_ms: 1000 }).await
    }

    async fn start_with(members: usize, timing: Timing) -> anyhow::Result<Self> {
        let binary = binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary, members, timing).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn try_start(binary: &Path, members: usize, timing: Timing) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per cluster, so members of another test's cluster that got a reused port
        // refuse to talk to these.
        let token = dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", dir.path().join(&name).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={initial_cluster}"),
                    format!("--initial-cluster-token={token}"),
                    "--initial-cluster-state=new".into(),
                    format!("--heartbeat-interval={}", timing.heartbeat_ms),
                    format!("--election-timeout={}", timing.election_ms),
                    // A member coming back must not depose a healthy leader.
                    "--pre-vote=true".into(),
                    "--logger=zap".into(),
                    "--log-outputs=stderr".into(),
                ];
                Member { name, client: SocketAddr::from(([127, 0, 0, 1], *client)), args, child: None }
            })
            .collect();
        let mut cluster = Self { dir, binary: binary.to_owned(), members };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Every member's client URL, for a client that should find whichever member is up.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL (`http://127.0.0.1:port`).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// Kills member `i` (SIGKILL); its data stays for [`start`](Self::start).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data and ports, and waits until it accepts connections.
    /// It serves requests only once a quorum of members is up: see
    /// [`wait_healthy`](Self::wait_healthy).
    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        let deadline = Instant::now() + READY_WITHIN;
        let client = self.members[i].client;
        loop {
            self.check_running(i)?;
            if TcpStream::connect_timeout(&client, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd {} not listening within {READY_WITHIN:?}:\n{}",
                    self.members[i].name,
                    self.log(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a running member reports itself healthy, which etcd does only when the
    /// cluster has a leader and answers a quorum read.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = Client::http1().timeout(Duration::from_secs(2));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for i in 0..self.members.len() {
                if self.members[i].child.is_none() {
                    continue;
                }
                self.check_running(i)?;
                let url = format!("{}/health", self.endpoint(i));
                if client.get(&url).await.is_ok_and(|r| r.status == 200 && r.text().contains("\"true\"")) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = (0..self.members.len()).map(|i| self.log(i)).collect();
                bail!("etcd not healthy within {READY_WITHIN:?}:\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What member `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i))?;
        let child = Command::new(&self.binary)
            .args(&self.members[i].args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Fails with the member's log if it exited (a port taken, a bad flag).
    fn check_running(&mut self, i: usize) -> anyhow::Result<()> {
        let exited = match self.members[i].child.as_mut() {
            Some(child) => child.try_wait()?,
            None => None,
        };
        if let Some(status) = exited {
            self.members[i].child = None;
            bail!("etcd {} exited with {status}:\n{}", self.members[i].name, self.log(i));
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

#[derive(Clone, Copy)]
struct Timing {
    heartbeat_ms: u32,
    election_ms: u32,
}

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(BINARY_ENV).map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "etcd is not installed at {}: install it (`sudo apt-get install etcd-server` on Debian/Ubuntu; \
         scripts/test does) or point {BINARY_ENV} at an `etcd` binary",
        path.display()
    )
}
