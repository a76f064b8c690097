//! A caller's sidecar reaches a callee's apps over mutual TLS 1.3, for HTTP and tcp.

use rustls::ProtocolVersion;
use tokio::net::TcpStream;

use super::harness::{
    EchoBackend, HttpBackend, Mesh, Sidecar, echo, eventually, get, get_h2, refused, spiffe,
};
use super::{callee_config, caller_config};
use crate::tls::tests::pki::anonymous_client;
use crate::tls::{self, ALPN_H2, TlsMetrics};

#[tokio::test]
async fn a_caller_reaches_the_callees_apps_over_mutual_tls() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let caller_config = caller_config("checkout", callee.addr("api"), callee.addr("raw"), 1.0);
    let caller = Sidecar::start(&caller_config, &mesh.credentials("checkout")).await;

    for path in ["/a", "/b"] {
        let reply = get(caller.addr("payment"), path, &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, &*format!("hello {path}")));
    }
    assert_eq!(echo(caller.addr("payment-raw"), b"ping over tls").await, b"ping over tls");
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(caller.addr("payment-raw"), &big).await, big);
    assert_eq!(echo_app.connections(), 2);
    for reason in ["plaintext", "unknown_ca", "alpn", "other"] {
        assert_eq!(callee.refused(reason).await, 0, "{reason}");
    }
}

#[tokio::test]
async fn the_callees_port_speaks_tls_1_3_to_sidecars_only() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let checkout = mesh.credentials("checkout");
    let metrics = TlsMetrics::new();

    // A sidecar's handshake: TLS 1.3, the callee proves it is payment, and HTTP/2 flows.
    let client = tls::client_config_expecting(&checkout, &[ALPN_H2], spiffe("payment"));
    let tcp = TcpStream::connect(callee.addr("api")).await.unwrap();
    let (stream, peer) = tls::connect(client, tcp, &metrics).await.unwrap();
    assert_eq!(peer, spiffe("payment"));
    assert_eq!(stream.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(get_h2(stream).await.unwrap(), 200);
    assert_eq!(http.requests(), 1);

    // Without a client certificate: refused.
    assert!(refused(anonymous_client(&checkout), callee.addr("api")).await);
    eventually("no_client_cert counted", || async { callee.refused("no_client_cert").await == 1 }).await;
    assert_eq!(http.connections(), 1);
}
