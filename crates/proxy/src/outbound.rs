//! Outbound: a client alias. The app's traffic is balanced across the alias's usable
//! endpoints; HTTP to another sidecar travels as HTTP/2 whatever the app spoke, and to a
//! sidecar with an identity over mutual TLS (`upstream::Dialer`).

use std::sync::Arc;

use arc_swap::ArcSwap;

use tether_model::{Health, Outbound};

use crate::http::server::Peer;
use crate::http::{EndpointSpec, Route, RouteSettings};
use crate::listener::Serve;
use crate::metrics::Metrics;
use crate::tcp::{TcpEndpointSpec, TcpRoute, TcpSettings};
use crate::tls::Credentials;

/// What an outbound listener serves, built from its config.
pub fn serve(config: &Outbound, metrics: &Metrics, credentials: &Arc<Credentials>) -> Serve {
    let m = metrics.outbound(&config.dns_name);
    let name = config.dns_name.clone();
    if config.app_protocol.is_http() {
        let route = Route::new(name, &http_endpoints(config), route_settings(config), m, credentials);
        Serve::http(route, Peer::App)
    } else {
        let route = TcpRoute::new(name, &tcp_endpoints(config), tcp_settings(config), m, credentials);
        Serve::Tcp(Arc::new(route))
    }
}

/// Moves a listener to a changed config: its routes are updated in place when they are of the
/// same kind (keeping connections and endpoint state), and replaced otherwise.
pub fn update(serve: &ArcSwap<Serve>, config: &Outbound, metrics: &Metrics, credentials: &Arc<Credentials>) {
    match &**serve.load() {
        Serve::Http { route, .. } if config.app_protocol.is_http() => {
            route.update(&http_endpoints(config), route_settings(config))
        }
        Serve::Tcp(route) if !config.app_protocol.is_http() => {
            route.update(&tcp_endpoints(config), tcp_settings(config))
        }
        _ => serve.store(Arc::new(self::serve(config, metrics, credentials))),
    }
}

fn healthy(health: Health) -> bool {
    health == Health::Healthy
}

fn http_endpoints(config: &Outbound) -> Vec<EndpointSpec> {
    let http2 = config.app_protocol.is_http2();
    let spec = |e: &tether_model::Endpoint| EndpointSpec {
        addr: e.address,
        healthy: healthy(e.health),
        http2: e.mesh || http2,
        identity: e.identity.clone(),
    };
    config.endpoints.iter().map(spec).collect()
}

fn route_settings(config: &Outbound) -> RouteSettings {
    RouteSettings {
        policy: config.load_balancing,
        timeouts: config.timeout,
        retry: config.retry_policy.clone(),
        outlier_detection: config.outlier_detection,
        limits: config.limits,
    }
}

fn tcp_endpoints(config: &Outbound) -> Vec<TcpEndpointSpec> {
    let spec = |e: &tether_model::Endpoint| TcpEndpointSpec {
        addr: e.address,
        healthy: healthy(e.health),
        identity: e.identity.clone(),
    };
    config.endpoints.iter().map(spec).collect()
}

fn tcp_settings(config: &Outbound) -> TcpSettings {
    TcpSettings {
        policy: config.load_balancing,
        timeouts: config.timeout,
        outlier_detection: config.outlier_detection,
    }
}
