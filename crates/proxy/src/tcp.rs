//! Raw TCP: each accepted connection is spliced to one endpoint (to another sidecar over
//! mutual TLS when the endpoint has an identity). Half-closes propagate (a FIN, or a TLS
//! close_notify, in one direction is passed on while the other keeps flowing), and a connection
//! that moves no byte either way for the idle timeout is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{Balancer, Load};
use crate::error::ProxyError;
use crate::io::Io;
use crate::metrics::ListenerMetrics;
use crate::netns::Network;
use crate::resilience::{Outcome, OutlierState, Outliers};
use crate::tls::{ALPN_TCP, Credentials, SpiffeId};
use crate::upstream::Dialer;
use tether_model::{LoadBalancing, OutlierDetection, Timeouts};

const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Where the connections of one tcp listener go; like [`crate::http::Route`], what it routes
/// to is replaced whole when the config changes.
pub struct TcpRoute {
    name: String,
    current: ArcSwap<TcpRouting>,
    metrics: ListenerMetrics,
    /// Where connections to the endpoints are made from; the host's unless told otherwise.
    network: Network,
    /// What connections to endpoints with an identity prove this sidecar with.
    credentials: Arc<Credentials>,
}

/// An endpoint as the config gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEndpointSpec {
    pub addr: SocketAddr,
    pub healthy: bool,
    /// A sidecar reached over mutual TLS, which must prove it is this identity.
    pub identity: Option<SpiffeId>,
}

/// How a tcp route treats its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpSettings {
    pub policy: LoadBalancing,
    pub timeouts: Timeouts,
    pub outlier_detection: OutlierDetection,
}

struct TcpRouting {
    settings: TcpSettings,
    endpoints: Vec<Arc<TcpEndpoint>>,
    balancer: Balancer,
    outliers: Arc<Outliers>,
}

struct TcpEndpoint {
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    dialer: Dialer,
    healthy: AtomicBool,
    load: Load,
    outlier: OutlierState,
}

impl TcpRoute {
    pub fn new(
        name: String,
        endpoints: &[TcpEndpointSpec],
        settings: TcpSettings,
        metrics: ListenerMetrics,
        credentials: &Arc<Credentials>,
    ) -> Self {
        let routing = TcpRouting::build(endpoints, settings, None, &metrics, credentials);
        Self {
            name,
            current: ArcSwap::from_pointee(routing),
            metrics,
            network: Network::Host,
            credentials: credentials.clone(),
        }
    }

    /// Connects to the endpoints from `network` (the app's namespace, for an inbound route).
    pub fn connect_from(&mut self, network: Network) {
        self.network = network;
    }

    /// Sends new connections by `settings` to `endpoints`; see [`crate::http::Route::update`].
    pub fn update(&self, endpoints: &[TcpEndpointSpec], settings: TcpSettings) {
        let previous = self.current.load();
        let routing =
            TcpRouting::build(endpoints, settings, Some(&previous), &self.metrics, &self.credentials);
        self.current.store(Arc::new(routing));
    }

    pub async fn serve(self: Arc<Self>, downstream: Io) {
        self.metrics.requests.inc();
        let _open = self.metrics.connection();
        let r = self.current.load_full();
        let (upstream, endpoint) = match self.connect(&r).await {
            Ok(connected) => connected,
            Err(error) => {
                debug!(route = %self.name, %error, "tcp connection refused");
                return;
            }
        };
        let _outstanding = endpoint.load.start();
        let activity = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let mut down = Tracked::new(downstream, &self.metrics.bytes, &activity, epoch);
        let mut up = Tracked::new(upstream, &self.metrics.bytes, &activity, epoch);
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        let result = match r.settings.timeouts.idle() {
            None => copy.await,
            Some(limit) => tokio::select! {
                r = copy => r,
                () = idle_for(limit, &activity, epoch) => {
                    debug!(route = %self.name, "closing idle tcp connection");
                    return;
                }
            },
        };
        if let Err(error) = result {
            debug!(route = %self.name, %error, "tcp connection ended");
        }
    }

    /// Connects to a usable endpoint, trying others (at most three in all) when connecting fails.
    async fn connect(&self, r: &TcpRouting) -> Result<(Io, Arc<TcpEndpoint>), ProxyError> {
        let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
        let connect_timeout = r.settings.timeouts.connect();
        loop {
            let cost = |i: usize| r.endpoints[i].load.cost();
            let usable = |i: usize| {
                let e = &r.endpoints[i];
                e.healthy.load(Ordering::Relaxed) && !r.outliers.is_ejected(&e.outlier)
            };
            let Some(choice) = r.balancer.pick(r.endpoints.len(), cost, usable, &tried) else {
                return Err(ProxyError::NoEndpoints { target: self.name.clone() });
            };
            if choice.fell_back {
                self.metrics.resilience.no_healthy_endpoints.inc();
            }
            let i = choice.index;
            let endpoint = &r.endpoints[i];
            let start = Instant::now();
            let connected = endpoint.dialer.dial(&self.network).await;
            // A connect that failed or timed out is latency too (see http::Route::forward).
            endpoint.load.observe_attempt(start.elapsed(), connected.is_ok(), connect_timeout);
            match connected {
                Ok(stream) => {
                    r.outliers.record(&endpoint.outlier, Outcome::Success, r.endpoints.len());
                    return Ok((stream, endpoint.clone()));
                }
                // No certificate of our own: no other endpoint would fare better.
                Err(error) if !error.is_gateway_failure() => return Err(error),
                Err(error) => {
                    r.outliers.record(&endpoint.outlier, Outcome::GatewayFailure, r.endpoints.len());
                    tried.push(i);
                    if tried.len() >= MAX_CONNECT_ATTEMPTS.min(r.endpoints.len()) {
                        return Err(error);
                    }
                    debug!(route = %self.name, %error, "trying another endpoint");
                }
            }
        }
    }
}

impl TcpRouting {
    fn build(
        specs: &[TcpEndpointSpec],
        settings: TcpSettings,
        previous: Option<&TcpRouting>,
        metrics: &ListenerMetrics,
        credentials: &Arc<Credentials>,
    ) -> Self {
        let m = &metrics.resilience;
        let same = previous.filter(|p| p.settings == settings);
        let connect = settings.timeouts.connect();
        let kept = |spec: &TcpEndpointSpec| {
            let same = same?.endpoints.iter().find(|e| e.addr == spec.addr && e.identity == spec.identity);
            same.cloned()
        };
        let endpoints: Vec<Arc<TcpEndpoint>> = specs
            .iter()
            .map(|spec| match kept(spec) {
                Some(e) => {
                    e.healthy.store(spec.healthy, Ordering::Relaxed);
                    e
                }
                None => Arc::new(TcpEndpoint {
                    addr: spec.addr,
                    identity: spec.identity.clone(),
                    dialer: match &spec.identity {
                        Some(id) => Dialer::mutual_tls(spec.addr, connect, credentials, id.clone(), ALPN_TCP),
                        None => Dialer::plain(spec.addr, connect),
                    },
                    healthy: AtomicBool::new(spec.healthy),
                    load: Load::new(),
                    outlier: OutlierState::default(),
                }),
            })
            .collect();
        let outliers = Outliers::carry(
            same.map(|p| &p.outliers),
            settings.outlier_detection,
            &m.ejections,
            &m.endpoints_ejected,
            endpoints.iter().map(|e| &e.outlier),
        );
        m.set_endpoints(
            endpoints.len(),
            endpoints.iter().filter(|e| e.healthy.load(Ordering::Relaxed)).count(),
        );
        Self { balancer: Balancer::new(settings.policy), endpoints, outliers, settings }
    }
}

/// Resolves once no byte has moved for `limit`.
async fn idle_for(limit: Duration, last: &AtomicU64, epoch: Instant) {
    loop {
        let since = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
        if Instant::now() >= since + limit {
            return;
        }
        tokio::time::sleep_until(since + limit).await;
    }
}

/// A stream that counts the bytes read from it and notes when it last moved any.
struct Tracked<'a> {
    inner: Io,
    bytes: &'a Counter,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl<'a> Tracked<'a> {
    fn new(inner: Io, bytes: &'a Counter, last: &'a AtomicU64, epoch: Instant) -> Self {
        Self { inner, bytes, last, epoch }
    }
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes.inc_by(n as u64);
            self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
