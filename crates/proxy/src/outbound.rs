//! Outbound: a client alias. The app's traffic is balanced across the alias's usable
//! endpoints; HTTP to another sidecar travels as HTTP/2 whatever the app spoke.

use std::sync::Arc;

use tether_model::{Health, Outbound};

use crate::http::server::Peer;
use crate::http::{HttpEndpoint, Route, RouteSettings};
use crate::listener::{BindError, Listener, Serve};
use crate::metrics::Metrics;
use crate::tcp::TcpRoute;
use crate::upstream::{ClientConfig, Pending};

pub async fn listener(config: &Outbound, metrics: &Metrics) -> Result<Listener, BindError> {
    let m = metrics.outbound(&config.dns_name);
    let name = config.dns_name.clone();
    let timeouts = config.timeout;
    let healthy = |health: Health| health == Health::Healthy;
    let serve = if config.app_protocol.is_http() {
        let pending = Arc::new(Pending::new(&name, config.limits.max_pending_requests));
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let client = ClientConfig {
                    http2: e.mesh || config.app_protocol.is_http2(),
                    connect_timeout: timeouts.connect(),
                    idle_timeout: timeouts.idle(),
                    max_connections: config.limits.max_connections,
                    pending: pending.clone(),
                };
                HttpEndpoint::new(e.address, healthy(e.health), client)
            })
            .collect();
        let settings = RouteSettings {
            policy: config.load_balancing,
            timeouts,
            retry: config.retry_policy.clone(),
            outlier_detection: config.outlier_detection,
            limits: config.limits,
        };
        let route = Route::new(name, endpoints, settings, m);
        Serve::Http { route: Arc::new(route), peer: Peer::App, idle: timeouts.idle() }
    } else {
        let endpoints = config.endpoints.iter().map(|e| (e.address, healthy(e.health))).collect();
        let route =
            TcpRoute::new(name, endpoints, config.load_balancing, &timeouts, config.outlier_detection, m);
        Serve::Tcp(Arc::new(route))
    };
    Listener::bind("outbound", &config.dns_name, config.listen, serve).await
}
