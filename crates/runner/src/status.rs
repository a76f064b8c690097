//! What a namespace's services are doing, for people (`tether up`'s progress, `tether ps`,
//! `tether deploy`) and scripts: the control plane's task and deployment records, per service.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tether_model::fleet::{self, DeploymentRecord, DesiredState, TaskRecord};

use crate::client::ServiceEntry;
use crate::version::Version;
use crate::{ApiError, ControlClient};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub services: BTreeMap<String, ServiceStatus>,
}

impl Status {
    /// Whether every service runs its desired count of healthy tasks of its latest version.
    pub fn settled(&self) -> bool {
        self.services.values().all(ServiceStatus::settled)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub desired: u32,
    /// The control plane's revision of the spec the service is moving to.
    pub revision: u64,
    pub tasks: Vec<TaskStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentStatus>,
    /// Tasks that failed and were replaced.
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl ServiceStatus {
    pub fn healthy(&self) -> usize {
        self.tasks.iter().filter(|t| t.state == TaskState::Healthy && t.revision == self.revision).count()
    }

    pub fn settled(&self) -> bool {
        self.healthy() == self.desired as usize
            && self.tasks.len() == self.desired as usize
            && !self.deployment.as_ref().is_some_and(|d| d.state == DeploymentState::InProgress)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub id: String,
    pub revision: u64,
    pub state: TaskState,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Starting,
    Healthy,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    pub from_revision: u64,
    pub to_revision: u64,
    pub state: DeploymentState,
    /// What happened, for people: progress, or why it was rolled back.
    pub message: String,
}

/// A deployment's state is its record's.
pub use tether_model::fleet::DeploymentState;

impl Status {
    /// A namespace's services as the control plane's records say: every service that runs tasks
    /// (with its current spec), the tasks that have not ended, the latest deployment, and the
    /// failures still on record.
    pub fn from_records(
        ns: &str,
        services: &[ServiceEntry],
        tasks: &[TaskRecord],
        deployments: &[DeploymentRecord],
    ) -> Self {
        let mut status = Status::default();
        for entry in services {
            let Some(version) = Version::new(&entry.name, ns, entry.spec.clone()) else {
                continue;
            };
            let of_service = || tasks.iter().filter(|t| t.service == entry.name);
            let mut failed: Vec<&TaskRecord> = of_service().filter(|t| t.failed).collect();
            failed.sort_by_key(|t| t.updated);
            let service = ServiceStatus {
                desired: version.desired_count(),
                revision: entry.revision,
                tasks: of_service()
                    .filter(|t| !t.state.ended())
                    .map(|t| TaskStatus {
                        id: t.id.clone(),
                        // A task of the same version counts as the current revision's.
                        revision: if t.fingerprint == version.fingerprint {
                            entry.revision
                        } else {
                            t.revision
                        },
                        state: match (t.desired, t.state) {
                            (DesiredState::Stopped, _) | (_, fleet::TaskState::Stopping) => {
                                TaskState::Stopping
                            }
                            (_, fleet::TaskState::Healthy) => TaskState::Healthy,
                            _ => TaskState::Starting,
                        },
                        started: t.created,
                    })
                    .collect(),
                deployment: deployments.iter().rfind(|d| d.service == entry.name).map(DeploymentStatus::from),
                failures: failed.len() as u32,
                last_failure: failed
                    .last()
                    .map(|t| format!("{}: {}", t.id, t.reason.as_deref().unwrap_or("it failed"))),
            };
            status.services.insert(entry.name.clone(), service);
        }
        status
    }

    /// [`Status::from_records`] of namespace `ns`, read from the control plane.
    pub async fn read(client: &ControlClient, ns: &str) -> Result<Self, ApiError> {
        let services = client.services(ns).await?;
        let tasks = client.tasks(ns).await?;
        let deployments = client.deployments(ns, None).await?;
        Ok(Self::from_records(ns, &services, &tasks, &deployments))
    }
}

impl From<&DeploymentRecord> for DeploymentStatus {
    fn from(d: &DeploymentRecord) -> Self {
        Self {
            from_revision: d.from_revision,
            to_revision: d.to_revision,
            state: d.state,
            message: d.message.clone(),
        }
    }
}
