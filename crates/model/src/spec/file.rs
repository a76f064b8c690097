//! The whole spec file, `tether.yaml` (design §3): a namespace, its services and the external
//! services its apps call by name. It is validated as a whole — every service, and the rules
//! between them — and nothing of it is used unless all of it is right.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::validate::{MAX_DISCOVERY_NAME, check_name};
use super::{
    ClientAlias, FieldError, FieldErrors, PortMapping, Service, ServiceConnectConfiguration,
    ServiceConnectService, ServiceSpec, TimeoutSpec, namespace_conflicts,
};
use crate::registry::{check_namespace_name, check_service_name};
use crate::{AppProtocol, ConfigError, ConfigErrors, Source};

/// The port mapping an external service is given when converted to a [`ServiceSpec`].
const EXTERNAL_PORT: &str = "external";

/// `tether.yaml` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// The namespace the services find each other in, e.g. `shop.local`.
    pub namespace: String,
    /// The services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Services outside the mesh, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_services: BTreeMap<String, ExternalServiceSpec>,
}

/// `externalServices.NAME`: something outside the mesh (a database, a legacy host) that
/// sandboxed apps reach by name through their sidecar. `NAME` is its discovery name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalServiceSpec {
    /// Its fixed `IP:port` endpoints, always treated as healthy. Host names are not resolved.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// What it speaks; absent means raw tcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
    /// The names and ports apps call it by; at least one.
    #[serde(default)]
    pub client_aliases: Vec<ClientAlias>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
}

/// The validated file: every service as written (external services converted to a
/// [`ServiceSpec`] with `endpoints`) and its effective [`Service`], in name order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct App {
    pub namespace: String,
    pub services: Vec<(ServiceSpec, Service)>,
}

impl App {
    /// Parses and validates a whole spec file (YAML or JSON); every error is reported, each
    /// with its line and field, except a syntax or type error, which stops the reading.
    pub fn parse(file_name: &str, text: &str) -> Result<App, ConfigErrors> {
        let source =
            Source::parse_expecting(file_name, text, "`namespace: shop.local` followed by `services:`")?;
        let spec: AppSpec = source.deserialize().map_err(|mut errors| {
            for e in
                errors.0.iter_mut().filter(|e| e.field.is_empty() && e.message == "missing field `namespace`")
            {
                e.message.push_str(
                    "; add the namespace the services find each other in, e.g. `namespace: shop.local`",
                );
                (e.line, e.column) = (1, 1);
            }
            errors
        })?;
        spec.validate().map_err(|errors| {
            let mut located = errors.locate(&source, "");
            located.0.sort_by_key(|e| (e.line, e.column));
            located
        })
    }

    /// Reads and validates the spec file at `path`; a file that cannot be read is one error.
    pub fn load(path: &Path) -> Result<App, ConfigErrors> {
        let file_name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&file_name, &text),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: file_name,
                line: 1,
                column: 1,
                field: String::new(),
                message: format!("cannot read the spec file: {e}"),
            }])),
        }
    }

    /// The effective service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().map(|(_, s)| s).find(|s| s.name == name)
    }
}

/// Where an entry of the file sits, so its errors can be placed on what the user wrote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Service,
    External,
}

impl Origin {
    fn prefix(self, name: &str) -> String {
        match self {
            Origin::Service => format!("services.{name}"),
            Origin::External => format!("externalServices.{name}"),
        }
    }

    /// An error of the entry's [`ServiceSpec`] placed under the entry: an external service's
    /// errors point at its own fields, never at the converted spec's.
    fn place(self, name: &str, error: FieldError) -> FieldError {
        let field = match self {
            Origin::Service => error.field.clone(),
            Origin::External => external_field(&error.field),
        };
        FieldError { field, message: error.message }.within(&self.prefix(name))
    }
}

/// The field of an external service that a field of its converted spec came from.
fn external_field(converted: &str) -> String {
    let entry = "serviceConnectConfiguration.services[0].";
    if let Some(rest) = converted.strip_prefix(entry)
        && (rest.starts_with("clientAliases") || rest.starts_with("timeout"))
    {
        return rest.to_owned();
    }
    if converted.starts_with("endpoints") {
        converted.to_owned()
    } else {
        // The name (its discovery name, checked as the service's name), or the port mapping
        // made from the first endpoint (checked with the endpoints).
        String::new()
    }
}

impl AppSpec {
    /// Checks the whole file and returns the validated [`App`], or every error found, with
    /// paths from the file's root (`services.payment.healthCheck.interval`).
    pub fn validate(&self) -> Result<App, FieldErrors> {
        let ns = self.namespace.as_str();
        let mut errors = Vec::new();
        if let Err(e) = check_namespace_name(ns) {
            errors.push(FieldError::new("namespace", e));
        }
        if self.services.is_empty() && self.external_services.is_empty() {
            errors.push(FieldError::new(
                "services",
                "there are no services; add at least one, e.g. `services: { web: { command: [\"python3\", \"web.py\"] } }`",
            ));
        }
        // Every entry as a ServiceSpec, in name order, checked on its own.
        let mut entries: BTreeMap<&str, (Origin, ServiceSpec, Service)> = BTreeMap::new();
        for (name, spec) in &self.services {
            let at = Origin::Service.prefix(name);
            check_entry_name(name, &at, &mut errors);
            let (service, own) = spec.check(name, ns);
            errors.extend(own.into_iter().map(|e| Origin::Service.place(name, e)));
            entries.insert(name, (Origin::Service, spec.clone(), service));
        }
        for (name, external) in &self.external_services {
            let at = Origin::External.prefix(name);
            check_entry_name(name, &at, &mut errors);
            let taken = self.services.contains_key(name);
            if taken {
                errors.push(FieldError::new(
                    &at,
                    format!(
                        "`{name}` is also the name of a service under `services`; every service in the file needs its own name"
                    ),
                ));
            }
            let own = external.check();
            let spec = external.to_service_spec(name);
            let (service, converted) = spec.check(name, ns);
            // The external service's own errors first; the converted spec's only where they
            // say something new about a field the user wrote.
            let fields: Vec<String> = own.iter().map(|e| e.field.clone()).collect();
            errors.extend(own.into_iter().map(|e| e.within(&at)));
            for e in converted {
                let field = external_field(&e.field);
                if !field.is_empty() && !fields.iter().any(|f| field.starts_with(f.as_str())) {
                    errors.push(Origin::External.place(name, e));
                }
            }
            if !taken {
                entries.insert(name, (Origin::External, spec, service));
            }
        }
        // Rules between services: names and aliases unique in the namespace, host ports unique
        // on the host. Each conflict is reported on the later entry (in name order).
        let services: Vec<&Service> = entries.values().map(|(_, _, s)| s).collect();
        let mut host_ports: HashMap<u16, (&str, usize)> = HashMap::new();
        for (i, (name, (origin, spec, service))) in entries.iter().enumerate() {
            for e in namespace_conflicts(service, services[..i].iter().copied()) {
                errors.push(origin.place(name, e));
            }
            for (j, p) in spec.publish.iter().enumerate().filter(|(_, p)| p.host_port != 0) {
                match host_ports.get(&p.host_port) {
                    Some((owner, first)) if owner != name => errors.push(FieldError::new(
                        format!("{}.publish[{j}].hostPort", origin.prefix(name)),
                        format!(
                            "host port {} is already published by service `{owner}` (publish[{first}]); a host port can be published by one service only, so choose another",
                            p.host_port
                        ),
                    )),
                    Some(_) => {} // twice in one service: reported by the service's own check
                    None => {
                        host_ports.insert(p.host_port, (name, j));
                    }
                }
            }
        }
        for (name, spec) in &self.services {
            self.check_callers(name, spec, &mut errors);
        }
        if !errors.is_empty() {
            return Err(FieldErrors(errors));
        }
        let services = entries.into_values().map(|(_, spec, service)| (spec, service)).collect();
        Ok(App { namespace: self.namespace.clone(), services })
    }

    /// A file holds its whole namespace, so every name in a service's `allowFrom` must be one of
    /// its services (a name that is no service name at all is the service's own error).
    fn check_callers(&self, name: &str, spec: &ServiceSpec, errors: &mut Vec<FieldError>) {
        let callers = spec.allow_from.iter().flatten().enumerate();
        for (i, caller) in callers.filter(|(_, caller)| check_service_name(caller).is_ok()) {
            if self.services.contains_key(caller) {
                continue;
            }
            let message = if self.external_services.contains_key(caller) {
                format!(
                    "`{caller}` is an external service: it runs outside the mesh, with no sidecar and no certificate to call with, so it cannot be allowed by identity; remove it"
                )
            } else {
                let names: Vec<&str> = self.services.keys().map(String::as_str).collect();
                format!("`{caller}` names no service of this file; expected one of: {}", names.join(", "))
            };
            errors.push(FieldError::new(format!("services.{name}.allowFrom[{i}]"), message));
        }
    }
}

/// Service names follow the discovery-name rule: they become parts of names, identities and
/// paths.
fn check_entry_name(name: &str, at: &str, errors: &mut Vec<FieldError>) {
    if check_name(name, MAX_DISCOVERY_NAME).is_err() {
        errors.push(FieldError::new(
            at,
            format!(
                "`{name}` is not a valid service name; expected 1 to {MAX_DISCOVERY_NAME} characters of a-z, 0-9, `_` and `-`, not starting with `-`, e.g. `payment`"
            ),
        ));
    }
}

impl ExternalServiceSpec {
    /// What is wrong with the entry in its own terms, with paths relative to it.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.endpoints.is_empty() {
            errors.push(FieldError::new(
                "endpoints",
                "an external service needs at least one endpoint; add e.g. `endpoints: [\"10.0.0.5:5432\"]`",
            ));
        }
        if self.client_aliases.is_empty() {
            errors.push(FieldError::new(
                "clientAliases",
                "an external service needs at least one client alias, the name and port apps call it by; add e.g. `clientAliases: [{ port: 5432, dnsName: db }]`",
            ));
        }
        let tcp = !self.app_protocol.unwrap_or(AppProtocol::Tcp).is_http();
        if tcp && self.timeout.as_ref().is_some_and(|t| t.per_request_timeout_seconds.is_some()) {
            errors.push(FieldError::new(
                "timeout.perRequestTimeoutSeconds",
                "a per-request timeout needs requests, and this external service is tcp: remove it, or set `appProtocol` to http, http2 or grpc",
            ));
        }
        errors
    }

    /// The service spec the entry stands for: one port mapping (the first endpoint's port)
    /// published under the entry's name.
    fn to_service_spec(&self, name: &str) -> ServiceSpec {
        let first = self.endpoints.first().and_then(|e| e.parse::<std::net::SocketAddr>().ok());
        ServiceSpec {
            port_mappings: vec![PortMapping {
                name: EXTERNAL_PORT.to_owned(),
                container_port: first.map_or(0, |a| a.port()),
                app_protocol: self.app_protocol,
            }],
            service_connect_configuration: Some(ServiceConnectConfiguration {
                enabled: true,
                namespace: None,
                services: vec![ServiceConnectService {
                    port_name: EXTERNAL_PORT.to_owned(),
                    discovery_name: Some(name.to_owned()),
                    client_aliases: self.client_aliases.clone(),
                    ingress_port_override: None,
                    timeout: self.timeout.clone(),
                    tls: None,
                }],
                log_configuration: None,
                access_log_configuration: None,
            }),
            endpoints: self.endpoints.clone(),
            ..ServiceSpec::default()
        }
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
