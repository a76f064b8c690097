//! A bound socket and what to do with each connection it accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::drain::{Phase, Watch};
use crate::http::Route;
use crate::http::server::{self, Peer};
use crate::tcp::TcpRoute;

pub enum Serve {
    Http { route: Arc<Route>, peer: Peer, idle: Option<Duration> },
    Tcp(Arc<TcpRoute>),
}

pub struct Listener {
    pub kind: &'static str,
    pub name: String,
    socket: TcpListener,
    serve: Serve,
}

/// Failing to bind a listener: which one, where, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {kind} `{name}`")]
pub struct BindError {
    pub kind: &'static str,
    pub name: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The proxy-wide cap on open downstream connections (`maxDownstreamConnections`), shared by
/// every inbound and outbound listener; the admin endpoint has its own accept loop and no cap.
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    overflows: Counter,
}

impl ConnectionLimit {
    pub fn new(max: u32, overflows: Counter) -> Arc<Self> {
        Arc::new(Self { permits: Arc::new(Semaphore::new(max as usize)), overflows })
    }
}

impl Listener {
    pub async fn bind(
        kind: &'static str,
        name: &str,
        addr: SocketAddr,
        serve: Serve,
    ) -> Result<Self, BindError> {
        let socket = bind(kind, name, addr).await?;
        Ok(Self { kind, name: name.to_owned(), socket, serve })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }

    /// Accepts connections until the proxy closes.
    /// A connection beyond `limit` is accepted and closed at once: leaving it in the backlog
    /// would only fill the backlog, and the peer learns at once that it must go elsewhere.
    pub async fn run(self, mut drain: Watch, limit: Arc<ConnectionLimit>) {
        let builder = match &self.serve {
            Serve::Http { peer, .. } => Some(Arc::new(server::builder(*peer))),
            Serve::Tcp(_) => None,
        };
        loop {
            let accepted = tokio::select! {
                _ = drain.reached(Phase::Closing) => break,
                accepted = self.socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or the like: back off instead of spinning.
                    warn!(listener = %self.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
                limit.overflows.inc();
                debug!(listener = %self.name, %peer, "too many connections: closing at once");
                drop(stream);
                continue;
            };
            debug!(listener = %self.name, %peer, "accepted");
            let _ = stream.set_nodelay(true);
            match &self.serve {
                Serve::Http { route, idle, .. } => {
                    let builder: Arc<auto::Builder<TokioExecutor>> =
                        builder.clone().expect("http listeners have a builder");
                    let serve = server::serve(stream, route.clone(), builder, *idle, drain.clone());
                    tokio::spawn(async move {
                        serve.await;
                        drop(permit);
                    });
                }
                Serve::Tcp(route) => {
                    let route = route.clone();
                    let watch = drain.clone();
                    tokio::spawn(async move {
                        route.serve(stream).await;
                        drop((watch, permit));
                    });
                }
            }
        }
        debug!(listener = %self.name, "closed");
    }
}

pub async fn bind(kind: &'static str, name: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { kind, name: name.to_owned(), addr, source })
}
