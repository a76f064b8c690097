//! Inbound: a published port. Traffic from other sidecars (HTTP/2) or plain clients reaches the
//! app's port, in the app's protocol.

use std::sync::Arc;

use tether_model::{Inbound, LoadBalancing};

use crate::http::server::Peer;
use crate::http::{HttpEndpoint, Route};
use crate::listener::{BindError, Listener, Serve};
use crate::metrics::Metrics;
use crate::tcp::TcpRoute;

pub async fn listener(config: &Inbound, metrics: &Metrics) -> Result<Listener, BindError> {
    let m = metrics.inbound(&config.discovery_name);
    let name = config.port_name.clone();
    let timeouts = &config.timeout;
    let serve = if config.app_protocol.is_http() {
        let app = HttpEndpoint::new(config.target, config.app_protocol.is_http2(), timeouts);
        let route = Route::new(name, vec![app], LoadBalancing::RoundRobin, timeouts, m);
        Serve::Http { route: Arc::new(route), peer: Peer::Untrusted, idle: timeouts.idle() }
    } else {
        Serve::Tcp(Arc::new(TcpRoute::new(name, vec![config.target], LoadBalancing::RoundRobin, timeouts, m)))
    };
    Listener::bind("inbound", &config.port_name, config.listen, serve).await
}
