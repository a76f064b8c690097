//! The runner (design §7): what runs tasks on a host — sandboxes, sidecars, health checks,
//! registration and drain ([`task`]) — for the fleet's [`agent`], which runs what the control
//! plane's scheduler places on its host (`tether agent`, and the one local agent of `tether
//! up`), and for a standalone task outside any service's count (`tether run`).
//!
//! It speaks to the control plane only through its REST API ([`client`]).

pub mod agent;
pub mod cgroup;
pub mod client;
mod edge;
pub mod health;
pub mod process;
pub mod sandbox;
pub mod status;
mod task;
mod version;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::warn;

pub use client::{ApiError, ControlClient};
pub use process::LogLine;
pub use status::Status;

pub(crate) use crate::edge::Edge;
use crate::version::Version;

/// The lease a standalone task's instances hang on: when `tether run` dies, they expire after this.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// What a standalone task needs to know.
pub struct RunnerConfig {
    pub namespace: String,
    /// The control plane's URL, and its token.
    pub server: String,
    pub token: String,
    pub host: HostConfig,
}

/// How tasks run on this host: what an agent and a standalone task share.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where tasks keep their files (`tasks/`) and logs (`logs/`).
    pub data_dir: PathBuf,
    /// The directory commands run in unless their spec says otherwise (`tether up`: the spec
    /// file's).
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

/// Runs one standalone task against the control plane (`tether run`).
pub struct Runner {
    namespace: String,
    ctx: Arc<Context>,
    lease: watch::Sender<i64>,
}

impl Runner {
    /// Connects to the control plane and takes a lease.
    pub async fn new(config: RunnerConfig) -> Result<Self, ApiError> {
        let client = ControlClient::new(&config.server, &config.token);
        let lease_id = client.grant_lease(LEASE_TTL).await?;
        let (lease, lease_rx) = watch::channel(lease_id);
        let (logs, _) = broadcast::channel(1024);
        let ctx = Context { host: config.host, client, lease: lease_rx, logs };
        Ok(Self { namespace: config.namespace, ctx: Arc::new(ctx), lease })
    }

    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.ctx.logs.subscribe()
    }

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
        let version = Version::new(service, namespace, spec).ok_or_else(|| ApiError::Malformed {
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
