//! A bound socket and what to do with each connection it accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};

use crate::drain::{Phase, Watch};
use crate::http::Route;
use crate::http::server::{self, Peer};
use crate::netns::Network;
use crate::tcp::TcpRoute;

/// What a listener does with its connections. Clones share the routes, so a route updated
/// through one clone changes what the running listener does.
#[derive(Clone)]
pub enum Serve {
    Http { route: Arc<Route>, peer: Peer },
    Tcp(Arc<TcpRoute>),
}

impl Serve {
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Http { .. })
    }

    /// Makes routes just built connect to their endpoints from `network`.
    pub fn connecting_from(mut self, network: &Network) -> Self {
        fn fresh<T>(route: &mut Arc<T>) -> &mut T {
            Arc::get_mut(route).expect("a route just built is not shared yet")
        }
        match &mut self {
            Self::Http { route, .. } => fresh(route).connect_from(network.clone()),
            Self::Tcp(route) => fresh(route).connect_from(network.clone()),
        }
        self
    }
}

pub struct Listener {
    pub kind: &'static str,
    pub name: String,
    socket: TcpListener,
    /// Read once per accepted connection, so that a config change reaches new connections
    /// without rebinding the socket.
    serve: Arc<ArcSwap<Serve>>,
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
    /// Binds `addr` in `network`.
    pub async fn bind(
        kind: &'static str,
        name: &str,
        addr: SocketAddr,
        serve: Serve,
        network: &Network,
    ) -> Result<Self, BindError> {
        let socket = bind(kind, name, addr, network).await?;
        Ok(Self { kind, name: name.to_owned(), socket, serve: Arc::new(ArcSwap::from_pointee(serve)) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }

    /// What the listener serves; storing into it changes that for the connections that follow.
    pub fn serve(&self) -> Arc<ArcSwap<Serve>> {
        self.serve.clone()
    }

    /// Accepts connections until the proxy closes or `stop`'s sender is dropped (the listener
    /// left the config); connections already accepted carry on.
    /// A connection beyond `limit` is accepted and closed at once: leaving it in the backlog
    /// would only fill the backlog, and the peer learns at once that it must go elsewhere.
    pub async fn run(self, mut drain: Watch, limit: Arc<ConnectionLimit>, mut stop: oneshot::Receiver<()>) {
        let mut builders: [Option<Arc<auto::Builder<TokioExecutor>>>; 2] = [None, None];
        loop {
            let accepted = tokio::select! {
                _ = drain.reached(Phase::Closing) => break,
                _ = &mut stop => break,
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
            match &**self.serve.load() {
                Serve::Http { route, peer } => {
                    let builder = builders[*peer as usize]
                        .get_or_insert_with(|| Arc::new(server::builder(*peer)))
                        .clone();
                    let serve = server::serve(stream, route.clone(), builder, route.idle(), drain.clone());
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

pub async fn bind(
    kind: &'static str,
    name: &str,
    addr: SocketAddr,
    network: &Network,
) -> Result<TcpListener, BindError> {
    network.bind(addr).await.map_err(|source| BindError { kind, name: name.to_owned(), addr, source })
}
