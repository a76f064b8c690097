//! What each proxy of a namespace needs, computed from the registry's [`Snapshot`]: one
//! resource per listener, its body the JSON of one `outbound` or `inbound` entry of the proxy's
//! config (see `tether-api`).
//!
//! Every proxy in a namespace may call every published service, so outbound resources are the
//! same for all of them: they are encoded once per change and shared. Inbound resources depend
//! on the task.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tether_api::resource;
use tether_model::registry::Instance;
use tether_model::spec::{Discovery, Port, Service};
use tether_model::{
    AppProtocol, Endpoint, Health, Inbound, Limits, LoadBalancing, Outbound, OutlierDetection, Timeouts,
};

use crate::Snapshot;

/// A resource body, encoded once and shared by every stream that sends it.
pub type Body = bytes::Bytes;

/// Resources by name.
pub type Resources = BTreeMap<String, Body>;

/// The outbound resources of every client alias of every service in the namespace.
pub fn outbound(snapshot: &Snapshot, vips: &VirtualIps) -> Resources {
    let mut resources = Resources::new();
    for record in snapshot.services.values() {
        resources.extend(outbound_of(snapshot, &record.service, vips));
    }
    resources
}

/// The outbound resources of one service: its client aliases, and its published ports (for
/// edge proxies).
pub fn outbound_of(snapshot: &Snapshot, service: &Service, vips: &VirtualIps) -> Resources {
    let mut resources = Resources::new();
    for discovery in &service.discovery {
        let mut endpoints: Vec<Endpoint> =
            routable(snapshot, service).filter(|i| serves(i, service, discovery)).map(endpoint).collect();
        endpoints.extend(service.external_endpoints.iter().map(|&address| Endpoint {
            address,
            mesh: false,
            health: Health::Healthy,
            identity: None,
        }));
        for alias in &discovery.client_aliases {
            let outbound = Outbound {
                dns_name: alias.dns_name.clone(),
                listen: SocketAddr::new(vips.of(&alias.dns_name), alias.port),
                app_protocol: discovery.app_protocol,
                load_balancing: LoadBalancing::default(),
                endpoints: endpoints.clone(),
                timeout: discovery.timeout,
                retry_policy: service.retry_policy.clone(),
                outlier_detection: OutlierDetection::default(),
                limits: Limits::default(),
            };
            resources.insert(format!("{}{}", resource::OUTBOUND, alias.dns_name), encode(&outbound));
        }
    }
    for publish in &service.publish {
        let endpoints = routable(snapshot, service)
            .filter(|i| i.port_name.as_deref() == Some(publish.port_name.as_str()))
            .map(endpoint)
            .collect();
        let name = format!("{}.{}", service.name, publish.port_name);
        let outbound = Outbound {
            dns_name: name.clone(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), publish.host_port),
            app_protocol: publish.app_protocol,
            load_balancing: LoadBalancing::default(),
            endpoints,
            timeout: port_timeouts(service, &publish.port_name, publish.app_protocol),
            retry_policy: service.retry_policy.clone(),
            outlier_detection: OutlierDetection::default(),
            limits: Limits::default(),
        };
        resources.insert(format!("{}{name}", resource::PUBLISH), encode(&outbound));
    }
    resources
}

/// The instances callers may be sent to: all but those still starting, which get traffic only
/// once their health check has passed (not even when nothing else is healthy).
fn routable<'a>(snapshot: &'a Snapshot, service: &'a Service) -> impl Iterator<Item = &'a Instance> {
    snapshot.instances_of(&service.name).filter(|i| i.health != Health::Starting)
}

fn endpoint(instance: &Instance) -> Endpoint {
    Endpoint {
        address: SocketAddr::new(instance.address, instance.port),
        mesh: true,
        health: instance.health,
        identity: None,
    }
}

/// The timeouts of a port: its published endpoint's, else the defaults for its protocol.
fn port_timeouts(service: &Service, port_name: &str, protocol: AppProtocol) -> Timeouts {
    match service.discovery_for_port(port_name) {
        Some(discovery) => discovery.timeout,
        None => Timeouts::default_for(protocol),
    }
}

/// The inbound resources of one task: one per instance it registered, from the instance's
/// address to the app's port.
pub fn inbound(snapshot: &Snapshot, service: &str, task: &str) -> Resources {
    let mut resources = Resources::new();
    let Some(record) = snapshot.services.get(service) else {
        return resources;
    };
    let service = &record.service;
    for instance in snapshot.instances_of(&service.name).filter(|i| i.task == task) {
        let Some(port) = instance_port(instance, service) else {
            continue;
        };
        let discovery = service.discovery_for_port(&port.name);
        let inbound = Inbound {
            port_name: port.name.clone(),
            discovery_name: discovery.map_or_else(|| port.name.clone(), |d| d.discovery_name.clone()),
            listen: SocketAddr::new(instance.address, instance.port),
            target: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.container_port),
            app_protocol: port.app_protocol,
            timeout: port_timeouts(service, &port.name, port.app_protocol),
            tls: None,
        };
        resources.insert(format!("{}{}", resource::INBOUND, port.name), encode(&inbound));
    }
    resources
}

/// The port mapping an instance serves: the one it names, or the service's only published one.
fn instance_port<'a>(instance: &Instance, service: &'a Service) -> Option<&'a Port> {
    let name = match &instance.port_name {
        Some(name) => name.as_str(),
        None => match service.discovery.as_slice() {
            [only] => only.port_name.as_str(),
            _ => return None,
        },
    };
    service.ports.iter().find(|p| p.name == name)
}

/// Whether `instance` serves `discovery`: it names its port, or names none and the service
/// publishes only one.
fn serves(instance: &Instance, service: &Service, discovery: &Discovery) -> bool {
    match &instance.port_name {
        Some(port) => *port == discovery.port_name,
        None => service.discovery.len() == 1,
    }
}

/// The address each alias's outbound listener takes inside a task: `127.255.X.Y`, derived from
/// the name, so that it does not change when other services come and go and every task of the
/// namespace agrees on it. Two names that hash alike are told apart by probing the next
/// address, in name order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VirtualIps(BTreeMap<String, IpAddr>);

impl VirtualIps {
    pub fn of_namespace(snapshot: &Snapshot) -> Self {
        let names = snapshot
            .services
            .values()
            .flat_map(|r| r.service.discovery.iter())
            .flat_map(|d| d.client_aliases.iter().map(|a| a.dns_name.as_str()));
        Self::assign(names)
    }

    fn assign<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let mut names: Vec<&str> = names.collect();
        names.sort_unstable();
        names.dedup();
        let mut taken = std::collections::HashSet::new();
        let mut ips = BTreeMap::new();
        for name in names {
            let mut host = hash(name);
            while !taken.insert(host) {
                host = host % HOSTS + 1;
            }
            ips.insert(name.to_owned(), ip(host));
        }
        Self(ips)
    }

    pub fn of(&self, dns_name: &str) -> IpAddr {
        self.0.get(dns_name).copied().unwrap_or_else(|| ip(hash(dns_name)))
    }
}

/// Hosts numbered 1..=HOSTS: 127.255.0.0 and 127.255.255.255 are left alone.
const HOSTS: u32 = 0xfffe;

fn hash(name: &str) -> u32 {
    // FNV-1a: small, and stable across versions and platforms.
    let h = name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    h % HOSTS + 1
}

fn ip(host: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 255, (host >> 8) as u8, host as u8))
}

fn encode(value: &impl serde::Serialize) -> Body {
    serde_json::to_vec(value).expect("model types serialize").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_ips_are_stable_distinct_and_inside_the_block() {
        let empty = VirtualIps::default();
        let a = empty.of("payment-service");
        assert_eq!(a, empty.of("payment-service"));
        assert_ne!(a, empty.of("orders"));
        for host in [1, 0xff, 0x100, HOSTS] {
            let IpAddr::V4(v4) = ip(host) else { panic!("v4 expected") };
            assert_eq!(&v4.octets()[..2], &[127, 255]);
            assert_ne!(v4.octets()[2..], [0, 0]);
            assert_ne!(v4.octets()[2..], [255, 255]);
        }
    }

    #[test]
    fn colliding_names_get_distinct_addresses() {
        let names: Vec<String> = (0..20_000).map(|i| format!("svc-{i}")).collect();
        let hashed: std::collections::HashSet<u32> = names.iter().map(|n| hash(n)).collect();
        assert!(hashed.len() < names.len(), "the test needs colliding names to mean anything");
        let vips = VirtualIps::assign(names.iter().map(String::as_str));
        let distinct: std::collections::HashSet<IpAddr> = names.iter().map(|n| vips.of(n)).collect();
        assert_eq!(distinct.len(), names.len());
    }
}
