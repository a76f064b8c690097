//! How a route's endpoints change under a running route.

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use tether_model::{Limits, LoadBalancing, OutlierDetection, RetryPolicy, Seconds, Timeouts};

use super::*;
use crate::metrics::Metrics;
use crate::resilience::Outcome;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn spec(port: u16, healthy: bool) -> EndpointSpec {
    EndpointSpec { addr: addr(port), healthy, http2: false, identity: None }
}

fn settings() -> RouteSettings {
    RouteSettings {
        policy: LoadBalancing::RoundRobin,
        timeouts: Timeouts {
            idle_timeout_seconds: Seconds::from_secs(300),
            per_request_timeout_seconds: Some(Seconds::from_secs(15)),
            connect_timeout_seconds: Seconds::from_secs(1),
        },
        retry: RetryPolicy::default(),
        outlier_detection: OutlierDetection::default(),
        limits: Limits::default(),
    }
}

fn route(endpoints: &[EndpointSpec]) -> Route {
    let metrics = Metrics::register(&mut Registry::default(), "test");
    let credentials = crate::tls::Credentials::empty(crate::tls::TlsMetrics::new());
    Route::new("svc".into(), endpoints, settings(), metrics.outbound("svc"), &credentials)
}

fn endpoint(route: &Route, port: u16) -> Arc<HttpEndpoint> {
    route
        .current
        .load()
        .endpoints
        .iter()
        .find(|e| e.addr == addr(port))
        .cloned()
        .expect("the endpoint is there")
}

#[tokio::test]
async fn endpoints_that_stay_keep_their_state_and_new_ones_start_fresh() {
    let route = route(&[spec(1, true), spec(2, true), spec(3, true)]);
    let kept = endpoint(&route, 1);
    let r = route.current.load_full();
    for _ in 0..5 {
        r.outliers.record(&kept.outlier, Outcome::GatewayFailure, r.endpoints.len());
    }
    assert!(r.outliers.is_ejected(&kept.outlier));

    route.update(&[spec(1, false), spec(4, true)], settings());
    let now = route.current.load_full();
    assert!(Arc::ptr_eq(&endpoint(&route, 1), &kept), "a staying endpoint is the same one");
    assert!(now.outliers.is_ejected(&kept.outlier), "and still ejected");
    assert!(!kept.healthy(), "its health follows the update");
    assert_eq!(now.endpoints.len(), 2);
    assert!(!now.outliers.is_ejected(&endpoint(&route, 4).outlier));
    // The request that loaded the old routing still has all three.
    assert_eq!(r.endpoints.len(), 3);
}

#[tokio::test]
async fn changed_settings_start_every_endpoint_fresh() {
    let route = route(&[spec(1, true)]);
    let before = endpoint(&route, 1);
    let mut changed = settings();
    changed.limits.max_connections = 7;
    route.update(&[spec(1, true)], changed);
    assert!(!Arc::ptr_eq(&endpoint(&route, 1), &before));
}

#[tokio::test]
async fn an_endpoint_that_changes_protocol_is_a_new_one() {
    let route = route(&[spec(1, true)]);
    let before = endpoint(&route, 1);
    route.update(&[EndpointSpec { http2: true, ..spec(1, true) }], settings());
    let after = endpoint(&route, 1);
    assert!(!Arc::ptr_eq(&after, &before));
    assert_eq!(after.version, Version::HTTP_2);
}
