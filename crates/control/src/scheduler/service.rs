//! One service's turn in a scheduler tick: what its tasks' reports mean (failures, backoff, the
//! circuit breaker), the rollout's next step (`rollout::plan`), placement of new and pending
//! tasks, and its deployment record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tether_model::fleet::{Agent, DeploymentRecord, DeploymentState, DesiredState, TaskRecord, TaskState};
use tether_model::placement::{HostView, Resources, place};
use tether_model::rollout::{TaskView, fingerprint, plan};
use tether_store::Store;
use tracing::{info, warn};

use crate::Result;
use crate::fleet::{Fleet, now};
use crate::registry::{Registry, ServiceRecord};

/// The longest wait before starting a task again after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A service's failures in a row and when it may start a task again. Kept in memory only: a
/// restarted control plane starts without backoff.
#[derive(Debug)]
pub struct Backoff {
    in_a_row: u32,
    not_before: Instant,
    /// When the last failure was seen, seconds since the epoch: a task healthy since then ends
    /// the run of failures.
    last: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { in_a_row: 0, not_before: Instant::now(), last: 0 }
    }
}

impl Backoff {
    fn failed(&mut self) {
        self.in_a_row += 1;
        let wait = match self.in_a_row {
            0 | 1 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_BACKOFF),
        };
        self.not_before = Instant::now() + wait;
        self.last = now();
    }
}

pub struct Run<'a, S> {
    pub registry: &'a Registry<S>,
    pub fleet: &'a Fleet<S>,
    pub agents: &'a BTreeMap<String, Agent>,
    /// Every task of the fleet, for what each host has reserved.
    pub all_tasks: &'a [TaskRecord],
    pub backoff: &'a mut Backoff,
}

impl<S: Store> Run<'_, S> {
    pub async fn reconcile(&mut self, record: &ServiceRecord, tasks: Vec<(TaskRecord, i64)>) -> Result<()> {
        let service = &record.service;
        let Some(target) = fingerprint(service) else { return Ok(()) };
        let (ns, name) = (service.namespace.as_str(), service.name.as_str());
        let (mut deployment, halted) = self.deployment(record, &target).await?;
        // As read: what this tick changes in it (failures counted, progress) is written once.
        let read = deployment.as_ref().map(|(d, _)| d.clone());

        // Reports first: a task that stopped while it should run has exited or failed.
        let mut live = Vec::new();
        for (mut task, revision) in tasks {
            if task.desired == DesiredState::Running && task.state.ended() {
                task.desired = DesiredState::Stopped;
                if !self.fleet.put_task(&task, Some(revision)).await? {
                    continue;
                }
                if task.failed {
                    let why = task.reason.clone().unwrap_or_default();
                    warn!(namespace = %ns, service = %name, task = %task.id, "task failed: {why}");
                    self.backoff.failed();
                    if task.fingerprint == target
                        && let Some((d, _)) = &mut deployment
                    {
                        d.failed_tasks += 1;
                        d.message = format!(
                            "{} tasks of revision {} failed; the last: {why}",
                            d.failed_tasks, d.to_revision
                        );
                    }
                }
                continue;
            }
            if task.desired == DesiredState::Running && !task.state.ended() {
                if task.fingerprint == target
                    && task.state == TaskState::Healthy
                    && task.updated >= self.backoff.last
                {
                    self.backoff.in_a_row = 0;
                }
                live.push((task, revision));
            }
        }
        if let Some((d, revision)) = &mut deployment
            && self.circuit_breaker(record, d).await?
        {
            self.fleet.put_deployment(d, Some(*revision)).await?;
            return Ok(());
        }

        let views: Vec<TaskView> = live
            .iter()
            .map(|(t, _)| TaskView {
                id: t.id.clone(),
                current: t.fingerprint == target,
                healthy: t.state == TaskState::Healthy,
                started: UNIX_EPOCH + Duration::from_secs(t.created),
            })
            .collect();
        let desired = service.desired_count as usize;
        let policy = &service.task.as_ref().expect("a service with tasks").deployment;
        let may_start = !halted && Instant::now() >= self.backoff.not_before;
        let step = plan(&views, desired, policy, may_start, self.backoff.in_a_row > 0);

        let mut placed = Vec::new();
        for (mut task, revision) in live {
            if step.stop.contains(&task.id) {
                task.desired = DesiredState::Stopped;
                if task.host.is_none() {
                    task.state = TaskState::Stopped;
                    task.reason = Some("no longer needed".into());
                }
                task.updated = now();
                self.fleet.put_task(&task, Some(revision)).await?;
            } else if task.host.is_none() {
                self.place(&mut task, service, &placed);
                if task.host.is_some() || task.reason.is_some() {
                    self.fleet.put_task(&task, Some(revision)).await?;
                }
                placed.push(task);
            } else {
                placed.push(task);
            }
        }
        for _ in 0..step.start {
            let mut task = TaskRecord {
                id: format!("{name}-{:06x}", random_u32()),
                namespace: ns.to_owned(),
                service: name.to_owned(),
                revision: record.revision as u64,
                spec: record.spec.clone(),
                fingerprint: target.clone(),
                host: None,
                reserved: service.task.as_ref().map(|t| t.resources).unwrap_or_default(),
                desired: DesiredState::Running,
                state: TaskState::Pending,
                reason: None,
                created: now(),
                updated: now(),
                failed: false,
            };
            self.place(&mut task, service, &placed);
            if self.fleet.put_task(&task, None).await? {
                info!(namespace = %ns, service = %name, task = %task.id, host = task.host.as_deref().unwrap_or("-"), "task placed");
                placed.push(task);
            }
        }

        if let Some((mut d, revision)) = deployment {
            let healthy = placed
                .iter()
                .filter(|t| {
                    t.fingerprint == target
                        && t.state == TaskState::Healthy
                        && t.desired == DesiredState::Running
                })
                .count();
            let settled =
                healthy >= desired && placed.iter().all(|t| t.fingerprint == target) && step.start == 0;
            d.healthy = healthy as u32;
            d.desired = desired as u32;
            if settled {
                d.state = DeploymentState::Completed;
                d.message = format!("revision {} is running", d.to_revision);
                info!(namespace = %ns, service = %name, revision = d.to_revision, "deployment completed");
            } else if let Some(pending) = placed.iter().find(|t| t.host.is_none()) {
                d.message = format!(
                    "{healthy}/{desired} tasks of revision {} healthy; waiting to place a task: {}",
                    d.to_revision,
                    pending.reason.as_deref().unwrap_or("no host yet")
                );
            } else if d.failed_tasks == 0 {
                d.message = format!("{healthy}/{desired} tasks of revision {} healthy", d.to_revision);
            }
            if read.as_ref() != Some(&d) {
                d.updated = now();
                self.fleet.put_deployment(&d, Some(revision)).await?;
            }
        }
        Ok(())
    }

    /// The service's deployment in progress for `target`, made when the service's tasks
    /// changed (an older one in progress is superseded); and whether the deployment of
    /// `target` was stopped by the circuit breaker (nothing of it starts until the spec
    /// changes).
    async fn deployment(
        &self,
        record: &ServiceRecord,
        target: &str,
    ) -> Result<(Option<(DeploymentRecord, i64)>, bool)> {
        let (ns, name) = (&record.service.namespace, &record.service.name);
        let all = self.fleet.deployments(ns, Some(name)).await?;
        if let Some((newest, _)) = all.last()
            && newest.fingerprint == target
        {
            let halted = newest.state == DeploymentState::Failed;
            let active = all.into_iter().last().filter(|(d, _)| d.state == DeploymentState::InProgress);
            return Ok((active, halted));
        }
        let from = all.iter().rev().find(|(d, _)| d.state == DeploymentState::Completed).map(|(d, _)| d);
        for (old, revision) in all.iter().filter(|(d, _)| d.state == DeploymentState::InProgress) {
            let mut old = old.clone();
            old.state = DeploymentState::Superseded;
            old.message = format!("superseded by revision {}", record.revision);
            old.updated = now();
            self.fleet.put_deployment(&old, Some(*revision)).await?;
        }
        let deployment = DeploymentRecord {
            id: format!("{}-{}", record.revision, random_u32() % 0x10000),
            namespace: ns.clone(),
            service: name.clone(),
            from_revision: from.map_or(0, |d| d.to_revision),
            to_revision: record.revision as u64,
            spec: record.spec.clone(),
            fingerprint: target.to_owned(),
            from_spec: from.map(|d| d.spec.clone()),
            state: DeploymentState::InProgress,
            message: format!("rolling out revision {}", record.revision),
            failed_tasks: 0,
            desired: record.service.desired_count,
            healthy: 0,
            created: now(),
            updated: now(),
        };
        info!(namespace = %ns, service = %name, from = deployment.from_revision, to = deployment.to_revision, "deployment started");
        if !self.fleet.put_deployment(&deployment, None).await? {
            return Ok((None, false));
        }
        Ok((self.fleet.active_deployment(ns, name).await?, false))
    }

    /// ECS's deployment circuit breaker: at half the desired count of failed new tasks (3 to
    /// 200), roll back to the last version that completed, or stop where it is. `true` when it
    /// tripped.
    async fn circuit_breaker(&self, record: &ServiceRecord, d: &mut DeploymentRecord) -> Result<bool> {
        let policy = &record.service.task.as_ref().expect("a service with tasks").deployment;
        let threshold = record.service.desired_count.div_ceil(2).clamp(3, 200);
        if d.failed_tasks < threshold || !policy.circuit_breaker {
            return Ok(false);
        }
        let (ns, name) = (&record.service.namespace, &record.service.name);
        match d.from_spec.clone().filter(|_| policy.rollback) {
            Some(from) => {
                d.state = DeploymentState::RolledBack;
                d.message = format!("rolled back to revision {}: {}", d.from_revision, d.message);
                warn!(namespace = %ns, service = %name, "{}", d.message);
                // The desired state goes back, so that nothing starts the failed version again.
                if let Err(e) = self.registry.put_service(ns, name, from).await {
                    warn!(namespace = %ns, service = %name, "cannot restore the previous spec: {e}");
                    return Ok(false);
                }
            }
            None => {
                d.state = DeploymentState::Failed;
                d.message = format!("stopped: {}", d.message);
                warn!(namespace = %ns, service = %name, "{}", d.message);
            }
        }
        d.updated = now();
        Ok(true)
    }

    /// Places `task` on a live agent, or leaves it PENDING with the reason.
    fn place(&self, task: &mut TaskRecord, service: &tether_model::spec::Service, placed: &[TaskRecord]) {
        let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
        let mut mine: BTreeMap<&str, usize> = BTreeMap::new();
        // This service's running tasks as this tick left them (`placed`); everything else as
        // read at its start. A task reserves its host's resources until it has ended.
        let same = |t: &TaskRecord| t.namespace == task.namespace && t.service == task.service;
        let others = self.all_tasks.iter().filter(|t| !(same(t) && t.desired == DesiredState::Running));
        for other in others.chain(placed) {
            let Some(host) = other.host.as_deref() else { continue };
            if other.state.ended() || other.id == task.id {
                continue;
            }
            let entry = used.entry(host).or_default();
            entry.cpu += other.reserved.cpu;
            entry.memory_mib += other.reserved.memory_mib;
            if same(other) && other.desired == DesiredState::Running {
                *mine.entry(host).or_default() += 1;
            }
        }
        let hosts: Vec<HostView> = self
            .agents
            .values()
            .map(|agent| HostView {
                name: &agent.name,
                attributes: &agent.registration.attributes,
                capacity: agent.registration.capacity,
                used: used.get(agent.name.as_str()).copied().unwrap_or_default(),
                service_tasks: mine.get(agent.name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        match place(&hosts, task.reserved, &service.placement) {
            Ok(index) => {
                task.host = Some(hosts[index].name.to_owned());
                task.state = TaskState::Provisioning;
                task.reason = None;
                task.updated = now();
            }
            Err(why) => {
                let why = why.to_string();
                if task.reason.as_deref() != Some(why.as_str()) {
                    info!(task = %task.id, "pending: {why}");
                    task.reason = Some(why);
                    task.updated = now();
                }
            }
        }
    }
}

/// A random number for new task and deployment ids.
fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The system's randomness does not fail on Linux; a zero id suffix would still be unique
    // enough with the revision and the conditional create.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}
