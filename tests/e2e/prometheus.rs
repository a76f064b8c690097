//! The golden metrics as a real Prometheus server sees them: it scrapes the admin endpoints of a
//! client-side and a server-side sidecar, and after a known number of requests through both hops
//! its values equal exactly what was sent.
//!
//! Needs `/usr/bin/prometheus` (Debian package `prometheus`); without it the test fails and says
//! how to install it.

use std::time::Duration;

use tether_testkit::{Backend, Client, Prometheus, Sidecar, assert_eventually};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const OK_REQUESTS: usize = 37;
const NOT_FOUND_REQUESTS: usize = 5;

#[tokio::test]
async fn prometheus_scrapes_exact_request_and_response_counts() {
    let backend = Backend::start("orders").await;
    let server = format!(
        "service: orders
admin: 127.0.0.1:0
drainWaitSeconds: 0
inbound:
  - portName: api
    discoveryName: orders-api
    listen: 127.0.0.1:0
    target: {}
    appProtocol: http
",
        backend.addr
    );
    let server = Sidecar::start(TETHER, &server).await.unwrap();
    let client_side = format!(
        "service: frontend
admin: 127.0.0.1:0
drainWaitSeconds: 0
outbound:
  - dnsName: orders
    listen: 127.0.0.1:0
    appProtocol: http
    endpoints: [{{ address: \"{}\", mesh: true }}]
",
        server.addr("api")
    );
    let client_side = Sidecar::start(TETHER, &client_side).await.unwrap();
    let prometheus = Prometheus::start(&[("client", client_side.admin), ("server", server.admin)])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let client = Client::http1();
    for i in 0..OK_REQUESTS {
        let r = client.get(&client_side.url("orders", &format!("/hello/{i}"))).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    for _ in 0..NOT_FOUND_REQUESTS {
        let r = client.get(&client_side.url("orders", "/status/404")).await.unwrap();
        assert_eq!(r.status, 404, "{r:?}");
    }
    assert_eq!(backend.requests(), OK_REQUESTS + NOT_FOUND_REQUESTS);

    let all = (OK_REQUESTS + NOT_FOUND_REQUESTS) as f64;
    let target = r#"job="client",service="frontend",target_discovery_name="orders""#;
    let expectations = [
        (format!("sum(tether_target_requests_total{{{target}}})"), all),
        (format!(r#"sum(tether_target_responses_total{{{target},code_class="2xx"}})"#), OK_REQUESTS as f64),
        (
            format!(r#"sum(tether_target_responses_total{{{target},code_class="4xx"}})"#),
            NOT_FOUND_REQUESTS as f64,
        ),
        (format!(r#"sum(tether_target_responses_total{{{target},code_class="5xx"}})"#), 0.0),
        (format!("sum(tether_target_response_time_seconds_count{{{target}}})"), all),
        // Every observation falls in some bucket: the +Inf bucket counts them all.
        (format!(r#"sum(tether_target_response_time_seconds_bucket{{{target},le="+Inf"}})"#), all),
        (
            r#"sum(tether_requests_total{job="server",service="orders",discovery_name="orders-api"})"#.into(),
            all,
        ),
    ];
    for (query, expected) in &expectations {
        let mut seen: Option<f64>;
        assert_eventually!(
            Duration::from_secs(30),
            {
                seen = prometheus.query(query).await.unwrap();
                seen == Some(*expected)
            },
            "Prometheus says `{query}` = {seen:?}, expected {expected}\n\
             client metrics:\n{}\nserver metrics:\n{}\nprometheus log:\n{}",
            client_side.metrics().await,
            server.metrics().await,
            prometheus.log()
        );
    }
    // Both sidecars were scraped as healthy targets.
    assert_eq!(prometheus.query(r#"sum(up{job=~"client|server"})"#).await.unwrap(), Some(2.0));
}
