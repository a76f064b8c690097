//! Opening a connection to one endpoint: TCP from the right network namespace, then, to a
//! sidecar with an identity, the mutual TLS handshake that proves it is that sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProxyError;
use crate::io::Io;
use crate::netns::Network;
use crate::tls::{self, Credentials, Reason, Side, SpiffeId};

/// TCP keep-alive on connections to peer sidecars: a dead peer is found within about 5 s
/// (2 s idle, then 3 probes 1 s apart).
const PEER_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(2))
    .with_interval(Duration::from_secs(1))
    .with_retries(3);

/// How connections to one endpoint are made.
pub struct Dialer {
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<MutualTls>,
}

struct MutualTls {
    credentials: Arc<Credentials>,
    /// Built once per endpoint, not per connection: it expects the endpoint's identity.
    config: Arc<rustls::ClientConfig>,
}

impl Dialer {
    /// Plaintext connections to `addr`, each opened within `timeout`.
    pub fn plain(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout, tls: None }
    }

    /// Mutual TLS to the sidecar at `addr`, which must prove it is `identity`, for `alpn`
    /// (`h2` or `tether-tcp`); TCP and TLS handshakes within `timeout` together.
    pub fn mutual_tls(
        addr: SocketAddr,
        timeout: Duration,
        credentials: &Arc<Credentials>,
        identity: SpiffeId,
        alpn: &[u8],
    ) -> Self {
        let config = tls::client_config_expecting(credentials, &[alpn], identity);
        Self { addr, timeout, tls: Some(MutualTls { credentials: credentials.clone(), config }) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections can be made (and used) now. Mutual TLS needs a usable certificate
    /// of our own: without one the proxy waits for it (the control plane's first answer, or a
    /// renewal) at most the connect timeout, then fails, never falling back to plaintext.
    pub async fn ready(&self) -> Result<(), ProxyError> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let usable = tls.credentials.usable_within(self.timeout).await;
        usable.map_err(|why| ProxyError::NoCertificate { endpoint: self.addr, why })
    }

    /// A new connection, made from `network` (see `ListenerConfig::sockets` for which one),
    /// once [`ready`](Self::ready). A failed TLS handshake is a failed connect: the request
    /// never left, and outlier detection counts it against the endpoint.
    pub async fn dial(&self, network: &Network) -> Result<Io, ProxyError> {
        self.ready().await?;
        let (addr, timeout) = (self.addr, self.timeout);
        let deadline = Instant::now() + timeout;
        let timed_out = || ProxyError::ConnectTimeout { endpoint: addr, timeout };
        let stream = match tokio::time::timeout_at(deadline, network.connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ProxyError::ConnectFailed { endpoint: addr, source }),
            Err(_) => return Err(timed_out()),
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else { return Ok(Io::Plain(stream)) };
        // A peer sidecar, maybe on another host: a host that vanishes (cut off, powered down)
        // sends no reset, so raw streams to it would hang until the idle timeout. HTTP/2 has
        // its PINGs; this covers tcp.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&PEER_KEEPALIVE);
        let metrics = tls.credentials.metrics();
        match tokio::time::timeout_at(deadline, tls::connect(tls.config.clone(), stream, metrics)).await {
            Ok(Ok((stream, _))) => Ok(Io::from(stream)),
            Ok(Err(source)) => Err(ProxyError::TlsHandshake { endpoint: addr, source }),
            Err(_) => {
                metrics.refused(Side::Outbound, Reason::Timeout);
                Err(timed_out())
            }
        }
    }
}
