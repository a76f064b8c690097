//! Inbound: a published port. Traffic from other sidecars (HTTP/2, over mutual TLS when the
//! listener has `tls`: see `mtls`) or plain clients reaches the app's port, in the app's
//! protocol. The caller's sidecar balances and retries; this side only forwards to its one app,
//! within the listener's limits.

use std::sync::Arc;

use arc_swap::ArcSwap;

use tether_model::{Inbound, Limits, LoadBalancing, OutlierDetection, RetryPolicy};

use crate::http::server::Peer;
use crate::http::{EndpointSpec, Route, RouteSettings};
use crate::listener::Serve;
use crate::metrics::Metrics;
use crate::tcp::{TcpEndpointSpec, TcpRoute, TcpSettings};
use crate::tls::Credentials;

/// What an inbound listener serves, built from its config.
pub fn serve(config: &Inbound, metrics: &Metrics, credentials: &Arc<Credentials>) -> Serve {
    let m = metrics.inbound(&config.discovery_name);
    let name = config.port_name.clone();
    if config.app_protocol.is_http() {
        Serve::http(Route::new(name, &[app(config)], route_settings(config), m, credentials), Peer::Untrusted)
    } else {
        let route = TcpRoute::new(name, &[tcp_app(config)], tcp_settings(config), m, credentials);
        Serve::Tcp(Arc::new(route))
    }
}

/// Moves a listener to a changed config: its routes are updated in place when they are of the
/// same kind (keeping connections and endpoint state), and replaced otherwise.
pub fn update(serve: &ArcSwap<Serve>, config: &Inbound, metrics: &Metrics, credentials: &Arc<Credentials>) {
    match &**serve.load() {
        Serve::Http { route, .. } if config.app_protocol.is_http() => {
            route.update(&[app(config)], route_settings(config))
        }
        Serve::Tcp(route) if !config.app_protocol.is_http() => {
            route.update(&[tcp_app(config)], tcp_settings(config))
        }
        _ => serve.store(Arc::new(self::serve(config, metrics, credentials))),
    }
}

/// The app, reached in plaintext inside its task.
fn app(config: &Inbound) -> EndpointSpec {
    EndpointSpec { addr: config.target, healthy: true, http2: config.app_protocol.is_http2(), identity: None }
}

fn tcp_app(config: &Inbound) -> TcpEndpointSpec {
    TcpEndpointSpec { addr: config.target, healthy: true, identity: None }
}

fn route_settings(config: &Inbound) -> RouteSettings {
    RouteSettings {
        policy: LoadBalancing::RoundRobin,
        timeouts: config.timeout,
        retry: RetryPolicy::none(),
        outlier_detection: OutlierDetection::disabled(),
        limits: Limits::default(),
    }
}

fn tcp_settings(config: &Inbound) -> TcpSettings {
    TcpSettings {
        policy: LoadBalancing::RoundRobin,
        timeouts: config.timeout,
        outlier_detection: OutlierDetection::disabled(),
    }
}
