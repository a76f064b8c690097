//! Checking a [`ServiceSpec`] as a whole: every rule, every error, each with its field path.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    Alias, Discovery, FieldError, FieldErrors, Port, PortMapping, PublishPort, RetryPolicySpec, Service,
    ServiceConnectConfiguration, ServiceConnectService, ServiceSpec, TimeoutSpec, TlsSpec,
};
use crate::registry::check_service_name;
use crate::{AppProtocol, RetryPolicy, Seconds, Timeouts};

/// Service Connect's defaults (the proxy config uses the same ones).
const HTTP_IDLE_TIMEOUT: u64 = 300;
const TCP_IDLE_TIMEOUT: u64 = 3600;
const PER_REQUEST_TIMEOUT: u64 = 15;
const CONNECT_TIMEOUT: u64 = 1;
/// Longest timeout accepted (a day): anything longer is almost surely a unit mistake.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
const MAX_DNS_NAME: usize = 127;
pub(super) const MAX_DISCOVERY_NAME: usize = 64;

impl ServiceSpec {
    /// Checks the spec of service `name` in `namespace` and returns the effective service, or
    /// every error found. `name` and `namespace` are taken as valid (their callers check them,
    /// see [`crate::registry`]); the namespace is needed for the default `dnsName`.
    pub fn validate(&self, name: &str, namespace: &str) -> Result<Service, FieldErrors> {
        let (service, errors) = self.check(name, namespace);
        if errors.is_empty() { Ok(service) } else { Err(FieldErrors(errors)) }
    }

    /// Whether sidecars reach port `port_name` over mutual TLS: unless its `services[]` entry
    /// says `tls: { enabled: false }`. Never for an external service: its endpoints have no
    /// sidecar.
    fn tls_on(&self, port_name: &str) -> bool {
        let entry = self
            .service_connect_configuration
            .iter()
            .flat_map(|sc| &sc.services)
            .find(|entry| entry.port_name == port_name);
        let turned_off = entry.and_then(|e| e.tls.as_ref()).and_then(|tls| tls.enabled) == Some(false);
        self.endpoints.is_empty() && !turned_off
    }

    /// The service as far as it could be made out, and every error: a whole file is checked
    /// for conflicts between its services even when one of them has errors of its own.
    pub(super) fn check(&self, name: &str, namespace: &str) -> (Service, Vec<FieldError>) {
        let mut checker = Checker { errors: Vec::new(), namespace };
        let service = checker.service(self, name);
        (service, checker.errors)
    }
}

/// What is wrong when `candidate` joins a namespace that holds `others`: every discovery name and
/// every `dnsName:port` must be unique in the namespace. A service in `others` with the
/// candidate's name is its previous version and is skipped. Paths are relative to the
/// candidate's spec.
pub fn namespace_conflicts<'a>(
    candidate: &Service,
    others: impl IntoIterator<Item = &'a Service>,
) -> Vec<FieldError> {
    let mut discovery_names = HashMap::new();
    let mut aliases = HashMap::new();
    for other in others.into_iter().filter(|o| o.name != candidate.name) {
        for d in &other.discovery {
            discovery_names.entry(d.discovery_name.as_str()).or_insert(other.name.as_str());
            for alias in &d.client_aliases {
                aliases.entry(alias).or_insert(other.name.as_str());
            }
        }
    }
    let ns = &candidate.namespace;
    let mut errors = Vec::new();
    for (i, d) in candidate.discovery.iter().enumerate() {
        let at = format!("serviceConnectConfiguration.services[{i}]");
        if let Some(owner) = discovery_names.get(d.discovery_name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.discoveryName"),
                format!(
                    "`{}` is already the discovery name of service `{owner}`; every discovery name in namespace `{ns}` must be unique, so choose another",
                    d.discovery_name
                ),
            ));
        }
        for (j, alias) in d.client_aliases.iter().enumerate() {
            if let Some(owner) = aliases.get(alias) {
                errors.push(FieldError::new(
                    format!("{at}.clientAliases[{j}].dnsName"),
                    format!(
                        "`{}:{}` is already a client alias of service `{owner}`; every dnsName:port in namespace `{ns}` must be unique, so change the name or the port",
                        alias.dns_name, alias.port
                    ),
                ));
            }
        }
    }
    errors
}

/// Service Connect's rule for port, discovery and similar names.
pub(crate) fn check_name(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name; expected 1 to {max} characters of a-z, 0-9, `_` and `-`, not starting with `-`"
        ))
    }
}

/// Service Connect's rule for DNS names of client aliases.
pub(crate) fn check_dns_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_DNS_NAME
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid DNS name; expected 1 to {MAX_DNS_NAME} characters of a-z, 0-9, `_`, `.` and `-`, e.g. `payment-service`"
        ))
    }
}

/// Collects every error of one spec; the task's checks are in `task.rs`.
pub(super) struct Checker<'a> {
    errors: Vec<FieldError>,
    namespace: &'a str,
}

impl Checker<'_> {
    pub(super) fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn service(&mut self, spec: &ServiceSpec, name: &str) -> Service {
        let ports = self.port_mappings(&spec.port_mappings);
        let task = self.task(spec);
        let external_endpoints = self.external_endpoints(spec);
        let publish = self.publish(spec, &ports);
        let (service_connect, discovery) = match &spec.service_connect_configuration {
            Some(sc) => (sc.enabled, self.service_connect(sc, &ports)),
            None => (false, Vec::new()),
        };
        let retry_policy = self.retry_policy(spec.retry_policy.as_ref());
        let external = !spec.endpoints.is_empty();
        let ports: Vec<Port> = spec
            .port_mappings
            .iter()
            .map(|m| Port {
                name: m.name.clone(),
                container_port: m.container_port,
                app_protocol: m.app_protocol.unwrap_or(AppProtocol::Tcp),
                tls: spec.tls_on(&m.name),
            })
            .collect();
        let allow_from = self.allow_from(spec, &ports);
        let placement = self.placement(spec);
        Service {
            name: name.to_owned(),
            namespace: self.namespace.to_owned(),
            desired_count: if external { 0 } else { spec.desired_count.unwrap_or(1) },
            ports,
            service_connect,
            discovery,
            retry_policy,
            task,
            publish,
            external_endpoints,
            allow_from,
            placement,
        }
    }

    /// `allowFrom`: service names, each once. Whether they exist is the namespace's business
    /// (a caller may be added later), except in a file, which holds them all (see `file.rs`).
    fn allow_from(&mut self, spec: &ServiceSpec, ports: &[Port]) -> Option<Vec<String>> {
        let names = spec.allow_from.as_ref()?;
        let mut first_of = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Err(e) = check_service_name(name) {
                self.fail(format!("allowFrom[{i}]"), e);
            } else if let Some(first) = first_of.insert(name.as_str(), i) {
                self.fail(
                    format!("allowFrom[{i}]"),
                    format!("`{name}` is also allowFrom[{first}]; list each service once"),
                );
            }
        }
        // An external service's `allowFrom` is refused with its other task fields (`task.rs`).
        if spec.endpoints.is_empty() {
            if ports.is_empty() {
                self.fail(
                    "allowFrom",
                    "`allowFrom` says which services may call this one, and it has no port mappings to be called on: remove `allowFrom`, or add `portMappings`",
                );
            } else if ports.iter().all(|p| !p.tls) {
                self.fail(
                    "allowFrom",
                    "allowFrom needs tls: the caller's identity comes from its certificate, and every port of this service has `tls: { enabled: false }`; remove `allowFrom`, or turn TLS on for a port",
                );
            }
        }
        Some(names.clone())
    }

    /// The port mappings by name (the first of each name).
    fn port_mappings<'s>(&mut self, mappings: &'s [PortMapping]) -> HashMap<&'s str, &'s PortMapping> {
        let mut by_name: HashMap<&str, (usize, &PortMapping)> = HashMap::new();
        let mut by_port = HashMap::new();
        for (i, m) in mappings.iter().enumerate() {
            if let Err(e) = check_name(&m.name, MAX_DISCOVERY_NAME) {
                self.fail(format!("portMappings[{i}].name"), e);
            }
            if let Some((first, _)) = by_name.get(m.name.as_str()) {
                self.fail(
                    format!("portMappings[{i}].name"),
                    format!(
                        "`{}` also names portMappings[{first}]; every port mapping needs its own name",
                        m.name
                    ),
                );
            } else {
                by_name.insert(&m.name, (i, m));
            }
            if m.container_port == 0 {
                self.fail(format!("portMappings[{i}].containerPort"), "must be a port from 1 to 65535");
            } else if let Some(first) = by_port.insert(m.container_port, i) {
                self.fail(
                    format!("portMappings[{i}].containerPort"),
                    format!("{} is also portMappings[{first}]'s port; map each port once", m.container_port),
                );
            }
        }
        by_name.into_iter().map(|(name, (_, m))| (name, m)).collect()
    }

    fn publish(&mut self, spec: &ServiceSpec, ports: &HashMap<&str, &PortMapping>) -> Vec<PublishPort> {
        let mut host_ports = HashMap::new();
        let mut publish = Vec::with_capacity(spec.publish.len());
        for (i, p) in spec.publish.iter().enumerate() {
            match ports.get(p.port_name.as_str()) {
                Some(mapping) => publish.push(PublishPort {
                    port_name: p.port_name.clone(),
                    host_port: p.host_port,
                    container_port: mapping.container_port,
                    app_protocol: mapping.app_protocol.unwrap_or(AppProtocol::Tcp),
                }),
                None => {
                    let message = unknown_port(&p.port_name, ports);
                    self.fail(format!("publish[{i}].portName"), message);
                }
            }
            if p.host_port == 0 {
                self.fail(format!("publish[{i}].hostPort"), "must be a port from 1 to 65535");
            } else if let Some(first) = host_ports.insert(p.host_port, i) {
                self.fail(
                    format!("publish[{i}].hostPort"),
                    format!(
                        "{} is also publish[{first}]'s host port; publish each host port once",
                        p.host_port
                    ),
                );
            }
        }
        publish
    }

    fn service_connect(
        &mut self,
        sc: &ServiceConnectConfiguration,
        ports: &HashMap<&str, &PortMapping>,
    ) -> Vec<Discovery> {
        if let Some(ns) = sc.namespace.as_deref().filter(|ns| *ns != self.namespace) {
            self.fail(
                "serviceConnectConfiguration.namespace",
                format!(
                    "`{ns}` is not this service's namespace `{}`; remove the field or write `{}`",
                    self.namespace, self.namespace
                ),
            );
        }
        let mut port_names = HashMap::new();
        let mut discovery_names = HashMap::new();
        let mut aliases = HashMap::new();
        let mut discovery = Vec::with_capacity(sc.services.len());
        for (i, entry) in sc.services.iter().enumerate() {
            let at = format!("serviceConnectConfiguration.services[{i}]");
            if let Some(first) = port_names.insert(entry.port_name.as_str(), i) {
                self.fail(
                    format!("{at}.portName"),
                    format!(
                        "`{}` is already published by services[{first}]; publish each port once",
                        entry.port_name
                    ),
                );
            }
            let d = self.discovery(&at, entry, ports);
            if let Some(first) = discovery_names.insert(d.discovery_name.clone(), i) {
                self.fail(
                    format!("{at}.discoveryName"),
                    format!(
                        "`{}` is also services[{first}]'s discovery name; each entry needs its own",
                        d.discovery_name
                    ),
                );
            }
            for (j, alias) in d.client_aliases.iter().enumerate() {
                if let Some((fi, fj)) = aliases.insert(alias.clone(), (i, j)) {
                    self.fail(
                        format!("{at}.clientAliases[{j}].dnsName"),
                        format!(
                            "`{}:{}` is also services[{fi}].clientAliases[{fj}]; every dnsName:port must be unique",
                            alias.dns_name, alias.port
                        ),
                    );
                }
            }
            discovery.push(d);
        }
        if sc.enabled { discovery } else { Vec::new() }
    }

    fn discovery(
        &mut self,
        at: &str,
        entry: &ServiceConnectService,
        ports: &HashMap<&str, &PortMapping>,
    ) -> Discovery {
        let mapping = ports.get(entry.port_name.as_str());
        if mapping.is_none() {
            let message = unknown_port(&entry.port_name, ports);
            self.fail(format!("{at}.portName"), message);
        }
        let app_protocol = mapping.and_then(|m| m.app_protocol).unwrap_or(AppProtocol::Tcp);
        let discovery_name = match &entry.discovery_name {
            Some(name) => {
                if let Err(e) = check_name(name, MAX_DISCOVERY_NAME) {
                    self.fail(format!("{at}.discoveryName"), e);
                }
                name.clone()
            }
            None => entry.port_name.clone(),
        };
        let mut client_aliases = Vec::with_capacity(entry.client_aliases.len());
        for (j, alias) in entry.client_aliases.iter().enumerate() {
            if alias.port == 0 {
                self.fail(format!("{at}.clientAliases[{j}].port"), "must be a port from 1 to 65535, e.g. 80");
            }
            let dns_name = match &alias.dns_name {
                Some(name) => {
                    if let Err(e) = check_dns_name(name) {
                        self.fail(format!("{at}.clientAliases[{j}].dnsName"), e);
                    }
                    name.clone()
                }
                None => {
                    let name = format!("{discovery_name}.{}", self.namespace);
                    if name.len() > MAX_DNS_NAME {
                        self.fail(
                            format!("{at}.clientAliases[{j}].dnsName"),
                            format!(
                                "the default dnsName `{name}` (discoveryName.namespace) is {} characters, more than {MAX_DNS_NAME}; set a shorter `dnsName`",
                                name.len()
                            ),
                        );
                    }
                    name
                }
            };
            client_aliases.push(Alias { dns_name, port: alias.port });
        }
        if entry.ingress_port_override == Some(0) {
            self.fail(
                format!("{at}.ingressPortOverride"),
                "must be a port from 1 to 65535; remove it for the default",
            );
        }
        let timeout =
            self.timeouts(&format!("{at}.timeout"), entry.timeout.as_ref(), app_protocol, &entry.port_name);
        if let Some(tls) = &entry.tls {
            self.tls(&format!("{at}.tls"), tls);
        }
        Discovery {
            port_name: entry.port_name.clone(),
            discovery_name,
            container_port: mapping.map_or(0, |m| m.container_port),
            app_protocol,
            client_aliases,
            ingress_port_override: entry.ingress_port_override,
            timeout,
        }
    }

    fn timeouts(
        &mut self,
        at: &str,
        spec: Option<&TimeoutSpec>,
        protocol: AppProtocol,
        port: &str,
    ) -> Timeouts {
        let default = TimeoutSpec::default();
        let spec = spec.unwrap_or(&default);
        if !protocol.is_http() && spec.per_request_timeout_seconds.is_some() {
            self.fail(
                format!("{at}.perRequestTimeoutSeconds"),
                format!(
                    "a per-request timeout needs requests, and port `{port}` is tcp: remove it, or set the port mapping's `appProtocol` to http, http2 or grpc"
                ),
            );
        }
        let idle_default = if protocol.is_http() { HTTP_IDLE_TIMEOUT } else { TCP_IDLE_TIMEOUT };
        let idle = self.seconds(&format!("{at}.idleTimeoutSeconds"), spec.idle_timeout_seconds, idle_default);
        let per_request = protocol.is_http().then(|| {
            self.seconds(
                &format!("{at}.perRequestTimeoutSeconds"),
                spec.per_request_timeout_seconds,
                PER_REQUEST_TIMEOUT,
            )
        });
        let connect_field = format!("{at}.connectTimeoutSeconds");
        let connect = if spec.connect_timeout_seconds == Some(0.0) {
            self.fail(connect_field, "must be more than 0; the default is 1");
            Seconds::from_secs(CONNECT_TIMEOUT)
        } else {
            self.seconds(&connect_field, spec.connect_timeout_seconds, CONNECT_TIMEOUT)
        };
        Timeouts {
            idle_timeout_seconds: idle,
            per_request_timeout_seconds: per_request,
            connect_timeout_seconds: connect,
        }
    }

    /// ECS's fields naming an AWS CA, key or role: tether has its own CA, so there is nothing to
    /// name.
    fn tls(&mut self, at: &str, tls: &TlsSpec) {
        let aws = [
            ("issuerCertificateAuthority", tls.issuer_certificate_authority.is_some()),
            ("kmsKey", tls.kms_key.is_some()),
            ("roleArn", tls.role_arn.is_some()),
        ];
        for (field, _) in aws.into_iter().filter(|(_, written)| *written) {
            self.fail(
                format!("{at}.{field}"),
                format!(
                    "`{field}` is AWS-specific, and tether's certificate authority is built in: the control plane issues every sidecar its certificate, so there is no CA, key or role to name; remove `{field}` (`enabled` is all tether's `tls` takes)"
                ),
            );
        }
    }

    fn seconds(&mut self, field: &str, value: Option<f64>, default: u64) -> Seconds {
        match value {
            None => Seconds::from_secs(default),
            Some(s) if s.is_finite() && (0.0..=MAX_TIMEOUT_SECS).contains(&s) => {
                Seconds(Duration::from_secs_f64(s))
            }
            Some(s) => {
                self.fail(
                    field,
                    format!("{s} is out of range; expected seconds from 0 to {MAX_TIMEOUT_SECS}"),
                );
                Seconds::from_secs(default)
            }
        }
    }

    /// The same rules as the proxy config's `retryPolicy`.
    fn retry_policy(&mut self, spec: Option<&RetryPolicySpec>) -> RetryPolicy {
        let default = RetryPolicy::default();
        let Some(spec) = spec else { return default };
        let max_retries = spec.max_retries.unwrap_or(default.max_retries);
        if max_retries > 10 {
            self.fail("retryPolicy.maxRetries", format!("{max_retries} is too many; expected 0 to 10"));
        }
        let retry_on = spec.retry_on.clone().unwrap_or(default.retry_on);
        for (i, status) in retry_on.iter().enumerate() {
            if !(500..=599).contains(status) {
                self.fail(
                    format!("retryPolicy.retryOn[{i}]"),
                    format!("{status} is not retried; expected a 5xx status such as 503"),
                );
            }
        }
        let budget_percent = spec.budget_percent.unwrap_or(default.budget_percent);
        if !(0.0..=100.0).contains(&budget_percent) {
            self.fail(
                "retryPolicy.budgetPercent",
                format!("{budget_percent} is out of range; expected 0 to 100"),
            );
        }
        RetryPolicy {
            max_retries,
            retry_on,
            budget_percent,
            budget_min_per_second: spec.budget_min_per_second.unwrap_or(default.budget_min_per_second),
        }
    }
}

fn unknown_port(name: &str, ports: &HashMap<&str, &PortMapping>) -> String {
    if ports.is_empty() {
        return format!(
            "`{name}` names no port mapping, and there are none; add `portMappings: [{{ name: {name}, containerPort: …, appProtocol: http }}]`"
        );
    }
    let mut names: Vec<&str> = ports.keys().copied().collect();
    names.sort_unstable();
    format!("`{name}` names no port mapping; expected one of: {}", names.join(", "))
}
