//! Reliability A7 at a listener: whatever is not mutual TLS 1.3 with a certificate of the mesh
//! is refused in the handshake and counted by reason, and the app never sees a connection.

use std::sync::Arc;

use rcgen::SanType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::callee_config;
use super::harness::{EchoBackend, HttpBackend, Mesh, Sidecar, eventually, refused};
use crate::tls::tests::pki::{Ca, Leaf, anonymous_client, client_presenting, credentials, tls12_client};
use crate::tls::{ALPN_TCP, client_config};

#[tokio::test]
async fn everything_but_mutual_tls_from_the_mesh_is_refused_before_the_app() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));
    let checkout = mesh.credentials("checkout");
    let issue = |leaf: Leaf| mesh.ca.issue(leaf);

    // Plaintext HTTP, to both ports: at most a TLS alert comes back.
    for port in [api, raw] {
        let mut plain = TcpStream::connect(port).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(answer.is_empty() || answer[0] == 21, "only a TLS alert record: {answer:?}");
    }
    eventually("plaintext counted", || async { callee.refused("plaintext").await == 2 }).await;

    let foreign = Ca::new("tether root");
    let dns_only = Leaf::with_sans(vec![SanType::DnsName("checkout.shop".try_into().unwrap())]);
    let cases: [(&str, Arc<rustls::ClientConfig>); 6] = [
        ("protocol_version", tls12_client(&issue(Leaf::spiffe("checkout")), &checkout)),
        ("expired", client_presenting(&issue(Leaf::spiffe("checkout").expired()), &checkout)),
        (
            "unknown_ca",
            client_config(&credentials(&foreign.issue(Leaf::spiffe("checkout")), &[&mesh.ca]), &[b"h2"]),
        ),
        ("no_spiffe_id", client_presenting(&issue(dns_only), &checkout)),
        ("no_client_cert", anonymous_client(&checkout)),
        // A sidecar of the mesh, but asking an HTTP port for a tcp stream.
        ("alpn", client_config(&checkout, &[ALPN_TCP])),
    ];
    for (reason, client) in cases {
        assert!(refused(client, api).await, "{reason}: not refused");
        eventually(reason, || async { callee.refused(reason).await == 1 }).await;
    }

    // A handshake that never completes holds its connection no longer than the timeout.
    let mut slow = TcpStream::connect(api).await.unwrap();
    slow.write_all(&[22, 3, 1]).await.unwrap();
    let _ = slow.read_to_end(&mut Vec::new()).await;
    eventually("timeout counted", || async { callee.refused("timeout").await == 1 }).await;

    assert_eq!((http.connections(), echo_app.connections()), (0, 0), "the apps saw a connection");
}
