//! The config stream's client: follows the stream, applies each update and answers it, keeps
//! the last good snapshot, and hands certificates and bundles to the [`Keeper`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_api::ResourceName;
use tether_api::pieces::Joiner;
use tether_api::v1::config_stream_client::ConfigStreamClient;
use tether_api::v1::{Ack, ConfigUpdate, Hello, Nack, ProxyMessage, proxy_message};
use tether_model::ProxyConfig;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tracing::{debug, error, info, warn};

use super::keeper::Keeper;
use super::{DiscoveryError, Settings};
use crate::Update;
use crate::tls::Credentials;

/// Backoff between attempts to reach the control plane: from the first to the last, doubling,
/// each with up to half of it added at random so that proxies don't all come back at once.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);

/// The resources the proxy has, by name, and the version they came with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    version: u64,
    resources: BTreeMap<String, serde_json::Value>,
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
        let mut joiner = Joiner::default();
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
            let Some(mut update) = joiner.push(piece) else { continue };
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
            let value = match ResourceName::parse(&r.name) {
                Err(unknown) => Err(unknown.to_string()),
                Ok(_) => serde_json::from_slice(&r.json)
                    .map_err(|e| format!("resource `{}` is not JSON: {e}", r.name)),
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
        // Names of no known kind (kept from a refused update) are no listener of either list.
        let of = |outbound: bool| -> Vec<&serde_json::Value> {
            let known =
                snapshot.resources.iter().filter_map(|(name, v)| Some((ResourceName::parse(name).ok()?, v)));
            known.filter(|(name, _)| name.kind().is_outbound() == outbound).map(|(_, v)| v).collect()
        };
        let mut document = serde_json::json!({
            "admin": self.settings.admin.to_string(),
            "service": self.settings.service,
            "inbound": of(false),
            "outbound": of(true),
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

/// Whether the control plane turned the stream down for who this sidecar is (its token, its
/// hello), rather than failing to answer.
fn refused(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument)
}

/// Sleeps until `at`; forever if it is `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
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
