//! The runner (design §7): task sandboxes, health checks, supervision and rolling deployments.
//!
//! It follows the control plane: every service there with a command gets a [`service`]
//! supervisor that keeps its tasks running, and a changed spec becomes a rolling deployment.
//! It speaks to the control plane only through its REST API, so it runs the same beside an
//! embedded control plane (`tether up`) and against a remote one (`tether up --server`).

pub mod agent;
pub mod cgroup;
pub mod client;
pub mod health;
pub mod process;
pub mod sandbox;
mod service;
pub mod status;
mod task;
mod version;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

pub use client::{ApiError, ControlClient};
pub use process::LogLine;
pub use status::Status;

use crate::process::TaskProcess;
use crate::service::{Command, Supervisor};
use crate::version::Version;

/// How often the runner reads the namespace's specs from the control plane.
const POLL: Duration = Duration::from_millis(500);
/// The lease the runner's instances hang on: when the runner dies, they expire after this.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// What the runner needs to know.
pub struct RunnerConfig {
    pub namespace: String,
    /// The control plane's URL, and its token.
    pub server: String,
    pub token: String,
    pub host: HostConfig,
}

/// How tasks run on this host: what a single-host runner and a fleet agent share.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where tasks keep their files (`tasks/`) and logs (`logs/`).
    pub data_dir: PathBuf,
    /// The directory commands run in (the spec file's).
    pub base_dir: PathBuf,
    /// The `tether` binary, which runs the sidecars.
    pub tether_exe: PathBuf,
    /// The address other sidecars reach this host's sidecars on.
    pub advertise: IpAddr,
    /// How long a stopping task's sidecar keeps serving while its removal propagates.
    pub drain_wait: Duration,
}

/// What every task shares.
pub(crate) struct Context {
    pub host: HostConfig,
    pub client: ControlClient,
    /// The runner's current lease; a new one when the old one was lost.
    pub lease: watch::Receiver<i64>,
    pub logs: broadcast::Sender<LogLine>,
}

pub struct Runner {
    namespace: String,
    ctx: Arc<Context>,
    lease: watch::Sender<i64>,
    status: watch::Sender<Status>,
}

impl Runner {
    /// Connects to the control plane and takes a lease.
    pub async fn new(config: RunnerConfig) -> Result<Self, ApiError> {
        let client = ControlClient::new(&config.server, &config.token);
        let lease_id = client.grant_lease(LEASE_TTL).await?;
        let (lease, lease_rx) = watch::channel(lease_id);
        let (logs, _) = broadcast::channel(1024);
        let ctx = Context { host: config.host, client, lease: lease_rx, logs };
        Ok(Self {
            namespace: config.namespace,
            ctx: Arc::new(ctx),
            lease,
            status: watch::channel(Status::default()).0,
        })
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.ctx.logs.subscribe()
    }

    /// Follows the control plane until `shutdown`, then drains and stops every task.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let ctx = &self.ctx;
        let keeper = tokio::spawn(keep_lease(ctx.client.clone(), self.lease));
        let mut supervisors: HashMap<String, (tokio::sync::mpsc::UnboundedSender<Command>, u64)> =
            HashMap::new();
        let mut joins = Vec::new();
        let namespace = self.namespace.clone();
        let mut edge = Edge::new(&namespace, format!("edge-{}", std::process::id()), "edge.log".into());
        let mut unreachable = false;
        tokio::pin!(shutdown);
        loop {
            match ctx.client.services(&namespace).await {
                Ok(services) => {
                    if unreachable {
                        info!("the control plane answers again");
                        unreachable = false;
                    }
                    let mut seen = Vec::new();
                    let mut publishes = false;
                    for entry in services {
                        let Some(version) = Version::new(entry.revision, &entry.name, &namespace, entry.spec)
                        else {
                            continue;
                        };
                        publishes |= !version.service.publish.is_empty();
                        seen.push(entry.name.clone());
                        match supervisors.get_mut(&entry.name) {
                            Some((commands, revision)) if *revision != entry.revision => {
                                *revision = entry.revision;
                                let _ = commands.send(Command::Spec(version));
                            }
                            Some(_) => {}
                            None => {
                                let (commands, join) =
                                    Supervisor::spawn(ctx.clone(), version, self.status.clone());
                                supervisors.insert(entry.name.clone(), (commands, entry.revision));
                                joins.push(join);
                            }
                        }
                    }
                    supervisors.retain(|name, (commands, _)| {
                        let keep = seen.contains(name);
                        if !keep {
                            let _ = commands.send(Command::Remove);
                        }
                        keep
                    });
                    edge.keep(ctx, publishes).await;
                }
                Err(e) if !unreachable => {
                    warn!("{e}; tasks keep running");
                    unreachable = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        info!("stopping every task");
        for (commands, _) in supervisors.values() {
            let _ = commands.send(Command::Remove);
        }
        for join in joins {
            let _ = join.await;
        }
        edge.keep(ctx, false).await;
        keeper.abort();
        let lease = *ctx.lease.borrow();
        let _ = ctx.client.revoke_lease(lease).await;
    }
}

impl Runner {
    /// One standalone task of `service` running `command` (`tether run`), until it exits or
    /// `shutdown`: the service's spec (ports, health check, sandbox) with this command, outside
    /// `desiredCount`. `Ok(None)` when it was stopped, `Ok(Some(why))` when it failed.
    pub async fn run_one(
        self,
        service: &str,
        command: Vec<String>,
        on_healthy: impl FnOnce(&str),
        shutdown: impl Future<Output = ()>,
    ) -> Result<Option<String>, ApiError> {
        let ctx = self.ctx.clone();
        let namespace = &self.namespace;
        let entry = ctx.client.services(namespace).await?.into_iter().find(|s| s.name == service);
        let Some(entry) = entry else {
            return Err(ApiError::Refused {
                method: http::Method::GET,
                path: format!("/v1/namespaces/{namespace}/services/{service}"),
                status: http::StatusCode::NOT_FOUND,
                message: format!(
                    "namespace {namespace} has no service `{service}`; create it first (tether up, or PUT it)"
                ),
            });
        };
        let mut spec = entry.spec;
        spec.command = command;
        spec.desired_count = None;
        let version =
            Version::new(entry.revision, service, namespace, spec).ok_or_else(|| ApiError::Malformed {
                path: service.to_owned(),
                reason: "the service cannot run tasks (an external service?)".into(),
            })?;
        let keeper = tokio::spawn(keep_lease(ctx.client.clone(), self.lease));
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let id = format!("{service}-run-{:06x}", fastrand::u32(..0x100_0000));
        let mut handle = task::start(ctx.clone(), version, id.clone(), events);
        let mut on_healthy = Some(on_healthy);
        tokio::pin!(shutdown);
        let outcome = loop {
            tokio::select! {
                () = &mut shutdown, if !handle.stopping() => handle.stop(),
                event = received.recv() => match event {
                    Some((_, task::TaskEvent::Healthy)) => {
                        if let Some(f) = on_healthy.take() {
                            f(&id);
                        }
                    }
                    Some((_, task::TaskEvent::Exited(why))) => break why,
                    None => break Some("the task vanished".into()),
                },
            }
        };
        keeper.abort();
        let lease = *ctx.lease.borrow();
        let _ = ctx.client.revoke_lease(lease).await;
        Ok(outcome)
    }
}

/// Renews the lease at a third of its life; takes a new one when it was lost (the control
/// plane was away longer than the TTL), which makes every task register again.
async fn keep_lease(client: ControlClient, lease: watch::Sender<i64>) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        let id = *lease.borrow();
        match client.renew_lease(id).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                match client.grant_lease(LEASE_TTL).await {
                    Ok(id) => {
                        warn!("the lease expired; registering every task again");
                        let _ = lease.send(id);
                    }
                    Err(e) => warn!("cannot take a new lease: {e}"),
                }
            }
            Err(e) => warn!("cannot renew the lease: {e}"),
        }
    }
}

/// The host's edge proxy for one namespace: it owns the `publish` ports and balances them
/// across the namespace's tasks.
pub(crate) struct Edge {
    namespace: String,
    /// Its name as a task: `edge-<pid>` beside `tether up`, `edge-<host>` on an agent.
    task: String,
    /// Its log file's name, in the host's `logs/`.
    log: String,
    process: Option<TaskProcess>,
}

impl Edge {
    pub(crate) fn new(namespace: &str, task: String, log: String) -> Self {
        Self { namespace: namespace.to_owned(), task, log, process: None }
    }

    pub(crate) async fn keep(&mut self, ctx: &Context, wanted: bool) {
        if let Some(process) = &mut self.process {
            if !wanted {
                process.stop(ctx.host.drain_wait + Duration::from_secs(5)).await;
                self.process = None;
                return;
            }
            match process.try_wait() {
                Ok(None) => return,
                _ => {
                    warn!(namespace = %self.namespace, "the edge proxy exited; starting it again");
                    self.process = None;
                }
            }
        }
        if !wanted {
            return;
        }
        match self.start(ctx).await {
            Ok(process) => self.process = Some(process),
            Err(e) => warn!(namespace = %self.namespace, "cannot start the edge proxy: {e}"),
        }
    }

    async fn start(&self, ctx: &Context) -> std::io::Result<TaskProcess> {
        let dir = ctx.host.data_dir.join("edge").join(&self.namespace);
        let logs = ctx.host.data_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&logs)?;
        let mut command = sandbox::host_command(&ctx.host.tether_exe.to_string_lossy())?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let token = ctx
            .client
            .bootstrap_token(&self.namespace, None, &self.task)
            .await
            .map_err(std::io::Error::other)?;
        command
            .arg("proxy")
            .args(["--server", ctx.client.base(), "--namespace", &self.namespace, "--edge"])
            .args(["--task", &self.task])
            .args(["--admin", &admin.to_string()])
            .arg("--state-dir")
            .arg(dir.join("proxy"))
            .args(["--drain-wait", &ctx.host.drain_wait.as_secs_f64().to_string()])
            .env("TETHER_TOKEN", token)
            .env("TETHER_LOG", "warn");
        TaskProcess::spawn(command, &logs.join(&self.log), None).await
    }
}
