//! tether's sidecar proxy.
//!
//! A [`Proxy`] binds every socket of its config first ([`Proxy::bind`]: conflicts fail at start
//! and addresses are known), then serves ([`Proxy::run`]) until asked to stop, and drains:
//!
//! ```text
//! accept ─► listener (inbound | outbound) ─► http::Route | tcp::TcpRoute
//!             ─► balance (P2C peak-EWMA | round robin) ─► upstream (pooled HTTP/1, shared HTTP/2, TCP)
//! ```

mod admin;
mod balance;
mod body;
mod drain;
mod error;
mod flood;
mod http;
mod inbound;
mod listener;
mod metrics;
mod outbound;
mod resilience;
mod tcp;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use tether_model::ProxyConfig;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use drain::Phase;
pub use error::{ERROR_HEADER, ProxyError};
/// Public for the fuzz targets (`fuzz/`) and their corpus tests.
#[doc(hidden)]
pub use http::framing;
pub use listener::BindError;

use admin::Admin;
use drain::Drain;
use listener::{ConnectionLimit, Listener};
use metrics::Metrics;

pub struct Proxy {
    config: ProxyConfig,
    admin: Admin,
    admin_socket: TcpListener,
    listeners: Vec<Listener>,
    limit: std::sync::Arc<ConnectionLimit>,
    drain: Drain,
}

impl Proxy {
    /// Binds the admin endpoint and every listener.
    pub async fn bind(config: ProxyConfig) -> Result<Self, BindError> {
        let mut registry = Registry::with_prefix("tether");
        let metrics = Metrics::register(&mut registry, &config.service);
        let admin_socket = listener::bind("admin", "admin", config.admin).await?;
        let mut listeners = Vec::with_capacity(config.inbound.len() + config.outbound.len());
        for inbound in &config.inbound {
            listeners.push(inbound::listener(inbound, &metrics).await?);
        }
        for outbound in &config.outbound {
            listeners.push(outbound::listener(outbound, &metrics).await?);
        }
        let limit =
            ConnectionLimit::new(config.max_downstream_connections, metrics.downstream_overflows.clone());
        let drain = Drain::new();
        let config_json = serde_json::to_string_pretty(&config).expect("the config serializes");
        let admin = Admin { registry, config_json, drain: drain.trigger() };
        Ok(Self { config, admin, admin_socket, listeners, limit, drain })
    }

    /// `(kind, name, address)` of every bound socket, the admin endpoint first.
    pub fn local_addrs(&self) -> Vec<(&'static str, String, SocketAddr)> {
        let admin = self.admin_socket.local_addr().expect("a bound socket has an address");
        std::iter::once(("admin", "admin".to_owned(), admin))
            .chain(self.listeners.iter().map(|l| (l.kind, l.name.clone(), l.local_addr())))
            .collect()
    }

    /// Serves until `shutdown` resolves or a drain is requested at the admin endpoint, then
    /// drains: readiness turns false, new connections are still served for the drain wait,
    /// then listeners close and in-flight requests get the drain grace to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { config, admin, admin_socket, listeners, limit, drain } = self;
        tokio::spawn(admin.run(admin_socket));
        for listener in listeners {
            tokio::spawn(listener.run(drain.watch(), limit.clone()));
        }
        tokio::select! {
            () = shutdown => {}
            () = drain.requested() => {}
        }
        let wait = config.drain_wait_seconds.0;
        info!(?wait, "draining: readiness is false, still serving new connections");
        drain.advance(Phase::Draining);
        tokio::time::sleep(wait).await;
        let grace = config.drain_grace_seconds.0;
        info!(?grace, "closing listeners; waiting for in-flight requests");
        drain.advance(Phase::Closing);
        if tokio::time::timeout(grace, drain.closed()).await.is_err() {
            warn!(?grace, "connections still open after the drain grace; exiting anyway");
        } else {
            info!("drained");
        }
    }
}
