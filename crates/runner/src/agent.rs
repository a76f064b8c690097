//! `tether agent` (design §9): one host of a fleet. It joins the control plane with its join
//! token, holds a lease of its own (the host is gone when it stops renewing), runs the tasks the
//! scheduler places on it exactly as the single-host runner does (sandbox, sidecar, health
//! checks, registration, drain), reports their state, and serves the published ports of every
//! namespace with an edge proxy.
//!
//! It reconciles every poll: a task placed here that does not run is started (also after the
//! agent restarted: it adopts what is still assigned to it), a task the scheduler wants stopped
//! drains, and a task that is no longer assigned here at all (its host was declared lost while
//! cut off, and it was replaced elsewhere) is stopped without a drain before the agent's new
//! lease is handed to the tasks it keeps, so an orphan never registers again.
//!
//! It may serve its tasks' logs to the control plane ([`LogServer`]).

mod logs;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_model::fleet::{AgentRegistration, Assignments, DesiredState, TaskReport, TaskState};
use tether_model::placement::Resources;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::task::{self, TaskEvent, TaskHandle};
use crate::version::Version;
use crate::{ApiError, Context, ControlClient, Edge, HostConfig, LogLine};

pub use logs::LogServer;

/// How often the agent reads what is placed on it.
const POLL: Duration = Duration::from_millis(500);
/// How long stopping tasks may take when the agent itself stops, beyond the drain wait.
const STOP_GRACE: Duration = Duration::from_secs(15);

pub struct AgentConfig {
    /// The host's name in the fleet (`tether agent --name`).
    pub name: String,
    pub server: String,
    /// The join token.
    pub token: String,
    /// The address other hosts reach this host's sidecars on.
    pub address: IpAddr,
    pub attributes: BTreeMap<String, String>,
    pub capacity: Resources,
    pub lease_ttl: Duration,
    pub host: HostConfig,
}

pub struct Agent {
    name: String,
    registration: AgentRegistration,
    lease_ttl: Duration,
    ctx: Arc<Context>,
    lease: watch::Sender<i64>,
    log_server: Option<LogServer>,
}

/// A task this agent runs.
struct Local {
    handle: TaskHandle,
    namespace: String,
    state: TaskState,
    /// Stopped because it is no longer this host's: its end is not reported.
    abandoned: bool,
}

impl Agent {
    /// Takes a lease and joins the fleet as `config.name`.
    pub async fn join(config: AgentConfig) -> Result<Self, ApiError> {
        Self::join_serving_logs(config, None).await
    }

    /// The same, telling the control plane where `log_server` (bound on `config.address`)
    /// serves the logs of this host's tasks; it serves once the agent runs.
    pub async fn join_serving_logs(
        config: AgentConfig,
        log_server: Option<LogServer>,
    ) -> Result<Self, ApiError> {
        let client = ControlClient::new(&config.server, &config.token);
        let lease_id = client.grant_lease(config.lease_ttl).await?;
        let logs_port = log_server.as_ref().and_then(|s| s.local_addr().ok()).map(|a| a.port());
        let registration = AgentRegistration {
            address: config.address,
            attributes: config.attributes,
            capacity: config.capacity,
            lease: lease_id,
            logs_port,
        };
        client.put_agent(&config.name, &registration).await?;
        let (lease, lease_rx) = watch::channel(lease_id);
        let (logs, _) = broadcast::channel(1024);
        let ctx = Context { host: config.host, client, lease: lease_rx, logs };
        Ok(Self {
            name: config.name,
            registration,
            lease_ttl: config.lease_ttl,
            ctx: Arc::new(ctx),
            lease,
            log_server,
        })
    }

    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.ctx.logs.subscribe()
    }

    /// Runs what is placed here until `shutdown`, then drains every task and leaves the fleet.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let (events, mut received) = mpsc::unbounded_channel();
        let mut local: BTreeMap<String, Local> = BTreeMap::new();
        // Ends of tasks not yet told to the control plane, by (namespace, task).
        let mut ended: BTreeMap<(String, String), TaskReport> = BTreeMap::new();
        let mut edges: BTreeMap<String, Edge> = BTreeMap::new();
        // A new lease, handed to the tasks once the orphans are gone.
        let mut next_lease: Option<i64> = None;
        let mut renew_at = Instant::now() + self.lease_ttl / 3;
        let mut unreachable = false;
        let log_server = self.log_server.take().map(|server| tokio::spawn(server.run()));
        tokio::pin!(shutdown);
        loop {
            if Instant::now() >= renew_at {
                renew_at = Instant::now() + self.lease_ttl / 3;
                if let Some(lease) = self.renew().await {
                    next_lease = Some(lease);
                }
            }
            match self.ctx.client.assignments(&self.name).await {
                Ok(assignments) => {
                    if unreachable {
                        info!("the control plane answers again");
                        unreachable = false;
                    }
                    self.reconcile(&assignments, &mut local, &mut ended, &events).await;
                    self.keep_edges(&assignments.edges, &mut edges).await;
                }
                Err(e) if !unreachable => {
                    warn!("{e}; tasks keep running");
                    unreachable = true;
                }
                Err(_) => {}
            }
            if let Some(lease) = next_lease
                && local.values().all(|t| !t.abandoned)
            {
                info!("registering every task on the new lease");
                let _ = self.lease.send(lease);
                next_lease = None;
            }
            self.send_ends(&mut ended).await;
            tokio::select! {
                () = &mut shutdown => break,
                Some((id, event)) = received.recv() => on_event(&mut local, &mut ended, id, event),
                () = tokio::time::sleep(POLL) => {}
            }
        }

        info!(tasks = local.len(), "stopping every task");
        for task in local.values_mut() {
            task.handle.stop();
        }
        let deadline = tokio::time::Instant::now() + self.ctx.host.drain_wait + STOP_GRACE;
        while !local.is_empty() {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some((id, event))) => on_event(&mut local, &mut ended, id, event),
                _ => break,
            }
        }
        self.send_ends(&mut ended).await;
        for edge in edges.values_mut() {
            edge.keep(&self.ctx, false).await;
        }
        let lease = *self.lease.borrow();
        let _ = self.ctx.client.revoke_lease(lease).await;
        if let Some(server) = log_server {
            server.abort();
        }
    }

    /// Renews the lease; when it expired (the host was cut off for longer than its TTL), joins
    /// again on a new one and returns it.
    async fn renew(&mut self) -> Option<i64> {
        let lease = self.registration.lease;
        match self.ctx.client.renew_lease(lease).await {
            Ok(()) => None,
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                warn!("the lease expired: this host was away; joining again");
                let lease = match self.ctx.client.grant_lease(self.lease_ttl).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        warn!("cannot take a new lease: {e}");
                        return None;
                    }
                };
                self.registration.lease = lease;
                if let Err(e) = self.ctx.client.put_agent(&self.name, &self.registration).await {
                    warn!("cannot join again: {e}");
                }
                Some(lease)
            }
            Err(e) => {
                warn!("cannot renew the lease: {e}");
                None
            }
        }
    }

    /// Brings the host's tasks to what the scheduler placed here.
    async fn reconcile(
        &self,
        assignments: &Assignments,
        local: &mut BTreeMap<String, Local>,
        ended: &mut BTreeMap<(String, String), TaskReport>,
        events: &mpsc::UnboundedSender<(String, TaskEvent)>,
    ) {
        let assigned: BTreeSet<&str> = assignments.tasks.iter().map(|t| t.id.as_str()).collect();
        for (id, task) in local.iter_mut() {
            if !assigned.contains(id.as_str())
                && !task.abandoned
                && !ended.contains_key(&(task.namespace.clone(), id.clone()))
            {
                warn!(task = %id, "no longer placed on this host (replaced elsewhere); stopping it");
                task.handle.abandon();
                task.abandoned = true;
            }
        }
        for record in &assignments.tasks {
            let key = (record.namespace.clone(), record.id.clone());
            match (local.get_mut(&record.id), record.desired) {
                (Some(task), DesiredState::Stopped) if !task.handle.stopping() => {
                    info!(task = %record.id, "stopping");
                    task.handle.stop();
                    task.state = TaskState::Stopping;
                }
                (Some(task), _) => {
                    if record.state != task.state {
                        self.report(&record.namespace, &record.id, task.state, None).await;
                    }
                }
                (None, DesiredState::Running) if !ended.contains_key(&key) => {
                    let Some(version) = Version::new(&record.service, &record.namespace, record.spec.clone())
                    else {
                        let why = "its spec runs no task here (no command, or invalid)".to_owned();
                        ended.insert(key, TaskReport { state: TaskState::Stopped, reason: Some(why) });
                        continue;
                    };
                    info!(task = %record.id, service = %record.service, "starting");
                    let handle = task::start(self.ctx.clone(), version, record.id.clone(), events.clone());
                    let task = Local {
                        handle,
                        namespace: record.namespace.clone(),
                        state: TaskState::Starting,
                        abandoned: false,
                    };
                    local.insert(record.id.clone(), task);
                    self.report(&record.namespace, &record.id, TaskState::Starting, None).await;
                }
                (None, DesiredState::Stopped) if !ended.contains_key(&key) => {
                    // Not running here (the agent restarted meanwhile): it has stopped.
                    ended.insert(key, TaskReport { state: TaskState::Stopped, reason: None });
                }
                (None, _) => {}
            }
        }
    }

    async fn report(&self, ns: &str, id: &str, state: TaskState, reason: Option<String>) {
        if let Err(e) = self.ctx.client.report_task(ns, id, &TaskReport { state, reason }).await {
            warn!(task = %id, "cannot report {state:?}: {e}");
        }
    }

    /// Tells the control plane of tasks that ended; keeps what it could not tell for later.
    async fn send_ends(&self, ended: &mut BTreeMap<(String, String), TaskReport>) {
        let mut told = Vec::new();
        for ((ns, id), report) in ended.iter() {
            match self.ctx.client.report_task(ns, id, report).await {
                Ok(()) => told.push((ns.clone(), id.clone())),
                // Gone, or no longer this host's: nothing to tell.
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    told.push((ns.clone(), id.clone()));
                }
                Err(_) => {}
            }
        }
        for key in told {
            ended.remove(&key);
        }
    }

    /// One edge proxy per namespace with published ports.
    async fn keep_edges(&self, wanted: &[String], edges: &mut BTreeMap<String, Edge>) {
        for ns in wanted {
            let edge = edges
                .entry(ns.clone())
                .or_insert_with(|| Edge::new(ns, format!("edge-{}", self.name), format!("edge.{ns}.log")));
            edge.keep(&self.ctx, true).await;
        }
        let gone: Vec<String> = edges.keys().filter(|ns| !wanted.contains(ns)).cloned().collect();
        for ns in gone {
            if let Some(mut edge) = edges.remove(&ns) {
                edge.keep(&self.ctx, false).await;
            }
        }
    }
}

fn on_event(
    local: &mut BTreeMap<String, Local>,
    ended: &mut BTreeMap<(String, String), TaskReport>,
    id: String,
    event: TaskEvent,
) {
    match event {
        TaskEvent::Healthy => {
            if let Some(task) = local.get_mut(&id) {
                task.state = TaskState::Healthy;
            }
        }
        TaskEvent::Exited(why) => {
            let Some(task) = local.remove(&id) else { return };
            if let Some(why) = &why {
                warn!(task = %id, "task failed: {why}");
            }
            if !task.abandoned {
                ended.insert((task.namespace, id), TaskReport { state: TaskState::Stopped, reason: why });
            }
        }
    }
}
