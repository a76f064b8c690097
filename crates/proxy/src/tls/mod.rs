//! Mutual TLS between sidecars (design §5, §8): TLS 1.3 only, both sides present a
//! certificate from the control plane's CA, and a peer is known by the SPIFFE ID in it
//! (`spiffe://<namespace>/<service>`), never by a host name.
//!
//! ```text
//! Identity (key + issued chain) ─┐
//!                                ├─► Credentials (swappable) ─► server_config / client_config
//! TrustBundle (1–2 roots) ───────┘                               ─► accept / connect ─► SpiffeId
//! ```
//!
//! Renewal ([`Credentials::update_identity`]) and CA rotation ([`Credentials::update_bundle`])
//! reach the next handshake; established connections carry on. Session resumption is off, so
//! every connection is verified against the current bundle: sidecar connections are few and
//! long-lived, and a resumed session would skip the check a rotation relies on.
//!
//! Credentials start empty ([`Credentials::empty`]) and are filled in by the control plane's
//! stream; without a current certificate and bundle no handshake succeeds (fail closed).
//!
//! The proxy uses this at both ends of a sidecar-to-sidecar connection: inbound listeners with
//! `tls` accept only mutual TLS (`crate::mtls`: the handshake, then allowFrom), and endpoints
//! with an `identity` are reached over it (`crate::upstream::Dialer`).

mod credentials;
mod identity;
mod metrics;
mod verify;

#[cfg(test)]
pub(crate) mod tests;

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

pub use credentials::{Credentials, CredentialsError, Identity, MAX_ROOTS, TrustBundle, Unusable, rfc3339};
pub use identity::{IdentityError, SpiffeId, peer_identity};
pub use metrics::{Reason, Side, TlsMetrics};
pub use rcgen::KeyPair;

use credentials::CurrentIdentity;
use verify::PeerVerifier;

/// ALPN of HTTP (any version the app speaks) between sidecars: it travels over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of a raw TCP stream between sidecars.
pub const ALPN_TCP: &[u8] = b"tether-tcp";

/// The name a client "connects to": a placeholder, as the server is verified by its SPIFFE ID
/// and SNI is not sent.
const PLACEHOLDER_NAME: &str = "sidecar.tether.invalid";

/// The one crypto provider: *ring*, with its TLS 1.3 suites and key exchanges.
fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The config of an inbound (server) side: TLS 1.3 only, a client certificate required and
/// verified against the current bundle, the current identity presented, `alpn` offered.
pub fn server_config(credentials: &Arc<Credentials>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let verifier = PeerVerifier { credentials: credentials.clone(), expected: None };
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentIdentity(credentials.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// The config of an outbound (client) side to any sidecar the bundle vouches for; which one it
/// reached is [`peer_identity_of`] the connection.
pub fn client_config(credentials: &Arc<Credentials>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    build_client_config(credentials, alpn, None)
}

/// Like [`client_config`], and the handshake fails unless the server is `expected`.
pub fn client_config_expecting(
    credentials: &Arc<Credentials>,
    alpn: &[&[u8]],
    expected: SpiffeId,
) -> Arc<ClientConfig> {
    build_client_config(credentials, alpn, Some(expected))
}

fn build_client_config(
    credentials: &Arc<Credentials>,
    alpn: &[&[u8]],
    expected: Option<SpiffeId>,
) -> Arc<ClientConfig> {
    let verifier = PeerVerifier { credentials: credentials.clone(), expected };
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentIdentity(credentials.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Arc::new(config)
}

/// The SPIFFE ID of the peer of a connection whose handshake completed (a `ServerConnection`
/// or `ClientConnection`); `None` before that.
pub fn peer_identity_of(connection: &CommonState) -> Option<SpiffeId> {
    peer_identity(connection.peer_certificates()?.first()?).ok()
}

/// A failed handshake: which side, why (as counted), and the error itself.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake ({}) failed ({}): {source}", side.as_str(), reason.as_str())]
pub struct HandshakeError {
    pub side: Side,
    pub reason: Reason,
    #[source]
    pub source: io::Error,
}

/// Completes the server side of a handshake on `io`; a failure is counted in `metrics`. When
/// the config offers ALPN protocols the client must have chosen one of them.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    metrics: &TlsMetrics,
) -> Result<(tokio_rustls::server::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let alpn = !config.alpn_protocols.is_empty();
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await;
    let stream = stream.map_err(|source| failed(Side::Inbound, source, metrics))?;
    let peer = established(stream.get_ref().1, alpn, Side::Inbound, metrics)?;
    Ok((stream, peer))
}

/// [`accept`], unless the peer takes longer than `timeout`: a handshake trickled in slowly
/// must not hold a connection (and its place under the connection limit).
pub async fn accept_within<IO>(
    timeout: Duration,
    config: Arc<ServerConfig>,
    io: IO,
    metrics: &TlsMetrics,
) -> Result<(tokio_rustls::server::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, accept(config, io, metrics)).await {
        Ok(accepted) => accepted,
        Err(_) => {
            let source = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer did not complete its handshake within {timeout:?}"),
            );
            Err(refused(Side::Inbound, Reason::Timeout, source, metrics))
        }
    }
}

/// Completes the client side of a handshake on `io`; a failure is counted in `metrics`. When
/// the config offers ALPN protocols the server must have chosen one of them.
///
/// In TLS 1.3 the client finishes first: a server that refuses the client's certificate says
/// so in an alert that arrives on the first read, not here (the server counts it).
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    io: IO,
    metrics: &TlsMetrics,
) -> Result<(tokio_rustls::client::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let alpn = !config.alpn_protocols.is_empty();
    let name = ServerName::try_from(PLACEHOLDER_NAME).expect("a valid DNS name");
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, io).await;
    let stream = stream.map_err(|source| failed(Side::Outbound, source, metrics))?;
    let peer = established(stream.get_ref().1, alpn, Side::Outbound, metrics)?;
    Ok((stream, peer))
}

/// The peer of a completed handshake, which must have agreed on a protocol when `alpn` was
/// offered: a peer that ignores ALPN would get bytes of a protocol it did not ask for.
fn established(
    connection: &CommonState,
    alpn: bool,
    side: Side,
    metrics: &TlsMetrics,
) -> Result<SpiffeId, HandshakeError> {
    if alpn && connection.alpn_protocol().is_none() {
        let source =
            io::Error::new(io::ErrorKind::InvalidData, "the peer agreed on no application protocol (ALPN)");
        return Err(refused(side, Reason::Alpn, source, metrics));
    }
    peer_identity_of(connection).ok_or_else(|| no_identity(side, metrics))
}

fn failed(side: Side, source: io::Error, metrics: &TlsMetrics) -> HandshakeError {
    let reason = metrics.handshake_failed(side, &source);
    HandshakeError { side, reason, source }
}

fn refused(side: Side, reason: Reason, source: io::Error, metrics: &TlsMetrics) -> HandshakeError {
    metrics.refused(side, reason);
    HandshakeError { side, reason, source }
}

/// Cannot happen with the configs above (their verifiers require a SPIFFE ID); a config built
/// elsewhere might not.
fn no_identity(side: Side, metrics: &TlsMetrics) -> HandshakeError {
    let source = io::Error::new(
        io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            IdentityError::NoSpiffeId,
        )))),
    );
    failed(side, source, metrics)
}
