//! The proxy stream (design §6): each sidecar subscribes with who it is; it gets a full
//! snapshot of what it needs (every client alias of its namespace with its endpoints, and its
//! own inbound listeners), then a versioned update whenever any of that changes, and answers
//! each with an ACK or a NACK.
//!
//! ```text
//! store ─watch─► follower (one per namespace: resources, encoded once) ─broadcast Change─►
//!     stream (one per proxy: what it was sent, the delta) ─► ConfigUpdate ─► proxy
//! ```

mod follower;
pub mod resources;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tether_api::v1::config_stream_server::{ConfigStream, ConfigStreamServer};
use tether_api::v1::{
    CertificateRequest, ConfigUpdate, Hello, IssuedCertificate, ProxyMessage, Resource, TrustBundle,
    proxy_message,
};
use tether_model::SpiffeId;
use tether_model::identity::EDGE;
use tether_store::Store;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::ca::CaState;
use crate::identity::{BootstrapTokens, Issuer, ProxyHandle, Scope, fingerprint};
use crate::{AdminToken, Registry};
use follower::{Change, Followed, Followers, State};
use resources::{Body, Resources};

/// How long a proxy has to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConfigStreamService<S> {
    followers: Arc<Followers<S>>,
    token: AdminToken,
    tokens: BootstrapTokens,
    issuer: Arc<Issuer<S>>,
}

/// Who opened a stream, by its bearer token.
enum Caller {
    /// The admin token: any proxy of any namespace (runners that predate bootstrap tokens,
    /// `tether run`, an edge started by hand).
    Admin,
    /// A bootstrap token: the one task it was made for.
    Task(Scope),
}

impl<S: Store> ConfigStreamService<S> {
    pub fn new(registry: Registry<S>, token: AdminToken, issuer: Arc<Issuer<S>>) -> Self {
        let tokens = BootstrapTokens::new(&token);
        Self { followers: Arc::new(Followers::new(registry)), token, tokens, issuer }
    }

    fn caller(&self, token: &str) -> Option<Caller> {
        if self.token.matches(token) {
            return Some(Caller::Admin);
        }
        self.tokens.verify(token).map(Caller::Task)
    }

    /// The gRPC service as routes to serve beside the REST API (with no fallback of its own,
    /// so that unknown paths get the API's answer).
    pub fn router(self) -> axum::Router {
        let path =
            format!("/{}/{{*method}}", <ConfigStreamServer<Self> as tonic::server::NamedService>::NAME);
        axum::Router::new().route_service(&path, ConfigStreamServer::new(self))
    }
}

#[tonic::async_trait]
impl<S: Store> ConfigStream for ConfigStreamService<S> {
    type SubscribeStream = ReceiverStream<Result<ConfigUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let bearer = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let token = bearer.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
        let Some(caller) = self.caller(token) else {
            return Err(Status::unauthenticated("a valid bearer token (admin or bootstrap) is required"));
        };
        let mut incoming = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.message()).await {
            Ok(Ok(Some(ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
            Ok(_) => return Err(Status::invalid_argument("the first message must be a hello")),
        };
        for (field, value) in
            [("namespace", &hello.namespace), ("service", &hello.service), ("task", &hello.task)]
        {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!("the hello must name the proxy's {field}")));
            }
        }
        let identity = identity_of(&hello, &caller)?;
        info!(namespace = %hello.namespace, service = %hello.service, task = %hello.task, %identity, "proxy subscribed");
        let followed = self.followers.follow(&hello.namespace);
        let (updates, stream) = mpsc::channel(16);
        let issuing = Issuing {
            handle: self.issuer.proxies().connect(&hello.namespace, identity.service(), &hello.task),
            issuer: self.issuer.clone(),
            identity,
            recent: Default::default(),
        };
        tokio::spawn(serve(followed, hello, incoming, updates, issuing));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// The identity a proxy is issued: the one its bootstrap token names (the hello must agree with
/// it), or with the admin token the one its hello names.
fn identity_of(hello: &Hello, caller: &Caller) -> Result<SpiffeId, Status> {
    let service = if hello.edge { EDGE } else { hello.service.as_str() };
    if let Caller::Task(scope) = caller
        && (scope.namespace != hello.namespace || scope.service != service || scope.task != hello.task)
    {
        return Err(Status::permission_denied(format!(
            "the bootstrap token is for task `{}` of `{}` in namespace `{}`, not task `{}` of `{}` in `{}`",
            scope.task, scope.service, scope.namespace, hello.task, service, hello.namespace
        )));
    }
    let id = if hello.edge {
        SpiffeId::edge(&hello.namespace)
    } else {
        SpiffeId::new(&hello.namespace, &hello.service)
    };
    id.map_err(|e| Status::invalid_argument(format!("the hello names no identity tether issues: {e}")))
}

/// Certificate requests a stream may make per [`CSR_WINDOW`]: a sidecar asks once per half
/// lifetime, so more is a sidecar gone wrong (or hostile) making the CA sign in a loop.
const CSR_BURST: usize = 10;
const CSR_WINDOW: Duration = Duration::from_secs(60);

/// A stream's part in identity: what it may be issued, and what it has taken.
struct Issuing<S> {
    issuer: Arc<Issuer<S>>,
    identity: SpiffeId,
    handle: ProxyHandle,
    /// When the last requests were answered, for [`CSR_BURST`].
    recent: std::collections::VecDeque<tokio::time::Instant>,
}

impl<S: Store> Issuing<S> {
    /// The bundle to send in update `version`, if it differs from the one sent before.
    fn bundle(&self, state: &CaState, sent: &mut Option<TrustBundle>, version: u64) -> Option<TrustBundle> {
        let bundle = TrustBundle { roots_pem: state.bundle().roots().map(str::to_owned).collect() };
        if sent.as_ref() == Some(&bundle) {
            return None;
        }
        let fingerprints = state.bundle().ders().map(fingerprint).collect();
        self.handle.sent_bundle(version, fingerprints);
        *sent = Some(bundle.clone());
        Some(bundle)
    }

    /// The answer to a certificate request, to send in update `version`.
    fn certificate(&mut self, request: &CertificateRequest, version: u64) -> IssuedCertificate {
        let now = tokio::time::Instant::now();
        self.recent.retain(|at| now.duration_since(*at) < CSR_WINDOW);
        if self.recent.len() >= CSR_BURST {
            warn!(identity = %self.identity, "too many certificate requests; refusing");
            let error =
                format!("more than {CSR_BURST} certificate requests within {CSR_WINDOW:?}; ask again later");
            return IssuedCertificate { chain_pem: String::new(), error };
        }
        self.recent.push_back(now);
        match self.issuer.issue(&request.csr_pem, &self.identity) {
            Ok((issued, signed_by)) => {
                debug!(identity = %self.identity, not_after = ?issued.not_after, "certificate issued");
                self.handle.sent_certificate(version, signed_by);
                IssuedCertificate { chain_pem: issued.chain_pem, error: String::new() }
            }
            Err(error) => {
                if !error.is_callers_fault() {
                    warn!(identity = %self.identity, %error, "cannot issue a certificate");
                }
                IssuedCertificate { chain_pem: String::new(), error: error.to_string() }
            }
        }
    }
}

/// What one proxy was sent, by resource name.
type Sent = BTreeMap<String, Body>;

/// One proxy's stream: the snapshot, then a delta for every change that concerns it, until the
/// proxy goes away.
async fn serve<S: Store>(
    followed: Arc<Followed>,
    hello: Hello,
    mut incoming: Streaming<ProxyMessage>,
    updates: mpsc::Sender<Result<ConfigUpdate, Status>>,
    mut issuing: Issuing<S>,
) {
    let mut me = Me {
        service: hello.service.clone(),
        task: hello.task.clone(),
        edge: hello.edge,
        reserved: Default::default(),
    };
    let mut loaded = followed.loaded.subscribe();
    tokio::select! {
        result = loaded.wait_for(|loaded| *loaded) => if result.is_err() { return },
        () = updates.closed() => return,
    }
    let mut sent = Sent::new();
    let mut version = 0;
    let (mut changes, view) = resubscribe(&followed, &mut me);
    let first = delta(&mut sent, view);
    version += 1;
    let mut ca = issuing.issuer.subscribe();
    let mut bundle_sent = None;
    let trust_bundle = issuing.bundle(&ca.borrow_and_update(), &mut bundle_sent, version);
    let snapshot = ConfigUpdate {
        version,
        full: true,
        resources: first.resources,
        trust_bundle,
        ..ConfigUpdate::default()
    };
    if send_in_pieces(&updates, snapshot).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(ProxyMessage { kind: Some(proxy_message::Kind::CertificateRequest(request)) })) => {
                    version += 1;
                    let certificate = Some(issuing.certificate(&request, version));
                    let update = ConfigUpdate { version, certificate, ..ConfigUpdate::default() };
                    if send_in_pieces(&updates, update).await.is_err() {
                        break;
                    }
                }
                Ok(Some(message)) => acknowledge(&hello, &issuing.handle, message),
                Ok(None) | Err(_) => break,
            },
            Ok(()) = ca.changed() => {
                let Some(trust_bundle) = issuing.bundle(&ca.borrow_and_update(), &mut bundle_sent, version + 1) else {
                    continue;
                };
                version += 1;
                info!(task = %hello.task, roots = trust_bundle.roots_pem.len(), "sending the new trust bundle");
                let update = ConfigUpdate { version, trust_bundle: Some(trust_bundle), ..ConfigUpdate::default() };
                if send_in_pieces(&updates, update).await.is_err() {
                    break;
                }
            }
            change = changes.recv() => {
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
                    Ok(change) => change.everything || change.spec_changed.as_ref() == Some(&me.service),
                    Err(_) => true,
                });
                let update = if resync {
                    let (fresh, view) = resubscribe(&followed, &mut me);
                    changes = fresh;
                    delta(&mut sent, view)
                } else {
                    let changes: Vec<&Change> = pending.iter().filter_map(|c| c.as_ref().ok().map(|c| &**c)).collect();
                    apply_changes(&mut sent, &me, &changes)
                };
                if update.resources.is_empty() && update.removed.is_empty() {
                    continue;
                }
                version += 1;
                let update = ConfigUpdate { version, full: false, ..update };
                if send_in_pieces(&updates, update).await.is_err() {
                    break;
                }
            }
        }
    }
    debug!(task = %hello.task, "proxy stream ended");
}

/// Subscribes to the namespace's changes and reads the proxy's whole view under one lock, so
/// that the changes received afterwards are exactly those after the view.
fn resubscribe(followed: &Followed, me: &mut Me) -> (broadcast::Receiver<Arc<Change>>, Resources) {
    let state: std::sync::MutexGuard<'_, State> = followed.state.lock().expect("never poisoned");
    let changes = followed.changes.subscribe();
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

/// Who is at the other end of a stream.
struct Me {
    service: String,
    task: String,
    /// An edge proxy: published ports only, no task listeners.
    edge: bool,
    /// Outbound resources this proxy does not get (see [`State::reserved`]); worked out again
    /// whenever its service's spec changes.
    reserved: std::collections::BTreeSet<String>,
}

impl Me {
    /// Whether this proxy gets the outbound resource `name`: edge proxies get the published
    /// ports, every other proxy the client aliases.
    fn wants(&self, name: &str) -> bool {
        name.starts_with(tether_api::resource::PUBLISH) == self.edge && !self.reserved.contains(name)
    }

    fn owns(&self, (service, task): &(String, String)) -> bool {
        !self.edge && *service == self.service && *task == self.task
    }
}

/// The update that takes a proxy from what it was sent to `view`.
fn delta(sent: &mut Sent, view: Resources) -> ConfigUpdate {
    let removed: Vec<String> = sent.keys().filter(|k| !view.contains_key(*k)).cloned().collect();
    for name in &removed {
        sent.remove(name);
    }
    let mut resources = Vec::new();
    for (name, body) in view {
        if sent.get(&name) != Some(&body) {
            resources.push(Resource { name: name.clone(), json: body.clone() });
            sent.insert(name, body);
        }
    }
    ConfigUpdate { resources, removed, ..ConfigUpdate::default() }
}

/// Resource bytes in one message, at most (unless one resource is larger): the gRPC encoder
/// keeps a buffer as large as the largest message it sent, for as long as the stream lives.
const PIECE_BYTES: usize = 64 * 1024;

/// Sends `update` as messages of at most [`PIECE_BYTES`] of resources each, all but the last
/// marked `more`.
async fn send_in_pieces(
    updates: &mpsc::Sender<Result<ConfigUpdate, Status>>,
    update: ConfigUpdate,
) -> Result<(), mpsc::error::SendError<Result<ConfigUpdate, Status>>> {
    for piece in pieces(update) {
        updates.send(Ok(piece)).await?;
    }
    Ok(())
}

fn pieces(update: ConfigUpdate) -> Vec<ConfigUpdate> {
    let ConfigUpdate { version, full, resources, removed, trust_bundle, certificate, more: _ } = update;
    let mut pieces =
        vec![ConfigUpdate { version, full, removed, trust_bundle, certificate, ..ConfigUpdate::default() }];
    let mut size = 0;
    for resource in resources {
        let len = resource.json.len() + resource.name.len();
        let current = pieces.last_mut().expect("there is always a piece");
        if size + len > PIECE_BYTES && !current.resources.is_empty() {
            current.more = true;
            pieces.push(ConfigUpdate { version, full, ..ConfigUpdate::default() });
            size = 0;
        }
        size += len;
        pieces.last_mut().expect("there is always a piece").resources.push(resource);
    }
    pieces
}

/// The update for a run of namespace changes, as far as they concern this proxy.
fn apply_changes(sent: &mut Sent, me: &Me, changes: &[&Change]) -> ConfigUpdate {
    let mut latest: BTreeMap<String, Option<Body>> = BTreeMap::new();
    for change in changes {
        for (name, body) in change.outbound.iter().filter(|(name, _)| me.wants(name)) {
            latest.insert(name.clone(), body.clone());
        }
        for (owner, inbound) in &change.inbound {
            if !me.owns(owner) {
                continue;
            }
            let prefix = tether_api::resource::INBOUND;
            for name in sent.keys().filter(|k| k.starts_with(prefix) && !inbound.contains_key(*k)) {
                latest.insert(name.clone(), None);
            }
            for (name, body) in inbound {
                latest.insert(name.clone(), Some(body.clone()));
            }
        }
    }
    let mut update = ConfigUpdate::default();
    for (name, body) in latest {
        match body {
            Some(body) if sent.get(&name) != Some(&body) => {
                update.resources.push(Resource { name: name.clone(), json: body.clone() });
                sent.insert(name, body);
            }
            None if sent.remove(&name).is_some() => update.removed.push(name),
            _ => {}
        }
    }
    update
}

fn acknowledge(hello: &Hello, handle: &ProxyHandle, message: ProxyMessage) {
    match message.kind {
        Some(proxy_message::Kind::Ack(ack)) => {
            debug!(task = %hello.task, version = ack.version, "ack");
            handle.acked(ack.version);
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
            handle.acked(nack.version);
        }
        _ => debug!(task = %hello.task, "unexpected message on the proxy stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, len: usize) -> Resource {
        Resource { name: name.into(), json: vec![b' '; len].into() }
    }

    #[test]
    fn a_large_update_travels_in_bounded_pieces_and_only_the_last_says_done() {
        let resources: Vec<Resource> = (0..10).map(|i| resource(&format!("outbound/s{i}"), 20_000)).collect();
        let update = ConfigUpdate {
            version: 7,
            full: true,
            resources,
            removed: vec!["gone".into()],
            more: false,
            ..ConfigUpdate::default()
        };
        let pieces = pieces(update);
        assert_eq!(pieces.len(), 4, "three resources of 20 kB fit in 64 KiB");
        assert!(pieces.iter().all(|p| p.version == 7 && p.full));
        assert!(pieces[..3].iter().all(|p| p.more) && !pieces[3].more);
        assert_eq!(pieces.iter().map(|p| p.resources.len()).sum::<usize>(), 10);
        assert_eq!(pieces[0].removed, vec!["gone".to_owned()]);
        let small = pieces_of_one(resource("outbound/x", 10));
        assert_eq!(small.len(), 1);
        assert!(!small[0].more);
        let huge = pieces_of_one(resource("outbound/x", 1 << 20));
        assert_eq!(huge.len(), 1, "a resource larger than a piece still goes, alone");
    }

    fn pieces_of_one(r: Resource) -> Vec<ConfigUpdate> {
        pieces(ConfigUpdate { version: 1, resources: vec![r], ..ConfigUpdate::default() })
    }
}
