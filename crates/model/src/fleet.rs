//! The fleet (design §9): hosts that joined the control plane (agents), the tasks the scheduler
//! placed on them, and deployments as records. These are the shapes the control plane stores
//! and serves, and that agents and the CLI read.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::placement::Resources;
use crate::spec::ServiceSpec;

pub mod logs;

/// What an agent says of its host when it joins or renews (`PUT /v1/agents/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRegistration {
    /// The address other hosts reach this host's sidecars on.
    pub address: IpAddr,
    /// `zone=a` and the like, for placement strategies and constraints.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// What the host offers to tasks.
    #[serde(default)]
    pub capacity: Resources,
    /// The lease the agent renews; the agent (and so its host) is gone when it expires.
    pub lease: i64,
    /// The port, on `address`, where the agent serves its tasks' logs to the control plane
    /// (see [`logs`]). Absent in the records of agents that serve none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_port: Option<u16>,
}

/// An agent as the control plane holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub name: String,
    #[serde(flatten)]
    pub registration: AgentRegistration,
}

/// Where a task is in its life, as the scheduler and its agent see it. ECS's last statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// No host can take it yet; `reason` says which constraint or resource is short.
    Pending,
    /// Placed on a host whose agent has not started it yet.
    Provisioning,
    /// Its sandbox, sidecar and app are starting; its check has not passed yet.
    Starting,
    /// Its health check passes: it serves traffic.
    Healthy,
    /// Stopping: draining, then its processes end.
    Stopping,
    /// Ended: on request, or because it failed (`reason`).
    Stopped,
    /// Its host was lost (the agent's lease expired) while it ran; replaced elsewhere.
    Lost,
}

impl TaskState {
    /// Whether the task is over: nothing of it runs (as far as the control plane knows).
    pub fn ended(self) -> bool {
        matches!(self, Self::Stopped | Self::Lost)
    }
}

/// Whether the scheduler wants a task to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredState {
    Running,
    Stopped,
}

/// One task of a service, placed (or waiting to be) by the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    pub namespace: String,
    pub service: String,
    /// The control plane's revision of the spec the task runs.
    pub revision: u64,
    /// The spec it runs, as it was at `revision`: an agent needs nothing else to start it.
    pub spec: ServiceSpec,
    /// What distinguishes one task version from another (see the scheduler).
    pub fingerprint: String,
    /// The host it is placed on; `None` while PENDING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What it reserves on its host.
    #[serde(default)]
    pub reserved: Resources,
    pub desired: DesiredState,
    pub state: TaskState,
    /// Why it is pending, why it stopped or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// When `state` last changed, seconds since the Unix epoch.
    pub updated: u64,
    /// Whether it ended because it failed (counted by backoff and the circuit breaker).
    #[serde(default)]
    pub failed: bool,
}

/// What an agent reports of one of its tasks (`PUT /v1/namespaces/{ns}/tasks/{id}/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskReport {
    /// STARTING, HEALTHY, STOPPING or STOPPED.
    pub state: TaskState,
    /// With STOPPED: why, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an agent should run (`GET /v1/agents/{name}/assignments`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    /// Every task placed on the host that has not ended, with what the scheduler wants of it.
    pub tasks: Vec<TaskRecord>,
    /// Namespaces with published ports: the host serves them with an edge proxy.
    pub edges: Vec<String>,
}

/// How a deployment ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    InProgress,
    Completed,
    /// Its tasks kept failing and the previous version was restored.
    RolledBack,
    /// Its tasks kept failing and it was stopped where it was.
    Failed,
    /// A newer deployment of the service took over before it ended.
    Superseded,
}

/// One deployment of a service: from one task version to another, driven by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub id: String,
    pub namespace: String,
    pub service: String,
    /// The revision it moves from (0: the service's first tasks).
    pub from_revision: u64,
    pub to_revision: u64,
    /// The spec it rolls out, and its task fingerprint.
    pub spec: ServiceSpec,
    pub fingerprint: String,
    /// The spec to go back to when its tasks keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_spec: Option<ServiceSpec>,
    pub state: DeploymentState,
    /// Progress or outcome, for people.
    pub message: String,
    /// Tasks of the new version that failed.
    pub failed_tasks: u32,
    pub desired: u32,
    /// Healthy tasks of the new version, as last seen.
    pub healthy: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub updated: u64,
}
