//! Identity in the running control plane (design §8): the CA that signs sidecars' CSRs, the
//! trust bundle streamed to them, the bootstrap tokens that decide who gets which identity, and
//! root rotation that waits for the sidecars at each step.
//!
//! ```text
//! CaStore (/ca) ─watch─► Issuer.state ─► every proxy stream: trust bundle, then any change of it
//!                          │
//! CSR + bootstrap token ───┴─► Ca::sign ─► certificate for spiffe://<namespace>/<service>
//!
//! proxy streams ─ack─► Proxies (which roots each sidecar trusts, which root signed its cert)
//!                          └─► rotate: begin ─► (all trust the new root) activate ─► (all renewed) finish
//! ```

mod bootstrap;
mod proxies;

use std::sync::Arc;
use std::time::Duration;

use tether_store::Store;
use tokio::sync::watch;
use tracing::{info, warn};

pub use bootstrap::{BootstrapTokens, Scope};
pub use proxies::{Lagging, Proxies, ProxyHandle, ProxyStatus, fingerprint};

use crate::ca::{self, CA_KEY, Ca, CaState, CaStore, Issued, RotationPhase, RotationStep};
use crate::{Error, Result};
use tether_model::SpiffeId;

/// Certificates live this long unless the server is told otherwise (design §8).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The name new roots carry (`CN=tether root CA tether <key id>`).
const ROOT_NAME: &str = "tether";
/// How long to wait before following the store's CA key again after its watch failed.
const REFOLLOW_PAUSE: Duration = Duration::from_secs(1);

/// How the server's CA is set up.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// How long the certificates it issues live; renewed at half-life.
    pub lifetime: Duration,
    /// A CA the operator supplies (`--ca-cert`, `--ca-key`); otherwise one is made on first
    /// start and kept in the store.
    pub supplied: Option<Ca>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        Self { lifetime: DEFAULT_LIFETIME, supplied: None }
    }
}

/// The CA as the server runs it.
pub struct Issuer<S> {
    cas: CaStore<S>,
    state: watch::Sender<Arc<CaState>>,
    lifetime: Duration,
    proxies: Arc<Proxies>,
}

/// Where a rotation stands, and what it waits for.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    /// `idle`, `staged` or `activated`.
    pub phase: &'static str,
    /// The roots sidecars trust, the signing one first.
    pub roots: Vec<RootInfo>,
    /// The lifetime of the certificates issued, in seconds.
    pub certificate_lifetime_seconds: u64,
    /// Sidecars connected to this server.
    pub proxies: Vec<ProxyStatus>,
    /// What the next step waits for: connected sidecars that do not trust the next root yet
    /// (before `activate`), or whose certificate the previous root signed (before `finish`).
    /// A sidecar that is away is not waited for: it gets the current bundle and a new
    /// certificate when it comes back.
    pub waiting_for: Vec<Lagging>,
    /// The step that comes next, if a rotation is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step: Option<&'static str>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RootInfo {
    pub subject: String,
    /// The first 8 bytes of the certificate's SHA-256, in hex.
    pub fingerprint: String,
    pub not_after: String,
    /// Whether it signs new certificates.
    pub signing: bool,
}

impl<S: Store> Issuer<S> {
    /// Loads the CA from the store, creating it on first start (or storing the supplied one),
    /// and follows the store so that a rotation made through another replica reaches this
    /// one's sidecars too.
    pub async fn start(store: S, options: IdentityOptions) -> Result<Arc<Self>> {
        let cas = CaStore::new(store, CA_KEY);
        let stored = match options.supplied {
            None => cas.load_or_create(ROOT_NAME).await.map_err(internal)?,
            Some(supplied) => {
                let stored = cas.load_or_insert(supplied.clone()).await.map_err(internal)?;
                if !stored.state.bundle().contains_der(supplied.cert_der()) {
                    return Err(Error::Ca(format!(
                        "the store already holds another CA (`{}`) than the one supplied (`{}`); to move to the supplied one, run `tether ca rotate --ca-cert FILE --ca-key FILE`",
                        stored.state.active().subject(),
                        supplied.subject()
                    )));
                }
                stored
            }
        };
        info!(root = %stored.state.active().subject(), phase = ?stored.state.phase(), "certificate authority ready");
        let (state, _) = watch::channel(Arc::new(stored.state));
        let issuer = Arc::new(Self { cas, state, lifetime: options.lifetime, proxies: Arc::default() });
        tokio::spawn(follow(Arc::downgrade(&issuer), issuer.subscribe(), stored.revision));
        Ok(issuer)
    }

    /// The CA's state as of now; `changed()` on it says when the trust bundle may have changed.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.state.subscribe()
    }

    pub fn proxies(&self) -> &Arc<Proxies> {
        &self.proxies
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A certificate for `id`, for the key in `csr_pem`, signed by the active root; and that
    /// root's fingerprint.
    pub fn issue(&self, csr_pem: &str, id: &SpiffeId) -> ca::Result<(Issued, String)> {
        let state = self.state.borrow().clone();
        let issued = state.active().sign(csr_pem, id, self.lifetime)?;
        Ok((issued, fingerprint(state.active().cert_der())))
    }

    /// Where things stand, and what the next rotation step waits for.
    pub fn status(&self) -> CaStatus {
        let state = self.state.borrow().clone();
        let waiting_for = next_step(&state).map(|step| self.lagging(step, &state)).unwrap_or_default();
        CaStatus {
            phase: match state.phase() {
                RotationPhase::Idle => "idle",
                RotationPhase::Staged => "staged",
                RotationPhase::Activated => "activated",
            },
            roots: roots(&state),
            certificate_lifetime_seconds: self.lifetime.as_secs(),
            proxies: self.proxies.status(),
            waiting_for,
            next_step: next_step(&state).map(step_name),
        }
    }

    /// One step of a rotation (see `ca::rotation`). `activate` and `finish` wait for the
    /// sidecars: they are refused while [`CaStatus::waiting_for`] is not empty, unless `force`.
    /// `next` is the root to move to for `begin` (a new one is made otherwise).
    pub async fn rotate(&self, step: RotationStep, next: Option<Ca>, force: bool) -> Result<CaStatus> {
        let stored = self.cas.load().await.map_err(internal)?.ok_or_else(|| Error::Corrupt {
            key: CA_KEY.to_owned(),
            reason: "the CA state is missing from the store".to_owned(),
        })?;
        let mut state = stored.state;
        if !force && step != RotationStep::Begin && state.phase() == expected_phase(step) {
            let lagging = self.lagging(step, &state);
            if !lagging.is_empty() {
                return Err(Error::NotYet(not_yet(step, &lagging)));
            }
        }
        let done = match (step, next) {
            (RotationStep::Begin, Some(next)) => state.stage(next),
            (RotationStep::Begin, None) => state.begin_rotation(ROOT_NAME),
            (RotationStep::Activate, _) => state.activate(),
            (RotationStep::Finish, _) => state.finish(),
        };
        done.map_err(|e| match e {
            ca::Error::RotationOutOfOrder { .. } => Error::NotYet(e.to_string()),
            other => internal(other),
        })?;
        self.cas.save(&state, stored.revision).await.map_err(internal)?;
        info!(step = %step, signing = %state.active().subject(), roots = state.bundle().len(), "CA rotation step done");
        // The store's watch brings it too; this way this replica's sidecars hear of it at once.
        self.state.send_replace(Arc::new(state));
        Ok(self.status())
    }

    /// The connected sidecars the step waits for.
    fn lagging(&self, step: RotationStep, state: &CaState) -> Vec<Lagging> {
        match step {
            RotationStep::Begin => Vec::new(),
            RotationStep::Activate => match state.staged() {
                Some(next) => self.proxies.not_trusting(&fingerprint(next.cert_der())),
                None => Vec::new(),
            },
            RotationStep::Finish => self.proxies.not_signed_by(&fingerprint(state.active().cert_der())),
        }
    }
}

/// Keeps the issuer's state equal to the store's until the issuer is gone.
async fn follow<S: Store>(
    issuer: std::sync::Weak<Issuer<S>>,
    mut alive: watch::Receiver<Arc<CaState>>,
    mut revision: tether_store::Revision,
) {
    loop {
        let Some(cas) = issuer.upgrade().map(|i| i.cas.clone()) else { return };
        let watched = cas.store().watch(CA_KEY, revision).await;
        match watched {
            Ok(mut watch) => loop {
                let event = tokio::select! {
                    event = watch.next() => event,
                    () = gone(&mut alive) => return,
                };
                match event {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        warn!(%error, "following the CA in the store failed; following it again");
                        break;
                    }
                    None => break,
                }
                match cas.load().await {
                    Ok(Some(stored)) => {
                        revision = stored.revision;
                        let Some(issuer) = issuer.upgrade() else { return };
                        issuer.state.send_if_modified(|current| {
                            let changed = **current != stored.state;
                            if changed {
                                *current = Arc::new(stored.state);
                            }
                            changed
                        });
                    }
                    Ok(None) => warn!("the CA state was deleted from the store; keeping the one in memory"),
                    Err(error) => warn!(%error, "cannot read the CA state; keeping the one in memory"),
                }
            },
            Err(error) => warn!(%error, "cannot follow the CA in the store; trying again"),
        }
        tokio::time::sleep(REFOLLOW_PAUSE).await;
    }
}

/// Resolves once the issuer, which holds the state's sender, has been dropped.
async fn gone(state: &mut watch::Receiver<Arc<CaState>>) {
    while state.changed().await.is_ok() {}
}

fn roots(state: &CaState) -> Vec<RootInfo> {
    let active = fingerprint(state.active().cert_der());
    state
        .bundle()
        .ders()
        .map(|der| {
            let fingerprint = fingerprint(der);
            let (subject, not_after) = match x509_parser::parse_x509_certificate(der) {
                Ok((_, cert)) => (cert.subject().to_string(), cert.validity().not_after.to_string()),
                Err(_) => (String::new(), String::new()),
            };
            RootInfo { subject, signing: fingerprint == active, fingerprint, not_after }
        })
        .collect()
}

fn next_step(state: &CaState) -> Option<RotationStep> {
    match state.phase() {
        RotationPhase::Idle => None,
        RotationPhase::Staged => Some(RotationStep::Activate),
        RotationPhase::Activated => Some(RotationStep::Finish),
    }
}

fn expected_phase(step: RotationStep) -> RotationPhase {
    match step {
        RotationStep::Begin => RotationPhase::Idle,
        RotationStep::Activate => RotationPhase::Staged,
        RotationStep::Finish => RotationPhase::Activated,
    }
}

pub fn step_name(step: RotationStep) -> &'static str {
    match step {
        RotationStep::Begin => "begin",
        RotationStep::Activate => "activate",
        RotationStep::Finish => "finish",
    }
}

fn not_yet(step: RotationStep, lagging: &[Lagging]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> =
        lagging.iter().take(SHOWN).map(|l| format!("{}/{} ({})", l.namespace, l.task, l.reason)).collect();
    if lagging.len() > SHOWN {
        names.push(format!("and {} more", lagging.len() - SHOWN));
    }
    let why = match step {
        RotationStep::Activate => "not every sidecar trusts the next root yet",
        _ => "not every sidecar has a certificate from the new root yet",
    };
    format!(
        "cannot {step} yet: {why}: {}; wait and try again, or pass force to go ahead (their peers will refuse them)",
        names.join(", ")
    )
}

fn internal(e: ca::Error) -> Error {
    match e {
        ca::Error::Store(e) => e.into(),
        ca::Error::Corrupt { key, reason } => Error::Corrupt { key, reason },
        other => Error::Ca(other.to_string()),
    }
}
