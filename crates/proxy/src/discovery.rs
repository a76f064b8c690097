//! A sidecar fed by the control plane: subscribes to its config stream, applies each update to
//! the running proxy and answers ACK or NACK, keeps its last good snapshot on disk, and serves
//! from that snapshot while the control plane is away (design §6, static stability).
//!
//! ```text
//! control plane ══ ConfigUpdate ══► Discovery ── Update ──► Proxy::run_with_updates
//!               ◄══ Ack / Nack ════           ◄─ applied ──
//!               ◄══ CSR ═══════════           ── identity, trust bundle ──► Credentials
//! ```
//!
//! With [`Discovery::with_credentials`] it also keeps the sidecar's identity: it makes a key
//! (which never leaves the process), sends a CSR on the stream, and puts the certificate it gets
//! into the proxy's credentials; it asks again at half the certificate's remaining lifetime, at
//! once when the root that signs changes (a CA rotation), and on every new stream while it
//! has none. While the control plane is away the certificate keeps serving until it expires;
//! then the proxy fails closed until a new one comes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tether_api::resource;
use tether_api::v1::config_stream_client::ConfigStreamClient;

use tether_api::v1::{
    Ack, CertificateRequest, ConfigUpdate, Hello, IssuedCertificate, Nack, ProxyMessage,
    TrustBundle as Bundle, proxy_message,
};
use tether_model::{ProxyConfig, SpiffeId};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataValue;
use tracing::{debug, error, info, warn};

use crate::Update;
use crate::tls::{Credentials, Identity, KeyPair, TrustBundle};

/// Backoff between attempts to reach the control plane: from the first to the last, doubling,
/// each with up to half of it added at random so that proxies don't all come back at once.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);
/// A certificate request unanswered for this long is sent again.
const CSR_PATIENCE: Duration = Duration::from_secs(10);

/// Who the proxy is, where its control plane is, and what it decides for itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The control plane's replicas, e.g. `http://127.0.0.1:7700`: any one of them will do, and
    /// when the one in use fails the next is tried.
    pub servers: Vec<String>,
    pub token: String,
    pub namespace: String,
    pub service: String,
    pub task: String,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// Where the last good snapshot is kept.
    pub state_dir: PathBuf,
    /// Bind every outbound listener on this address with a port of the system's choosing,
    /// instead of the alias's own address and port (several sidecars on one host without
    /// sandboxes).
    pub outbound_ip: Option<IpAddr>,
    /// An edge proxy: it serves the namespace's published ports instead of a task's listeners.
    pub edge: bool,
    /// How long draining keeps serving new connections (`drainWaitSeconds`); `None` keeps the
    /// default.
    pub drain_wait_seconds: Option<f64>,
}

/// Checks a control-plane URL as `--server` takes it: `http://HOST:PORT`.
pub fn check_server_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(()),
        _ => Err(format!("`{url}` is not an http://HOST:PORT URL, e.g. http://127.0.0.1:7700")),
    }
}

/// The resources the proxy has, by name, and the version they came with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    version: u64,
    resources: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the saved snapshot {path} cannot be used: {reason}")]
    Saved { path: PathBuf, reason: String },
    #[error("cannot keep the snapshot in {path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
}

pub struct Discovery {
    settings: Settings,
    /// What the control plane has sent on this stream, all updates applied: updates are deltas
    /// on top of it, whether or not the proxy could serve it.
    received: Snapshot,
    /// What the proxy serves: the last snapshot it could apply, also on disk.
    snapshot: Snapshot,
    /// The sidecar's identity, when it has one to keep.
    identity: Option<Keeper>,
}

impl Discovery {
    pub fn new(settings: Settings) -> Self {
        Self { settings, received: Snapshot::default(), snapshot: Snapshot::default(), identity: None }
    }

    /// Also keeps `credentials` holding a certificate from the control plane's CA and its trust
    /// bundle (see the module documentation).
    pub fn with_credentials(mut self, credentials: Arc<Credentials>) -> Self {
        self.identity = Some(Keeper::new(credentials));
        self
    }

    /// The config of the snapshot saved by an earlier run, if there is one.
    pub fn load_saved(&mut self) -> Result<Option<ProxyConfig>, DiscoveryError> {
        let path = self.snapshot_path();
        let saved = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DiscoveryError::Saved { path, reason: e.to_string() }),
        };
        let snapshot: Snapshot = serde_json::from_slice(&saved)
            .map_err(|e| DiscoveryError::Saved { path: path.clone(), reason: e.to_string() })?;
        let config = self.config_of(&snapshot).map_err(|reason| DiscoveryError::Saved { path, reason })?;
        info!(version = snapshot.version, "serving the saved snapshot until the control plane answers");
        self.received = snapshot.clone();
        self.snapshot = snapshot;
        Ok(Some(config))
    }

    /// Follows the config stream for as long as the proxy runs, reconnecting with jittered
    /// backoff, and hands every update to the proxy through `updates`. A proxy that has no
    /// config yet takes the first update's config itself (see `tether proxy --server`).
    pub async fn run(mut self, updates: mpsc::Sender<Update>) {
        let mut backoff = BACKOFF_FIRST;
        let mut replica = 0;
        loop {
            let server = self.settings.servers[replica % self.settings.servers.len()].clone();
            match self.follow(&server, &updates).await {
                Ok(Followed::ProxyGone) => return,
                Ok(Followed::Ended) => {
                    info!("the control plane closed the config stream; reconnecting");
                    backoff = BACKOFF_FIRST;
                }
                Err(error) if refused(&error) => {
                    // Not an outage: the same token and hello will be refused again until the
                    // operator fixes them. Keep asking (backing off), and say so plainly.
                    error!(%server, reason = %error.message(), "the control plane refused this sidecar; serving the last good config, if any");
                }
                Err(error) => {
                    warn!(%server, %error, "control plane unreachable; serving the last good config");
                    replica += 1;
                }
            }
            if let Some(keeper) = &mut self.identity {
                keeper.report_expiry();
            }
            let pause = backoff + backoff.mul_f64(fastrand::f64() / 2.0);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_LAST);
        }
    }

    /// One stream: hello, then every update until the stream ends.
    async fn follow(
        &mut self,
        server: &str,
        updates: &mpsc::Sender<Update>,
    ) -> Result<Followed, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(server.to_owned())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (send, outgoing) = mpsc::channel(16);
        let hello = Hello {
            namespace: self.settings.namespace.clone(),
            service: self.settings.service.clone(),
            task: self.settings.task.clone(),
            version: self.snapshot.version,
            edge: self.settings.edge,
        };
        let _ = send.send(message(proxy_message::Kind::Hello(hello))).await;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let bearer = MetadataValue::try_from(format!("Bearer {}", self.settings.token))
            .map_err(|_| tonic::Status::invalid_argument("the token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", bearer);
        let mut stream = ConfigStreamClient::new(channel).subscribe(request).await?.into_inner();
        info!(%server, "subscribed to the config stream");
        if let Some(keeper) = &mut self.identity {
            keeper.new_stream();
        }
        let mut pending: Option<ConfigUpdate> = None;
        loop {
            let renewal = self.identity.as_ref().and_then(Keeper::next_request);
            let piece = tokio::select! {
                piece = stream.message() => match piece? {
                    Some(piece) => piece,
                    None => break,
                },
                () = sleep_until(renewal) => {
                    let keeper = self.identity.as_mut().expect("a renewal is due only with an identity to keep");
                    if let Some(csr) = keeper.request(&self.settings)
                        && send.send(message(csr)).await.is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            // A large update arrives in pieces: apply it once whole.
            let mut update = match pending.take() {
                Some(mut update) if update.version == piece.version => {
                    update.resources.extend(piece.resources);
                    update.removed.extend(piece.removed);
                    update.trust_bundle = update.trust_bundle.or(piece.trust_bundle);
                    update.certificate = update.certificate.or(piece.certificate);
                    update.more = piece.more;
                    update
                }
                _ => piece,
            };
            if update.more {
                pending = Some(update);
                continue;
            }
            let version = update.version;
            if let Some(keeper) = &mut self.identity {
                keeper.take(update.trust_bundle.take(), update.certificate.take());
            }
            // An update that carried only identity has nothing for the listeners.
            if !update.full && update.resources.is_empty() && update.removed.is_empty() {
                if send.send(message(proxy_message::Kind::Ack(Ack { version }))).await.is_err() {
                    break;
                }
                continue;
            }
            let reply = match self.apply(update, updates).await {
                Applied::Yes => proxy_message::Kind::Ack(Ack { version }),
                Applied::No(error) => {
                    warn!(version, %error, "config update refused; still serving the previous one");
                    proxy_message::Kind::Nack(Nack { version, error })
                }
                Applied::ProxyGone => return Ok(Followed::ProxyGone),
            };
            if send.send(message(reply)).await.is_err() {
                break;
            }
        }
        Ok(Followed::Ended)
    }

    /// Applies one update to what was received; only when the proxy takes the resulting config
    /// does it become the snapshot, on disk too. A refused config is tried again, whole, with
    /// the next update: the control plane sends deltas only.
    async fn apply(&mut self, update: ConfigUpdate, updates: &mpsc::Sender<Update>) -> Applied {
        let next = &mut self.received;
        if update.full {
            next.resources.clear();
        }
        next.version = update.version;
        for name in &update.removed {
            next.resources.remove(name);
        }
        let mut unreadable = None;
        for r in update.resources {
            let value = if !r.name.starts_with(resource::INBOUND) && !r.name.starts_with(resource::OUTBOUND) {
                Err(format!("unknown resource `{}`", r.name))
            } else {
                serde_json::from_slice(&r.json).map_err(|e| format!("resource `{}` is not JSON: {e}", r.name))
            };
            match value {
                Ok(value) => {
                    next.resources.insert(r.name, value);
                }
                // Kept as received (null), so that the config fails until it is replaced.
                Err(error) => {
                    next.resources.insert(r.name, serde_json::Value::Null);
                    unreadable.get_or_insert(error);
                }
            }
        }
        if let Some(error) = unreadable {
            return Applied::No(error);
        }
        let next = self.received.clone();
        let config = match self.config_of(&next) {
            Ok(config) => config,
            Err(error) => return Applied::No(error),
        };
        let (done, applied) = oneshot::channel();
        if updates.send(Update { config, done }).await.is_err() {
            return Applied::ProxyGone;
        }
        match applied.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Applied::No(error.to_string()),
            Err(_) => return Applied::ProxyGone,
        }
        debug!(version = next.version, resources = next.resources.len(), "config applied");
        self.snapshot = next;
        if let Err(error) = self.save() {
            warn!(%error, "the snapshot was applied but not saved");
        }
        Applied::Yes
    }

    /// The proxy config made of a snapshot's resources and the proxy's own settings, decoded
    /// and validated exactly like a config file.
    fn config_of(&self, snapshot: &Snapshot) -> Result<ProxyConfig, String> {
        let of = |prefix: &str| -> Vec<&serde_json::Value> {
            snapshot.resources.iter().filter(|(name, _)| name.starts_with(prefix)).map(|(_, v)| v).collect()
        };
        let mut document = serde_json::json!({
            "admin": self.settings.admin.to_string(),
            "service": self.settings.service,
            "inbound": of(resource::INBOUND),
            "outbound": of(resource::OUTBOUND),
        });
        if let Some(wait) = self.settings.drain_wait_seconds {
            document["drainWaitSeconds"] = wait.into();
        }
        let name = format!("config version {}", snapshot.version);
        let mut config =
            ProxyConfig::parse_streamed(&name, &document.to_string()).map_err(|errors| errors.to_string())?;
        if let Some(ip) = self.settings.outbound_ip {
            for outbound in &mut config.outbound {
                outbound.listen = SocketAddr::new(ip, 0);
            }
        }
        Ok(config)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.settings.state_dir.join("snapshot.json")
    }

    /// Writes the snapshot so that a crash leaves either the old one or the new one whole.
    fn save(&self) -> Result<(), DiscoveryError> {
        let path = self.snapshot_path();
        let failed = |source| DiscoveryError::Save { path: path.clone(), source };
        std::fs::create_dir_all(&self.settings.state_dir).map_err(failed)?;
        let bytes = serde_json::to_vec(&self.snapshot).expect("a snapshot serializes");
        write_atomically(&path, &bytes).map_err(failed)
    }
}

/// Keeps the sidecar's certificate current and its trust bundle as the control plane sends it.
struct Keeper {
    credentials: Arc<Credentials>,
    /// The key of the request in flight, and when it was sent.
    pending: Option<(KeyPair, Instant)>,
    /// When to ask for the next certificate.
    renew_at: Option<Instant>,
    /// The root that signed the current certificate (DER), to notice when another one signs.
    signed_by: Option<Vec<u8>>,
    /// The expiry already reported, so that it is reported once.
    reported: Option<SystemTime>,
}

impl Keeper {
    fn new(credentials: Arc<Credentials>) -> Self {
        Self { credentials, pending: None, renew_at: None, signed_by: None, reported: None }
    }

    /// A new stream: a request sent on the old one will not be answered.
    fn new_stream(&mut self) {
        self.pending = None;
        if self.credentials.identity().is_none() {
            self.renew_at = Some(Instant::now());
        }
    }

    /// When to send the next request: the renewal time, or a request unanswered for too long
    /// sent again.
    fn next_request(&self) -> Option<Instant> {
        match &self.pending {
            Some((_, sent)) => Some(*sent + CSR_PATIENCE),
            None => self.renew_at,
        }
    }

    /// A certificate request for a fresh key.
    fn request(&mut self, settings: &Settings) -> Option<proxy_message::Kind> {
        let id = if settings.edge {
            SpiffeId::edge(&settings.namespace)
        } else {
            SpiffeId::new(&settings.namespace, &settings.service)
        };
        let made = id.map_err(|e| e.to_string()).and_then(|id| {
            let key = Identity::new_key().map_err(|e| e.to_string())?;
            let csr = Identity::csr(&key, &id).map_err(|e| e.to_string())?;
            Ok((key, csr))
        });
        match made {
            Ok((key, csr_pem)) => {
                debug!("asking for a certificate");
                self.pending = Some((key, Instant::now()));
                Some(proxy_message::Kind::CertificateRequest(CertificateRequest { csr_pem }))
            }
            Err(error) => {
                error!(%error, "cannot make a certificate request");
                self.pending = None;
                self.renew_at = Some(Instant::now() + CSR_PATIENCE);
                None
            }
        }
    }

    /// What an update brought: a trust bundle, an answer to the request in flight.
    fn take(&mut self, bundle: Option<Bundle>, certificate: Option<IssuedCertificate>) {
        if let Some(bundle) = bundle {
            match TrustBundle::from_pem(&bundle.roots_pem.concat()) {
                Ok(bundle) => {
                    let signing = bundle.certificates().first().map(|root| root.to_vec());
                    info!(roots = bundle.certificates().len(), "trust bundle updated");
                    self.credentials.update_bundle(bundle);
                    // A CA rotation's new root signs now: move to it at once, so that the
                    // old root can leave every bundle.
                    if self.signed_by.is_some() && signing != self.signed_by && self.pending.is_none() {
                        info!("the signing root changed; asking for a certificate from it");
                        self.renew_at = Some(Instant::now());
                    }
                }
                Err(error) => warn!(%error, "the control plane sent a trust bundle that cannot be used"),
            }
        }
        let Some(certificate) = certificate else { return };
        let Some((key, _)) = self.pending.take() else {
            debug!("a certificate arrived with no request in flight; ignored");
            return;
        };
        if !certificate.error.is_empty() {
            warn!(error = %certificate.error, "the control plane refused the certificate request; asking again later");
            self.renew_at = Some(Instant::now() + CSR_PATIENCE);
            return;
        }
        match Identity::from_issued(key, &certificate.chain_pem) {
            Ok(identity) => {
                let remaining = identity.not_after().duration_since(SystemTime::now()).unwrap_or_default();
                info!(
                    identity = %identity.spiffe_id(),
                    expires_in_s = remaining.as_secs(),
                    "certificate issued"
                );
                self.renew_at = Some(Instant::now() + remaining / 2);
                self.signed_by = identity.chain().get(1).map(|root| root.to_vec());
                self.reported = None;
                self.credentials.update_identity(identity);
            }
            Err(error) => {
                warn!(%error, "the issued certificate cannot be used; asking again later");
                self.renew_at = Some(Instant::now() + CSR_PATIENCE);
            }
        }
    }

    /// Says once, loudly, that the certificate has expired while the control plane is away.
    fn report_expiry(&mut self) {
        let Some(identity) = self.credentials.identity() else { return };
        if identity.not_after() <= SystemTime::now() && self.reported != Some(identity.not_after()) {
            self.reported = Some(identity.not_after());
            error!(
                identity = %identity.spiffe_id(),
                "the certificate expired and the control plane cannot be reached to renew it: mesh connections are refused (never sent in plaintext) until it returns"
            );
        }
    }
}

/// Whether the control plane turned the stream down for who this sidecar is (its token, its
/// hello), rather than failing to answer.
fn refused(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument)
}

/// Sleeps until `at`; forever if it is `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

enum Followed {
    /// The control plane ended the stream.
    Ended,
    /// The proxy stopped (it is draining): nothing more to do.
    ProxyGone,
}

enum Applied {
    Yes,
    No(String),
    ProxyGone,
}

fn message(kind: proxy_message::Kind) -> ProxyMessage {
    ProxyMessage { kind: Some(kind) }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
