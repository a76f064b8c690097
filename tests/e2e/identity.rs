//! Identity end to end (design §8; reliability A7, A8 and Identity), with real processes: a
//! `tether server` running the CA, a callee sidecar for `payment` (an HTTP port `api` and a
//! TCP port `db`) and caller sidecars for `orders` and `admin`, each started with a bootstrap
//! token for its own task.
//!
//! Sidecars talk mutual TLS 1.3 and prove `spiffe://<namespace>/<service>`; the callee refuses
//! every other handshake before its app sees a connection and counts it by reason; `allowFrom`
//! is enforced at the callee by the verified identity and follows the spec as it changes; with
//! the control plane gone, sidecars serve until their certificates expire, then fail closed,
//! and recover by themselves once it is back; a bootstrap token opens its own task's config
//! stream and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{Value, json};
use tether_testkit::control::ControlPlane;
use tether_testkit::{
    Backend, Client, CountingBackend, Reply, Sidecar, assert_eventually, metric_value, raw_exchange,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const NS: &str = "shop";
/// What goes through the `db` port: the TCP app answers it with `ok`.
const TCP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: db\r\n\r\n";
/// The reasons a sidecar counts a refused handshake under.
const REASONS: [&str; 11] = [
    "expired",
    "unknown_ca",
    "no_spiffe_id",
    "bad_spiffe_id",
    "protocol_version",
    "no_client_cert",
    "plaintext",
    "alpn",
    "timeout",
    "no_certificate",
    "other",
];

// ---------------------------------------------------------------------------------------------
// Acceptance 1: TLS 1.3 with mutual authentication between sidecars.
// ---------------------------------------------------------------------------------------------

/// A request from `orders` reaches payment's app through the callee, and the callee's port
/// speaks nothing but mutual TLS 1.3: a client of its own sees TLS 1.3, ALPN h2 and a
/// certificate for `spiffe://shop/payment` that the server's CA signed, and, without a
/// certificate to show, is refused before the app sees anything.
#[tokio::test]
async fn sidecars_talk_mutual_tls_1_3_and_prove_their_spiffe_ids() {
    let ca = TestCa::new("tether e2e root");
    let mesh = Mesh::with_ca(&ca, None).await;
    let orders = mesh.caller("orders").await;

    let reply = Client::http1().get(&orders.url("payment", "/")).await.unwrap();
    assert_eq!((reply.status, reply.header("x-backend")), (StatusCode::OK, Some("payment")), "{reply:?}");
    let tcp = raw_exchange(orders.addr("payment-db"), TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert_eq!(tcp.status, Some(200), "TCP through the mesh: {tcp:?}");
    assert_eq!(mesh.refusals().await, no_refusals(), "the callee refused a handshake of `orders`");
    // The callee's log, which its own thread copies, may lag a little behind.
    let authenticated = format!("identity=spiffe://{NS}/orders");
    assert_eventually!(
        Duration::from_secs(5),
        mesh.callee.log().lines().any(|l| l.contains("mutual TLS established") && l.contains(&authenticated)),
        "the callee did not authenticate `orders`:\n{}",
        mesh.callee.log()
    );
    for (sidecar, service) in [(&orders, "orders"), (&mesh.callee, "payment")] {
        let config = admin_json(sidecar, "/config").await;
        assert_eq!(config["identity"]["spiffeId"], format!("spiffe://{NS}/{service}"), "{config}");
        assert_eq!(config["trustBundle"]["roots"], 1, "{config}");
    }

    // The server signs with the CA it was given, and the callee's certificate is one of its.
    let status = mesh.cp.get("/v1/ca").await.unwrap();
    let root = &status.body["roots"][0];
    assert_eq!((root["fingerprint"].as_str(), &root["signing"]), (Some(&*ca.fingerprint()), &json!(true)));
    let callee = status.body["proxies"].as_array().unwrap().iter().find(|p| p["task"] == "payment-1");
    assert_eq!(callee.map(|p| &p["signedBy"]), Some(&json!(ca.fingerprint())), "{status:?}");

    // A client of its own, without a certificate, sees what a sidecar sees, then is refused.
    let (app_connections, app_requests) = (mesh.app.connections(), mesh.app.requests());
    let (config, server) = tls_client(&ca, None, b"h2");
    let mut tls = tls_connect(mesh.api, config).await.expect("the client's half of the handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let seen = server.seen().expect("the callee presented a certificate");
    assert_eq!(uri_sans(&seen), [format!("spiffe://{NS}/payment")]);
    assert_refused_on_first_read(&mut tls, "no client certificate").await;
    assert_counted(&mesh, no_refusals(), "no_client_cert").await;
    assert_eq!((mesh.app.connections(), mesh.app.requests()), (app_connections, app_requests));
}

// ---------------------------------------------------------------------------------------------
// Acceptance 2 (reliability A7): whatever is not mutual TLS 1.3 from the mesh is refused.
// ---------------------------------------------------------------------------------------------

/// The server signs with a CA made here, so that certificates of the mesh's own CA can be made
/// as it never issues them. A client presenting a certificate the CA would issue gets through;
/// each case below differs from it in one thing, and is refused in the handshake, counted under
/// its reason (and no other), and never reaches the app.
#[tokio::test]
async fn the_callee_refuses_everything_but_mutual_tls_1_3_from_the_mesh() {
    let ca = TestCa::new("tether e2e root");
    let mesh = Mesh::with_ca(&ca, None).await;
    let good = ca.issue(Leaf::spiffe("orders"));

    // The control: a certificate as the CA issues them, over HTTP/2 as sidecars speak it.
    let (config, _) = tls_client(&ca, Some(&good), b"h2");
    let tls = tls_connect(mesh.api, config).await.unwrap();
    let (status, backend) = h2_get(tls, "/").await.unwrap();
    assert_eq!((status, backend.as_deref()), (StatusCode::OK, Some("payment")));
    let (app_connections, app_requests) = (mesh.app.connections(), mesh.app.requests());
    let db_connections = mesh.db.connections();
    let mut counted = mesh.refusals().await;
    assert_eq!(counted, no_refusals());

    // Plaintext HTTP, to both ports.
    for port in [mesh.api, mesh.db_port] {
        let reply = raw_exchange(port, b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(reply.closed, "plaintext to {port}: the connection stayed open");
        assert!(
            reply.bytes.is_empty() || reply.bytes[0] == ALERT,
            "plaintext to {port}: more than a TLS alert came back: {:?}",
            reply.bytes
        );
        counted = assert_counted(&mesh, counted, "plaintext").await;
    }

    // A client that offers TLS 1.2 only: a protocol_version alert, nothing else.
    let mut old = TcpStream::connect(mesh.api).await.unwrap();
    old.write_all(&tls12_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), old.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the callee kept a TLS 1.2 client's connection open");
    assert!(
        answer.len() == 7 && answer[0] == ALERT && answer[5..] == [FATAL, PROTOCOL_VERSION],
        "not a protocol_version alert: {answer:?}"
    );
    counted = assert_counted(&mesh, counted, "protocol_version").await;

    // Certificates of the mesh's CA that it would never issue, and of other CAs.
    let foreign = TestCa::new("another root");
    let namesake = TestCa::new("tether e2e root");
    let dns_only = || Leaf::with_sans(vec![SanType::DnsName("orders.shop".try_into().unwrap())]);
    let cases = [
        ("expired", ca.issue(Leaf::spiffe("orders").expired()), "expired"),
        ("no SPIFFE ID", ca.issue(dns_only()), "no_spiffe_id"),
        ("two path segments", ca.issue(Leaf::uri(&format!("spiffe://{NS}/orders/v2"))), "bad_spiffe_id"),
        (
            "two SPIFFE IDs",
            ca.issue(Leaf::with_sans(vec![
                uri(&format!("spiffe://{NS}/orders")),
                uri(&format!("spiffe://{NS}/admin")),
            ])),
            "bad_spiffe_id",
        ),
        ("serverAuth only", ca.issue(Leaf::spiffe("orders").server_auth_only()), "other"),
        ("another CA", foreign.issue(Leaf::spiffe("orders")), "unknown_ca"),
        ("another CA, no SPIFFE ID", foreign.issue(dns_only()), "unknown_ca"),
        ("another CA of the same name", namesake.issue(Leaf::spiffe("orders")), "unknown_ca"),
    ];
    for (case, cert, reason) in cases {
        let (config, _) = tls_client(&ca, Some(&cert), b"h2");
        assert_refused(mesh.api, config, case).await;
        counted = assert_counted(&mesh, counted, reason).await;
    }
    let (anonymous, _) = tls_client(&ca, None, b"h2");
    assert_refused(mesh.api, anonymous, "no client certificate").await;
    counted = assert_counted(&mesh, counted, "no_client_cert").await;
    // A good certificate, but asking the HTTP port for a TCP stream.
    let (tcp_protocol, _) = tls_client(&ca, Some(&good), b"tether-tcp");
    assert_refused(mesh.api, tcp_protocol, "ALPN tether-tcp").await;
    assert_counted(&mesh, counted, "alpn").await;

    assert_eq!(
        (mesh.app.connections(), mesh.app.requests(), mesh.db.connections()),
        (app_connections, app_requests, db_connections),
        "a refused client reached an app"
    );
}

// ---------------------------------------------------------------------------------------------
// Acceptance 3 (reliability A8): allowFrom.
// ---------------------------------------------------------------------------------------------

/// `allowFrom: [orders]`: orders gets through; admin is refused at the callee, over HTTP with
/// 403 `forbidden` naming who may call (a header claiming to be orders changes nothing) and
/// over TCP by a closed connection, counted by caller; and once the spec allows admin too,
/// admin gets through, with every process left running.
#[tokio::test]
async fn allow_from_admits_only_the_services_it_names_and_follows_the_spec() {
    let ca = TestCa::new("tether e2e root");
    let mut mesh = Mesh::with_ca(&ca, Some(&["orders"])).await;
    let mut orders = mesh.caller("orders").await;
    let mut admin = mesh.caller("admin").await;
    let client = Client::http1();

    let reply = client.get(&orders.url("payment", "/")).await.unwrap();
    assert_eq!((reply.status, reply.header("x-backend")), (StatusCode::OK, Some("payment")), "{reply:?}");
    let tcp = raw_exchange(orders.addr("payment-db"), TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert_eq!(tcp.status, Some(200), "orders over TCP: {tcp:?}");

    let (app_requests, db_connections) = (mesh.app.requests(), mesh.db.connections());
    let reply = client.get(&admin.url("payment", "/")).await.unwrap();
    assert_forbidden(&reply);
    let claiming = Request::get(admin.url("payment", "/"))
        .header("x-forwarded-client-cert", format!("By=spiffe://{NS}/payment;URI=spiffe://{NS}/orders"))
        .header("x-spiffe-id", format!("spiffe://{NS}/orders"))
        .body(Full::default())
        .unwrap();
    assert_forbidden(&client.request(claiming).await.unwrap());
    let tcp = raw_exchange(admin.addr("payment-db"), TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert!(tcp.closed && tcp.bytes.is_empty(), "admin over TCP was not cut off: {tcp:?}");
    assert_eq!((mesh.app.requests(), mesh.db.connections()), (app_requests, db_connections));
    let callee = &mesh.callee;
    assert_eventually!(
        Duration::from_secs(5),
        (denied(callee, "api", "admin").await, denied(callee, "db", "admin").await) == (2.0, 1.0),
        "admin's refusals were not counted:\n{}",
        callee.metrics().await
    );
    assert_eq!((denied(callee, "api", "orders").await, denied(callee, "db", "orders").await), (0.0, 0.0));

    // The spec changes; the same processes let admin through.
    put(&mesh.cp, "/services/payment", payment_spec(&mesh.app, &mesh.db, Some(&["orders", "admin"]))).await;
    let url = admin.url("payment", "/");
    let reply = until(&client, &url, |r| r.status != StatusCode::FORBIDDEN).await;
    assert_eq!((reply.status, reply.header("x-backend")), (StatusCode::OK, Some("payment")), "{reply:?}");
    let tcp = raw_exchange(admin.addr("payment-db"), TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert_eq!(tcp.status, Some(200), "admin over TCP once allowed: {tcp:?}");
    for sidecar in [&mut mesh.callee, &mut orders, &mut admin] {
        assert!(sidecar.wait_exit(Duration::ZERO).await.is_none(), "a sidecar exited:\n{}", sidecar.log());
    }
}

/// What the callee's `listener` refused of `caller`.
async fn denied(callee: &Sidecar, listener: &str, caller: &str) -> f64 {
    let caller = format!("spiffe://{NS}/{caller}");
    let labels = [("listener", listener), ("caller", caller.as_str())];
    metric_value(&callee.metrics().await, "tether_denied_requests_total", &labels)
}

fn assert_forbidden(reply: &Reply) {
    assert_eq!(
        (reply.status, reply.header("x-tether-error")),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{reply:?}"
    );
    assert!(reply.header("x-backend").is_none(), "the app answered: {reply:?}");
    let text = reply.text();
    assert!(
        text.contains(&format!("`spiffe://{NS}/admin` may not call"))
            && text.contains(&format!("allowFrom: spiffe://{NS}/orders")),
        "the refusal does not say who called and who may: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Acceptance 6: the control plane down.
// ---------------------------------------------------------------------------------------------

/// Certificates live 20 s. The server is SIGKILLed: requests (and TCP connections, each a new
/// handshake) keep succeeding while the certificates are valid; once they have expired the
/// caller fails closed (503 `no-certificate`, saying the certificate expired, nothing reaching
/// the app, never plaintext) and both sidecars are unready. The server starts again on its
/// data: the same sidecar processes get new certificates and serve again by themselves.
#[tokio::test]
async fn with_the_control_plane_down_sidecars_serve_until_expiry_then_fail_closed_and_recover() {
    const LIFETIME: Duration = Duration::from_secs(20);
    let mut mesh = Mesh::start(&["--certificate-lifetime", "20s"], None, None).await;
    let mut orders = mesh.caller("orders").await;
    let (url, db) = (orders.url("payment", "/"), orders.addr("payment-db"));
    let client = Client::http1().timeout(Duration::from_secs(10));
    assert_eq!(client.get(&url).await.unwrap().status, StatusCode::OK);

    mesh.cp.kill();
    let killed = Instant::now();
    let valid_for = expires_in(&orders).await.min(expires_in(&mesh.callee).await);
    assert!(valid_for > LIFETIME / 4, "certificates with {valid_for:?} left; expected about {LIFETIME:?}");
    // Requests stop a second before the first expiry (expiresInSeconds, read after the kill,
    // is rounded down), so that none is still on its way when it comes.
    let (http, tcp) = tokio::join!(
        steady_http(&client, &url, killed + valid_for - Duration::from_secs(1)),
        steady_tcp(db, killed + valid_for - Duration::from_secs(1)),
    );
    assert!(http.failures.is_empty(), "requests failed while the certificates were valid: {http:?}");
    assert!(tcp.failures.is_empty(), "TCP failed while the certificates were valid: {tcp:?}");
    assert!(http.ok > 100 && tcp.ok > 10, "too little traffic to tell: {http:?} {tcp:?}");

    // Expired: the caller refuses to call, and says why.
    let reply = until(&client, &url, |r| r.header("x-tether-error") == Some("no-certificate")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(reply.text().contains("certificate expired"), "the reply does not say why: {}", reply.text());
    assert!(killed.elapsed() >= valid_for, "refused {:?} after the kill, before expiry", killed.elapsed());
    assert_eventually!(
        LIFETIME,
        admin_status(&mesh.callee, "/ready").await.0 == StatusCode::SERVICE_UNAVAILABLE,
        "the callee stayed ready with an expired certificate"
    );
    let (status, why) = admin_status(&orders, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(why.contains("expired"), "/ready does not say why: {why}");
    // Said once, loudly, at the first reconnect after expiry.
    assert_eventually!(
        Duration::from_secs(10),
        orders.log().contains("the certificate expired and the control plane cannot be reached"),
        "the caller's log does not say its certificate expired:\n{}",
        orders.log()
    );

    // Nothing reaches the app any more, and nothing goes in plaintext.
    let (app_requests, db_connections) = (mesh.app.requests(), mesh.db.connections());
    let refused = mesh.refusals().await;
    assert_eq!(refused["plaintext"], 0.0, "a sidecar sent plaintext to the callee");
    for _ in 0..3 {
        let reply = client.get(&url).await.unwrap();
        assert_eq!(
            (reply.status, reply.header("x-tether-error")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("no-certificate"))
        );
    }
    let tcp = raw_exchange(db, TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert!(tcp.closed && tcp.bytes.is_empty(), "TCP with an expired certificate: {tcp:?}");
    // Plaintext to the callee: without a certificate of its own it closes every connection
    // before reading a byte.
    let reply = raw_exchange(mesh.api, b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(reply.closed && reply.bytes.is_empty(), "plaintext to the callee: {reply:?}");
    assert_eq!((mesh.app.requests(), mesh.db.connections()), (app_requests, db_connections));
    assert_counted(&mesh, refused, "no_certificate").await;

    // The server returns: the same processes get new certificates and serve again.
    mesh.cp.start_again().await.unwrap();
    for sidecar in [&mut mesh.callee, &mut orders] {
        // Reconnects back off up to 7.5 s.
        assert_eventually!(
            Duration::from_secs(20),
            admin_status(sidecar, "/ready").await.0 == StatusCode::OK,
            "a sidecar did not become ready again:\n{}",
            sidecar.log()
        );
        assert!(sidecar.wait_exit(Duration::ZERO).await.is_none(), "a sidecar exited:\n{}", sidecar.log());
    }
    let reply = client.get(&url).await.unwrap();
    assert_eq!((reply.status, reply.header("x-backend")), (StatusCode::OK, Some("payment")), "{reply:?}");
    let tcp = raw_exchange(db, TCP_REQUEST, Duration::from_secs(10)).await.unwrap();
    assert_eq!(tcp.status, Some(200), "TCP after the control plane returned: {tcp:?}");
}

/// How long the sidecar's certificate has left, rounded down to the second.
async fn expires_in(sidecar: &Sidecar) -> Duration {
    let seconds = admin_json(sidecar, "/config").await["identity"]["expiresInSeconds"].as_u64();
    Duration::from_secs(seconds.expect("a sidecar with a certificate"))
}

#[derive(Debug, Default)]
struct Traffic {
    ok: usize,
    failures: Vec<String>,
}

/// GET `url` every 10 ms until `until`.
async fn steady_http(client: &Client, url: &str, until: Instant) -> Traffic {
    let mut traffic = Traffic::default();
    while Instant::now() < until {
        match client.get(url).await {
            Ok(reply) if reply.status == StatusCode::OK => traffic.ok += 1,
            Ok(reply) => traffic.failures.push(format!("{} {}", reply.status, reply.text())),
            Err(error) => traffic.failures.push(format!("{error:#}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    traffic
}

/// A new TCP connection through `addr` every 100 ms until `until`.
async fn steady_tcp(addr: SocketAddr, until: Instant) -> Traffic {
    let mut traffic = Traffic::default();
    while Instant::now() < until {
        match raw_exchange(addr, TCP_REQUEST, Duration::from_secs(5)).await {
            Ok(reply) if reply.status == Some(200) => traffic.ok += 1,
            Ok(reply) => traffic.failures.push(format!("{reply:?}")),
            Err(error) => traffic.failures.push(format!("{error:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    traffic
}

// ---------------------------------------------------------------------------------------------
// Bootstrap tokens.
// ---------------------------------------------------------------------------------------------

/// A bootstrap token opens the config stream of its own task only: a sidecar showing one made
/// for another service, or another task of its service, gets no config and no certificate, and
/// its log says why, however often it asks; the REST API refuses it outright (401).
#[tokio::test]
async fn a_bootstrap_token_is_good_for_its_own_task_stream_and_nothing_else() {
    let mesh = Mesh::start(&[], None, None).await;
    put(&mesh.cp, "/services/orders", json!({ "serviceConnectConfiguration": { "enabled": true } })).await;
    let state = tempfile::tempdir().unwrap();

    for (service, task) in [("payment", "payment-1"), ("orders", "orders-2")] {
        let token = mesh.token(service, task).await;
        let wrong =
            Sidecar::spawn_fed(TETHER, &mesh.cp.url(), &token, (NS, "orders", "orders-1"), state.path())
                .unwrap();
        let why = format!("the bootstrap token is for task `{task}` of `{service}` in namespace `{NS}`");
        assert_eventually!(
            Duration::from_secs(10),
            wrong.log().matches(&why).count() >= 2,
            "the sidecar was not refused, twice, saying why:\n{}",
            wrong.log()
        );
        let log = wrong.log();
        assert!(!log.contains("listening") && !log.contains("certificate issued"), "{log}");
        let proxies = mesh.cp.get("/v1/ca").await.unwrap().body["proxies"].clone();
        assert!(
            !proxies.as_array().unwrap().iter().any(|p| p["task"] == "orders-1"),
            "the refused sidecar is known to the CA: {proxies}"
        );
    }

    // The token made for the task: a config and a certificate.
    let token = mesh.token("orders", "orders-1").await;
    let orders = Sidecar::start_fed(TETHER, &mesh.cp.url(), &token, (NS, "orders", "orders-1"), state.path())
        .await
        .unwrap();
    let config = admin_json(&orders, "/config").await;
    assert_eq!(config["identity"]["spiffeId"], format!("spiffe://{NS}/orders"), "{config}");

    // Not a key to the API, not even to make itself another token.
    let calls = [
        (Method::GET, format!("/v1/namespaces/{NS}/services"), None),
        (Method::GET, "/v1/ca".to_owned(), None),
        (
            Method::POST,
            format!("/v1/namespaces/{NS}/bootstrap-tokens"),
            Some(json!({ "service": "payment", "task": "payment-1" }).to_string()),
        ),
    ];
    for (method, path, body) in calls {
        let reply = mesh.cp.request(method.clone(), &path, body, Some(&token)).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a bootstrap token: {reply:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The mesh.
// ---------------------------------------------------------------------------------------------

/// A `tether server` and the service `payment`: an HTTP app (port `api`, alias `payment`) and
/// a TCP one (port `db`, alias `payment-db`) behind the callee sidecar of task `payment-1`.
struct Mesh {
    cp: ControlPlane,
    app: Backend,
    db: CountingBackend,
    callee: Sidecar,
    /// The callee's inbound listeners, where other sidecars reach it.
    api: SocketAddr,
    db_port: SocketAddr,
    /// The sidecars' state directories, one per task, and the files of a CA given to the server.
    dir: tempfile::TempDir,
}

impl Mesh {
    /// With a server that signs with `ca`.
    async fn with_ca(ca: &TestCa, allow_from: Option<&[&str]>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        let args = [&path(&cert), &path(&key)];
        Self::start(&["--ca-cert", args[0], "--ca-key", args[1]], allow_from, Some(dir)).await
    }

    /// With a server started with `server_args`, keeping what it needs in `dir`.
    async fn start(
        server_args: &[&str],
        allow_from: Option<&[&str]>,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let cp = ControlPlane::start_with(TETHER, server_args).await.unwrap();
        let (app, db) = (Backend::start("payment").await, CountingBackend::start().await);
        put(&cp, "", json!({})).await;
        put(&cp, "/services/payment", payment_spec(&app, &db, allow_from)).await;
        let listen = |port: &str| {
            let addr = SocketAddr::from(([127, 0, 0, 1], tether_testkit::free_port()));
            let instance = json!({
                "task": "payment-1", "address": "127.0.0.1", "port": addr.port(),
                "health": "HEALTHY", "portName": port
            });
            (addr, instance)
        };
        let ((api, api_instance), (db_port, db_instance)) = (listen("api"), listen("db"));
        put(&cp, "/services/payment/instances/payment-1-api", api_instance).await;
        put(&cp, "/services/payment/instances/payment-1-db", db_instance).await;
        let callee = start_sidecar(&cp, &dir, "payment", "payment-1").await;
        Self { cp, app, db, callee, api, db_port, dir }
    }

    /// A sidecar for task `<service>-1` of a service that only calls others.
    async fn caller(&self, service: &str) -> Sidecar {
        put(
            &self.cp,
            &format!("/services/{service}"),
            json!({ "serviceConnectConfiguration": { "enabled": true } }),
        )
        .await;
        start_sidecar(&self.cp, &self.dir, service, &format!("{service}-1")).await
    }

    async fn token(&self, service: &str, task: &str) -> String {
        bootstrap_token(&self.cp, service, task).await
    }

    /// The handshakes the callee's inbound listeners refused, by reason.
    async fn refusals(&self) -> BTreeMap<&'static str, f64> {
        let text = self.callee.metrics().await;
        REASONS
            .iter()
            .map(|&reason| {
                let labels = [("side", "inbound"), ("reason", reason)];
                (reason, metric_value(&text, "tether_tls_handshake_errors_total", &labels))
            })
            .collect()
    }
}

/// `tether proxy --server` for a task, with the bootstrap token made for it and its state in
/// a folder of `dir`.
async fn start_sidecar(cp: &ControlPlane, dir: &tempfile::TempDir, service: &str, task: &str) -> Sidecar {
    let token = bootstrap_token(cp, service, task).await;
    let state = dir.path().join(task);
    Sidecar::start_fed(TETHER, &cp.url(), &token, (NS, service, task), &state).await.unwrap()
}

async fn bootstrap_token(cp: &ControlPlane, service: &str, task: &str) -> String {
    let body = json!({ "service": service, "task": task });
    let reply = cp.post(&format!("/v1/namespaces/{NS}/bootstrap-tokens"), &body).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.body["spiffeId"], format!("spiffe://{NS}/{service}"), "{reply:?}");
    reply.body["token"].as_str().unwrap().to_owned()
}

fn payment_spec(app: &Backend, db: &CountingBackend, allow_from: Option<&[&str]>) -> Value {
    let mut spec = json!({
        "portMappings": [
            { "name": "api", "containerPort": app.addr.port(), "appProtocol": "http" },
            { "name": "db", "containerPort": db.addr.port(), "appProtocol": "tcp" }
        ],
        "serviceConnectConfiguration": {
            "enabled": true,
            "services": [
                { "portName": "api", "clientAliases": [{ "port": 80, "dnsName": "payment" }] },
                { "portName": "db", "clientAliases": [{ "port": 5432, "dnsName": "payment-db" }] }
            ]
        }
    });
    if let Some(callers) = allow_from {
        spec["allowFrom"] = json!(callers);
    }
    spec
}

/// PUT `body` at `path` under the namespace.
async fn put(cp: &ControlPlane, path: &str, body: Value) {
    let path = format!("/v1/namespaces/{NS}{path}");
    let reply = cp.put(&path, &body).await.unwrap();
    assert!(reply.status.is_success(), "PUT {path}: {reply:?}");
}

fn path(path: &std::path::Path) -> String {
    path.to_str().expect("a temporary path is UTF-8").to_owned()
}

fn no_refusals() -> BTreeMap<&'static str, f64> {
    REASONS.iter().map(|&reason| (reason, 0.0)).collect()
}

/// Waits until the callee has counted one refusal for `reason` more than `before`, and nothing
/// else; returns the new counts.
async fn assert_counted(
    mesh: &Mesh,
    before: BTreeMap<&'static str, f64>,
    reason: &str,
) -> BTreeMap<&'static str, f64> {
    let mut expected = before;
    *expected.get_mut(reason).expect("a known reason") += 1.0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counted = mesh.refusals().await;
        if counted == expected {
            return counted;
        }
        assert!(Instant::now() < deadline, "expected one more `{reason}`: counted {counted:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `url` until a reply satisfies `done` (transport errors are retried too), for at most
/// 30 s; returns that reply.
async fn until(client: &Client, url: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match client.get(url).await {
            Ok(reply) if done(&reply) => return reply,
            other => other,
        };
        assert!(Instant::now() < deadline, "{url} never gave the awaited reply; the last: {last:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_status(sidecar: &Sidecar, path: &str) -> (StatusCode, String) {
    let reply = Client::http1().get(&format!("http://{}{path}", sidecar.admin)).await.unwrap();
    (reply.status, reply.text())
}

async fn admin_json(sidecar: &Sidecar, path: &str) -> Value {
    serde_json::from_str(&admin_status(sidecar, path).await.1).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Certificates made in the test.
// ---------------------------------------------------------------------------------------------

/// A root CA as `tether server --ca-cert/--ca-key` takes one: ECDSA P-256, CA:true, keyCertSign.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    /// Two CAs of one name differ in their keys only.
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        Self { cert_pem: issuer.as_ref().pem(), issuer, key_pem }
    }

    fn der(&self) -> &CertificateDer<'static> {
        self.issuer.as_ref().der()
    }

    /// As `GET /v1/ca` names roots: the first 8 bytes of the certificate's SHA-256, in hex.
    fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.der());
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn issue(&self, leaf: Leaf) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = leaf.params.signed_by(&key, &*self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Issued { chain: vec![cert.der().clone(), self.der().clone()], key }
    }
}

/// What a leaf certificate says.
struct Leaf {
    params: CertificateParams,
}

impl Leaf {
    /// As the mesh's CA issues them: `spiffe://shop/<service>`, for client and server.
    fn spiffe(service: &str) -> Self {
        Self::uri(&format!("spiffe://{NS}/{service}"))
    }

    fn uri(id: &str) -> Self {
        Self::with_sans(vec![uri(id)])
    }

    fn with_sans(sans: Vec<SanType>) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2089, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        Self { params }
    }

    fn expired(mut self) -> Self {
        self.params.not_before = date_time_ymd(2021, 1, 1);
        self.params.not_after = date_time_ymd(2021, 1, 2);
        self
    }

    /// Good for a server only: not for the client end of a handshake.
    fn server_auth_only(mut self) -> Self {
        self.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }
}

fn uri(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

/// A certificate, the chain up to its root, and its key.
struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The URI SANs of a certificate.
fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap();
    let names = san.map(|san| san.value.general_names.as_slice()).unwrap_or_default();
    names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TLS clients of the test's own.
// ---------------------------------------------------------------------------------------------

/// A TLS record's content type for an alert, and an alert's level and description.
const ALERT: u8 = 21;
const FATAL: u8 = 2;
const PROTOCOL_VERSION: u8 = 70;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// A TLS 1.3 client as a sidecar is one: it offers `alpn`, presents `cert` if there is one,
/// and takes the server only if its chain leads to `root` (a sidecar's name is its SPIFFE ID,
/// so no host name is checked). The verifier keeps the server's certificate.
fn tls_client(root: &TestCa, cert: Option<&Issued>, alpn: &[u8]) -> (Arc<ClientConfig>, Arc<ServerSeen>) {
    let mut roots = RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let server = Arc::new(ServerSeen { roots, seen: Mutex::default() });
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(server.clone());
    let mut config = match cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.key.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    (Arc::new(config), server)
}

#[derive(Debug)]
struct ServerSeen {
    roots: RootCertStore,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerSeen {
    fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen.lock().unwrap().clone()
    }
}

impl ServerCertVerifier for ServerSeen {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algorithms = PROVIDER.signature_verification_algorithms.all;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            algorithms,
        )?;
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(ServerName::from(addr.ip()), tcp).await
}

/// Asserts that the callee refuses a client with `config`: in the handshake or, as a TLS 1.3
/// client finishes its part first, on its first read.
async fn assert_refused(addr: SocketAddr, config: Arc<ClientConfig>, case: &str) {
    if let Ok(mut tls) = tls_connect(addr, config).await {
        assert_refused_on_first_read(&mut tls, case).await;
    }
}

/// Starts HTTP/2, which a callee that took the client answers with its SETTINGS, and expects
/// an alert or the end of the connection instead.
async fn assert_refused_on_first_read(tls: &mut TlsStream<TcpStream>, case: &str) {
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let _ = tls.flush().await;
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut [0; 1])).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(_)) => panic!("{case}: the callee took the client, and answered HTTP/2"),
        Err(_) => panic!("{case}: the callee neither refused the client nor answered within 10 s"),
    }
}

/// GET `path` over HTTP/2 on `tls`: the status and the `x-backend` that answered.
async fn h2_get(tls: TlsStream<TcpStream>, path: &str) -> anyhow::Result<(StatusCode, Option<String>)> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = Request::get(format!("http://payment{path}")).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let backend = response.headers().get("x-backend").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((response.status(), backend))
}

/// A ClientHello offering TLS 1.2 only (no supported_versions extension), as an old client
/// sends it. Written out byte by byte: the test's rustls, like the proxy's, has no TLS 1.2.
fn tls12_client_hello() -> Vec<u8> {
    fn sized(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        [&kind.to_be_bytes()[..], &sized(body)].concat()
    }
    let extensions = [
        extension(0x000a, &sized(&[0x00, 0x1d, 0x00, 0x17])), // groups: x25519, secp256r1
        extension(0x000b, &[0x01, 0x00]),                     // point formats: uncompressed
        extension(0x000d, &sized(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01])), // signature algorithms
        extension(0x0010, &sized(&[0x02, b'h', b'2'])),       // ALPN: h2
    ]
    .concat();
    let mut hello = vec![0x03, 0x03]; // TLS 1.2
    hello.extend_from_slice(&[7; 32]); // random
    hello.push(0); // no session ID
    hello.extend(sized(&[0xc0, 0x2b, 0xc0, 0x2f])); // ECDHE-{ECDSA,RSA}-AES128-GCM-SHA256
    hello.extend_from_slice(&[0x01, 0x00]); // compression: none
    hello.extend(sized(&extensions));
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(hello);
    [&[0x16, 0x03, 0x01][..], &sized(&handshake)].concat() // a handshake record
}
