//! Without a usable certificate a sidecar fails closed: its calls get a clear 503, its ports
//! refuse handshakes, `/ready` says why; a certificate arriving later (the control plane's
//! first answer, a renewal) brings it back without a restart.

use std::time::Duration;

use serde_json::Value;

use super::harness::{EchoBackend, HttpBackend, Mesh, Sidecar, echo, get, refused};
use super::{callee_config, caller_config};
use crate::tls::tests::pki::{Leaf, bundle};
use crate::tls::{ALPN_H2, Credentials, TlsMetrics, client_config};

#[tokio::test]
async fn an_expired_certificate_stops_calls_until_it_is_renewed() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let credentials = mesh.credentials("checkout");
    let config = caller_config("checkout", callee.addr("api"), callee.addr("raw"), 1.0);
    let caller = Sidecar::start(&config, &credentials).await;
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
    assert_eq!(caller.admin("/ready").await.status, 200);

    credentials.update_identity(mesh.ca.issue(Leaf::spiffe("checkout").expired()).identity());
    // Also on the HTTP/2 connection made before: nothing more is sent.
    let reply = get(caller.addr("payment"), "/", &[]).await;
    assert_eq!((reply.status.as_u16(), reply.error()), (503, Some("no-certificate")));
    assert!(reply.body.contains("the certificate expired at 2021-01-02T00:00:00Z"), "{}", reply.body);
    assert_eq!(echo(caller.addr("payment-raw"), b"ping").await, b"");
    let ready = caller.admin("/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("the certificate expired at 2021-01-02T00:00:00Z"), "{}", ready.body);
    assert_eq!((http.requests(), echo_app.connections()), (1, 0));

    credentials.update_identity(mesh.ca.issue(Leaf::spiffe("checkout")).identity());
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
    assert_eq!(echo(caller.addr("payment-raw"), b"ping").await, b"ping");
    assert_eq!(caller.admin("/ready").await.status, 200);
}

#[tokio::test]
async fn a_callee_with_an_expired_certificate_refuses_handshakes() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let payment = mesh.credentials("payment");
    let callee = Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &payment).await;
    let config = caller_config("checkout", callee.addr("api"), callee.addr("raw"), 1.0);
    let caller = Sidecar::start(&config, &mesh.credentials("checkout")).await;

    payment.update_identity(mesh.ca.issue(Leaf::spiffe("payment").expired()).identity());
    let reply = get(caller.addr("payment"), "/", &[]).await;
    assert_eq!((reply.status.as_u16(), reply.error()), (502, Some("tls-handshake-failed")), "{}", reply.body);
    assert!(refused(client_config(&mesh.credentials("checkout"), &[ALPN_H2]), callee.addr("api")).await);
    assert!(callee.refused("no_certificate").await >= 2);
    let ready = callee.admin("/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("expired"), "{}", ready.body);
    assert_eq!(http.connections(), 0);

    payment.update_identity(mesh.ca.issue(Leaf::spiffe("payment")).identity());
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_callee_whose_certificate_expires_serves_nothing_more_on_open_connections() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let payment = mesh.credentials("payment");
    let callee = Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &payment).await;
    let config = caller_config("checkout", callee.addr("api"), callee.addr("raw"), 1.0);
    let caller = Sidecar::start(&config, &mesh.credentials("checkout")).await;
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);

    // The caller's HTTP/2 connection was made while the callee's certificate was valid.
    payment.update_identity(mesh.ca.issue(Leaf::spiffe("payment").expired()).identity());
    let reply = get(caller.addr("payment"), "/", &[]).await;
    assert_eq!((reply.status.as_u16(), reply.error()), (503, Some("no-certificate")), "{}", reply.body);
    assert!(reply.body.contains("cannot serve over mutual TLS"), "{}", reply.body);
    assert_eq!(http.requests(), 1, "a request reached the app behind an expired certificate");

    payment.update_identity(mesh.ca.issue(Leaf::spiffe("payment")).identity());
    assert_eq!(get(caller.addr("payment"), "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_sidecar_waits_for_its_first_certificate_then_serves() {
    let mesh = Mesh::new();
    let (http, echo_app) = (HttpBackend::start().await, EchoBackend::start().await);
    let callee =
        Sidecar::start(&callee_config(&http, &echo_app, Some("{}")), &mesh.credentials("payment")).await;
    let (api, raw) = (callee.addr("api"), callee.addr("raw"));

    // The control plane has not answered: after the connect timeout, a clear refusal.
    let impatient =
        Sidecar::start(&caller_config("checkout", api, raw, 0.3), &Credentials::empty(TlsMetrics::new()))
            .await;
    let reply = get(impatient.addr("payment"), "/", &[]).await;
    assert_eq!((reply.status.as_u16(), reply.error()), (503, Some("no-certificate")));
    assert!(
        reply.body.contains("no certificate has been issued yet (the control plane has not answered)"),
        "{}",
        reply.body
    );
    let config: Value = serde_json::from_str(&impatient.admin("/config").await.body).unwrap();
    assert_eq!((&config["identity"], &config["trustBundle"]), (&Value::Null, &Value::Null));
    assert_eq!(impatient.admin("/ready").await.status, 503);

    // A request that arrives first waits (within the connect timeout) for the certificate.
    let credentials = Credentials::empty(TlsMetrics::new());
    let caller = Sidecar::start(&caller_config("checkout", api, raw, 30.0), &credentials).await;
    let waiting = tokio::spawn(get(caller.addr("payment"), "/", &[]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    credentials.update_identity(mesh.ca.issue(Leaf::spiffe("checkout")).identity());
    credentials.update_bundle(bundle(&[&mesh.ca]));
    assert_eq!(waiting.await.unwrap().status, 200);
    assert_eq!(caller.admin("/ready").await.status, 200);
    let config: Value = serde_json::from_str(&caller.admin("/config").await.body).unwrap();
    assert_eq!(config["identity"]["spiffeId"], "spiffe://shop/checkout");
    assert_eq!(config["identity"]["notAfter"], "2089-01-01T00:00:00Z");
    assert!(config["identity"]["expiresInSeconds"].as_i64().unwrap() > 0);
    assert_eq!(config["trustBundle"]["roots"], 1);
    assert_eq!(config["outbound"][0]["dnsName"], "payment");
}
