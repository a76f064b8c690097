//! One namespace's resources, kept current by following the store: a snapshot, then a watch
//! after its revision, relisting whenever the watch breaks or history was compacted. Every
//! change is worked out once here and broadcast to the namespace's streams as a [`Change`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_api::ResourceName;
use tether_store::{Error as StoreError, Event, Store};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::resources::{self, Resources, VirtualIps};
use crate::registry::keys::Key;
use crate::{Registry, Snapshot, watch_prefix};

/// Changes a stream may fall behind by before it is sent a full snapshot instead.
const BACKLOG: usize = 4096;
const RELIST_PAUSE: Duration = Duration::from_millis(200);

/// What changed at one revision.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Outbound resources changed (`Some`) or removed (`None`), by name.
    pub outbound: Vec<(ResourceName, Option<resources::Body>)>,
    /// The inbound resources of these (service, task) pairs are now as given.
    pub inbound: Vec<((String, String), Resources)>,
    /// Everything may have changed (a relist): streams resend their whole view.
    pub everything: bool,
    /// The service whose spec changed, if one did.
    pub spec_changed: Option<String>,
}

/// The resources of one namespace as of its last change.
#[derive(Default)]
pub struct State {
    snapshot: Snapshot,
    vips: VirtualIps,
    pub outbound: Resources,
}

impl State {
    pub fn inbound(&self, service: &str, task: &str) -> Resources {
        resources::inbound(&self.snapshot, service, task)
    }

    /// The outbound resources a task of `service` must not get: its own service's aliases on
    /// a port its app listens on. Inside the task's sandbox the app binds that port (often on
    /// every address), which a listener on the alias's address would take from it.
    pub fn reserved(&self, service: &str) -> BTreeSet<ResourceName> {
        let Some(record) = self.snapshot.services.get(service) else { return Default::default() };
        let service = &record.service;
        let ports: BTreeSet<u16> = service.ports.iter().map(|p| p.container_port).collect();
        service
            .discovery
            .iter()
            .flat_map(|d| &d.client_aliases)
            .filter(|a| ports.contains(&a.port))
            .map(|a| ResourceName::outbound(&a.dns_name))
            .collect()
    }

    fn rebuild(&mut self, snapshot: Snapshot) {
        self.vips = VirtualIps::of_namespace(&snapshot);
        self.outbound = resources::outbound(&snapshot, &self.vips);
        self.snapshot = snapshot;
    }

    /// Applies one event and says what changed for the streams.
    fn apply(&mut self, event: &Event) -> Change {
        let touched = match Key::parse(event.key()) {
            Some(Key::Service { name, .. }) => Touched::Service(name.to_owned()),
            Some(Key::Instance { service, id, .. }) => {
                let old_task =
                    self.snapshot.instances.get(service).and_then(|i| i.get(id)).map(|i| i.task.clone());
                Touched::Instance { service: service.to_owned(), id: id.to_owned(), old_task }
            }
            _ => return Change::default(),
        };
        if let Err(error) = self.snapshot.apply(event) {
            warn!(%error, key = event.key(), "cannot read a registry change; skipping it");
            return Change::default();
        }
        let mut change = Change::default();
        match touched {
            Touched::Service(name) => {
                change.spec_changed = Some(name.clone());
                // A spec changes aliases, addresses and settings: everything outbound is
                // worked out again (specs change rarely), and the service's tasks' inbound.
                let before = std::mem::take(&mut self.outbound);
                self.vips = VirtualIps::of_namespace(&self.snapshot);
                self.outbound = resources::outbound(&self.snapshot, &self.vips);
                change.outbound = diff(&before, &self.outbound);
                let tasks: BTreeSet<String> =
                    self.snapshot.instances_of(&name).map(|i| i.task.clone()).collect();
                for task in tasks {
                    let inbound = self.inbound(&name, &task);
                    change.inbound.push(((name.clone(), task), inbound));
                }
            }
            Touched::Instance { service, id, old_task } => {
                if let Some(record) = self.snapshot.services.get(&service) {
                    let now = resources::outbound_of(&self.snapshot, &record.service, &self.vips);
                    for (name, body) in now {
                        if self.outbound.get(&name) != Some(&body) {
                            self.outbound.insert(name.clone(), body.clone());
                            change.outbound.push((name, Some(body)));
                        }
                    }
                }
                let new_task =
                    self.snapshot.instances.get(&service).and_then(|i| i.get(&id)).map(|i| i.task.clone());
                let tasks: BTreeSet<String> = old_task.into_iter().chain(new_task).collect();
                for task in tasks {
                    let inbound = self.inbound(&service, &task);
                    change.inbound.push(((service.clone(), task), inbound));
                }
            }
        }
        change
    }
}

enum Touched {
    Service(String),
    Instance { service: String, id: String, old_task: Option<String> },
}

fn diff(before: &Resources, after: &Resources) -> Vec<(ResourceName, Option<resources::Body>)> {
    let removed = before.keys().filter(|k| !after.contains_key(*k)).map(|k| (k.clone(), None));
    let changed =
        after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, v)| (k.clone(), Some(v.clone())));
    removed.chain(changed).collect()
}

/// A namespace being followed: its state, and the changes as they happen.
pub struct Followed {
    pub state: Mutex<State>,
    pub changes: broadcast::Sender<Arc<Change>>,
    /// True once the namespace has been listed: before that the state is empty, and a proxy
    /// sent it would drop every destination it has.
    pub loaded: tokio::sync::watch::Sender<bool>,
}

/// The namespaces followed, each once however many streams want it.
pub struct Followers<S> {
    registry: Registry<S>,
    namespaces: Mutex<HashMap<String, Arc<Followed>>>,
}

impl<S: Store> Followers<S> {
    pub fn new(registry: Registry<S>) -> Self {
        Self { registry, namespaces: Mutex::new(HashMap::new()) }
    }

    /// The namespace `ns`, followed from now on if it was not yet. It is never dropped: a
    /// namespace's proxies come back after every restart of theirs.
    pub fn follow(&self, ns: &str) -> Arc<Followed> {
        let mut namespaces = self.namespaces.lock().expect("the followers lock is never poisoned");
        if let Some(followed) = namespaces.get(ns) {
            return followed.clone();
        }
        let followed = Arc::new(Followed {
            state: Mutex::new(State::default()),
            changes: broadcast::channel(BACKLOG).0,
            loaded: tokio::sync::watch::channel(false).0,
        });
        namespaces.insert(ns.to_owned(), followed.clone());
        tokio::spawn(run(self.registry.clone(), ns.to_owned(), followed.clone()));
        followed
    }
}

/// Lists the namespace, then follows its watch; on any break, lists again.
async fn run<S: Store>(registry: Registry<S>, ns: String, followed: Arc<Followed>) {
    let prefix = watch_prefix(&ns);
    loop {
        let listing = match registry.store().list(&prefix).await {
            Ok(listing) => listing,
            Err(error) => {
                warn!(%ns, %error, "cannot list the namespace; trying again");
                tokio::time::sleep(RELIST_PAUSE).await;
                continue;
            }
        };
        let snapshot = match Snapshot::from_listing(&ns, &listing) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                warn!(%ns, %error, "cannot read the namespace; trying again");
                tokio::time::sleep(RELIST_PAUSE).await;
                continue;
            }
        };
        {
            let mut state = followed.state.lock().expect("never poisoned");
            state.rebuild(snapshot);
            let _ = followed.changes.send(Arc::new(Change { everything: true, ..Change::default() }));
        }
        followed.loaded.send_replace(true);
        debug!(%ns, revision = listing.revision, "namespace listed");
        let mut watch = match registry.store().watch(&prefix, listing.revision).await {
            Ok(watch) => watch,
            Err(error) => {
                warn!(%ns, %error, "cannot watch the namespace; listing again");
                tokio::time::sleep(RELIST_PAUSE).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Some(Ok(event)) => {
                    let mut state = followed.state.lock().expect("never poisoned");
                    let change = state.apply(&event);
                    if !change.outbound.is_empty() || !change.inbound.is_empty() {
                        // Sent under the lock, so that a stream that reads the state and
                        // subscribes under it sees every change exactly once.
                        let _ = followed.changes.send(Arc::new(change));
                    }
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    debug!(%ns, "watch history compacted; listing again");
                    break;
                }
                Some(Err(error)) => {
                    warn!(%ns, %error, "watch failed; listing again");
                    tokio::time::sleep(RELIST_PAUSE).await;
                    break;
                }
                None => {
                    tokio::time::sleep(RELIST_PAUSE).await;
                    break;
                }
            }
        }
    }
}
