//! Raw TCP: each accepted connection is spliced to one endpoint. Half-closes propagate (a FIN
//! in one direction is passed on while the other keeps flowing), and a connection that moves
//! no byte either way for the idle timeout is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{Balancer, Load};
use crate::error::ProxyError;
use crate::metrics::ListenerMetrics;
use crate::resilience::{Outcome, Outliers};
use crate::upstream::connect;
use tether_model::{LoadBalancing, OutlierDetection, Timeouts};

const MAX_CONNECT_ATTEMPTS: usize = 3;

pub struct TcpRoute {
    name: String,
    endpoints: Vec<TcpEndpoint>,
    balancer: Balancer,
    outliers: Outliers,
    connect_timeout: Duration,
    idle: Option<Duration>,
    metrics: ListenerMetrics,
}

struct TcpEndpoint {
    addr: SocketAddr,
    healthy: bool,
    load: Load,
}

impl TcpRoute {
    /// `endpoints`: each address, and whether it is healthy.
    pub fn new(
        name: String,
        endpoints: Vec<(SocketAddr, bool)>,
        policy: LoadBalancing,
        timeouts: &Timeouts,
        outlier_detection: OutlierDetection,
        metrics: ListenerMetrics,
    ) -> Self {
        let r = &metrics.resilience;
        r.endpoints_total.set(endpoints.len() as i64);
        r.endpoints_healthy.set(endpoints.iter().filter(|e| e.1).count() as i64);
        let outliers = Outliers::new(
            outlier_detection,
            endpoints.len(),
            r.ejections.clone(),
            r.endpoints_ejected.clone(),
        );
        Self {
            name,
            endpoints: endpoints
                .into_iter()
                .map(|(addr, healthy)| TcpEndpoint { addr, healthy, load: Load::new() })
                .collect(),
            balancer: Balancer::new(policy),
            outliers,
            connect_timeout: timeouts.connect(),
            idle: timeouts.idle(),
            metrics,
        }
    }

    pub async fn serve(self: Arc<Self>, downstream: TcpStream) {
        self.metrics.requests.inc();
        let _open = self.metrics.connection();
        let (upstream, i) = match self.connect().await {
            Ok(connected) => connected,
            Err(error) => {
                debug!(route = %self.name, %error, "tcp connection refused");
                return;
            }
        };
        let _outstanding = self.endpoints[i].load.start();
        let activity = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let mut down = Tracked::new(downstream, &self.metrics.bytes, &activity, epoch);
        let mut up = Tracked::new(upstream, &self.metrics.bytes, &activity, epoch);
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        let result = match self.idle {
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
    async fn connect(&self) -> Result<(TcpStream, usize), ProxyError> {
        let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
        loop {
            let cost = |i: usize| self.endpoints[i].load.cost();
            let usable = |i: usize| self.endpoints[i].healthy && !self.outliers.is_ejected(i);
            let Some(choice) = self.balancer.pick(self.endpoints.len(), cost, usable, &tried) else {
                return Err(ProxyError::NoEndpoints { target: self.name.clone() });
            };
            if choice.fell_back {
                self.metrics.resilience.no_healthy_endpoints.inc();
            }
            let i = choice.index;
            let endpoint = &self.endpoints[i];
            let start = Instant::now();
            let connected = connect(endpoint.addr, self.connect_timeout).await;
            // A connect that failed or timed out is latency too (see http::Route::forward).
            endpoint.load.observe_attempt(start.elapsed(), connected.is_ok(), self.connect_timeout);
            match connected {
                Ok(stream) => {
                    self.outliers.record(i, Outcome::Success);
                    return Ok((stream, i));
                }
                Err(error) => {
                    self.outliers.record(i, Outcome::GatewayFailure);
                    tried.push(i);
                    if tried.len() >= MAX_CONNECT_ATTEMPTS.min(self.endpoints.len()) {
                        return Err(error);
                    }
                    debug!(route = %self.name, %error, "trying another endpoint");
                }
            }
        }
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
    inner: TcpStream,
    bytes: &'a Counter,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl<'a> Tracked<'a> {
    fn new(inner: TcpStream, bytes: &'a Counter, last: &'a AtomicU64, epoch: Instant) -> Self {
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
