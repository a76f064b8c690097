//! The fleet's records (design §9) over the store: agents (one per host, each on its own
//! lease), the tasks the scheduler placed, and deployments. Agents join with a join token
//! ([`join`]) and may then act only for their own host ([`Caller`]).
//!
//! ```text
//! /fleet/agents/{name}                      an agent (JSON), attached to the agent's lease
//! /fleet/tasks/{ns}/{id}                    a task record: its spec, host, desired and last state
//! /fleet/deployments/{ns}/{service}/{id}    a deployment record
//! ```

pub mod join;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_model::fleet::{
    Agent, AgentRegistration, Assignments, DeploymentRecord, DeploymentState, TaskRecord, TaskReport,
    TaskState,
};
use tether_model::registry::check_instance_id;
use tether_store::{Compare, KeyValue, Op, Store, Txn};

use crate::{Error, Result};

pub use join::JoinTokens;

const AGENTS: &str = "/fleet/agents/";
const TASKS: &str = "/fleet/tasks/";
const DEPLOYMENTS: &str = "/fleet/deployments/";
/// Read-modify-write attempts against concurrent writers of one record.
const ATTEMPTS: usize = 16;

/// Who is calling the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: anything.
    Admin,
    /// An agent's join token: its own host's business only.
    Agent(String),
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Clone)]
pub struct Fleet<S> {
    store: S,
}

impl<S: Store> Fleet<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    // ---- agents ------------------------------------------------------------------------------

    /// Joins or renews an agent, attached to the lease it names: it is gone when that lease is.
    pub async fn put_agent(&self, name: &str, registration: AgentRegistration) -> Result<Agent> {
        check_name(name, "name")?;
        for (key, value) in &registration.attributes {
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                return Err(Error::invalid(
                    format!("attributes.{key}"),
                    "attribute names are 1 to 128 characters, values at most 256",
                ));
            }
        }
        let agent = Agent { name: name.to_owned(), registration };
        let txn = Txn {
            when: vec![],
            ops: vec![Op::Put {
                key: format!("{AGENTS}{name}"),
                value: encode(&agent)?,
                lease: Some(agent.registration.lease),
            }],
        };
        self.store.commit(txn).await?;
        Ok(agent)
    }

    /// Every live agent, in name order.
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let listing = self.store.list(AGENTS).await?;
        listing.items.iter().map(decode).collect()
    }

    pub async fn agent(&self, name: &str) -> Result<Option<Agent>> {
        check_name(name, "name")?;
        self.store.get(&format!("{AGENTS}{name}")).await?.map(|kv| decode(&kv)).transpose()
    }

    // ---- tasks -------------------------------------------------------------------------------

    /// Every task record of every namespace (`ns = None`) or of one.
    pub async fn tasks(&self, ns: Option<&str>) -> Result<Vec<(TaskRecord, i64)>> {
        let prefix = match ns {
            Some(ns) => format!("{TASKS}{ns}/"),
            None => TASKS.to_owned(),
        };
        let listing = self.store.list(&prefix).await?;
        listing.items.iter().map(|kv| Ok((decode(kv)?, kv.revision))).collect()
    }

    pub async fn task(&self, ns: &str, id: &str) -> Result<Option<(TaskRecord, i64)>> {
        check_name(id, "id")?;
        let kv = self.store.get(&task_key(ns, id)).await?;
        kv.map(|kv| Ok((decode(&kv)?, kv.revision))).transpose()
    }

    /// Writes `task` if its record is still at `revision` (`None`: if it does not exist yet).
    /// `Ok(false)` when someone else changed it first.
    pub async fn put_task(&self, task: &TaskRecord, revision: Option<i64>) -> Result<bool> {
        let key = task_key(&task.namespace, &task.id);
        let when = match revision {
            Some(revision) => Compare::RevisionIs(key.clone(), revision),
            None => Compare::Absent(key.clone()),
        };
        let txn = Txn { when: vec![when], ops: vec![Op::Put { key, value: encode(task)?, lease: None }] };
        committed(self.store.commit(txn).await)
    }

    pub async fn delete_task(&self, ns: &str, id: &str) -> Result<()> {
        self.store.commit(Txn { when: vec![], ops: vec![Op::Delete { key: task_key(ns, id) }] }).await?;
        Ok(())
    }

    /// What `agent` is to run: its tasks that have not ended, and the namespaces it serves an
    /// edge proxy for (`edges`, worked out by the caller from the specs).
    pub async fn assignments(&self, agent: &str, edges: Vec<String>) -> Result<Assignments> {
        let tasks = self
            .tasks(None)
            .await?
            .into_iter()
            .map(|(task, _)| task)
            .filter(|t| t.host.as_deref() == Some(agent) && !t.state.ended())
            .collect();
        Ok(Assignments { tasks, edges })
    }

    /// An agent's report on one of its tasks. Refused unless the task is placed on that agent.
    pub async fn report(
        &self,
        caller: &Caller,
        ns: &str,
        id: &str,
        report: TaskReport,
    ) -> Result<TaskRecord> {
        if !matches!(
            report.state,
            TaskState::Starting | TaskState::Healthy | TaskState::Stopping | TaskState::Stopped
        ) {
            return Err(Error::invalid("state", "an agent reports STARTING, HEALTHY, STOPPING or STOPPED"));
        }
        for _ in 0..ATTEMPTS {
            let Some((mut task, revision)) = self.task(ns, id).await? else {
                return Err(Error::TaskNotFound { namespace: ns.to_owned(), id: id.to_owned() });
            };
            authorize_host(caller, &task, "report on")?;
            if task.state.ended() {
                // Lost while its host was away: the record stays as the scheduler left it.
                return Ok(task);
            }
            if task.state != report.state {
                task.updated = now();
            }
            task.state = report.state;
            if report.state == TaskState::Stopped {
                task.failed = report.reason.is_some();
                task.reason = report.reason.clone();
            }
            if self.put_task(&task, Some(revision)).await? {
                return Ok(task);
            }
        }
        Err(Error::Contended(format!("task {id} kept changing; try again")))
    }

    /// Whether `caller` may act for task `id` of `service` (register its instances, get its
    /// sidecar's bootstrap token): the admin may; an agent only for a task placed on its host.
    pub async fn authorize_task(&self, caller: &Caller, ns: &str, service: &str, id: &str) -> Result<()> {
        let Caller::Agent(agent) = caller else { return Ok(()) };
        match self.task(ns, id).await {
            Ok(Some((task, _))) if task.service == service && !task.state.ended() => {
                authorize_host(caller, &task, "act for")
            }
            Ok(_) | Err(Error::Invalid(_)) => Err(Error::Forbidden(format!(
                "agent {agent} may act only for tasks placed on it, and task `{id}` of service `{service}` in namespace `{ns}` is not"
            ))),
            Err(e) => Err(e),
        }
    }

    // ---- deployments ---------------------------------------------------------------------------

    /// Every deployment of `ns`, of one service or all, oldest first.
    pub async fn deployments(&self, ns: &str, service: Option<&str>) -> Result<Vec<(DeploymentRecord, i64)>> {
        let prefix = match service {
            Some(service) => format!("{DEPLOYMENTS}{ns}/{service}/"),
            None => format!("{DEPLOYMENTS}{ns}/"),
        };
        let listing = self.store.list(&prefix).await?;
        let mut all: Vec<(DeploymentRecord, i64)> =
            listing.items.iter().map(|kv| Ok((decode(kv)?, kv.revision))).collect::<Result<_>>()?;
        all.sort_by(|a, b| (a.0.created, &a.0.id).cmp(&(b.0.created, &b.0.id)));
        Ok(all)
    }

    /// The deployment of `service` still in progress, if any.
    pub async fn active_deployment(
        &self,
        ns: &str,
        service: &str,
    ) -> Result<Option<(DeploymentRecord, i64)>> {
        Ok(self
            .deployments(ns, Some(service))
            .await?
            .into_iter()
            .rev()
            .find(|(d, _)| d.state == DeploymentState::InProgress))
    }

    /// Writes `deployment` if it is still at `revision` (`None`: new). `Ok(false)` on a conflict.
    pub async fn put_deployment(&self, deployment: &DeploymentRecord, revision: Option<i64>) -> Result<bool> {
        let key = format!("{DEPLOYMENTS}{}/{}/{}", deployment.namespace, deployment.service, deployment.id);
        let when = match revision {
            Some(revision) => Compare::RevisionIs(key.clone(), revision),
            None => Compare::Absent(key.clone()),
        };
        let txn =
            Txn { when: vec![when], ops: vec![Op::Put { key, value: encode(deployment)?, lease: None }] };
        committed(self.store.commit(txn).await)
    }

    /// Keeps the newest `keep` ended deployments of a service and deletes older ones.
    pub async fn prune_deployments(&self, ns: &str, service: &str, keep: usize) -> Result<()> {
        let ended: Vec<DeploymentRecord> = self
            .deployments(ns, Some(service))
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| d.state != DeploymentState::InProgress)
            .collect();
        let ops: Vec<Op> = ended
            .iter()
            .take(ended.len().saturating_sub(keep))
            .map(|d| Op::Delete { key: format!("{DEPLOYMENTS}{ns}/{service}/{}", d.id) })
            .collect();
        if !ops.is_empty() {
            self.store.commit(Txn { when: vec![], ops }).await?;
        }
        Ok(())
    }
}

fn authorize_host(caller: &Caller, task: &TaskRecord, what: &str) -> Result<()> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Agent(agent) if task.host.as_deref() == Some(agent.as_str()) => Ok(()),
        Caller::Agent(agent) => Err(Error::Forbidden(format!(
            "agent {agent} may not {what} task `{}`: it is placed on {}",
            task.id,
            task.host.as_deref().unwrap_or("no host")
        ))),
    }
}

fn task_key(ns: &str, id: &str) -> String {
    format!("{TASKS}{ns}/{id}")
}

fn check_name(name: &str, field: &str) -> Result<()> {
    check_instance_id(name).map_err(|m| Error::invalid(field, m))
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Store(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| Error::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}

fn committed(result: tether_store::Result<i64>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(tether_store::Error::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
