//! The registry (design §6): namespaces → services → instances, as typed operations over a
//! [`Store`]. Every change is one transaction, so nothing is ever half-applied, and each carries
//! compares that make concurrent writers safe:
//!
//! - A service PUT checks namespace-wide uniqueness against the services it read, and commits
//!   only if the namespace key is still at the revision it read, rewriting that key as it goes.
//!   Two concurrent PUTs in one namespace therefore cannot both pass: the second conflicts,
//!   reads again and checks again.
//! - An instance PUT commits only if its service's spec is still the one it was validated
//!   against, so an instance never outlives its service or skips its checks.
//! - Deleting a namespace that still has services is refused (409) rather than cascading: the
//!   caller deletes the services first. Deleting a service deletes its instances with it.
//!
//! Key layout: [`keys`].

pub mod keys;
mod records;
mod snapshot;

use std::time::Duration;

use tether_model::registry::{
    HealthFilter, Instance, Namespace, Registration, check_instance_id, check_namespace_name,
    check_service_name,
};
use tether_model::spec::{ServiceSpec, namespace_conflicts};
use tether_store::{Compare, KeyValue, LeaseId, Op, Store, Txn};

pub use keys::watch_prefix;
pub use records::{ServiceRecord, decode_instance, decode_service};
pub use snapshot::Snapshot;

use crate::{Error, Result};

/// Reading, checking and committing again after a conflict: enough for any realistic burst of
/// writers in one namespace; past it the caller gets a 409 and may retry.
const ATTEMPTS: usize = 16;
/// Leases live between a second and a day.
const MAX_LEASE_TTL: u64 = 86_400;

/// Whether a PUT made something new or replaced what was there (201 or 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replaced,
}

#[derive(Clone)]
pub struct Registry<S> {
    store: S,
}

impl<S: Store> Registry<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    // ---- namespaces ----------------------------------------------------------------------

    pub async fn put_namespace(&self, ns: &str) -> Result<(Namespace, Outcome)> {
        check(check_namespace_name(ns), "namespace")?;
        let key = keys::namespace(ns);
        let txn = Txn {
            when: vec![Compare::Absent(key.clone())],
            ops: vec![Op::Put { key: key.clone(), value: records::encode_namespace(ns)?, lease: None }],
        };
        match self.store.commit(txn).await {
            Ok(revision) => Ok((Namespace { name: ns.to_owned(), revision }, Outcome::Created)),
            Err(tether_store::Error::Conflict(_)) => Ok((self.get_namespace(ns).await?, Outcome::Replaced)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_namespace(&self, ns: &str) -> Result<Namespace> {
        check(check_namespace_name(ns), "namespace")?;
        let kv = self.namespace_kv(ns).await?;
        Ok(Namespace { name: ns.to_owned(), revision: kv.revision })
    }

    pub async fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        let listing = self.store.list(keys::NAMESPACES).await?;
        Ok(listing
            .items
            .iter()
            .filter_map(|kv| match keys::Key::parse(&kv.key) {
                Some(keys::Key::Namespace { ns }) => {
                    Some(Namespace { name: ns.to_owned(), revision: kv.revision })
                }
                _ => None,
            })
            .collect())
    }

    /// Refused with [`Error::NamespaceNotEmpty`] while the namespace has services.
    pub async fn delete_namespace(&self, ns: &str) -> Result<()> {
        check(check_namespace_name(ns), "namespace")?;
        for _ in 0..ATTEMPTS {
            let kv = self.namespace_kv(ns).await?;
            let services = self.store.list(&keys::services(ns)).await?;
            if !services.items.is_empty() {
                let services = services
                    .items
                    .iter()
                    .filter_map(|kv| match keys::Key::parse(&kv.key) {
                        Some(keys::Key::Service { name, .. }) => Some(name.to_owned()),
                        _ => None,
                    })
                    .collect();
                return Err(Error::NamespaceNotEmpty { namespace: ns.to_owned(), services });
            }
            // Every service PUT rewrites the namespace key, so one that slipped in after the list
            // above makes this compare fail.
            let txn = Txn {
                when: vec![Compare::RevisionIs(kv.key.clone(), kv.revision)],
                ops: vec![
                    Op::Delete { key: kv.key.clone() },
                    Op::DeletePrefix { prefix: keys::watch_prefix(ns) },
                ],
            };
            if committed(self.store.commit(txn).await)?.is_some() {
                return Ok(());
            }
        }
        Err(contended(ns))
    }

    // ---- services --------------------------------------------------------------------------

    /// Creates or replaces a service, after checking its spec and the namespace's uniqueness
    /// rules.
    pub async fn put_service(
        &self,
        ns: &str,
        name: &str,
        spec: ServiceSpec,
    ) -> Result<(ServiceRecord, Outcome)> {
        check(check_namespace_name(ns), "namespace")?;
        check(check_service_name(name), "name")?;
        let service = spec.validate(name, ns).map_err(Error::Invalid)?;
        let value = records::encode_spec(&spec)?;
        for _ in 0..ATTEMPTS {
            let ns_kv = self.namespace_kv(ns).await?;
            let listing = self.store.list(&keys::services(ns)).await?;
            let key = keys::service(ns, name);
            let mut others = Vec::with_capacity(listing.items.len());
            for kv in listing.items.iter().filter(|kv| kv.key != key) {
                if let Some(keys::Key::Service { name, .. }) = keys::Key::parse(&kv.key) {
                    others.push(decode_service(ns, name, kv)?.service);
                }
            }
            let conflicts = namespace_conflicts(&service, &others);
            if !conflicts.is_empty() {
                return Err(Error::Taken(tether_model::spec::FieldErrors(conflicts)));
            }
            let outcome = if listing.items.iter().any(|kv| kv.key == key) {
                Outcome::Replaced
            } else {
                Outcome::Created
            };
            let txn = Txn {
                when: vec![Compare::RevisionIs(ns_kv.key.clone(), ns_kv.revision)],
                ops: vec![
                    Op::Put { key: ns_kv.key.clone(), value: ns_kv.value.clone(), lease: None },
                    Op::Put { key, value: value.clone(), lease: None },
                ],
            };
            if let Some(revision) = committed(self.store.commit(txn).await)? {
                let record = ServiceRecord { spec, service, revision };
                return Ok((record, outcome));
            }
        }
        Err(contended(ns))
    }

    pub async fn get_service(&self, ns: &str, name: &str) -> Result<ServiceRecord> {
        let kv = self.service_kv(ns, name).await?;
        decode_service(ns, name, &kv)
    }

    /// Deletes a service and every instance of it, at once.
    pub async fn delete_service(&self, ns: &str, name: &str) -> Result<()> {
        check(check_namespace_name(ns), "namespace")?;
        check(check_service_name(name), "name")?;
        let key = keys::service(ns, name);
        let txn = Txn {
            when: vec![Compare::Present(key.clone())],
            ops: vec![Op::Delete { key }, Op::DeletePrefix { prefix: keys::instances(ns, name) }],
        };
        match committed(self.store.commit(txn).await)? {
            Some(_) => Ok(()),
            None => Err(self.missing_service(ns, name).await),
        }
    }

    // ---- instances -------------------------------------------------------------------------

    /// Registers (or updates) instance `id` of a service, attached to its lease if it names one.
    pub async fn put_instance(
        &self,
        ns: &str,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<(Instance, Outcome)> {
        check(check_instance_id(id), "id")?;
        let key = keys::instance(ns, service, id);
        for _ in 0..ATTEMPTS {
            let service_kv = self.service_kv(ns, service).await?;
            let record = decode_service(ns, service, &service_kv)?;
            let mut instance = registration.clone().validate(id, &record.service).map_err(Error::Invalid)?;
            let outcome =
                if self.store.get(&key).await?.is_some() { Outcome::Replaced } else { Outcome::Created };
            let txn = Txn {
                when: vec![Compare::RevisionIs(service_kv.key.clone(), service_kv.revision)],
                ops: vec![Op::Put {
                    key: key.clone(),
                    value: records::encode_instance(&instance)?,
                    lease: instance.lease,
                }],
            };
            if let Some(revision) = committed(self.store.commit(txn).await)? {
                instance.revision = revision;
                return Ok((instance, outcome));
            }
        }
        Err(contended(ns))
    }

    pub async fn get_instance(&self, ns: &str, service: &str, id: &str) -> Result<Instance> {
        check(check_instance_id(id), "id")?;
        match self.store.get(&keys::instance(ns, service, id)).await? {
            Some(kv) => decode_instance(id, &kv),
            None => {
                // Say which part is missing: the namespace, the service or the instance.
                self.service_kv(ns, service).await?;
                Err(instance_not_found(ns, service, id))
            }
        }
    }

    /// The service's instances that pass `filter`, in id order.
    pub async fn list_instances(
        &self,
        ns: &str,
        service: &str,
        filter: HealthFilter,
    ) -> Result<Vec<Instance>> {
        self.service_kv(ns, service).await?;
        let listing = self.store.list(&keys::instances(ns, service)).await?;
        let mut instances = Vec::with_capacity(listing.items.len());
        for kv in &listing.items {
            if let Some(keys::Key::Instance { id, .. }) = keys::Key::parse(&kv.key) {
                instances.push(decode_instance(id, kv)?);
            }
        }
        Ok(filter.instances(&instances).into_iter().cloned().collect())
    }

    pub async fn delete_instance(&self, ns: &str, service: &str, id: &str) -> Result<()> {
        check(check_instance_id(id), "id")?;
        let key = keys::instance(ns, service, id);
        let txn = Txn { when: vec![Compare::Present(key.clone())], ops: vec![Op::Delete { key }] };
        match committed(self.store.commit(txn).await)? {
            Some(_) => Ok(()),
            None => {
                self.service_kv(ns, service).await?;
                Err(instance_not_found(ns, service, id))
            }
        }
    }

    // ---- leases ------------------------------------------------------------------------------

    /// A lease for a runner's instances: they disappear unless it is renewed within `ttl_seconds`.
    pub async fn grant_lease(&self, ttl_seconds: u64) -> Result<LeaseId> {
        if !(1..=MAX_LEASE_TTL).contains(&ttl_seconds) {
            return Err(Error::invalid(
                "ttlSeconds",
                format!("{ttl_seconds} is out of range; expected 1 to {MAX_LEASE_TTL} seconds, e.g. 10"),
            ));
        }
        Ok(self.store.grant(Duration::from_secs(ttl_seconds)).await?)
    }

    pub async fn renew_lease(&self, lease: LeaseId) -> Result<()> {
        Ok(self.store.keep_alive(lease).await?)
    }

    /// Ends a lease now, deleting every instance attached to it.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        Ok(self.store.revoke(lease).await?)
    }

    // ---- for the proxy stream -------------------------------------------------------------

    /// Every service and instance of `ns`, read at one revision. To follow changes, watch
    /// [`watch_prefix`]`(ns)` after `snapshot.revision` and [`Snapshot::apply`] each event.
    pub async fn snapshot(&self, ns: &str) -> Result<Snapshot> {
        check(check_namespace_name(ns), "namespace")?;
        self.namespace_kv(ns).await?;
        let listing = self.store.list(&keys::watch_prefix(ns)).await?;
        Snapshot::from_listing(ns, &listing)
    }

    // ---- helpers -------------------------------------------------------------------------------

    async fn namespace_kv(&self, ns: &str) -> Result<KeyValue> {
        self.store.get(&keys::namespace(ns)).await?.ok_or_else(|| Error::NamespaceNotFound(ns.to_owned()))
    }

    async fn service_kv(&self, ns: &str, name: &str) -> Result<KeyValue> {
        check(check_namespace_name(ns), "namespace")?;
        check(check_service_name(name), "service")?;
        match self.store.get(&keys::service(ns, name)).await? {
            Some(kv) => Ok(kv),
            None => Err(self.missing_service(ns, name).await),
        }
    }

    /// The error for a service that is not there: its namespace may be missing too.
    async fn missing_service(&self, ns: &str, name: &str) -> Error {
        match self.namespace_kv(ns).await {
            Ok(_) => Error::ServiceNotFound { namespace: ns.to_owned(), service: name.to_owned() },
            Err(e) => e,
        }
    }
}

fn check(result: Result<(), String>, field: &str) -> Result<()> {
    result.map_err(|message| Error::invalid(field, message))
}

/// `Some(revision)` when committed, `None` when a compare failed (read again and retry).
fn committed(result: tether_store::Result<i64>) -> Result<Option<i64>> {
    match result {
        Ok(revision) => Ok(Some(revision)),
        Err(tether_store::Error::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn contended(ns: &str) -> Error {
    Error::Contended(format!(
        "namespace `{ns}` kept changing while this request was applied; nothing was written, try again"
    ))
}

fn instance_not_found(ns: &str, service: &str, id: &str) -> Error {
    Error::InstanceNotFound { namespace: ns.to_owned(), service: service.to_owned(), id: id.to_owned() }
}

#[cfg(test)]
mod tests;
