//! Reliability A7: expired, foreign, wrong-usage and malformed certificates, TLS < 1.3, no
//! client certificate, plaintext, another protocol and a handshake that never ends are refused,
//! and counted.

use std::sync::Arc;

use rcgen::ExtendedKeyUsagePurpose;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pki::{
    ALPN, Ca, ClientEnd, Leaf, anonymous_client, client_presenting, credentials, dns, handshake,
    server_presenting, spiffe, tls12_client, uri,
};
use crate::tls::{
    ALPN_H2, ALPN_TCP, Credentials, HandshakeError, Reason, Side, SpiffeId, TlsMetrics, Unusable, accept,
    accept_within, client_config, client_config_expecting, connect, server_config,
};

/// `metrics` counted one failure, for `reason` on `side`, and nothing else.
fn counted_once(metrics: &TlsMetrics, side: Side, reason: Reason) {
    for s in [Side::Inbound, Side::Outbound] {
        for r in Reason::ALL {
            let expected = u64::from((s, r) == (side, reason));
            assert_eq!(metrics.handshake_errors(s, r), expected, "{s:?} {r:?}");
        }
    }
}

/// What the client learns of a refusal: at once, or (TLS 1.3 clients finish first) from the
/// alert that arrives on its first read.
async fn client_learns(connected: Result<(ClientEnd, SpiffeId), HandshakeError>) -> Reason {
    match connected {
        Err(error) => error.reason,
        Ok((mut stream, _)) => {
            let error = stream.read(&mut [0; 16]).await.expect_err("the server refused");
            Reason::of(&error)
        }
    }
}

/// The server refuses the client's certificate for `reason`; returns what the client learns.
async fn server_refuses(server: Arc<ServerConfig>, client: Arc<ClientConfig>, reason: Reason) -> Reason {
    let (server_metrics, client_metrics) = (TlsMetrics::default(), TlsMetrics::default());
    let (accepted, connected) = handshake(server, &server_metrics, client, &client_metrics).await;
    let error = accepted.expect_err("the server refuses");
    assert_eq!((error.side, error.reason), (Side::Inbound, reason), "{error}");
    counted_once(&server_metrics, Side::Inbound, reason);
    client_learns(connected).await
}

/// The client refuses the server's certificate for `reason`; returns what the server learns.
async fn client_refuses(server: Arc<ServerConfig>, client: Arc<ClientConfig>, reason: Reason) -> Reason {
    let (server_metrics, client_metrics) = (TlsMetrics::default(), TlsMetrics::default());
    let (accepted, connected) = handshake(server, &server_metrics, client, &client_metrics).await;
    let error = connected.expect_err("the client refuses");
    assert_eq!((error.side, error.reason), (Side::Outbound, reason), "{error}");
    counted_once(&client_metrics, Side::Outbound, reason);
    accepted.expect_err("the server gets no connection").reason
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = Ca::new("tether root");
    let expired = ca.issue(Leaf::spiffe("checkout").expired());
    let good = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);

    let told =
        server_refuses(server_config(&good, ALPN), client_presenting(&expired, &good), Reason::Expired).await;
    assert_eq!(told, Reason::Expired);
    let told =
        client_refuses(server_presenting(&expired, &good), client_config(&good, ALPN), Reason::Expired).await;
    assert_eq!(told, Reason::Expired);
}

#[tokio::test]
async fn an_expired_identity_of_our_own_is_never_presented() {
    let ca = Ca::new("tether root");
    let expired = credentials(&ca.issue(Leaf::spiffe("checkout").expired()), &[&ca]);
    let good = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    assert!(matches!(expired.unusable(), Some(Unusable::Expired(_))), "{:?}", expired.unusable());

    // As a client it presents no certificate, which the server refuses.
    server_refuses(server_config(&good, ALPN), client_config(&expired, ALPN), Reason::NoClientCert).await;
    // As a server it has none to present: the handshake fails before the client sees one.
    let (server_metrics, client_metrics) = (TlsMetrics::default(), TlsMetrics::default());
    let (accepted, connected) = handshake(
        server_config(&expired, ALPN),
        &server_metrics,
        client_config(&good, ALPN),
        &client_metrics,
    )
    .await;
    assert!(accepted.is_err() && connected.is_err());
}

#[tokio::test]
async fn without_a_trust_bundle_no_peer_is_trusted() {
    let ca = Ca::new("tether root");
    let issued = ca.issue(Leaf::spiffe("payment"));
    let no_bundle = Credentials::empty(TlsMetrics::default());
    no_bundle.update_identity(issued.identity());
    assert_eq!(no_bundle.unusable(), Some(Unusable::NoBundle));
    let good = credentials(&ca.issue(Leaf::spiffe("checkout")), &[&ca]);

    server_refuses(server_config(&no_bundle, ALPN), client_config(&good, ALPN), Reason::NoCertificate).await;
    client_refuses(server_config(&good, ALPN), client_config(&no_bundle, ALPN), Reason::NoCertificate).await;
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_even_when_it_has_the_same_name() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    for foreign in [Ca::new("tether root"), Ca::new("someone else")] {
        // They trust our CA, so that it is our side that refuses.
        let theirs = credentials(&foreign.issue(Leaf::spiffe("checkout")), &[&ca]);
        let told =
            server_refuses(server_config(&ours, ALPN), client_config(&theirs, ALPN), Reason::UnknownCa).await;
        assert_eq!(told, Reason::UnknownCa);
        let told =
            client_refuses(server_config(&theirs, ALPN), client_config(&ours, ALPN), Reason::UnknownCa).await;
        assert_eq!(told, Reason::UnknownCa);
    }
}

#[tokio::test]
async fn a_certificate_without_a_spiffe_id_is_refused() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    let dns_only = ca.issue(Leaf::with_sans(vec![dns("checkout.shop")]));

    let client = client_presenting(&dns_only, &ours);
    server_refuses(server_config(&ours, ALPN), client, Reason::NoSpiffeId).await;
    let server = server_presenting(&dns_only, &ours);
    client_refuses(server, client_config(&ours, ALPN), Reason::NoSpiffeId).await;
}

#[tokio::test]
async fn a_malformed_ambiguous_or_unexpected_spiffe_id_is_refused() {
    let ca = Ca::new("tether root");
    let payment = ca.issue(Leaf::spiffe("payment"));
    let ours = credentials(&payment, &[&ca]);
    for sans in [
        vec![uri("spiffe://shop/checkout/extra")],
        vec![uri("spiffe://shop/checkout"), uri("spiffe://shop/admin")],
        vec![uri("https://checkout.shop/")],
    ] {
        let bad = ca.issue(Leaf::with_sans(sans));
        server_refuses(server_config(&ours, ALPN), client_presenting(&bad, &ours), Reason::BadSpiffeId).await;
        client_refuses(server_presenting(&bad, &ours), client_config(&ours, ALPN), Reason::BadSpiffeId).await;
    }
    // A well-formed ID of another service than the one the client meant to reach.
    let client = client_config_expecting(&ours, ALPN, spiffe("admin"));
    client_refuses(server_config(&ours, ALPN), client, Reason::BadSpiffeId).await;
}

#[tokio::test]
async fn certificates_for_the_wrong_usage_are_refused() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    let server_only = ca.issue(Leaf::spiffe("checkout").usages(vec![ExtendedKeyUsagePurpose::ServerAuth]));
    let client_only = ca.issue(Leaf::spiffe("checkout").usages(vec![ExtendedKeyUsagePurpose::ClientAuth]));

    server_refuses(server_config(&ours, ALPN), client_presenting(&server_only, &ours), Reason::Other).await;
    client_refuses(server_presenting(&client_only, &ours), client_config(&ours, ALPN), Reason::Other).await;
}

#[tokio::test]
async fn a_tls_1_2_client_is_refused() {
    let ca = Ca::new("tether root");
    let issued = ca.issue(Leaf::spiffe("checkout"));
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);

    let told =
        server_refuses(server_config(&ours, ALPN), tls12_client(&issued, &ours), Reason::ProtocolVersion)
            .await;
    assert_eq!(told, Reason::ProtocolVersion);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);

    let told =
        server_refuses(server_config(&ours, ALPN), anonymous_client(&ours), Reason::NoClientCert).await;
    assert_eq!(told, Reason::NoClientCert);
}

#[tokio::test]
async fn plaintext_is_refused_both_ways() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    let metrics = TlsMetrics::default();

    // Plain HTTP to a TLS port: refused, and nothing but (at most) an alert goes back.
    let (mut plain, tls) = tokio::io::duplex(4096);
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let error = accept(server_config(&ours, ALPN), tls, &metrics).await.err().unwrap();
    assert_eq!(error.reason, Reason::Plaintext, "{error}");
    let mut answer = Vec::new();
    plain.read_to_end(&mut answer).await.unwrap();
    assert!(answer.is_empty() || answer[0] == 21, "only a TLS alert record: {answer:?}");

    // A TLS client reaching a plaintext server.
    let (mut plain, tls) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        let mut hello = [0; 1];
        plain.read_exact(&mut hello).await.unwrap();
        plain.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        plain
    });
    let error = connect(client_config(&ours, ALPN), tls, &metrics).await.err().unwrap();
    assert_eq!(error.reason, Reason::Plaintext, "{error}");
    drop(server.await.unwrap());

    assert_eq!(metrics.handshake_errors(Side::Inbound, Reason::Plaintext), 1);
    assert_eq!(metrics.handshake_errors(Side::Outbound, Reason::Plaintext), 1);
}

#[test]
fn errors_that_are_not_tls_errors_are_other() {
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(Reason::of(&reset), Reason::Other);
    let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
    assert_eq!(Reason::of(&eof), Reason::Other);
}

#[tokio::test]
async fn a_peer_must_agree_on_the_listeners_protocol() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    let theirs = credentials(&ca.issue(Leaf::spiffe("checkout")), &[&ca]);

    // A tcp caller at an HTTP listener.
    let told =
        server_refuses(server_config(&ours, &[ALPN_H2]), client_config(&theirs, &[ALPN_TCP]), Reason::Alpn)
            .await;
    assert_eq!(told, Reason::Alpn);
    // A caller that offers no protocol at all.
    server_refuses(server_config(&ours, &[ALPN_H2]), client_config(&theirs, &[]), Reason::Alpn).await;
    // A server that ignores the client's ALPN: the handshake completes, and the client drops it.
    let (server_metrics, client_metrics) = (TlsMetrics::default(), TlsMetrics::default());
    let (_, connected) = handshake(
        server_config(&ours, &[]),
        &server_metrics,
        client_config(&theirs, &[ALPN_H2]),
        &client_metrics,
    )
    .await;
    assert_eq!(connected.err().unwrap().reason, Reason::Alpn);
    counted_once(&client_metrics, Side::Outbound, Reason::Alpn);
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_does_not_complete_in_time_is_dropped() {
    let ca = Ca::new("tether root");
    let ours = credentials(&ca.issue(Leaf::spiffe("payment")), &[&ca]);
    let metrics = TlsMetrics::default();
    let (mut slow, tls) = tokio::io::duplex(4096);
    // The first bytes of a ClientHello record, and then nothing.
    slow.write_all(&[22, 3, 1]).await.unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let error = accept_within(timeout, server_config(&ours, ALPN), tls, &metrics).await.err().unwrap();
    assert_eq!((error.side, error.reason), (Side::Inbound, Reason::Timeout), "{error}");
    counted_once(&metrics, Side::Inbound, Reason::Timeout);
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).await.unwrap();
}
