//! One service's supervisor: keeps `desiredCount` healthy tasks of the latest version, replaces
//! failed ones with exponential backoff, and rolls a new version out within
//! `minimumHealthyPercent` / `maximumPercent`, rolling back when its tasks keep failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tether_model::rollout::{TaskView, plan};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::Context;
use crate::status::{DeploymentState, DeploymentStatus, ServiceStatus, Status, TaskState, TaskStatus};
use crate::task::{self, TaskEvent, TaskHandle};
use crate::version::Version;

/// How often the supervisor looks again without being told anything.
const TICK: Duration = Duration::from_millis(250);
/// The longest wait before starting a task again after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub enum Command {
    /// The service's spec, as the control plane has it now.
    Spec(Arc<Version>),
    /// The service is gone (or the runner stops): stop every task.
    Remove,
}

struct Entry {
    handle: TaskHandle,
    healthy: bool,
    started: SystemTime,
}

struct Deployment {
    from: Arc<Version>,
    failed: u32,
    status: DeploymentStatus,
}

pub struct Supervisor {
    ctx: Arc<Context>,
    name: String,
    target: Arc<Version>,
    /// The last version whose rollout completed: where a failing deployment goes back to.
    stable: Option<Arc<Version>>,
    tasks: BTreeMap<String, Entry>,
    deployment: Option<Deployment>,
    /// The last deployment, kept for `tether ps` and `tether deploy` once it is over.
    last_deployment: Option<DeploymentStatus>,
    failures_in_a_row: u32,
    failures: u32,
    last_failure: Option<String>,
    not_before: Instant,
    halted: bool,
    removing: bool,
    status: watch::Sender<Status>,
}

impl Supervisor {
    pub fn spawn(
        ctx: Arc<Context>,
        version: Arc<Version>,
        status: watch::Sender<Status>,
    ) -> (mpsc::UnboundedSender<Command>, tokio::task::JoinHandle<()>) {
        let (commands, received) = mpsc::unbounded_channel();
        let supervisor = Self {
            ctx,
            name: version.service.name.clone(),
            target: version,
            stable: None,
            tasks: BTreeMap::new(),
            deployment: None,
            last_deployment: None,
            failures_in_a_row: 0,
            failures: 0,
            last_failure: None,
            not_before: Instant::now(),
            halted: false,
            removing: false,
            status,
        };
        (commands, tokio::spawn(supervisor.run(received)))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (events, mut received) = mpsc::unbounded_channel();
        loop {
            self.reconcile(&events);
            self.publish();
            if self.removing && self.tasks.is_empty() {
                break;
            }
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Spec(version)) => self.retarget(version),
                    Some(Command::Remove) | None => self.removing = true,
                },
                Some((id, event)) = received.recv() => self.on_event(&id, event),
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.status.send_modify(|s| {
            s.services.remove(&self.name);
        });
    }

    fn retarget(&mut self, version: Arc<Version>) {
        if version.same_tasks(&self.target) {
            self.target = version;
            return;
        }
        let from = self.stable.clone().unwrap_or_else(|| self.target.clone());
        info!(service = %self.name, from = from.revision, to = version.revision, "deployment started");
        self.deployment = Some(Deployment {
            status: DeploymentStatus {
                from_revision: from.revision,
                to_revision: version.revision,
                state: DeploymentState::InProgress,
                message: format!("rolling out revision {}", version.revision),
            },
            from,
            failed: 0,
        });
        self.target = version;
        self.halted = false;
        self.failures_in_a_row = 0;
        self.not_before = Instant::now();
    }

    fn on_event(&mut self, id: &str, event: TaskEvent) {
        match event {
            TaskEvent::Healthy => {
                if let Some(entry) = self.tasks.get_mut(id) {
                    entry.healthy = true;
                    if entry.handle.version.same_tasks(&self.target) {
                        self.failures_in_a_row = 0;
                    }
                }
            }
            TaskEvent::Exited(why) => {
                let Some(entry) = self.tasks.remove(id) else { return };
                let Some(why) = why else { return };
                warn!(service = %self.name, task = %id, "task failed: {why}");
                self.failures += 1;
                self.failures_in_a_row += 1;
                let backoff = match self.failures_in_a_row {
                    0 | 1 => Duration::ZERO,
                    n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_BACKOFF),
                };
                self.not_before = Instant::now() + backoff;
                self.last_failure = Some(format!("{id}: {why}"));
                if entry.handle.version.same_tasks(&self.target) {
                    self.count_deployment_failure(&why);
                }
            }
        }
    }

    /// The deployment circuit breaker: ECS's threshold, half the desired count, at least 3.
    fn count_deployment_failure(&mut self, why: &str) {
        let Some(deployment) = &mut self.deployment else { return };
        deployment.failed += 1;
        let threshold = (self.target.desired_count().div_ceil(2)).clamp(3, 200);
        let policy = &self.target.task.deployment;
        if deployment.failed < threshold || !policy.circuit_breaker {
            return;
        }
        let failed = deployment.failed;
        let to = self.target.revision;
        if policy.rollback && !deployment.from.same_tasks(&self.target) {
            let from = deployment.from.clone();
            deployment.status.state = DeploymentState::RolledBack;
            deployment.status.message = format!(
                "rolled back to revision {}: {failed} tasks of revision {to} failed; the last: {why}",
                from.revision
            );
            warn!(service = %self.name, "{}", deployment.status.message);
            self.last_deployment = Some(deployment.status.clone());
            self.deployment = None;
            self.target = from.clone();
            self.failures_in_a_row = 0;
            self.not_before = Instant::now();
            // The control plane's desired state goes back too, so that nothing restarts the
            // failed version; the change comes back here as a spec with the same tasks.
            let (ctx, name) = (self.ctx.clone(), self.name.clone());
            tokio::spawn(async move {
                if let Err(e) = ctx.client.put_service(&from.service.namespace, &name, &from.spec).await {
                    warn!(service = %name, "cannot restore the previous spec: {e}");
                }
            });
        } else {
            deployment.status.state = DeploymentState::Failed;
            deployment.status.message =
                format!("stopped: {failed} tasks of revision {to} failed; the last: {why}");
            warn!(service = %self.name, "{}", deployment.status.message);
            self.last_deployment = Some(deployment.status.clone());
            self.deployment = None;
            self.halted = true;
        }
    }

    fn reconcile(&mut self, events: &mpsc::UnboundedSender<(String, TaskEvent)>) {
        if self.removing {
            self.tasks.values_mut().for_each(|e| e.handle.stop());
            return;
        }
        let desired = self.target.desired_count() as usize;
        let target = self.target.clone();
        let views: Vec<TaskView> = self
            .tasks
            .iter()
            .filter(|(_, e)| !e.handle.stopping())
            .map(|(id, e)| TaskView {
                id: id.clone(),
                current: e.handle.version.same_tasks(&target),
                healthy: e.healthy,
                started: e.started,
            })
            .collect();
        let may_start = !self.halted && Instant::now() >= self.not_before;
        let plan = plan(&views, desired, &target.task.deployment, may_start, self.failures_in_a_row > 0);
        for id in &plan.stop {
            self.stop(id);
        }
        for _ in 0..plan.start {
            self.start(events);
        }

        let is_new = |e: &Entry| e.handle.version.same_tasks(&target);
        let live = |e: &&Entry| !e.handle.stopping();
        let settled = self.tasks.values().filter(|e| live(e) && is_new(e) && e.healthy).count() >= desired
            && self.tasks.values().all(|e| !live(&e) || is_new(e));
        if settled {
            if let Some(mut deployment) = self.deployment.take() {
                deployment.status.state = DeploymentState::Completed;
                deployment.status.message = format!("revision {} is running", self.target.revision);
                info!(service = %self.name, revision = self.target.revision, "deployment completed");
                self.last_deployment = Some(deployment.status);
            }
            self.stable = Some(self.target.clone());
        }
    }

    fn start(&mut self, events: &mpsc::UnboundedSender<(String, TaskEvent)>) {
        let id = format!("{}-{:06x}", self.name, fastrand::u32(..0x100_0000));
        let handle = task::start(self.ctx.clone(), self.target.clone(), id.clone(), events.clone());
        self.tasks.insert(id, Entry { handle, healthy: false, started: SystemTime::now() });
    }

    fn stop(&mut self, id: &str) {
        if let Some(entry) = self.tasks.get_mut(id) {
            entry.handle.stop();
        }
    }

    fn publish(&self) {
        let status = ServiceStatus {
            desired: self.target.desired_count(),
            revision: self.target.revision,
            tasks: self
                .tasks
                .iter()
                .map(|(id, e)| TaskStatus {
                    id: id.clone(),
                    revision: if e.handle.version.same_tasks(&self.target) {
                        self.target.revision
                    } else {
                        e.handle.version.revision
                    },
                    state: match (e.handle.stopping(), e.healthy) {
                        (true, _) => TaskState::Stopping,
                        (false, true) => TaskState::Healthy,
                        (false, false) => TaskState::Starting,
                    },
                    started: e.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                })
                .collect(),
            deployment: self
                .deployment
                .as_ref()
                .map(|d| d.status.clone())
                .or_else(|| self.last_deployment.clone()),
            failures: self.failures,
            last_failure: self.last_failure.clone(),
        };
        self.status.send_if_modified(|s| {
            if s.services.get(&self.name) == Some(&status) {
                return false;
            }
            s.services.insert(self.name.clone(), status);
            true
        });
    }
}
