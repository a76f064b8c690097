//! What a sidecar proves itself with (its [`Identity`]) and whom it trusts (the
//! [`TrustBundle`]), held in [`Credentials`] that both can be swapped in while serving:
//! renewal and CA rotation never drop a connection, as each handshake reads the current ones.
//!
//! A sidecar starts with neither: the control plane's stream brings them. Until then, and once
//! its certificate has expired, the credentials are [`Unusable`] and every handshake fails:
//! mutual TLS fails closed, never over to plaintext.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use super::identity::{IdentityError, SpiffeId, peer_identity};
use super::metrics::TlsMetrics;
use super::provider;

/// At most two roots: the current CA's, and during a rotation the next (or previous) one.
pub const MAX_ROOTS: usize = 2;

/// Why a key, certificate or trust bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot generate a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("cannot make a certificate signing request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("cannot read PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("the PEM holds no certificate")]
    NoCertificate,
    #[error("the issued certificate does not match the key: {0}")]
    KeyMismatch(#[source] rustls::Error),
    #[error("the issued certificate's identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("the issued certificate cannot be read: {reason}")]
    BadCertificate { reason: String },
    #[error("a trust bundle holds one or two roots, not {count}")]
    RootCount { count: usize },
    #[error("a root certificate cannot be used: {0}")]
    BadRoot(#[source] rustls::Error),
    #[error("cannot build a verifier for the trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The sidecar's own certified key: the key it made, the chain the CA issued for it, and what
/// that chain says.
pub struct Identity {
    certified: Arc<CertifiedKey>,
    spiffe_id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Identity {
    /// A fresh ECDSA P-256 key pair; it never leaves the sidecar.
    pub fn new_key() -> Result<KeyPair, CredentialsError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CredentialsError::KeyGeneration)
    }

    /// A certificate signing request (PEM) for `id`, signed with `key`: the SPIFFE ID as its
    /// one URI SAN, the service as common name for people reading it.
    pub fn csr(key: &KeyPair, id: &SpiffeId) -> Result<String, CredentialsError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, id.service());
        params.distinguished_name = name;
        let uri = id.to_string().try_into().map_err(CredentialsError::Csr)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(key).map_err(CredentialsError::Csr)?;
        csr.pem().map_err(CredentialsError::Csr)
    }

    /// The identity the CA issued for `key`: `chain_pem` holds the leaf first, then any
    /// intermediates. The leaf must certify `key` and carry one SPIFFE ID.
    pub fn from_issued(key: KeyPair, chain_pem: &str) -> Result<Self, CredentialsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let spiffe_id = peer_identity(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key =
            provider().key_provider.load_private_key(key).map_err(CredentialsError::KeyMismatch)?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(CredentialsError::KeyMismatch)?;
        Ok(Self { certified: Arc::new(certified), spiffe_id, not_before, not_after })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the certificate has expired at `now`: from then on it is never presented.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// When to ask for the next certificate: at half its lifetime (design §8).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + lifetime / 2
    }

    /// The chain as presented in handshakes, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The roots a peer's chain must lead to, with the verifier built from them (built once per
/// bundle, not per handshake).
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    certificates: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustBundle {
    /// One or two root certificates in PEM.
    pub fn from_pem(pem: &str) -> Result<Self, CredentialsError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        Self::new(roots)
    }

    pub fn new(certificates: Vec<CertificateDer<'static>>) -> Result<Self, CredentialsError> {
        if certificates.is_empty() || certificates.len() > MAX_ROOTS {
            return Err(CredentialsError::RootCount { count: certificates.len() });
        }
        let mut roots = RootCertStore::empty();
        for root in &certificates {
            roots.add(root.clone()).map_err(CredentialsError::BadRoot)?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider().clone()).build()?;
        Ok(Self { roots, certificates, client_verifier })
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    pub(super) fn roots(&self) -> &RootCertStore {
        &self.roots
    }

    pub(super) fn client_verifier(&self) -> &dyn ClientCertVerifier {
        &*self.client_verifier
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle").field("roots", &self.certificates.len()).finish_non_exhaustive()
    }
}

/// The current identity and trust bundle, read by every handshake of the configs built over
/// them (`server_config`, `client_config`). Updates reach the next handshake; connections
/// already established keep the keys they negotiated.
pub struct Credentials {
    identity: ArcSwapOption<Identity>,
    bundle: ArcSwapOption<TrustBundle>,
    metrics: TlsMetrics,
    /// Bumped by every update, for those waiting until the credentials are usable.
    updated: watch::Sender<()>,
}

/// Why the credentials cannot be used for a handshake now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("no certificate has been issued yet (the control plane has not answered)")]
    NotIssued,
    #[error("the certificate expired at {}", rfc3339(*.0))]
    Expired(SystemTime),
    #[error("no trust bundle yet (the control plane has not answered)")]
    NoBundle,
}

impl Credentials {
    /// Credentials to be filled in later ([`update_identity`](Self::update_identity),
    /// [`update_bundle`](Self::update_bundle)): until then every handshake fails.
    pub fn empty(metrics: TlsMetrics) -> Arc<Self> {
        Arc::new(Self {
            identity: ArcSwapOption::empty(),
            bundle: ArcSwapOption::empty(),
            metrics,
            updated: watch::Sender::new(()),
        })
    }

    pub fn new(identity: Identity, bundle: TrustBundle, metrics: TlsMetrics) -> Arc<Self> {
        let credentials = Self::empty(metrics);
        credentials.update_identity(identity);
        credentials.update_bundle(bundle);
        credentials
    }

    /// Whether the current identity is of `namespace` (read in place: this runs per request).
    pub fn is_of_namespace(&self, namespace: &str) -> bool {
        self.identity.load().as_ref().is_some_and(|own| own.spiffe_id.namespace() == namespace)
    }

    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.load_full()
    }

    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.load_full()
    }

    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// A renewed identity: presented from the next handshake on.
    pub fn update_identity(&self, identity: Identity) {
        self.metrics.certificate_expires_at(identity.not_after);
        self.identity.store(Some(Arc::new(identity)));
        self.updated.send_replace(());
    }

    /// New roots (a CA rotation adds the next root, then removes the old one): peers are
    /// verified against them from the next handshake on.
    pub fn update_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Some(Arc::new(bundle)));
        self.updated.send_replace(());
    }

    /// Why a handshake cannot be made now, if it cannot.
    pub fn unusable(&self) -> Option<Unusable> {
        match (&*self.identity.load(), &*self.bundle.load()) {
            (None, _) => Some(Unusable::NotIssued),
            (Some(identity), _) if identity.is_expired(SystemTime::now()) => {
                Some(Unusable::Expired(identity.not_after))
            }
            (Some(_), None) => Some(Unusable::NoBundle),
            (Some(_), Some(_)) => None,
        }
    }

    /// Waits at most `timeout` for the credentials to become usable (the control plane's first
    /// answer, or a renewal after an expiry); if they do not, says why.
    pub async fn usable_within(&self, timeout: Duration) -> Result<(), Unusable> {
        if self.unusable().is_none() {
            return Ok(());
        }
        let mut updated = self.updated.subscribe();
        let usable = async {
            while self.unusable().is_some() {
                if updated.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, usable).await;
        self.unusable().map_or(Ok(()), Err)
    }

    /// The key and chain to present, unless there is none or it has expired.
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let identity = self.identity.load();
        let identity = identity.as_ref().filter(|i| !i.is_expired(SystemTime::now()))?;
        Some(identity.certified.clone())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.load().as_deref())
            .field("bundle", &self.bundle.load().as_deref())
            .finish_non_exhaustive()
    }
}

/// Presents the current identity, as a server and as a client; none at all once it has
/// expired, so that the handshake fails.
#[derive(Debug)]
pub(super) struct CurrentIdentity(pub Arc<Credentials>);

impl ResolvesServerCert for CurrentIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for CurrentIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.certified_key().is_some()
    }
}

/// A certificate's validity period.
fn validity(cert: &[u8]) -> Result<(SystemTime, SystemTime), CredentialsError> {
    let bad = |reason: String| CredentialsError::BadCertificate { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|e| bad(e.to_string()))?;
    let validity = cert.validity();
    Ok((unix(validity.not_before.timestamp()), unix(validity.not_after.timestamp())))
}

fn unix(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
}

/// `time` as RFC 3339 in UTC, to the second (`2024-01-01T00:00:00Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let (days, second) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // The proleptic Gregorian date of a day count (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let (era, day_of_era) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let m = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let month = if m < 10 { m + 3 } else { m - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (second / 3600, second % 3600 / 60, second % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}
