//! Mutual TLS at the inbound listeners (design §8; reliability A7, A8).
//!
//! A listener whose config has `tls` takes TLS 1.3 only, with a client certificate the trust
//! bundle vouches for, for the listener's own protocol (ALPN `h2` for HTTP, `tether-tcp` for
//! tcp), within [`HANDSHAKE_TIMEOUT`]. Anything else is refused in the handshake and counted in
//! `tether_tls_handshake_errors_total`; the app never sees a byte of it. A sidecar without a
//! usable certificate of its own refuses every such connection: it fails closed.
//!
//! Then `allowFrom`, checked against the identity in the peer's verified certificate and
//! nothing the peer says (no header counts): for HTTP on every request, so that a config update
//! reaches connections already open; for tcp once, before the app is connected.
//!
//! The other end, connecting to sidecars, is `upstream::Dialer`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tether_model::{Inbound, InboundTls};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::{Denied, ProxyError};
use crate::io::Io;
use crate::metrics::DeniedMetrics;
use crate::tls::{self, ALPN_H2, ALPN_TCP, Credentials, Reason, Side, SpiffeId};

/// How long a peer has to complete its handshake. Sidecars need milliseconds; a peer that
/// trickles its handshake in would otherwise hold a connection, and a place under
/// `maxDownstreamConnections`, for as long as it likes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's mutual TLS: its credentials, and the server configs built over them once.
pub struct Mtls {
    credentials: Arc<Credentials>,
    http: Arc<ServerConfig>,
    tcp: Arc<ServerConfig>,
}

impl Mtls {
    pub fn new(credentials: Arc<Credentials>) -> Self {
        let http = tls::server_config(&credentials, &[ALPN_H2]);
        let tcp = tls::server_config(&credentials, &[ALPN_TCP]);
        Self { credentials, http, tcp }
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }
}

/// Who may reach one inbound listener, as of the last config. It lives as long as the
/// listener, whatever its protocol or routes become.
pub struct Access {
    policy: ArcSwap<Policy>,
    mtls: Arc<Mtls>,
    denied: DeniedMetrics,
}

struct Policy {
    /// The listener's discovery name, as metrics and refusals name it.
    listener: String,
    /// `None`: plaintext, from anyone.
    tls: Option<InboundTls>,
}

impl Policy {
    fn of(config: &Inbound) -> Self {
        Self { listener: config.discovery_name.clone(), tls: config.tls.clone() }
    }
}

impl Access {
    pub fn new(config: &Inbound, mtls: Arc<Mtls>, denied: DeniedMetrics) -> Self {
        Self { policy: ArcSwap::from_pointee(Policy::of(config)), mtls, denied }
    }

    /// Applies a changed config: to new connections, and to every request that follows.
    pub fn update(&self, config: &Inbound) {
        self.policy.store(Arc::new(Policy::of(config)));
    }

    /// Makes a new connection from `peer` ready to serve, as the listener's config says now:
    /// as it is, or once a mutual TLS handshake for `http` or tcp completed. `None` when it was
    /// refused (and counted): the connection is to be closed.
    pub async fn accept(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        http: bool,
    ) -> Option<(Io, Caller)> {
        if self.policy.load().tls.is_none() {
            return Some((Io::Plain(stream), Caller { access: self.clone(), identity: None }));
        }
        let metrics = self.mtls.credentials.metrics();
        if let Some(why) = self.mtls.credentials.unusable() {
            metrics.refused(Side::Inbound, Reason::NoCertificate);
            debug!(%peer, %why, "no mutual TLS without a certificate: closing");
            return None;
        }
        let config = if http { &self.mtls.http } else { &self.mtls.tcp };
        match tls::accept_within(HANDSHAKE_TIMEOUT, config.clone(), stream, metrics).await {
            Ok((stream, identity)) => {
                debug!(%peer, %identity, "mutual TLS established");
                Some((Io::from(stream), Caller { access: self.clone(), identity: Some(identity) }))
            }
            Err(error) => {
                debug!(%peer, %error, "refused");
                None
            }
        }
    }
}

/// The peer of one downstream connection at an inbound listener.
pub struct Caller {
    access: Arc<Access>,
    /// From the peer's verified certificate; `None` on a plaintext connection.
    identity: Option<SpiffeId>,
}

impl Caller {
    /// Whether the caller may call the listener now. A refusal is counted, and says who called
    /// and who may.
    pub fn check(&self) -> Result<(), ProxyError> {
        let policy = self.access.policy.load();
        let Some(tls) = &policy.tls else { return Ok(()) };
        // The handshake was made with a certificate that has expired since: the connection
        // serves nothing more, as a new one would not be accepted.
        if let Some(why) = self.access.mtls.credentials.unusable() {
            return Err(ProxyError::CannotServe { why });
        }
        let allowed = match (&self.identity, &tls.allow_from) {
            (Some(id), Some(_)) => tls.allows(id),
            // Without allowFrom, any service of this sidecar's own namespace: one CA serves
            // every namespace of the control plane.
            (Some(id), None) => self.access.mtls.credentials.is_of_namespace(id.namespace()),
            // A plaintext connection opened before the listener turned mutual TLS on has no
            // identity to allow.
            (None, _) => false,
        };
        if allowed {
            return Ok(());
        }
        let caller = self.identity.as_ref().map_or_else(|| "none".to_owned(), SpiffeId::to_string);
        self.access.denied.denied(&policy.listener, &caller);
        Err(ProxyError::Forbidden(Box::new(Denied {
            caller: self.identity.clone(),
            listener: policy.listener.clone(),
            allowed: tls.allow_from.clone(),
        })))
    }
}

#[cfg(test)]
mod tests;
