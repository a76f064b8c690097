//! One proxy's stream: the snapshot, then a delta for every change that concerns it, a trust
//! bundle whenever the CA's changes, and an answer to every certificate request, until the
//! proxy goes away.

use std::sync::Arc;

use tether_api::pieces;
use tether_api::v1::{ConfigUpdate, Hello, ProxyMessage, proxy_message};
use tether_store::Store;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::delta::{self, Me, Sent};
use super::follower::{Change, Followed, State};
use super::issuing::Issuing;
use super::resources::Resources;
use crate::ca::CaState;

/// The stream's messages to the proxy.
pub type Updates = mpsc::Sender<Result<ConfigUpdate, Status>>;

/// The proxy went away: nothing more to send.
struct Gone;

pub struct Session<S> {
    followed: Arc<Followed>,
    hello: Hello,
    updates: Updates,
    issuing: Issuing<S>,
    me: Me,
    sent: Sent,
    /// The version of the last update sent.
    version: u64,
}

impl<S: Store> Session<S> {
    pub fn new(followed: Arc<Followed>, hello: Hello, updates: Updates, issuing: Issuing<S>) -> Self {
        let me = Me {
            service: hello.service.clone(),
            task: hello.task.clone(),
            edge: hello.edge,
            reserved: Default::default(),
        };
        Self { followed, hello, updates, issuing, me, sent: Sent::new(), version: 0 }
    }

    /// Serves the proxy until it goes away.
    pub async fn run(mut self, mut incoming: Streaming<ProxyMessage>) {
        let mut loaded = self.followed.loaded.subscribe();
        tokio::select! {
            result = loaded.wait_for(|loaded| *loaded) => if result.is_err() { return },
            () = self.updates.closed() => return,
        }
        let mut ca = self.issuing.issuer().subscribe();
        let Ok(mut changes) = self.send_snapshot(&mut ca).await else { return };
        loop {
            let sent = tokio::select! {
                message = incoming.message() => match message {
                    Ok(Some(message)) => self.answer(message).await,
                    Ok(None) | Err(_) => break,
                },
                Ok(()) = ca.changed() => self.send_bundle(&mut ca).await,
                change = changes.recv() => self.send_changes(change, &mut changes).await,
            };
            if sent.is_err() {
                break;
            }
        }
        debug!(task = %self.hello.task, "proxy stream ended");
    }

    /// The first update: the proxy's whole view and the trust bundle. Returns the namespace's
    /// changes from that view on.
    async fn send_snapshot(
        &mut self,
        ca: &mut watch::Receiver<Arc<CaState>>,
    ) -> Result<broadcast::Receiver<Arc<Change>>, Gone> {
        let (changes, view) = self.resubscribe();
        let first = delta::delta(&mut self.sent, view);
        let version = self.next_version();
        let state = ca.borrow_and_update().clone();
        let trust_bundle = self.issuing.bundle(&state, version);
        let snapshot = ConfigUpdate {
            version,
            full: true,
            resources: first.resources,
            trust_bundle,
            ..ConfigUpdate::default()
        };
        self.send(snapshot).await?;
        Ok(changes)
    }

    /// A message from the proxy: a certificate request is answered in an update of its own, the
    /// rest are answers to updates.
    async fn answer(&mut self, message: ProxyMessage) -> Result<(), Gone> {
        if let Some(proxy_message::Kind::CertificateRequest(request)) = message.kind {
            let version = self.next_version();
            let certificate = Some(self.issuing.certificate(&request, version));
            return self.send(ConfigUpdate { version, certificate, ..ConfigUpdate::default() }).await;
        }
        self.acknowledge(message);
        Ok(())
    }

    /// The CA's state changed: the trust bundle goes out if it is not the one sent.
    async fn send_bundle(&mut self, ca: &mut watch::Receiver<Arc<CaState>>) -> Result<(), Gone> {
        let state = ca.borrow_and_update().clone();
        let Some(trust_bundle) = self.issuing.bundle(&state, self.version + 1) else {
            return Ok(());
        };
        let version = self.next_version();
        info!(task = %self.hello.task, roots = trust_bundle.roots_pem.len(), "sending the new trust bundle");
        self.send(ConfigUpdate { version, trust_bundle: Some(trust_bundle), ..ConfigUpdate::default() }).await
    }

    /// Namespace changes, `change` and whatever else has arrived, in one update. A stream that
    /// fell behind, a relist or a change to the proxy's own service resubscribes `changes`.
    async fn send_changes(
        &mut self,
        change: Result<Arc<Change>, broadcast::error::RecvError>,
        changes: &mut broadcast::Receiver<Arc<Change>>,
    ) -> Result<(), Gone> {
        // Whatever else has arrived goes into the same update.
        let mut pending = vec![change];
        loop {
            match changes.try_recv() {
                Ok(more) => pending.push(Ok(more)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    pending.push(Err(broadcast::error::RecvError::Lagged(n)));
                }
                Err(_) => break,
            }
        }
        let resync = pending.iter().any(|c| match c {
            Ok(change) => change.everything || change.spec_changed.as_ref() == Some(&self.me.service),
            Err(_) => true,
        });
        let update = if resync {
            let (fresh, view) = self.resubscribe();
            *changes = fresh;
            delta::delta(&mut self.sent, view)
        } else {
            let changes: Vec<&Change> =
                pending.iter().filter_map(|c| c.as_ref().ok().map(|c| &**c)).collect();
            delta::apply_changes(&mut self.sent, &self.me, &changes)
        };
        if update.resources.is_empty() && update.removed.is_empty() {
            return Ok(());
        }
        let version = self.next_version();
        self.send(ConfigUpdate { version, full: false, ..update }).await
    }

    /// Subscribes to the namespace's changes and reads the proxy's whole view under one lock, so
    /// that the changes received afterwards are exactly those after the view.
    fn resubscribe(&mut self) -> (broadcast::Receiver<Arc<Change>>, Resources) {
        let me = &mut self.me;
        let state: std::sync::MutexGuard<'_, State> = self.followed.state.lock().expect("never poisoned");
        let changes = self.followed.changes.subscribe();
        if !me.edge {
            me.reserved = state.reserved(&me.service);
        }
        let mut view: Resources = state
            .outbound
            .iter()
            .filter(|(name, _)| me.wants(name))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect();
        if !me.edge {
            view.extend(state.inbound(&me.service, &me.task));
        }
        (changes, view)
    }

    fn acknowledge(&self, message: ProxyMessage) {
        let hello = &self.hello;
        match message.kind {
            Some(proxy_message::Kind::Ack(ack)) => {
                debug!(task = %hello.task, version = ack.version, "ack");
                self.issuing.handle().acked(ack.version);
            }
            Some(proxy_message::Kind::Nack(nack)) => {
                warn!(
                    namespace = %hello.namespace,
                    service = %hello.service,
                    task = %hello.task,
                    version = nack.version,
                    error = %nack.error,
                    "the proxy refused a config update"
                );
                // A NACK refuses the listeners; the trust bundle and certificate an update carries
                // are taken either way.
                self.issuing.handle().acked(nack.version);
            }
            _ => debug!(task = %hello.task, "unexpected message on the proxy stream"),
        }
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Sends `update` in pieces (see [`pieces::split`]).
    async fn send(&self, update: ConfigUpdate) -> Result<(), Gone> {
        for piece in pieces::split(update) {
            self.updates.send(Ok(piece)).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}
