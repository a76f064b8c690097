//! What the registry stores under each key, and reading it back.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tether_model::registry::{Instance, Revision};
use tether_model::spec::{Service, ServiceSpec};
use tether_model::{AppProtocol, Health};
use tether_store::KeyValue;

use crate::{Error, Result};

/// A service as the registry holds it: the spec as written, and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    /// The validated spec, defaults filled in (carries the name and namespace).
    pub service: Service,
    /// The revision that last changed the spec.
    pub revision: Revision,
}

#[derive(Serialize, Deserialize)]
struct StoredNamespace {
    name: String,
}

/// An instance without what its key and its store record already say (id, lease, revision).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredInstance {
    task: String,
    address: IpAddr,
    port: u16,
    app_protocol: AppProtocol,
    health: Health,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port_name: Option<String>,
}

pub(crate) fn encode_namespace(ns: &str) -> Result<Vec<u8>> {
    encode(&StoredNamespace { name: ns.to_owned() })
}

pub(crate) fn encode_spec(spec: &ServiceSpec) -> Result<Vec<u8>> {
    encode(spec)
}

pub(crate) fn encode_instance(i: &Instance) -> Result<Vec<u8>> {
    encode(&StoredInstance {
        task: i.task.clone(),
        address: i.address,
        port: i.port,
        app_protocol: i.app_protocol,
        health: i.health,
        attributes: i.attributes.clone(),
        port_name: i.port_name.clone(),
    })
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Store(format!("encoding a record: {e}")))
}

/// The service `name` of namespace `ns` stored in `kv`. A stored spec is validated again, so a
/// value written by hand (or by a version with looser rules) is reported rather than served.
pub fn decode_service(ns: &str, name: &str, kv: &KeyValue) -> Result<ServiceRecord> {
    let spec: ServiceSpec = serde_json::from_slice(&kv.value).map_err(|e| corrupt(kv, e))?;
    let service = spec.validate(name, ns).map_err(|e| corrupt(kv, e))?;
    Ok(ServiceRecord { spec, service, revision: kv.revision })
}

/// The instance `id` stored in `kv`.
pub fn decode_instance(id: &str, kv: &KeyValue) -> Result<Instance> {
    let stored: StoredInstance = serde_json::from_slice(&kv.value).map_err(|e| corrupt(kv, e))?;
    Ok(Instance {
        id: id.to_owned(),
        task: stored.task,
        address: stored.address,
        port: stored.port,
        app_protocol: stored.app_protocol,
        health: stored.health,
        attributes: stored.attributes,
        port_name: stored.port_name,
        lease: kv.lease,
        revision: kv.revision,
    })
}

fn corrupt(kv: &KeyValue, reason: impl ToString) -> Error {
    Error::Corrupt { key: kv.key.clone(), reason: reason.to_string() }
}
