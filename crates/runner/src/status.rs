//! What the runner is doing, for people (`tether up`'s progress, `tether ps`) and scripts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// The same states as a fleet's deployment records (a single-host runner never supersedes).
pub use tether_model::fleet::DeploymentState;
