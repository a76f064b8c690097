//! Renewal and CA rotation while serving (design §8): a stream open across them is never
//! reset, and new handshakes present and trust what was just installed.

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use super::harness::{EchoBackend, HttpBackend, Mesh, Sidecar, get, request};
use super::{callee_config, caller_config};
use crate::tls::tests::pki::{Ca, Leaf, bundle};
use crate::tls::{self, ALPN_H2, TlsMetrics, client_config};

#[tokio::test]
async fn renewal_and_a_new_root_leave_a_long_stream_alone() {
    let mesh = Mesh::new();
    let (mut http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let (payment, checkout) = (mesh.credentials("payment"), mesh.credentials("checkout"));
    let callee = Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &payment).await;
    let config = caller_config("checkout", callee.addr("api"), callee.addr("raw"), 1.0);
    let caller = Sidecar::start(&config, &checkout).await;

    let response = request(caller.addr("payment"), "/stream", &[]).await;
    assert_eq!(response.status(), 200);
    let chunks = http.next_stream().await;
    let mut body = response.into_body();
    chunks.send(Bytes::from_static(b"before ")).await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "before ");

    // Both sidecars renew, and both trust the next root besides the current one.
    let next = Ca::new("tether root");
    let renewed = mesh.ca.issue(Leaf::spiffe("payment"));
    payment.update_identity(renewed.identity());
    checkout.update_identity(mesh.ca.issue(Leaf::spiffe("checkout")).identity());
    payment.update_bundle(bundle(&[&mesh.ca, &next]));
    checkout.update_bundle(bundle(&[&mesh.ca, &next]));

    chunks.send(Bytes::from_static(b"during ")).await.unwrap();
    chunks.send(Bytes::from_static(b"after")).await.unwrap();
    drop(chunks);
    let rest = body.collect().await.expect("the stream was not reset").to_bytes();
    assert_eq!(rest, "during after");

    // New requests flow, and a new handshake gets the renewed certificate.
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
    let tcp = TcpStream::connect(callee.addr("api")).await.unwrap();
    let (stream, _) =
        tls::connect(client_config(&checkout, &[ALPN_H2]), tcp, &TlsMetrics::new()).await.unwrap();
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], renewed.der);
    // A sidecar whose certificate comes from the next root is trusted already.
    let from_next = next.issue(Leaf::spiffe("checkout"));
    let newcomer = crate::tls::tests::pki::credentials(&from_next, &[&mesh.ca, &next]);
    let tcp = TcpStream::connect(callee.addr("api")).await.unwrap();
    let (stream, _) =
        tls::connect(client_config(&newcomer, &[ALPN_H2]), tcp, &TlsMetrics::new()).await.unwrap();
    assert_eq!(super::harness::get_h2(stream).await.unwrap(), 200);
}
