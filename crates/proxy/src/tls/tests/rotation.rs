//! Renewal and CA rotation while serving: new handshakes see the change, established
//! connections carry on.

use prometheus_client::registry::Registry;

use super::carries;
use super::pki::{ALPN, Ca, Leaf, bundle, credentials, handshake, spiffe};
use crate::tls::{Credentials, Reason, Side, TlsMetrics, client_config, server_config};

#[tokio::test]
async fn a_renewed_identity_is_presented_from_the_next_handshake_and_old_connections_keep_working() {
    let ca = Ca::new("tether root");
    let (payment, checkout) = (ca.issue(Leaf::spiffe("payment")), ca.issue(Leaf::spiffe("checkout")));
    let (server_side, client_side) = (credentials(&payment, &[&ca]), credentials(&checkout, &[&ca]));
    // Built once, as a listener and an upstream would.
    let (server, client) = (server_config(&server_side, ALPN), client_config(&client_side, ALPN));
    let metrics = TlsMetrics::default();

    let (accepted, connected) = handshake(server.clone(), &metrics, client.clone(), &metrics).await;
    let (mut old_inbound, mut old_outbound) = (accepted.unwrap().0, connected.unwrap().0);
    assert_eq!(old_outbound.get_ref().1.peer_certificates().unwrap()[0], payment.der);

    let (payment2, checkout2) = (ca.issue(Leaf::spiffe("payment")), ca.issue(Leaf::spiffe("checkout")));
    server_side.update_identity(payment2.identity());
    client_side.update_identity(checkout2.identity());

    let (accepted, connected) = handshake(server, &metrics, client, &metrics).await;
    let (inbound, caller) = accepted.unwrap();
    let (outbound, callee) = connected.unwrap();
    assert_eq!(outbound.get_ref().1.peer_certificates().unwrap()[0], payment2.der);
    assert_eq!(inbound.get_ref().1.peer_certificates().unwrap()[0], checkout2.der);
    assert_eq!((caller, callee), (spiffe("checkout"), spiffe("payment")));

    carries(&mut old_outbound, &mut old_inbound, b"still here").await;
    carries(&mut old_inbound, &mut old_outbound, b"still here too").await;
}

#[tokio::test]
async fn a_ca_rotation_trusts_both_roots_then_only_the_new_one() {
    let (old, new) = (Ca::new("tether root"), Ca::new("tether root"));
    let server_side = credentials(&old.issue(Leaf::spiffe("payment")), &[&old]);
    let client_side = credentials(&old.issue(Leaf::spiffe("checkout")), &[&old]);
    let (server, client) = (server_config(&server_side, ALPN), client_config(&client_side, ALPN));
    let metrics = TlsMetrics::default();
    let (accepted, connected) = handshake(server.clone(), &metrics, client.clone(), &metrics).await;
    let (mut before_inbound, mut before_outbound) = (accepted.unwrap().0, connected.unwrap().0);

    // 1. Everyone trusts both roots; leaves of either are accepted.
    server_side.update_bundle(bundle(&[&old, &new]));
    client_side.update_bundle(bundle(&[&old, &new]));
    let straggler = credentials(&old.issue(Leaf::spiffe("legacy")), &[&old, &new]);
    let (accepted, connected) =
        handshake(server.clone(), &metrics, client_config(&straggler, ALPN), &metrics).await;
    assert_eq!(accepted.unwrap().1, spiffe("legacy"));
    connected.unwrap();
    client_side.update_identity(new.issue(Leaf::spiffe("checkout")).identity());
    let (accepted, connected) = handshake(server.clone(), &metrics, client.clone(), &metrics).await;
    assert_eq!(accepted.unwrap().1, spiffe("checkout"));
    connected.unwrap();

    // 2. Everyone has a leaf of the new root; the old root goes.
    server_side.update_identity(new.issue(Leaf::spiffe("payment")).identity());
    server_side.update_bundle(bundle(&[&new]));
    client_side.update_bundle(bundle(&[&new]));
    let (accepted, connected) = handshake(server.clone(), &metrics, client, &metrics).await;
    assert_eq!(accepted.unwrap().1, spiffe("checkout"));
    assert_eq!(connected.unwrap().1, spiffe("payment"));
    assert_eq!(metrics.handshake_errors(Side::Inbound, Reason::UnknownCa), 0);

    // A leaf of the old root is refused from now on.
    let (accepted, _) = handshake(server, &metrics, client_config(&straggler, ALPN), &metrics).await;
    assert_eq!(accepted.err().unwrap().reason, Reason::UnknownCa);
    assert_eq!(metrics.handshake_errors(Side::Inbound, Reason::UnknownCa), 1);

    // The connection made before the rotation never noticed.
    carries(&mut before_outbound, &mut before_inbound, b"before").await;
    carries(&mut before_inbound, &mut before_outbound, b"after").await;
}

/// The value of the expiry gauge in the Prometheus text.
fn expiry_seconds(registry: &Registry) -> i64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let line = text.lines().find(|l| l.starts_with("tether_tls_certificate_expiry_seconds ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn seconds_until(year: i32) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    // January 1st of `year`, from the days since the epoch (proleptic Gregorian).
    let days: i64 =
        (1970..year).map(|y| if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 366 } else { 365 }).sum();
    days * 86_400 - now
}

#[test]
fn the_expiry_gauge_counts_down_to_the_current_certificates_end() {
    let ca = Ca::new("tether root");
    let mut registry = Registry::with_prefix("tether");
    let metrics = TlsMetrics::new();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    // No identity yet: no value; every error series is there from the start.
    assert!(!text.contains("tether_tls_certificate_expiry_seconds "), "{text}");
    assert!(
        text.contains("tether_tls_handshake_errors_total{side=\"inbound\",reason=\"plaintext\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tether_tls_handshake_errors_total{side=\"outbound\",reason=\"unknown_ca\"} 0"),
        "{text}"
    );

    let identity = ca.issue(Leaf::spiffe("payment").valid_until((2089, 1, 1))).identity();
    let credentials = Credentials::new(identity, bundle(&[&ca]), metrics);
    assert!((expiry_seconds(&registry) - seconds_until(2089)).abs() <= 5);

    credentials.update_identity(ca.issue(Leaf::spiffe("payment").valid_until((2080, 1, 1))).identity());
    assert!((expiry_seconds(&registry) - seconds_until(2080)).abs() <= 5);

    // An expired certificate shows how long ago it expired.
    credentials.update_identity(ca.issue(Leaf::spiffe("payment").expired()).identity());
    assert!(expiry_seconds(&registry) < 0);
}
