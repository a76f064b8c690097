//! One namespace's services and instances at one revision, kept current by applying the
//! events of a watch on [`watch_prefix`](super::watch_prefix). This is what the proxy stream serves from.

use std::collections::BTreeMap;

use tether_model::registry::{Instance, Revision};
use tether_store::{Event, Listing};

use super::keys::Key;
use super::records::{ServiceRecord, decode_instance, decode_service};
use crate::Result;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub namespace: String,
    /// The store revision the snapshot reflects: watch [`watch_prefix`](super::watch_prefix) after it to miss
    /// nothing.
    pub revision: Revision,
    /// By name.
    pub services: BTreeMap<String, ServiceRecord>,
    /// By service name, then instance id. A service with no instances has no entry.
    pub instances: BTreeMap<String, BTreeMap<String, Instance>>,
}

impl Snapshot {
    /// Builds a snapshot from a listing of [`watch_prefix`](super::watch_prefix)`(ns)`.
    pub fn from_listing(ns: &str, listing: &Listing) -> Result<Self> {
        let mut snapshot =
            Snapshot { namespace: ns.to_owned(), revision: listing.revision, ..Self::default() };
        for kv in &listing.items {
            snapshot.put(kv)?;
        }
        Ok(snapshot)
    }

    /// The instances of `service`, in id order.
    pub fn instances_of(&self, service: &str) -> impl Iterator<Item = &Instance> {
        self.instances.get(service).into_iter().flat_map(|by_id| by_id.values())
    }

    /// Applies one event from a watch on this namespace's prefix. Events for other keys are
    /// ignored. Deleting a service deletes its instances in the same revision, and the store
    /// reports each deleted key, so no cascade is needed here.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Put(kv) => self.put(kv)?,
            Event::Delete { key, .. } => match Key::parse(key) {
                Some(Key::Service { ns, name }) if ns == self.namespace => {
                    self.services.remove(name);
                }
                Some(Key::Instance { ns, service, id }) if ns == self.namespace => {
                    if let Some(by_id) = self.instances.get_mut(service) {
                        by_id.remove(id);
                        if by_id.is_empty() {
                            self.instances.remove(service);
                        }
                    }
                }
                _ => {}
            },
        }
        self.revision = self.revision.max(event.revision());
        Ok(())
    }

    fn put(&mut self, kv: &tether_store::KeyValue) -> Result<()> {
        match Key::parse(&kv.key) {
            Some(Key::Service { ns, name }) if ns == self.namespace => {
                self.services.insert(name.to_owned(), decode_service(ns, name, kv)?);
            }
            Some(Key::Instance { ns, service, id }) if ns == self.namespace => {
                let instance = decode_instance(id, kv)?;
                self.instances.entry(service.to_owned()).or_default().insert(id.to_owned(), instance);
            }
            _ => {}
        }
        Ok(())
    }
}
