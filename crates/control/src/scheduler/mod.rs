//! The scheduler (design §9): keeps every service's `desiredCount` placed across the live
//! agents, replaces what failed or was lost with its host, and drives deployments as records.
//!
//! It works from the store alone, every tick: the agents (each on its own lease), the task
//! records and the deployment records. Nothing it decides lives only in memory except the
//! backoff after failures, so a restarted control plane carries on where the last one stopped.
//! Every write is conditional on the revision it read, so an agent's report and the scheduler
//! never overwrite each other.
//!
//! ```text
//! tick ─ agents, tasks ─► lost: tasks on hosts whose lease expired → LOST, instances removed
//!      └─ per service ─► service.rs: failures → backoff and the circuit breaker
//!                        rollout::plan → new task records (placed, or PENDING with why)
//!                                      → tasks to stop (desired STOPPED)
//!                        the deployment record's progress and outcome
//! ```
//!
//! A service is scheduled once an agent has joined (or it has task records already): a
//! control plane without agents, beside `tether up --server` runners, writes nothing.
//!
//! One scheduler must run per store: with several replicas on one etcd, only one of them is
//! started with it (`tether server --no-scheduler` on the others).

mod service;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tether_model::fleet::{Agent, DesiredState, TaskRecord, TaskState};
use tether_model::registry::HealthFilter;
use tether_store::Store;
use tracing::{info, warn};

use crate::Result;
use crate::fleet::{Fleet, now};
use crate::registry::Registry;

pub use service::Backoff;

/// How often the scheduler looks at everything.
const TICK: Duration = Duration::from_millis(250);
/// Ended tasks are kept this long for `tether ps`, then removed.
const KEEP_ENDED: u64 = 300;
/// Ended tasks kept per service at most.
const KEEP_ENDED_PER_SERVICE: usize = 10;
/// Deployments kept per service once ended.
const KEEP_DEPLOYMENTS: usize = 10;

pub struct Scheduler<S> {
    registry: Registry<S>,
    fleet: Fleet<S>,
    backoff: HashMap<(String, String), Backoff>,
    /// Hosts are not declared lost until agents have had a lease's time to come back to a
    /// control plane that just started.
    started: Instant,
    lost_grace: Duration,
}

impl<S: Store> Scheduler<S> {
    /// `lost_grace`: after start, how long to wait for agents before declaring their hosts lost.
    pub fn new(registry: Registry<S>, lost_grace: Duration) -> Self {
        let fleet = Fleet::new(registry.store().clone());
        Self { registry, fleet, backoff: HashMap::new(), started: Instant::now(), lost_grace }
    }

    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failing = false;
        loop {
            match self.tick().await {
                Ok(()) if failing => {
                    info!("the scheduler works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!("the scheduler cannot work: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    pub async fn tick(&mut self) -> Result<()> {
        let agents: BTreeMap<String, Agent> =
            self.fleet.agents().await?.into_iter().map(|a| (a.name.clone(), a)).collect();
        let mut tasks = self.fleet.tasks(None).await?;
        if self.started.elapsed() >= self.lost_grace {
            self.mark_lost(&agents, &mut tasks).await?;
        }
        let mut by_service: BTreeMap<(String, String), Vec<(TaskRecord, i64)>> = BTreeMap::new();
        for (task, revision) in &tasks {
            by_service
                .entry((task.namespace.clone(), task.service.clone()))
                .or_default()
                .push((task.clone(), *revision));
        }
        let all: Vec<TaskRecord> = tasks.into_iter().map(|(t, _)| t).collect();
        let mut seen = Vec::new();
        for namespace in self.registry.list_namespaces().await? {
            let ns = namespace.name;
            let snapshot = self.registry.snapshot(&ns).await?;
            for record in snapshot.services.values() {
                if record.service.task.is_none() {
                    continue;
                }
                let key = (ns.clone(), record.service.name.clone());
                let service_tasks = by_service.remove(&key).unwrap_or_default();
                // Without a fleet (no agent has joined, and the service has never had tasks
                // placed) the namespace is run by something else, such as `tether up
                // --server`: nothing is written for it.
                if agents.is_empty() && service_tasks.is_empty() {
                    continue;
                }
                let backoff = self.backoff.entry(key.clone()).or_default();
                let mut run = service::Run {
                    registry: &self.registry,
                    fleet: &self.fleet,
                    agents: &agents,
                    all_tasks: &all,
                    backoff,
                };
                run.reconcile(record, service_tasks).await?;
                seen.push(key);
            }
        }
        // Tasks of services that are gone: stopped.
        for ((ns, service), tasks) in by_service {
            for (mut task, revision) in tasks {
                if task.desired == DesiredState::Running {
                    info!(namespace = %ns, %service, task = %task.id, "the service is gone; stopping its task");
                    task.desired = DesiredState::Stopped;
                    if task.host.is_none() {
                        task.state = TaskState::Stopped;
                    }
                    self.fleet.put_task(&task, Some(revision)).await?;
                }
            }
        }
        self.backoff.retain(|key, _| seen.contains(key));
        self.collect(&all).await
    }

    /// Tasks whose host's agent is gone: LOST, and their instances out of every proxy.
    async fn mark_lost(
        &self,
        agents: &BTreeMap<String, Agent>,
        tasks: &mut [(TaskRecord, i64)],
    ) -> Result<()> {
        for (task, revision) in tasks.iter_mut() {
            let Some(host) = task.host.clone() else { continue };
            if task.state.ended() || agents.contains_key(&host) {
                continue;
            }
            let mut lost = task.clone();
            lost.state = TaskState::Lost;
            lost.desired = DesiredState::Stopped;
            lost.updated = now();
            lost.reason = Some(format!("host {host} was lost: its agent stopped renewing its lease"));
            if self.fleet.put_task(&lost, Some(*revision)).await? {
                warn!(task = %lost.id, %host, "task lost with its host; replacing it");
                self.forget_instances(&lost).await;
                *task = lost;
                *revision = -1;
            }
        }
        Ok(())
    }

    /// Removes a task's instances (they usually went with their agent's lease already).
    async fn forget_instances(&self, task: &TaskRecord) {
        let Ok(instances) =
            self.registry.list_instances(&task.namespace, &task.service, HealthFilter::All).await
        else {
            return;
        };
        for instance in instances.iter().filter(|i| i.task == task.id) {
            let _ = self.registry.delete_instance(&task.namespace, &task.service, &instance.id).await;
        }
    }

    /// Removes ended tasks after a while (and beyond a few per service), and old deployments.
    async fn collect(&self, tasks: &[TaskRecord]) -> Result<()> {
        let mut ended: BTreeMap<(&str, &str), Vec<&TaskRecord>> = BTreeMap::new();
        for task in tasks.iter().filter(|t| t.state.ended() && t.desired == DesiredState::Stopped) {
            ended.entry((&task.namespace, &task.service)).or_default().push(task);
        }
        let now = now();
        for ((ns, service), mut list) in ended {
            list.sort_by_key(|t| std::cmp::Reverse(t.updated));
            for (i, task) in list.iter().enumerate() {
                if i >= KEEP_ENDED_PER_SERVICE || now.saturating_sub(task.updated) > KEEP_ENDED {
                    self.fleet.delete_task(ns, &task.id).await?;
                }
            }
            self.fleet.prune_deployments(ns, service, KEEP_DEPLOYMENTS).await?;
        }
        Ok(())
    }
}
