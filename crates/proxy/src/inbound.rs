//! Inbound: a published port. Traffic from other sidecars (HTTP/2) or plain clients reaches the
//! app's port, in the app's protocol. The caller's sidecar balances and retries; this side only
//! forwards to its one app, within the listener's limits.

use std::sync::Arc;

use tether_model::{Inbound, Limits, LoadBalancing, OutlierDetection, RetryPolicy};

use crate::http::server::Peer;
use crate::http::{HttpEndpoint, Route, RouteSettings};
use crate::listener::{BindError, Listener, Serve};
use crate::metrics::Metrics;
use crate::tcp::TcpRoute;
use crate::upstream::{ClientConfig, Pending};

pub async fn listener(config: &Inbound, metrics: &Metrics) -> Result<Listener, BindError> {
    let m = metrics.inbound(&config.discovery_name);
    let name = config.port_name.clone();
    let timeouts = config.timeout;
    let limits = Limits::default();
    let serve = if config.app_protocol.is_http() {
        let client = ClientConfig {
            http2: config.app_protocol.is_http2(),
            connect_timeout: timeouts.connect(),
            idle_timeout: timeouts.idle(),
            max_connections: limits.max_connections,
            pending: Arc::new(Pending::new(&name, limits.max_pending_requests)),
        };
        let app = HttpEndpoint::new(config.target, true, client);
        let settings = RouteSettings {
            policy: LoadBalancing::RoundRobin,
            timeouts,
            retry: RetryPolicy::none(),
            outlier_detection: OutlierDetection::disabled(),
            limits,
        };
        let route = Route::new(name, vec![app], settings, m);
        Serve::Http { route: Arc::new(route), peer: Peer::Untrusted, idle: timeouts.idle() }
    } else {
        let app = vec![(config.target, true)];
        let route =
            TcpRoute::new(name, app, LoadBalancing::RoundRobin, &timeouts, OutlierDetection::disabled(), m);
        Serve::Tcp(Arc::new(route))
    };
    Listener::bind("inbound", &config.port_name, config.listen, serve).await
}
