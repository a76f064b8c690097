//! The registry's model (design §6): namespaces, the instances that tasks register for their
//! services, and the health filters of discovery queries. Services are in [`crate::spec`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{FieldError, FieldErrors, Service};
use crate::{AppProtocol, Health};

/// A point in the registry's history (the store's revision).
pub type Revision = i64;

/// The boundary within which services find each other (`shop.local`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    /// The revision that last changed the namespace or the set of its services.
    pub revision: Revision,
}

/// A task's registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Unique within its service.
    pub id: String,
    /// The task the instance belongs to (default: the instance's id).
    pub task: String,
    /// Where callers connect: the task's sidecar, or the app itself when it has none.
    pub address: IpAddr,
    pub port: u16,
    pub app_protocol: AppProtocol,
    pub health: Health,
    pub attributes: BTreeMap<String, String>,
    /// Which of the service's port mappings this instance serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The lease the instance hangs on: it disappears when the lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    /// The revision that last changed the instance.
    pub revision: Revision,
}

/// What a task sends to register an instance (the body of
/// `PUT /v1/namespaces/{ns}/services/{name}/instances/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    /// Default: the protocol of the port mapping the instance serves, else tcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
    pub health: Health,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Required when the service publishes more than one port; default its only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

/// Cloud Map's limits on attributes.
const MAX_ATTRIBUTES: usize = 30;
const MAX_ATTRIBUTE_KEY: usize = 255;
const MAX_ATTRIBUTE_VALUE: usize = 1024;

impl Registration {
    /// Checks the registration of instance `id` against its service and returns the instance
    /// (revision 0: the registry sets it when stored). `id` is taken as valid
    /// ([`check_instance_id`]).
    pub fn validate(self, id: &str, service: &Service) -> Result<Instance, FieldErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| errors.push(FieldError::new(field, message));
        let task = self.task.unwrap_or_else(|| id.to_owned());
        if task.is_empty() || task.len() > 255 || task.chars().any(char::is_control) {
            fail("task", "must be 1 to 255 characters without control characters".into());
        }
        if self.port == 0 {
            fail("port", "must be a port from 1 to 65535".into());
        }
        let port_name = match self.port_name {
            Some(name) => Some(name),
            None => match service.discovery.as_slice() {
                [only] => Some(only.port_name.clone()),
                [] => None,
                several => {
                    let names: Vec<&str> = several.iter().map(|d| d.port_name.as_str()).collect();
                    fail(
                        "portName",
                        format!(
                            "service `{}` publishes several ports; say which one this instance serves: one of {}",
                            service.name,
                            names.join(", ")
                        ),
                    );
                    None
                }
            },
        };
        let mapping = port_name.as_deref().and_then(|name| service.ports.iter().find(|p| p.name == name));
        if let (Some(name), None) = (&port_name, mapping) {
            let names: Vec<&str> = service.ports.iter().map(|p| p.name.as_str()).collect();
            let expected = if names.is_empty() {
                "it has none".to_owned()
            } else {
                format!("expected one of: {}", names.join(", "))
            };
            fail(
                "portName",
                format!("`{name}` is not a port mapping of service `{}`; {expected}", service.name),
            );
        }
        let port_protocol = mapping.map(|p| p.app_protocol);
        let app_protocol = match (self.app_protocol, port_protocol) {
            (Some(given), Some(expected)) if given != expected => {
                fail(
                    "appProtocol",
                    format!(
                        "port `{}` speaks {}, not {}; leave `appProtocol` out or write `{}`",
                        port_name.as_deref().unwrap_or_default(),
                        protocol_name(expected),
                        protocol_name(given),
                        protocol_name(expected)
                    ),
                );
                given
            }
            (Some(given), _) => given,
            (None, expected) => expected.unwrap_or(AppProtocol::Tcp),
        };
        if self.attributes.len() > MAX_ATTRIBUTES {
            fail(
                "attributes",
                format!("{} attributes are too many; at most {MAX_ATTRIBUTES}", self.attributes.len()),
            );
        }
        for (key, value) in &self.attributes {
            if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
                fail("attributes", format!("the key `{key}` must be 1 to {MAX_ATTRIBUTE_KEY} bytes long"));
            } else if value.len() > MAX_ATTRIBUTE_VALUE {
                fail(
                    &format!("attributes.{key}"),
                    format!("is {} bytes long; at most {MAX_ATTRIBUTE_VALUE}", value.len()),
                );
            }
        }
        if self.lease.is_some_and(|l| l <= 0) {
            fail("lease", "a lease id is a positive number returned by `POST /v1/leases`".into());
        }
        if !errors.is_empty() {
            return Err(FieldErrors(errors));
        }
        Ok(Instance {
            id: id.to_owned(),
            task,
            address: self.address,
            port: self.port,
            app_protocol,
            health: self.health,
            attributes: self.attributes,
            port_name,
            lease: self.lease,
            revision: 0,
        })
    }
}

fn protocol_name(p: AppProtocol) -> &'static str {
    match p {
        AppProtocol::Http => "http",
        AppProtocol::Http2 => "http2",
        AppProtocol::Grpc => "grpc",
        AppProtocol::Tcp => "tcp",
    }
}

/// Which instances a discovery query returns (Cloud Map's filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthFilter {
    /// Only HEALTHY instances.
    Healthy,
    /// Only UNHEALTHY instances (not STARTING or DRAINING ones).
    Unhealthy,
    /// Every instance, whatever its health.
    #[default]
    All,
    /// The HEALTHY instances if there is one; otherwise every instance, so that callers still
    /// have somewhere to go when health checking itself is what fails.
    HealthyOrElseAll,
}

impl HealthFilter {
    pub const NAMES: [&'static str; 4] = ["HEALTHY", "UNHEALTHY", "ALL", "HEALTHY_OR_ELSE_ALL"];

    /// The items the filter lets through, in their order; `health` tells each item's health.
    pub fn select<T>(self, items: &[T], health: impl Fn(&T) -> Health) -> Vec<&T> {
        let with = |wanted: Health| items.iter().filter(|i| health(i) == wanted).collect::<Vec<_>>();
        match self {
            Self::Healthy => with(Health::Healthy),
            Self::Unhealthy => with(Health::Unhealthy),
            Self::All => items.iter().collect(),
            Self::HealthyOrElseAll => {
                let healthy = with(Health::Healthy);
                if healthy.is_empty() { items.iter().collect() } else { healthy }
            }
        }
    }

    /// [`select`](Self::select) over instances.
    pub fn instances(self, instances: &[Instance]) -> Vec<&Instance> {
        self.select(instances, |i| i.health)
    }
}

impl FromStr for HealthFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "HEALTHY" => Ok(Self::Healthy),
            "UNHEALTHY" => Ok(Self::Unhealthy),
            "ALL" => Ok(Self::All),
            "HEALTHY_OR_ELSE_ALL" => Ok(Self::HealthyOrElseAll),
            other => {
                Err(format!("`{other}` is not a health filter; expected one of: {}", Self::NAMES.join(", ")))
            }
        }
    }
}

impl fmt::Display for HealthFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = match self {
            Self::Healthy => 0,
            Self::Unhealthy => 1,
            Self::All => 2,
            Self::HealthyOrElseAll => 3,
        };
        f.write_str(Self::NAMES[i])
    }
}

// ---- names -----------------------------------------------------------------------------------
//
// Names become parts of store keys and URL paths, so none may hold `/`, and each is checked
// before anything is read or written.

/// A namespace is a DNS-like name (`shop.local`): dot-separated labels of a-z, 0-9, `_` and `-`,
/// each 1 to 63 long and not starting with `-`, 253 characters at most.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid namespace; expected a DNS-like name such as `shop.local`: labels of a-z, 0-9, `_` and `-` separated by dots, each 1 to 63 characters not starting with `-`"
        ))
    }
}

/// ECS's rule for service names: 1 to 255 letters, digits, `_` and `-`, starting with a letter
/// or a digit.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 255
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid service name; expected 1 to 255 letters, digits, `_` and `-`, starting with a letter or digit"
        ))
    }
}

/// Instance ids are usually task ids: 1 to 255 letters, digits, `_`, `.` and `-`, starting with
/// a letter or a digit.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    let ok = id.len() <= 255
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a valid instance id; expected 1 to 255 letters, digits, `_`, `.` and `-`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests;
