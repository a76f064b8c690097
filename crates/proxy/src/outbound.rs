//! Outbound: a client alias. The app's traffic is balanced across the alias's endpoints; HTTP to
//! another sidecar travels as HTTP/2 whatever the app spoke.

use std::sync::Arc;

use tether_model::Outbound;

use crate::http::server::Peer;
use crate::http::{HttpEndpoint, Route};
use crate::listener::{BindError, Listener, Serve};
use crate::metrics::Metrics;
use crate::tcp::TcpRoute;

pub async fn listener(config: &Outbound, metrics: &Metrics) -> Result<Listener, BindError> {
    let m = metrics.outbound(&config.dns_name);
    let name = config.dns_name.clone();
    let timeouts = &config.timeout;
    let policy = config.load_balancing;
    let serve = if config.app_protocol.is_http() {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| HttpEndpoint::new(e.address, e.mesh || config.app_protocol.is_http2(), timeouts))
            .collect();
        let route = Route::new(name, endpoints, policy, timeouts, m);
        Serve::Http { route: Arc::new(route), peer: Peer::App, idle: timeouts.idle() }
    } else {
        let endpoints = config.endpoints.iter().map(|e| e.address).collect();
        Serve::Tcp(Arc::new(TcpRoute::new(name, endpoints, policy, timeouts, m)))
    };
    Listener::bind("outbound", &config.dns_name, config.listen, serve).await
}
