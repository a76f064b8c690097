//! A service's spec (design §3): what one entry under `services:` in `tether.yaml` says, and what
//! `PUT /v1/namespaces/{ns}/services/{name}` takes. Field names are ECS's, in camelCase.
//!
//! [`ServiceSpec`] is the shape as written (every optional field stays optional, so it serializes
//! back to what the user wrote); [`ServiceSpec::validate`] checks it as a whole and returns the
//! effective [`Service`], defaults filled in. Rules that span services (every discovery name and
//! every `dnsName:port` unique in the namespace) are in [`namespace_conflicts`]. Nothing here knows
//! about files or HTTP: errors carry a field path relative to the spec, which callers prefix and
//! place (see [`FieldErrors::locate`]). The whole file, with the rules between its services, is
//! [`App`] (in `file.rs`); what one task runs is [`TaskDefinition`] (in `task.rs`).

mod file;
mod task;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::placement::Placement;
use crate::{AppProtocol, ConfigErrors, RetryPolicy, Source, Timeouts};

pub use file::{App, AppSpec, ExternalServiceSpec};
pub use task::{
    DeploymentPolicy, HealthCheckPolicy, HealthCommand, KeyValuePair, NetworkMode, NetworkModeSpec,
    PublishPort, TaskDefinition,
};
pub use validate::namespace_conflicts;

/// One service as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The program and its arguments that one task runs, e.g. `["python3", "payment.py"]`.
    /// Absent for a service whose instances are registered by something else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables of the command, ECS's shape: `[{ name: LOG_LEVEL, value: debug }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValuePair>,
    /// Where the command runs, relative to the spec file's directory. Default: that directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// The files the command runs among, as `sha256:<64 hex>` of a bundle the control plane
    /// holds (`PUT /v1/bundles/{digest}`); `tether deploy --server` packs the spec file's folder
    /// and sets it. Tasks run in the bundle unpacked on their host, and a relative
    /// `workingDirectory` is within it. Absent: files are where `workingDirectory` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// `awsvpc` (the default: each task in its own network sandbox) or `host` (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<NetworkModeSpec>,
    /// CPU units one task reserves on its host, 1024 to a vCPU, 128 to 196608 (ECS's bounds).
    /// Default: none reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// MiB of memory one task reserves on its host, also its hard limit, 6 to 4194304 (ECS's
    /// bounds). Default: none reserved, and no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// How many tasks to keep running. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_count: Option<u32>,
    /// How a host is chosen among those that may take a task: at most 5 of ECS's strategies,
    /// applied in order, e.g. `[{ type: spread, field: attribute:zone }, { type: binpack,
    /// field: memory }]`. Default: spread by host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_strategy: Vec<PlacementStrategySpec>,
    /// Which hosts may take a task: at most 10 of ECS's `{ type: distinctInstance }` and
    /// `{ type: memberOf, expression: "attribute:zone in [a, b]" }`. Default: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraintSpec>,
    /// The ports the app listens on, each with a name the rest of the spec refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// For this long after a task starts, failed health checks do not replace it. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfiguration>,
    /// Ports reachable from the host, load-balanced across the tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_connect_configuration: Option<ServiceConnectConfiguration>,
    /// The services whose tasks may call this one (tether's addition, design §8), checked at
    /// this service's sidecars against the caller's certificate, so only ports with TLS on can
    /// enforce it. Absent: every service of the namespace. A service's own tasks are callers
    /// like any other, and the namespace's edge proxy may always call the ports in `publish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<String>>,
    /// How callers retry requests to this service (tether's addition). Default: the proxy's
    /// defaults (2 retries on 503, within a budget of 20% + 10/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicySpec>,
    /// Fixed `IP:port` endpoints of a service outside the mesh, which runs no tasks (the form
    /// `externalServices` entries take).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// `portMappings[]`: a port the app listens on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// The name `serviceConnectConfiguration.services[].portName` and `publish[].portName` use.
    pub name: String,
    pub container_port: u16,
    /// What the port speaks; absent means raw tcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
}

/// `placementStrategy[]`: ECS's shape, e.g. `{ type: binpack, field: memory }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementStrategySpec {
    /// `spread` (the same number of tasks on every host, or for every value of an attribute),
    /// `binpack` (fill the host with the least free first) or `random`.
    #[serde(rename = "type")]
    pub kind: String,
    /// spread: `host` (or ECS's `instanceId`) or `attribute:NAME`; binpack: `memory` or `cpu`;
    /// random: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `placementConstraints[]`: ECS's shape, e.g. `{ type: memberOf, expression: "attribute:gpu exists" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementConstraintSpec {
    /// `distinctInstance` (each task on a host without another task of the service) or
    /// `memberOf` (only hosts the expression selects).
    #[serde(rename = "type")]
    pub kind: String,
    /// memberOf's condition on host attributes: `attribute:NAME` with `==`, `!=`, `in [a, b]`,
    /// `not_in [a, b]`, `exists` or `!exists`, combined with `and`, `or` and parentheses.
    /// distinctInstance takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// ECS's container health check: `["CMD", prog, args…]` or `["CMD-SHELL", "a shell line"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub command: Vec<String>,
    /// Seconds between checks, 1 to 300 (ECS: from 5). Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// Seconds a check may take, 1 to 60 (ECS: from 2). Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// Failures in a row that make a task unhealthy, 1 to 10. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds after start during which failures do not count, 0 to 300. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u32>,
}

/// Bounds of a rolling deployment, in percent of `desiredCount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentConfiguration {
    /// Healthy tasks kept during a deployment, 0 to 100. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_healthy_percent: Option<u32>,
    /// Tasks allowed at once during a deployment, 100 to 200. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_circuit_breaker: Option<DeploymentCircuitBreaker>,
}

/// Stop (and optionally roll back) a deployment whose tasks keep failing. Default: both on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentCircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

/// `publish[]`: a port reachable from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Publish {
    pub port_name: String,
    pub host_port: u16,
}

/// Service Connect's block, as in ECS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConnectConfiguration {
    /// Whether the service's tasks get a sidecar (and may call other services).
    pub enabled: bool,
    /// The namespace; when given it must be the one the service is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The endpoints this service publishes; none for a client-only service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConnectService>,
    /// Accepted so ECS blocks can be brought as they are; tether keeps task logs itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_configuration: Option<AccessLogConfiguration>,
}

/// `serviceConnectConfiguration.services[]`: one published endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConnectService {
    /// The port mapping this entry publishes.
    pub port_name: String,
    /// The name the endpoint is registered under. Default `portName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_name: Option<String>,
    /// The names and ports callers use. tether allows more than Service Connect's one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_aliases: Vec<ClientAlias>,
    /// The port the sidecar's inbound listener uses instead of the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_port_override: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    /// Mutual TLS between sidecars on this port. Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// `services[].tls`: Service Connect's TLS block. tether's certificate authority is built in, so
/// only `enabled` means something; ECS's fields that name an AWS CA, key or role are read only
/// to say so, where they were written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_certificate_authority: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<serde_json::Value>,
}

/// A name and port callers use to reach a published endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAlias {
    pub port: u16,
    /// Default `discoveryName.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
}

/// Service Connect's timeouts, plus tether's connect timeout; `0` disables the first two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutSpec {
    /// Default 300 s for http, http2 and grpc; 3600 s for tcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<f64>,
    /// Default 15 s; an error on a tcp port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request_timeout_seconds: Option<f64>,
    /// Default 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<f64>,
}

/// ECS's log configuration shape (accepted, not acted on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_options: Vec<SecretOption>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretOption {
    pub name: String,
    pub value_from: String,
}

/// Service Connect's access log settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogConfiguration {
    pub format: AccessLogFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_query_parameters: Option<Toggle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Toggle {
    Enabled,
    Disabled,
}

/// The retry policy as written; see [`RetryPolicy`] for the meaning and defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_min_per_second: Option<u32>,
}

// ---- the effective service -------------------------------------------------------------------

/// A validated service with every default filled in: what the registry, the proxy stream and
/// the runner work from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Tasks to keep running; 0 for an external service.
    pub desired_count: u32,
    /// The port mappings, in order, each with its protocol filled in.
    pub ports: Vec<Port>,
    /// Whether tasks get a sidecar and may call other services (`serviceConnectConfiguration.enabled`).
    pub service_connect: bool,
    /// The published endpoints, in the order of `serviceConnectConfiguration.services`; empty
    /// when Service Connect is off or the service is a client only.
    pub discovery: Vec<Discovery>,
    pub retry_policy: RetryPolicy,
    /// What one task runs; None for a service whose instances something else registers (no
    /// command) or an external service.
    pub task: Option<TaskDefinition>,
    /// Ports reachable from the host, load-balanced across the tasks.
    pub publish: Vec<PublishPort>,
    /// Fixed endpoints of an external service (always treated as healthy).
    pub external_endpoints: Vec<std::net::SocketAddr>,
    /// The only services whose sidecars may call this one's TLS ports (`allowFrom`, in the order
    /// written; the edge proxy may also call published ports); None: every service of the
    /// namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<String>>,
    /// Where the scheduler places the tasks (`placementStrategy`, `placementConstraints`).
    pub placement: Placement,
}

/// A port mapping with its protocol filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub name: String,
    pub container_port: u16,
    pub app_protocol: AppProtocol,
    /// Whether sidecars call this port over mutual TLS: yes unless its `services[]` entry turns
    /// TLS off, so also for a port only published or with no entry at all; never for an
    /// external service, whose endpoints have no sidecar.
    pub tls: bool,
}

/// One published endpoint, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    pub port_name: String,
    pub discovery_name: String,
    pub container_port: u16,
    pub app_protocol: AppProtocol,
    /// In the order written; every entry has its `dnsName` filled in.
    pub client_aliases: Vec<Alias>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_port_override: Option<u16>,
    pub timeout: Timeouts,
}

/// A client alias with its default applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alias {
    pub dns_name: String,
    pub port: u16,
}

impl Service {
    /// The published endpoint of the port mapping `port_name`, if it is published.
    pub fn discovery_for_port(&self, port_name: &str) -> Option<&Discovery> {
        self.discovery.iter().find(|d| d.port_name == port_name)
    }

    /// The port mapping called `name`.
    pub fn port(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.name == name)
    }
}

// ---- errors ----------------------------------------------------------------------------------

/// One thing wrong with an input, found without knowing where the input came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field, as a path relative to the input (`serviceConnectConfiguration.services[0].portName`);
    /// empty for the input as a whole.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error with its path placed under `prefix` (`services.payment`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }
}

/// Every error found in an input; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// Places every error in a file: `prefix` is where the validated input sits in the document.
    pub fn locate(self, source: &Source, prefix: &str) -> ConfigErrors {
        ConfigErrors(
            self.0.into_iter().map(|e| source.error(join_path(prefix, &e.field), e.message)).collect(),
        )
    }
}

fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
mod placement_tests;
#[cfg(test)]
mod tests;
