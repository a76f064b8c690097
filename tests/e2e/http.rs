//! HTTP/1.1 and h2c through one outbound hop to plain backends, and through two sidecars
//! (outbound → inbound) where the hop between them is HTTP/2.

use bytes::Bytes;
use tether_testkit::{Backend, Client, Fnv, Sidecar, metric_value, pattern};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// A server-side sidecar publishing `backend` (appProtocol `protocol`) on a port of its own.
async fn inbound(backend: &Backend, protocol: &str) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {}, appProtocol: {protocol} }}\n",
        backend.addr
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// A client-side sidecar with two aliases: `direct` to the backends, `mesh` to their sidecars.
async fn outbound(protocol: &str, direct: &[&Backend], mesh: &[&Sidecar]) -> Sidecar {
    let direct: Vec<String> = direct.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let mesh: Vec<String> =
        mesh.iter().map(|s| format!("{{ address: \"{}\", mesh: true }}", s.addr("api"))).collect();
    let mut yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned();
    for (name, endpoints) in [("direct", direct), ("mesh", mesh)] {
        if !endpoints.is_empty() {
            yaml += &format!(
                "  - {{ dnsName: {name}, listen: 127.0.0.1:0, appProtocol: {protocol}, endpoints: [{}] }}\n",
                endpoints.join(", ")
            );
        }
    }
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut f = Fnv::new();
    f.write(bytes);
    f.finish()
}

/// How many requests [`exercise`] sends.
const REQUESTS_PER_EXERCISE: f64 = 7.0;

async fn exercise(client: &Client, base: &str, expect_version: &str) {
    // A plain GET keeps its Host, and reaches the backend in the backend's protocol.
    let r = client.get(&format!("{base}/hello")).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().starts_with("hello from"), "{r:?}");
    assert_eq!(r.header("x-seen-version"), Some(expect_version), "{r:?}");
    assert!(r.header("x-seen-host").is_some_and(|h| h.starts_with("127.0.0.1:")), "{r:?}");

    // Status codes pass through untouched.
    for code in [201, 404, 503] {
        let r = client.get(&format!("{base}/status/{code}")).await.unwrap();
        assert_eq!(r.status.as_u16(), code);
        assert!(r.header("x-tether-error").is_none(), "a backend's {code} is not tether's");
    }

    // Bodies arrive byte for byte, both ways.
    let upload = Bytes::from(pattern(300_000));
    let r = client.post(&format!("{base}/echo"), upload.clone()).await.unwrap();
    assert_eq!(r.body, upload);
    let r = client.post(&format!("{base}/sink"), upload.clone()).await.unwrap();
    assert_eq!(r.text(), format!("{} {:016x}", upload.len(), checksum(&upload)));
    let r = client.get(&format!("{base}/bytes/1000001")).await.unwrap();
    assert_eq!(r.body.len(), 1_000_001);
    assert_eq!(checksum(&r.body), checksum(&pattern(1_000_001)));
}

#[tokio::test]
async fn http1_through_one_hop_and_through_two_sidecars() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let (s1, s2) = (inbound(&b1, "http").await, inbound(&b2, "http").await);
    let client_side = outbound("http", &[&b1, &b2], &[&s1, &s2]).await;
    let client = Client::http1();
    exercise(&client, &client_side.url("direct", ""), "HTTP/1.1").await;
    exercise(&client, &client_side.url("mesh", ""), "HTTP/1.1").await;
    // The mesh requests went through the server-side sidecars (and only those did); the 503 was
    // retried twice by the client side (retryOn 503, maxRetries 2, the defaults).
    let mut served = 0.0;
    for s in [&s1, &s2] {
        served += metric_value(&s.metrics().await, "tether_requests_total", &[]);
    }
    assert_eq!(served, REQUESTS_PER_EXERCISE + 2.0);
}

#[tokio::test]
async fn h2c_through_one_hop_and_through_two_sidecars() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let (s1, s2) = (inbound(&b1, "http2").await, inbound(&b2, "http2").await);
    let client_side = outbound("http2", &[&b1, &b2], &[&s1, &s2]).await;
    let client = Client::http2();
    exercise(&client, &client_side.url("direct", ""), "HTTP/2.0").await;
    exercise(&client, &client_side.url("mesh", ""), "HTTP/2.0").await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let b = Backend::start("b").await;
    let proxy = outbound("http", &[&b], &[]).await;
    let client = Client::http1();
    for _ in 0..50 {
        assert_eq!(client.get(&proxy.url("direct", "/")).await.unwrap().status, 200);
    }
    assert_eq!(b.requests(), 50);
    assert_eq!(b.connections(), 1, "the proxy should reuse its upstream connection");
}
