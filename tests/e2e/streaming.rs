//! Bodies stream through the proxy rather than being held: 64 MiB up and 64 MiB down through
//! two sidecars (outbound → inbound → backend) arrive byte for byte while neither proxy's peak
//! memory grows anywhere near the body's size. And the keep-alive race: a pooled upstream
//! connection that the backend closes when reused, before answering, costs the client nothing.

use std::time::Duration;

use tether_testkit::{Backend, Client, Sidecar, StreamClient, pattern_checksum};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

const BODY: u64 = 64 * 1024 * 1024;
/// How much a proxy's peak RSS may grow while a body streams through: far below [`BODY`].
const MAX_GROWTH_KIB: u64 = 24 * 1024;
/// Generous, so that a loaded machine does not turn a slow transfer into a 504.
const TIMEOUT: &str = "timeout: { perRequestTimeoutSeconds: 300 }";

/// The peak RSS of each proxy, named.
fn peaks(proxies: &[(&str, &Sidecar)]) -> Vec<(String, u64)> {
    proxies
        .iter()
        .map(|(name, p)| {
            let kib = p.peak_rss_kib();
            assert!(kib > 0, "cannot read the {name} proxy's VmHWM");
            (name.to_string(), kib)
        })
        .collect()
}

fn assert_bounded_growth(before: &[(String, u64)], proxies: &[(&str, &Sidecar)], transfer: &str) {
    for ((name, idle), (_, peak)) in before.iter().zip(peaks(proxies)) {
        let growth = peak.saturating_sub(*idle);
        assert!(
            growth < MAX_GROWTH_KIB,
            "{transfer}: the {name} proxy's peak RSS grew by {growth} KiB ({idle} → {peak} KiB), \
             as if it held the {} MiB body",
            BODY >> 20
        );
    }
}

#[tokio::test]
async fn large_bodies_stream_through_two_sidecars_without_being_held() {
    let backend = Backend::start("big").await;
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {}, appProtocol: http, {TIMEOUT} }}\n",
        backend.addr
    );
    let server_side = Sidecar::start(TETHER, &yaml).await.unwrap();
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n  - {{ dnsName: big, listen: 127.0.0.1:0, appProtocol: http, endpoints: [{{ address: \"{}\", mesh: true }}], {TIMEOUT} }}\n",
        server_side.addr("api")
    );
    let client_side = Sidecar::start(TETHER, &yaml).await.unwrap();
    let proxies = [("outbound", &client_side), ("inbound", &server_side)];
    let client = StreamClient::http1();
    let sink = client_side.url("big", "/sink");
    let bytes = |n: u64| client_side.url("big", &format!("/bytes/{n}"));

    // Warm up with 1 MiB each way, so that the connections and their buffers exist before the
    // idle peak is taken.
    let warm = 1 << 20;
    let r = client.post_pattern(&sink, warm).await.unwrap();
    assert_eq!(r.text(), format!("{warm} {:016x}", pattern_checksum(warm)), "{r:?}");
    let d = client.get_digest(&bytes(warm)).await.unwrap();
    assert_eq!((d.status.as_u16(), d.len, d.fnv), (200, warm, pattern_checksum(warm)), "{d:?}");
    let idle = peaks(&proxies);
    let checksum = pattern_checksum(BODY);

    // Upload: the client makes the body as it goes; the backend counts and checksums it.
    let r = client.post_pattern(&sink, BODY).await.unwrap();
    assert_eq!(r.status, 200, "upload: {r:?}");
    assert_eq!(r.text(), format!("{BODY} {checksum:016x}"), "upload: what the backend received");
    assert_bounded_growth(&idle, &proxies, "64 MiB upload");

    // Download: the backend makes the body as it goes; the client counts and checksums it.
    let d = client.get_digest(&bytes(BODY)).await.unwrap();
    assert_eq!(d.status, 200, "download: {d:?}");
    assert_eq!((d.len, d.fnv), (BODY, checksum), "download: what the client received");
    assert_bounded_growth(&idle, &proxies, "64 MiB download");

    assert_eq!(backend.requests(), 4, "every transfer reached the backend once");
}

#[tokio::test]
async fn a_reused_connection_closed_before_answering_is_retried_on_a_fresh_one() {
    const REQUESTS: usize = 20;
    // Answers the first request of each connection; closes it unanswered on the second.
    let backend = Backend::closing_on_reuse("racy").await;
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n  - {{ dnsName: racy, listen: 127.0.0.1:0, appProtocol: http, endpoints: [\"{}\"] }}\n",
        backend.addr
    );
    let proxy = Sidecar::start(TETHER, &yaml).await.unwrap();
    let client = Client::http1();
    for i in 0..REQUESTS {
        if i > 0 {
            // A pause, as between real requests: the upstream connection waits in the pool.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client.get(&proxy.url("racy", "/")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), "hello from racy", "request {i}");
        assert!(r.header("x-tether-error").is_none(), "request {i}: {r:?}");
    }
    // The backend saw the retries: every request after the first one on a connection is
    // refused once, then sent again, once, on a fresh connection.
    let seen = backend.requests();
    assert!(
        seen > REQUESTS,
        "the backend saw {seen} requests for {REQUESTS}: the proxy never reused a connection, so the race was not exercised"
    );
    assert!(seen < 2 * REQUESTS, "the backend saw {seen} requests for {REQUESTS}: more than one retry each");

    // A POST is not idempotent: it may have reached the app, so it is never sent twice, and
    // the caller learns that the upstream failed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = backend.requests();
    let r = client.post(&proxy.url("racy", "/"), "").await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-tether-error"), Some("upstream-failed"), "{r:?}");
    assert_eq!(backend.requests(), before + 1, "the POST was sent more than once");
}
