//! What each proxy of a namespace needs, computed from the registry's [`Snapshot`]: one
//! resource per listener, its body the JSON of one `outbound` or `inbound` entry of the proxy's
//! config (see `tether-api`).
//!
//! Every proxy in a namespace may call every published service, so outbound resources are the
//! same for all of them: they are encoded once per change and shared. Inbound resources depend
//! on the task.
//!
//! A port with TLS on (the default) is reached over mutual TLS: its instances' endpoints carry
//! the identity their sidecars prove, `spiffe://<namespace>/<service>`, and its inbound listener
//! checks callers against the service's `allowFrom`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tether_api::ResourceName;
use tether_model::registry::Instance;
use tether_model::spec::{Discovery, Port, Service};
use tether_model::{
    AppProtocol, Endpoint, Health, Inbound, InboundTls, Limits, LoadBalancing, Outbound, OutlierDetection,
    SpiffeId, Timeouts,
};
use tracing::warn;

use crate::Snapshot;

/// A resource body, encoded once and shared by every stream that sends it.
pub type Body = bytes::Bytes;

/// Resources by name.
pub type Resources = BTreeMap<ResourceName, Body>;

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
        let instances = routable(snapshot, service).filter(|i| serves(i, service, discovery));
        let mut endpoints = mesh_endpoints(service, &discovery.port_name, instances);
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
            resources.insert(ResourceName::outbound(&alias.dns_name), encode(&outbound));
        }
    }
    for publish in &service.publish {
        let instances = routable(snapshot, service)
            .filter(|i| i.port_name.as_deref() == Some(publish.port_name.as_str()));
        let endpoints = mesh_endpoints(service, &publish.port_name, instances);
        let name = ResourceName::publish(&service.name, &publish.port_name);
        let outbound = Outbound {
            dns_name: name.name().to_owned(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), publish.host_port),
            app_protocol: publish.app_protocol,
            load_balancing: LoadBalancing::default(),
            endpoints,
            timeout: port_timeouts(service, &publish.port_name, publish.app_protocol),
            retry_policy: service.retry_policy.clone(),
            outlier_detection: OutlierDetection::default(),
            limits: Limits::default(),
        };
        resources.insert(name, encode(&outbound));
    }
    resources
}

/// The instances callers may be sent to: all but those still starting, which get traffic only
/// once their health check has passed (not even when nothing else is healthy).
fn routable<'a>(snapshot: &'a Snapshot, service: &'a Service) -> impl Iterator<Item = &'a Instance> {
    snapshot.instances_of(&service.name).filter(|i| i.health != Health::Starting)
}

/// `instances` of `service` serving port `port_name`, as endpoints: other sidecars, reached
/// over mutual TLS and expected to prove the service's identity when the port has TLS on. When
/// that identity cannot be made (names the registry refuses, so only from a store edited by
/// hand) there are no endpoints at all: never plaintext in place of TLS.
fn mesh_endpoints<'a>(
    service: &Service,
    port_name: &str,
    instances: impl Iterator<Item = &'a Instance>,
) -> Vec<Endpoint> {
    let tls = service.port(port_name).is_some_and(|p| p.tls);
    let identity = match tls.then(|| SpiffeId::new(&service.namespace, &service.name)).transpose() {
        Ok(identity) => identity,
        Err(error) => {
            warn!(%error, service = %service.name, "the service has no identity; its instances get no traffic");
            return Vec::new();
        }
    };
    instances
        .map(|instance| Endpoint {
            address: SocketAddr::new(instance.address, instance.port),
            mesh: true,
            health: instance.health,
            identity: identity.clone(),
        })
        .collect()
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
            tls: port.tls.then(|| InboundTls { allow_from: allowed_callers(service, port) }),
        };
        resources.insert(ResourceName::inbound(&port.name), encode(&inbound));
    }
    resources
}

/// Who may call `port`: None for every service of the namespace; else the services `allowFrom`
/// names, and the edge proxy when the port is published (it carries outside clients to it). An
/// ID that cannot be made is left out: refused, never allowed by mistake.
fn allowed_callers(service: &Service, port: &Port) -> Option<Vec<SpiffeId>> {
    let names = service.allow_from.as_ref()?;
    let ns = &service.namespace;
    let published = service.publish.iter().any(|p| p.port_name == port.name);
    let services = names.iter().filter_map(|name| SpiffeId::new(ns, name).ok());
    let edge = published.then(|| SpiffeId::edge(ns).ok()).flatten();
    Some(services.chain(edge).collect())
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
    service.port(name)
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
    use serde_json::{Value, json};
    use tether_model::spec::ServiceSpec;

    use super::*;
    use crate::ServiceRecord;

    const NS: &str = "shop.local";

    /// `payment`: port `api` published to the mesh as `payment:80` and on host port 8080, and
    /// port `admin`, reached only by registered instances; both TLS unless `change` says so.
    fn shop(change: impl FnOnce(&mut Value)) -> Snapshot {
        let mut payment = json!({
            "portMappings": [
                { "name": "api", "containerPort": 3001, "appProtocol": "http" },
                { "name": "admin", "containerPort": 3002, "appProtocol": "http" }
            ],
            "publish": [{ "portName": "api", "hostPort": 8080 }],
            "serviceConnectConfiguration": {
                "enabled": true,
                "services": [{ "portName": "api", "clientAliases": [{ "port": 80, "dnsName": "payment" }] }]
            }
        });
        change(&mut payment);
        let external = json!({
            "endpoints": ["10.0.0.5:5432"],
            "portMappings": [{ "name": "db", "containerPort": 5432 }],
            "serviceConnectConfiguration": {
                "enabled": true,
                "services": [{ "portName": "db", "clientAliases": [{ "port": 5432, "dnsName": "db" }] }]
            }
        });
        let mut snapshot = Snapshot { namespace: NS.into(), ..Snapshot::default() };
        for (name, spec) in [("payment", payment), ("db", external)] {
            let spec: ServiceSpec = serde_json::from_value(spec).unwrap();
            let service = spec.validate(name, NS).unwrap();
            snapshot.services.insert(name.into(), ServiceRecord { spec, service, revision: 1 });
        }
        let instances =
            [("t1-api", "api", 15001), ("t1-admin", "admin", 15002)].map(|(id, port_name, port)| {
                let instance = Instance {
                    id: id.into(),
                    task: "t1".into(),
                    address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    port,
                    app_protocol: AppProtocol::Http,
                    health: Health::Healthy,
                    attributes: BTreeMap::new(),
                    port_name: Some(port_name.into()),
                    lease: None,
                    revision: 1,
                };
                (id.to_owned(), instance)
            });
        snapshot.instances.insert("payment".into(), instances.into());
        snapshot
    }

    fn decode(resources: &Resources, name: &str) -> Value {
        let key = ResourceName::parse(name).unwrap();
        let body = resources.get(&key).unwrap_or_else(|| panic!("no {name} in {:?}", resources.keys()));
        serde_json::from_slice(body).unwrap()
    }

    fn identities(outbound: &Value) -> Vec<Value> {
        outbound["endpoints"].as_array().unwrap().iter().map(|e| e["identity"].clone()).collect()
    }

    #[test]
    fn mesh_endpoints_carry_the_identity_of_their_service_external_ones_none() {
        let snapshot = shop(|_| {});
        let aliases = outbound(&snapshot, &VirtualIps::of_namespace(&snapshot));
        let payment = [json!("spiffe://shop.local/payment")];
        assert_eq!(identities(&decode(&aliases, "outbound/payment")), payment);
        assert_eq!(identities(&decode(&aliases, "outbound/publish:payment.api")), payment);
        let db = decode(&aliases, "outbound/db");
        assert_eq!(
            db["endpoints"],
            json!([{ "address": "10.0.0.5:5432", "mesh": false, "health": "HEALTHY" }])
        );
    }

    #[test]
    fn inbound_listeners_of_tls_ports_take_mutual_tls_from_any_service_without_allow_from() {
        let listeners = inbound(&shop(|_| {}), "payment", "t1");
        for port in ["api", "admin"] {
            assert_eq!(decode(&listeners, &format!("inbound/{port}"))["tls"], json!({}), "{port}");
        }
    }

    #[test]
    fn allow_from_lists_the_callers_and_the_edge_on_published_ports() {
        let snapshot = shop(|spec| spec["allowFrom"] = json!(["orders", "payment"]));
        let listeners = inbound(&snapshot, "payment", "t1");
        let callers = ["spiffe://shop.local/orders", "spiffe://shop.local/payment"];
        let published = [callers[0], callers[1], "spiffe://shop.local/_edge"];
        assert_eq!(decode(&listeners, "inbound/api")["tls"], json!({ "allowFrom": published }));
        assert_eq!(decode(&listeners, "inbound/admin")["tls"], json!({ "allowFrom": callers }));
        // Nobody from the mesh: the edge still carries outside clients to the published port.
        let snapshot = shop(|spec| spec["allowFrom"] = json!([]));
        let listeners = inbound(&snapshot, "payment", "t1");
        assert_eq!(decode(&listeners, "inbound/api")["tls"], json!({ "allowFrom": [published[2]] }));
        assert_eq!(decode(&listeners, "inbound/admin")["tls"], json!({ "allowFrom": [] }));
    }

    #[test]
    fn a_sidecar_takes_the_resources_with_their_identities() {
        let snapshot = shop(|spec| spec["allowFrom"] = json!(["orders"]));
        let aliases = outbound(&snapshot, &VirtualIps::of_namespace(&snapshot));
        let listeners = inbound(&snapshot, "payment", "t1");
        let bodies =
            |r: &Resources| -> Vec<Value> { r.keys().map(|name| decode(r, name.as_str())).collect() };
        let document =
            json!({ "admin": "127.0.0.1:9901", "inbound": bodies(&listeners), "outbound": bodies(&aliases) });
        let config = tether_model::ProxyConfig::parse_streamed("stream", &document.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let payment = SpiffeId::new(NS, "payment").unwrap();
        let api = config.outbound.iter().find(|o| o.dns_name == "payment").unwrap();
        assert_eq!(api.endpoints[0].identity.as_ref(), Some(&payment));
        let tls = config.inbound.iter().find(|i| i.port_name == "api").unwrap().tls.as_ref().unwrap();
        assert!(
            tls.allows(&SpiffeId::new(NS, "orders").unwrap()) && tls.allows(&SpiffeId::edge(NS).unwrap())
        );
        assert!(!tls.allows(&payment));
    }

    #[test]
    fn a_port_with_tls_off_is_plaintext_both_ways() {
        let snapshot = shop(|spec| {
            spec["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enabled": false });
            spec["allowFrom"] = json!(["orders"]);
        });
        let aliases = outbound(&snapshot, &VirtualIps::of_namespace(&snapshot));
        assert_eq!(identities(&decode(&aliases, "outbound/payment")), [Value::Null]);
        assert_eq!(identities(&decode(&aliases, "outbound/publish:payment.api")), [Value::Null]);
        let listeners = inbound(&snapshot, "payment", "t1");
        assert_eq!(decode(&listeners, "inbound/api").get("tls"), None);
        // The other port keeps its TLS and its callers.
        let admin = &decode(&listeners, "inbound/admin")["tls"];
        assert_eq!(*admin, json!({ "allowFrom": ["spiffe://shop.local/orders"] }));
    }

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
