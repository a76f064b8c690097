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
use crate::io::Io;
use crate::mtls::{Access, Caller};
use crate::netns::Network;
use crate::tcp::TcpRoute;

/// What a listener does with its connections. Clones share the routes, so a route updated
/// through one clone changes what the running listener does.
#[derive(Clone)]
pub enum Serve {
    Http { route: Arc<Route>, builder: Arc<auto::Builder<TokioExecutor>> },
    Tcp(Arc<TcpRoute>),
}

impl Serve {
    /// HTTP to `route` from `peer`, with the limits that peer gets.
    pub fn http(route: Route, peer: Peer) -> Self {
        Self::Http { route: Arc::new(route), builder: Arc::new(server::builder(peer)) }
    }

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
    /// Inbound listeners: who may connect, over plaintext or mutual TLS.
    access: Option<Arc<Access>>,
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
        access: Option<Arc<Access>>,
        network: &Network,
    ) -> Result<Self, BindError> {
        let socket = bind(kind, name, addr, network).await?;
        let serve = Arc::new(ArcSwap::from_pointee(serve));
        Ok(Self { kind, name: name.to_owned(), socket, serve, access })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }

    /// What the listener serves; storing into it changes that for the connections that follow.
    pub fn serve(&self) -> Arc<ArcSwap<Serve>> {
        self.serve.clone()
    }

    /// Who may connect (inbound listeners); updating it changes that for what follows.
    pub fn access(&self) -> Option<Arc<Access>> {
        self.access.clone()
    }

    /// Accepts connections until the proxy closes or `stop`'s sender is dropped (the listener
    /// left the config); connections already accepted carry on.
    /// A connection beyond `limit` is accepted and closed at once: leaving it in the backlog
    /// would only fill the backlog, and the peer learns at once that it must go elsewhere.
    pub async fn run(self, mut drain: Watch, limit: Arc<ConnectionLimit>, mut stop: oneshot::Receiver<()>) {
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
            let serve = self.serve.load_full();
            let access = self.access.clone();
            let watch = drain.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // The handshake, if the listener takes mutual TLS, runs in the connection's own
                // task: a slow one must not hold up the accept loop.
                let (io, caller) = match access {
                    None => (Io::Plain(stream), None),
                    Some(access) => match access.accept(stream, peer, serve.is_http()).await {
                        Some((io, caller)) => (io, Some(Arc::new(caller))),
                        None => return,
                    },
                };
                match &*serve {
                    Serve::Http { route, builder } => {
                        server::serve(io, route.clone(), builder.clone(), route.idle(), watch, caller).await
                    }
                    Serve::Tcp(route) => {
                        if let Some(Err(error)) = caller.as_deref().map(Caller::check) {
                            debug!(%peer, %error, "closing");
                            return;
                        }
                        route.clone().serve(io).await;
                        drop(watch);
                    }
                }
            });
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
