//! What one task of a service runs (design §7): the command, its environment and sandbox, its
//! health check and how new versions roll out; what it reserves on its host and where it may be
//! placed (design §9). The shapes as written are ECS's; the effective [`TaskDefinition`] is what
//! the runner works from, the effective [`Placement`] what the scheduler does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::validate::Checker;
use super::{
    DeploymentConfiguration, HealthCheck, PlacementConstraintSpec, PlacementStrategySpec, ServiceSpec,
};
use crate::placement::{Constraint, Expression, Placement, Resources, Strategy};

/// ECS's health check defaults.
const HEALTH_INTERVAL: u32 = 30;
const HEALTH_TIMEOUT: u32 = 5;
const HEALTH_RETRIES: u32 = 3;

/// ECS's bounds on a task's `cpu` (units, 1024 to a vCPU) and `memory` (MiB).
const CPU_RANGE: (u32, u32) = (128, 196_608);
const MEMORY_RANGE: (u32, u32) = (6, 4_194_304);
/// ECS's limits on the number of placement strategies and constraints.
const MAX_STRATEGIES: usize = 5;
const MAX_CONSTRAINTS: usize = 10;

/// `environment[]`: one variable, ECS's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValuePair {
    pub name: String,
    pub value: String,
}

/// `networkMode` as written: ECS's values, of which tether runs two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkModeSpec {
    /// Each task in its own network namespace (tether's sandbox). The default.
    Awsvpc,
    /// No network namespace: the task shares the host's.
    Host,
    /// Accepted by the parser only to say that tether does not support it.
    Bridge,
    /// Accepted by the parser only to say that tether does not support it.
    None,
}

impl<'de> Deserialize<'de> for NetworkModeSpec {
    /// ECS's other values are read (and refused by validation, with a reason and a position);
    /// anything else is an unknown value, and only the supported ones are suggested.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "awsvpc" => Ok(Self::Awsvpc),
            "host" => Ok(Self::Host),
            "bridge" => Ok(Self::Bridge),
            "none" => Ok(Self::None),
            other => Err(de::Error::unknown_variant(other, &["awsvpc", "host"])),
        }
    }
}

// ---- the effective task ----------------------------------------------------------------------

/// What one task of a service runs, every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// The program and its arguments; never empty.
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// As written: relative to the spec file's directory (the runner resolves it), or absolute.
    pub working_directory: Option<String>,
    /// The bundle the task's files come from (`sha256:<64 hex>`), when they are shipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    pub network_mode: NetworkMode,
    pub health_check: Option<HealthCheckPolicy>,
    /// Unhealthy results do not replace a task for this long after it starts.
    #[serde(serialize_with = "as_seconds")]
    pub grace_period: Duration,
    pub deployment: DeploymentPolicy,
    /// What the task reserves on its host (`cpu`, `memory`); its memory is also the hard limit
    /// the runner holds it to. Zero: nothing reserved, no limit.
    pub resources: Resources,
}

/// Where a task's processes live on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NetworkMode {
    /// Its own network namespace with loopback only; out only through its sidecar (`awsvpc`).
    Sandbox,
    /// The host's network namespace (`host`).
    Host,
}

/// A health check with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckPolicy {
    pub command: HealthCommand,
    #[serde(serialize_with = "as_seconds")]
    pub interval: Duration,
    #[serde(serialize_with = "as_seconds")]
    pub timeout: Duration,
    /// Failures in a row that make a task unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    #[serde(serialize_with = "as_seconds")]
    pub start_period: Duration,
}

/// How a health check runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HealthCommand {
    /// `["CMD", prog, args…]`: the program and its arguments, run directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "line"]`: a line run by `/bin/sh -c`.
    Shell(String),
}

/// Bounds and safety net of a rolling deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPolicy {
    /// Healthy tasks kept during a deployment, in percent of `desiredCount`. Default 100.
    pub minimum_healthy_percent: u32,
    /// Tasks allowed at once during a deployment, in percent of `desiredCount`. Default 200.
    pub maximum_percent: u32,
    /// Stop a deployment whose new tasks keep failing. Default on.
    pub circuit_breaker: bool,
    /// Go back to the previous version when the circuit breaker stops a deployment. Default on.
    pub rollback: bool,
}

impl Default for DeploymentPolicy {
    fn default() -> Self {
        Self { minimum_healthy_percent: 100, maximum_percent: 200, circuit_breaker: true, rollback: true }
    }
}

/// A port published on the host, load-balanced across the service's tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishPort {
    pub port_name: String,
    pub host_port: u16,
    pub container_port: u16,
    pub app_protocol: crate::AppProtocol,
}

/// Durations read back as the seconds people wrote.
fn as_seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

// ---- checks ----------------------------------------------------------------------------------

impl Checker<'_> {
    /// The task of a service with a command; checks the task's fields either way.
    pub(super) fn task(&mut self, spec: &ServiceSpec) -> Option<TaskDefinition> {
        if spec.command.first().is_some_and(|program| program.trim().is_empty()) {
            self.fail("command[0]", "the program is empty; expected e.g. `[\"python3\", \"app.py\"]`");
        }
        let environment = self.environment(&spec.environment);
        if let Some(dir) = &spec.working_directory
            && (dir.trim().is_empty() || dir.contains('\0'))
        {
            self.fail(
                "workingDirectory",
                "must be a directory, e.g. `services/payment` (relative to the spec file's directory); remove it to run in that directory",
            );
        }
        if let Some(bundle) = &spec.bundle
            && crate::bundle::bundle_hex(bundle).is_none()
        {
            self.fail(
                "bundle",
                "expected `sha256:` and 64 lowercase hex digits, the digest of a bundle `tether deploy --server` uploaded",
            );
        }
        let network_mode = self.network_mode(spec.network_mode);
        let health_check = spec.health_check.as_ref().map(|check| self.health_check(check));
        let deployment = match &spec.deployment_configuration {
            Some(d) => self.deployment(d),
            None => DeploymentPolicy::default(),
        };
        let resources = self.resources(spec);
        (!spec.command.is_empty() && spec.endpoints.is_empty()).then(|| TaskDefinition {
            command: spec.command.clone(),
            environment,
            working_directory: spec.working_directory.clone(),
            bundle: spec.bundle.clone(),
            network_mode,
            health_check,
            grace_period: Duration::from_secs(spec.health_check_grace_period_seconds.unwrap_or(0).into()),
            deployment,
            resources,
        })
    }

    /// The endpoints of an external service, and the fields such a service cannot have.
    pub(super) fn external_endpoints(&mut self, spec: &ServiceSpec) -> Vec<SocketAddr> {
        if spec.endpoints.is_empty() {
            return Vec::new();
        }
        let runs_tasks = [
            ("command", !spec.command.is_empty()),
            ("desiredCount", spec.desired_count.is_some()),
            ("healthCheck", spec.health_check.is_some()),
            ("healthCheckGracePeriodSeconds", spec.health_check_grace_period_seconds.is_some()),
            ("deploymentConfiguration", spec.deployment_configuration.is_some()),
            ("environment", !spec.environment.is_empty()),
            ("workingDirectory", spec.working_directory.is_some()),
            ("bundle", spec.bundle.is_some()),
            ("networkMode", spec.network_mode.is_some()),
            ("allowFrom", spec.allow_from.is_some()),
            ("cpu", spec.cpu.is_some()),
            ("memory", spec.memory.is_some()),
            ("placementStrategy", !spec.placement_strategy.is_empty()),
            ("placementConstraints", !spec.placement_constraints.is_empty()),
        ];
        for (field, _) in runs_tasks.into_iter().filter(|(_, written)| *written) {
            self.fail(
                field,
                format!(
                    "a service with `endpoints` is outside the mesh and runs no tasks, so `{field}` has no meaning: remove `{field}`, or remove `endpoints` to run tasks"
                ),
            );
        }
        let entries = spec.service_connect_configuration.iter().flat_map(|sc| sc.services.iter().enumerate());
        for (i, _) in entries.filter(|(_, entry)| entry.tls.is_some()) {
            self.fail(
                format!("serviceConnectConfiguration.services[{i}].tls"),
                "a service with `endpoints` is outside the mesh: its endpoints have no sidecar to speak mutual TLS with, so `tls` has no meaning; remove it",
            );
        }
        let mut seen = HashMap::new();
        let mut addresses = Vec::with_capacity(spec.endpoints.len());
        for (i, text) in spec.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            match endpoint(text) {
                Err(message) => self.fail(field, message),
                Ok(addr) => {
                    if let Some(first) = seen.insert(addr, i) {
                        self.fail(
                            field,
                            format!("`{addr}` is also endpoints[{first}]; list each endpoint once"),
                        );
                    } else {
                        addresses.push(addr);
                    }
                }
            }
        }
        addresses
    }

    fn environment(&mut self, vars: &[super::KeyValuePair]) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        let mut first_of = HashMap::new();
        for (i, var) in vars.iter().enumerate() {
            if var.name.is_empty() || var.name.contains(['=', '\0']) {
                self.fail(
                    format!("environment[{i}].name"),
                    format!(
                        "`{}` is not a variable name; expected a name without `=`, e.g. `LOG_LEVEL`",
                        var.name
                    ),
                );
            } else if let Some(first) = first_of.insert(var.name.as_str(), i) {
                self.fail(
                    format!("environment[{i}].name"),
                    format!("`{}` is also environment[{first}]'s name; set each variable once", var.name),
                );
            }
            if var.value.contains('\0') {
                self.fail(
                    format!("environment[{i}].value"),
                    "holds a NUL character, which no environment can carry",
                );
            }
            environment.entry(var.name.clone()).or_insert_with(|| var.value.clone());
        }
        environment
    }

    fn network_mode(&mut self, mode: Option<NetworkModeSpec>) -> NetworkMode {
        match mode {
            None | Some(NetworkModeSpec::Awsvpc) => NetworkMode::Sandbox,
            Some(NetworkModeSpec::Host) => NetworkMode::Host,
            Some(unsupported @ (NetworkModeSpec::Bridge | NetworkModeSpec::None)) => {
                let written = if unsupported == NetworkModeSpec::Bridge { "bridge" } else { "none" };
                self.fail(
                    "networkMode",
                    format!(
                        "`{written}` is not supported; tether supports `awsvpc` (the default: each task in its own network sandbox, reached through its sidecar) and `host` (no network namespace)"
                    ),
                );
                NetworkMode::Sandbox
            }
        }
    }

    fn health_check(&mut self, check: &HealthCheck) -> HealthCheckPolicy {
        const FORMS: &str = "`[\"CMD-SHELL\", \"curl -f http://localhost/health\"]` (a shell line) or `[\"CMD\", \"/bin/check\", \"--quick\"]` (a program and its arguments)";
        let command = match check.command.split_first() {
            None => {
                self.fail("healthCheck.command", format!("is empty; expected {FORMS}"));
                HealthCommand::Exec(Vec::new())
            }
            Some((kind, rest)) if kind == "CMD" => {
                if rest.is_empty() {
                    self.fail(
                        "healthCheck.command",
                        format!(
                            "`CMD` must be followed by the program to run and its arguments; expected {FORMS}"
                        ),
                    );
                }
                HealthCommand::Exec(rest.to_vec())
            }
            Some((kind, rest)) if kind == "CMD-SHELL" => {
                match rest {
                    [line] => HealthCommand::Shell(line.clone()),
                    _ => {
                        self.fail(
                        "healthCheck.command",
                        format!("`CMD-SHELL` must be followed by exactly one shell command line; expected {FORMS}"),
                    );
                        HealthCommand::Shell(rest.join(" "))
                    }
                }
            }
            Some((other, _)) => {
                self.fail(
                    "healthCheck.command[0]",
                    format!("`{other}` is not a kind of check; expected `CMD` or `CMD-SHELL`, as in {FORMS}"),
                );
                HealthCommand::Exec(Vec::new())
            }
        };
        // tether allows faster checks than ECS (interval from 5 s, timeout from 2 s): on one
        // machine a check is cheap, and a quick check gets new tasks traffic sooner.
        let interval = self.bounded(
            "healthCheck.interval",
            check.interval,
            HEALTH_INTERVAL,
            1,
            300,
            "seconds between checks (tether allows from 1; ECS from 5)",
        );
        let timeout = self.bounded(
            "healthCheck.timeout",
            check.timeout,
            HEALTH_TIMEOUT,
            1,
            60,
            "seconds a check may take (tether allows from 1; ECS from 2)",
        );
        let retries = self.bounded(
            "healthCheck.retries",
            check.retries,
            HEALTH_RETRIES,
            1,
            10,
            "failed checks in a row before a task is unhealthy",
        );
        let start_period = self.bounded(
            "healthCheck.startPeriod",
            check.start_period,
            0,
            0,
            300,
            "seconds after start during which failures do not count",
        );
        HealthCheckPolicy {
            command,
            interval: Duration::from_secs(interval.into()),
            timeout: Duration::from_secs(timeout.into()),
            retries,
            start_period: Duration::from_secs(start_period.into()),
        }
    }

    fn deployment(&mut self, d: &DeploymentConfiguration) -> DeploymentPolicy {
        let at = "deploymentConfiguration";
        let default = DeploymentPolicy::default();
        let min = self.bounded(
            &format!("{at}.minimumHealthyPercent"),
            d.minimum_healthy_percent,
            default.minimum_healthy_percent,
            0,
            100,
            "percent of desiredCount kept healthy during a deployment",
        );
        let max = self.bounded(
            &format!("{at}.maximumPercent"),
            d.maximum_percent,
            default.maximum_percent,
            100,
            200,
            "percent of desiredCount running at once during a deployment",
        );
        if max <= 100 && min >= 100 {
            self.fail(
                format!("{at}.maximumPercent"),
                format!(
                    "with maximumPercent {max} and minimumHealthyPercent {min} a rolling deployment cannot make progress: it may neither start an extra task nor stop an old one; raise maximumPercent above 100 (e.g. 200) or lower minimumHealthyPercent below 100"
                ),
            );
        }
        let (circuit_breaker, rollback) = match &d.deployment_circuit_breaker {
            None => (default.circuit_breaker, default.rollback),
            Some(cb) => {
                if cb.rollback && !cb.enable {
                    self.fail(
                        format!("{at}.deploymentCircuitBreaker.rollback"),
                        "a rollback is what the circuit breaker does when it trips, and it is off: set `enable: true`, or `rollback: false`",
                    );
                }
                (cb.enable, cb.rollback)
            }
        };
        DeploymentPolicy { minimum_healthy_percent: min, maximum_percent: max, circuit_breaker, rollback }
    }

    /// `cpu` and `memory`, each when given.
    fn resources(&mut self, spec: &ServiceSpec) -> Resources {
        let (min, max) = CPU_RANGE;
        let cpu = spec.cpu.map_or(0, |cpu| {
            let what = "CPU units one task reserves, 1024 to a vCPU: e.g. 256 for a quarter";
            self.bounded("cpu", Some(cpu), 0, min, max, what)
        });
        let (min, max) = MEMORY_RANGE;
        let memory = spec.memory.map_or(0, |mib| {
            let what = "MiB one task reserves and may not exceed, e.g. 512";
            self.bounded("memory", Some(mib), 0, min, max, what)
        });
        Resources { cpu, memory_mib: memory.into() }
    }

    /// `placementStrategy` and `placementConstraints`, in the order written.
    pub(super) fn placement(&mut self, spec: &ServiceSpec) -> Placement {
        for (field, count, max) in [
            ("placementStrategy", spec.placement_strategy.len(), MAX_STRATEGIES),
            ("placementConstraints", spec.placement_constraints.len(), MAX_CONSTRAINTS),
        ] {
            if count > max {
                self.fail(field, format!("has {count} entries; ECS allows at most {max}"));
            }
        }
        let mut placement = Placement::default();
        if !spec.placement_strategy.is_empty() {
            placement.strategies = (spec.placement_strategy.iter().enumerate())
                .filter_map(|(i, s)| self.strategy(&format!("placementStrategy[{i}]"), s))
                .collect();
        }
        placement.constraints = (spec.placement_constraints.iter().enumerate())
            .filter_map(|(i, c)| self.constraint(&format!("placementConstraints[{i}]"), c))
            .collect();
        placement
    }

    fn strategy(&mut self, at: &str, spec: &PlacementStrategySpec) -> Option<Strategy> {
        let kind = spec.kind.as_str();
        let field = spec.field.as_deref();
        let parsed = match (kind, field) {
            ("spread", Some(field)) => field.parse().map(Strategy::Spread),
            ("binpack", Some(field)) => field.parse().map(Strategy::Binpack),
            ("random", None) => Ok(Strategy::Random),
            ("spread", None) => Err(
                "`spread` needs a field: `host` for the same number of tasks on every host, or `attribute:NAME`, e.g. `attribute:zone`, for the same number in every zone".to_owned(),
            ),
            ("binpack", None) => Err(
                "`binpack` needs a field: `memory` or `cpu`, the resource whose least free host is filled first".to_owned(),
            ),
            ("random", Some(field)) => Err(format!(
                "`random` takes no field: it picks any host that may take the task; remove `field: {field}`"
            )),
            (other, _) => {
                self.fail(
                    format!("{at}.type"),
                    format!(
                        "`{other}` is not a placement strategy; expected `spread` (the same number of tasks on every host, or in every zone), `binpack` (fill the host with the least memory or CPU free first) or `random`"
                    ),
                );
                return None;
            }
        };
        match parsed {
            Ok(strategy) => Some(strategy),
            Err(message) => {
                self.fail(format!("{at}.field"), message);
                None
            }
        }
    }

    fn constraint(&mut self, at: &str, spec: &PlacementConstraintSpec) -> Option<Constraint> {
        let field = format!("{at}.expression");
        match (spec.kind.as_str(), spec.expression.as_deref()) {
            ("distinctInstance", None) => Some(Constraint::DistinctInstance),
            ("distinctInstance", Some(_)) => {
                self.fail(
                    field,
                    "`distinctInstance` takes no expression: it keeps each task off hosts that already run one of the service's; remove `expression`, or write `type: memberOf` to select hosts by attribute",
                );
                None
            }
            ("memberOf", None) => {
                self.fail(
                    field,
                    "`memberOf` needs an expression selecting hosts by attribute, e.g. `attribute:zone in [a, b]` or `attribute:gpu exists`",
                );
                None
            }
            ("memberOf", Some(text)) => match text.parse::<Expression>() {
                Ok(expression) => Some(Constraint::MemberOf(expression)),
                Err(e) => {
                    self.fail(field, e.message);
                    None
                }
            },
            (other, _) => {
                self.fail(
                    format!("{at}.type"),
                    format!(
                        "`{other}` is not a placement constraint; expected `distinctInstance` (each task on a different host) or `memberOf` (only hosts an expression selects, e.g. `attribute:zone in [a, b]`)"
                    ),
                );
                None
            }
        }
    }

    /// `value` (or `default`) when within `min..=max`; otherwise an error saying what it means.
    fn bounded(
        &mut self,
        field: &str,
        value: Option<u32>,
        default: u32,
        min: u32,
        max: u32,
        what: &str,
    ) -> u32 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.fail(field, format!("{v} is out of range; expected {min} to {max} ({what})"));
                default
            }
        }
    }
}

/// An external endpoint: an IP address and a port, never a name (tether resolves no names).
fn endpoint(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!(
            "`{text}` has port 0; expected IP:PORT with a port from 1 to 65535, e.g. `10.0.0.5:5432`"
        )),
        Ok(addr) => Ok(addr),
        Err(_) => {
            let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
            if !host.is_empty()
                && host.parse::<std::net::IpAddr>().is_err()
                && host.chars().any(|c| c.is_alphabetic())
            {
                Err(format!(
                    "`{text}` is a host name, and tether does not resolve host names for external endpoints; write the IP address and port, e.g. `10.0.0.5:5432` or `[2001:db8::5]:5432`"
                ))
            } else {
                Err(format!(
                    "`{text}` is not an endpoint; expected IP:PORT such as `10.0.0.5:5432` or `[2001:db8::5]:5432`"
                ))
            }
        }
    }
}
