//! TLS negotiation errors by side and reason, and how long the current certificate has left
//! (design §5 "resilience" metrics; reliability A7: every refused handshake is counted).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::{AlertDescription, CertificateError, InvalidMessage, PeerIncompatible};

use super::credentials::Unusable;
use super::identity::IdentityError;

/// Which end of a connection the proxy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Accepting from another sidecar (TLS server).
    Inbound,
    /// Connecting to another sidecar (TLS client).
    Outbound,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Why a handshake failed, as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The peer's certificate has expired (or the peer says ours has).
    Expired,
    /// The peer's chain does not lead to a root of the trust bundle (or the peer says so of ours).
    UnknownCa,
    /// The peer's certificate has no URI SAN.
    NoSpiffeId,
    /// The peer's URI SAN is not one well-formed SPIFFE ID, or not the one expected.
    BadSpiffeId,
    /// The peer offers no TLS 1.3.
    ProtocolVersion,
    /// The client presented no certificate.
    NoClientCert,
    /// The peer spoke something other than TLS, typically plaintext HTTP.
    Plaintext,
    /// The peer does not speak the listener's protocol: no ALPN, or another one (an HTTP
    /// caller at a tcp listener, or the reverse).
    Alpn,
    /// The peer did not complete its handshake in time.
    Timeout,
    /// This sidecar has nothing to shake hands with: no certificate issued yet, an expired
    /// one, or no trust bundle.
    NoCertificate,
    Other,
}

impl Reason {
    pub const ALL: [Self; 11] = [
        Self::Expired,
        Self::UnknownCa,
        Self::NoSpiffeId,
        Self::BadSpiffeId,
        Self::ProtocolVersion,
        Self::NoClientCert,
        Self::Plaintext,
        Self::Alpn,
        Self::Timeout,
        Self::NoCertificate,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::UnknownCa => "unknown_ca",
            Self::NoSpiffeId => "no_spiffe_id",
            Self::BadSpiffeId => "bad_spiffe_id",
            Self::ProtocolVersion => "protocol_version",
            Self::NoClientCert => "no_client_cert",
            Self::Plaintext => "plaintext",
            Self::Alpn => "alpn",
            Self::Timeout => "timeout",
            Self::NoCertificate => "no_certificate",
            Self::Other => "other",
        }
    }

    /// The reason of a failed handshake as tokio-rustls reports it: rustls errors travel
    /// inside `io::Error`s; anything else (a reset, an early close) is `Other`.
    pub fn of(error: &io::Error) -> Self {
        match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => Self::of_tls(tls),
            None => Self::Other,
        }
    }

    pub fn of_tls(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::InvalidCertificate(e) => Self::of_certificate(e),
            E::NoCertificatesPresented => Self::NoClientCert,
            E::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => Self::ProtocolVersion,
            // The first byte of a TLS record is its content type (20 to 24); the first byte of
            // `GET `, `POST`, `PRI *` (or any printable text) is none of them.
            E::InvalidMessage(InvalidMessage::InvalidContentType) => Self::Plaintext,
            E::NoApplicationProtocol => Self::Alpn,
            // What the peer refused in us, by the alert it sent.
            E::AlertReceived(alert) => match alert {
                AlertDescription::CertificateExpired => Self::Expired,
                AlertDescription::UnknownCA => Self::UnknownCa,
                AlertDescription::ProtocolVersion => Self::ProtocolVersion,
                AlertDescription::CertificateRequired => Self::NoClientCert,
                AlertDescription::NoApplicationProtocol => Self::Alpn,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }

    fn of_certificate(error: &CertificateError) -> Self {
        match error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            // A bad signature in the chain: from another CA of the same name (see `verify`).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
            CertificateError::Other(other) if other.0.is::<Unusable>() => Self::NoCertificate,
            CertificateError::Other(other) => match other.0.downcast_ref::<IdentityError>() {
                Some(IdentityError::NoSpiffeId) => Self::NoSpiffeId,
                Some(
                    IdentityError::SeveralUris { .. }
                    | IdentityError::Malformed(_)
                    | IdentityError::Unexpected { .. },
                ) => Self::BadSpiffeId,
                Some(IdentityError::BadCertificate { .. }) | None => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    side: &'static str,
    reason: &'static str,
}

/// The TLS metrics of one proxy. Clones share the series, so they can be made before the
/// proxy's registry exists (with the credentials that count in them) and registered later.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    handshake_errors: Family<HandshakeLabels, Counter>,
    expiry: CertificateExpiry,
}

impl Default for TlsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsMetrics {
    /// Every error series is there from the start, at 0.
    pub fn new() -> Self {
        let metrics = Self { handshake_errors: Family::default(), expiry: CertificateExpiry::default() };
        for side in [Side::Inbound, Side::Outbound] {
            for reason in Reason::ALL {
                let _ = metrics.handshake_errors.get_or_create(&labels(side, reason));
            }
        }
        metrics
    }

    /// Registers `tls_handshake_errors` (a counter by `side` and `reason`) and
    /// `tls_certificate_expiry_seconds` with `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes refused or failed, by side and reason",
            self.handshake_errors.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the sidecar's current certificate expires (negative once expired)",
            self.expiry.clone(),
        );
    }

    /// Counts a failed handshake and says why it failed.
    pub fn handshake_failed(&self, side: Side, error: &io::Error) -> Reason {
        let reason = Reason::of(error);
        self.refused(side, reason);
        reason
    }

    /// Counts a handshake refused for `reason`.
    pub fn refused(&self, side: Side, reason: Reason) {
        self.handshake_errors.get_or_create(&labels(side, reason)).inc();
    }

    /// How many handshakes failed for `reason` on `side` so far.
    pub fn handshake_errors(&self, side: Side, reason: Reason) -> u64 {
        self.handshake_errors.get_or_create(&labels(side, reason)).get()
    }

    pub(super) fn certificate_expires_at(&self, not_after: SystemTime) {
        let seconds = match not_after.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.expiry.not_after.store(seconds, Ordering::Relaxed);
    }
}

fn labels(side: Side, reason: Reason) -> HandshakeLabels {
    HandshakeLabels { side: side.as_str(), reason: reason.as_str() }
}

/// A gauge computed when scraped, so that it counts down between renewals instead of showing
/// the time left at the last one.
#[derive(Clone, Debug)]
struct CertificateExpiry {
    /// Unix seconds; `i64::MIN` until there is an identity.
    not_after: Arc<AtomicI64>,
}

impl Default for CertificateExpiry {
    fn default() -> Self {
        Self { not_after: Arc::new(AtomicI64::new(i64::MIN)) }
    }
}

impl EncodeMetric for CertificateExpiry {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let not_after = self.not_after.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let left = not_after.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        encoder.encode_gauge(&left)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.not_after.load(Ordering::Relaxed) == i64::MIN
    }
}
