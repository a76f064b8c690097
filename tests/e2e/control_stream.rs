//! Proxies fed by the control plane (design §6, reliability F8, F9): registrations reach every
//! proxy within 100 ms, removals and health changes too, services added later become callable,
//! the data plane keeps serving while the control plane is down (also after a proxy restart),
//! and an update a proxy cannot apply is refused without changing what it serves.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_testkit::control::ControlPlane;
use tether_testkit::{Backend, Client, Load, Sidecar, assert_eventually};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const NS: &str = "shop";
/// The acceptance bound for a registry change to reach a proxy.
const PROPAGATION: Duration = Duration::from_millis(100);

/// A service publishing port `http` (HTTP) as `name`, callable at `name:80`. TLS is off: its
/// instances are the test's backends, which have no sidecar to speak mutual TLS.
fn published(name: &str) -> Value {
    json!({
        "portMappings": [{ "name": "http", "containerPort": 8080, "appProtocol": "http" }],
        "serviceConnectConfiguration": {
            "enabled": true,
            "services": [{
                "portName": "http",
                "discoveryName": name,
                "clientAliases": [{ "port": 80, "dnsName": name }],
                "tls": { "enabled": false }
            }]
        }
    })
}

/// A service that only calls others.
fn client_only() -> Value {
    json!({ "serviceConnectConfiguration": { "enabled": true } })
}

fn instance(backend: &Backend, health: &str, task: &str) -> Value {
    json!({ "task": task, "address": "127.0.0.1", "port": backend.addr.port(), "health": health })
}

async fn put(cp: &ControlPlane, path: &str, body: Value) {
    let reply = cp.put(path, &body).await.unwrap();
    assert!(reply.status.is_success(), "PUT {path}: {reply:?}");
}

async fn delete(cp: &ControlPlane, path: &str) {
    let reply = cp.delete(path).await.unwrap();
    assert!(reply.status.is_success(), "DELETE {path}: {reply:?}");
}

fn inst_path(service: &str, id: &str) -> String {
    format!("/v1/namespaces/{NS}/services/{service}/instances/{id}")
}

/// A namespace with a published service `api` and a client service `web`.
async fn shop() -> ControlPlane {
    let cp = ControlPlane::start(TETHER).await.unwrap();
    put(&cp, &format!("/v1/namespaces/{NS}"), json!({})).await;
    put(&cp, &format!("/v1/namespaces/{NS}/services/api"), published("api")).await;
    put(&cp, &format!("/v1/namespaces/{NS}/services/web"), client_only()).await;
    cp
}

async fn web_proxy(cp: &ControlPlane, state: &std::path::Path) -> Sidecar {
    Sidecar::start_fed(TETHER, &cp.url(), &cp.token, (NS, "web", "web-1"), state).await.unwrap()
}

/// Sends requests to `url` back to back until `done` says the reply is what was awaited, and
/// returns how long that took from `since`; panics after 15 s (longer than a proxy's longest
/// pause between reconnects, 7.5 s).
async fn until(url: &str, since: Instant, done: impl Fn(&tether_testkit::Reply) -> bool) -> Duration {
    let client = Client::http1().timeout(Duration::from_secs(1));
    loop {
        if let Ok(reply) = client.get(url).await
            && done(&reply)
        {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(15), "{url} never gave the awaited reply");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn from(name: &'static str) -> impl Fn(&tether_testkit::Reply) -> bool {
    move |r| r.status == 200 && r.header("x-backend") == Some(name)
}

#[tokio::test]
async fn registrations_removals_and_health_reach_the_proxy_within_100_ms() {
    let cp = shop().await;
    let state = tempfile::tempdir().unwrap();
    let proxy = web_proxy(&cp, state.path()).await;
    let url = proxy.url("api", "/");
    let reply = Client::http1().get(&url).await.unwrap();
    assert_eq!(reply.status, 503, "no instance yet: {reply:?}");

    let (b1, b2, b3) = (Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await);
    let start = Instant::now();
    put(&cp, &inst_path("api", "i1"), instance(&b1, "HEALTHY", "api-1")).await;
    let took = until(&url, start, from("b1")).await;
    assert!(took <= PROPAGATION, "a registration took {took:?} to route");

    put(&cp, &inst_path("api", "i2"), instance(&b2, "HEALTHY", "api-2")).await;
    until(&url, Instant::now(), from("b2")).await;

    // Marked UNHEALTHY: b1 gets nothing once the change is through.
    let start = Instant::now();
    put(&cp, &inst_path("api", "i1"), instance(&b1, "UNHEALTHY", "api-1")).await;
    let took = stops_routing_to(&proxy, &url, &b1, start).await;
    assert!(took <= PROPAGATION, "an UNHEALTHY instance was routed to {took:?} after the change");

    // Removed: the same for b2, once b3 is there to take the traffic.
    put(&cp, &inst_path("api", "i3"), instance(&b3, "HEALTHY", "api-3")).await;
    until(&url, Instant::now(), from("b3")).await;
    let start = Instant::now();
    delete(&cp, &inst_path("api", "i2")).await;
    let took = stops_routing_to(&proxy, &url, &b2, start).await;
    assert!(took <= PROPAGATION, "a removed instance was routed to {took:?} after the removal");

    // A service added after the proxy started is callable by its alias.
    let b4 = Backend::start("b4").await;
    put(&cp, &format!("/v1/namespaces/{NS}/services/billing"), published("billing")).await;
    put(&cp, &inst_path("billing", "i1"), instance(&b4, "HEALTHY", "billing-1")).await;
    assert_eventually!(Duration::from_secs(5), proxy.try_addr("billing").is_some(), "no `billing` listener");
    until(&proxy.url("billing", "/"), Instant::now(), from("b4")).await;
}

/// Whether the proxy's effective config (`/config`) routes to `backend` as a usable endpoint.
async fn routes_to(proxy: &Sidecar, backend: &Backend) -> bool {
    let config = Client::http1().get(&format!("http://{}/config", proxy.admin)).await.unwrap();
    let config: Value = serde_json::from_str(&config.text()).unwrap();
    let addr = backend.addr.to_string();
    config["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["endpoints"].as_array().unwrap())
        .any(|e| e["address"] == addr.as_str() && e["health"] == "HEALTHY")
}

/// Waits until the proxy no longer routes to `backend`; returns how long that took from
/// `since`. Then checks that requests indeed no longer reach it.
async fn stops_routing_to(proxy: &Sidecar, url: &str, backend: &Backend, since: Instant) -> Duration {
    while routes_to(proxy, backend).await {
        assert!(since.elapsed() < Duration::from_secs(10), "the proxy kept routing to {}", backend.addr);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = since.elapsed();
    let before = backend.requests();
    let report = Load::start(Client::http1(), url.to_owned(), 2, 100).finish().await;
    report.assert_no_failures();
    assert_eq!(backend.requests(), before, "requests still reached {}", backend.addr);
    took
}

/// F8: the control plane is SIGKILLed for a minute under load. Nothing fails: not the steady
/// load, not a destination called for the first time during the outage, not a proxy restarted
/// during it (it serves its saved snapshot). When the control plane returns, the proxies resync
/// and see a change made after its return.
#[tokio::test]
async fn proxies_keep_serving_while_the_control_plane_is_down_and_resync_after() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let mut cp = shop().await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    put(&cp, &inst_path("api", "i1"), instance(&b1, "HEALTHY", "api-1")).await;
    put(&cp, &format!("/v1/namespaces/{NS}/services/rare"), published("rare")).await;
    put(&cp, &inst_path("rare", "i1"), instance(&b2, "HEALTHY", "rare-1")).await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let steady = web_proxy(&cp, state_a.path()).await;
    let mut restarted =
        Sidecar::start_fed(TETHER, &cp.url(), &cp.token, (NS, "web", "web-2"), state_b.path()).await.unwrap();
    assert_eventually!(Duration::from_secs(5), steady.try_addr("rare").is_some(), "no `rare` listener");
    until(&steady.url("api", "/"), Instant::now(), from("b1")).await;

    let load = Load::start(Client::http1(), steady.url("api", "/"), 4, 1_000_000);
    cp.kill();
    let down = Instant::now();

    // A proxy restarted during the outage serves from its snapshot.
    restarted.kill();
    let restarted =
        Sidecar::start_fed(TETHER, &cp.url(), &cp.token, (NS, "web", "web-2"), state_b.path()).await.unwrap();
    let reply = Client::http1().get(&restarted.url("api", "/")).await.unwrap();
    assert_eq!(reply.status, 200, "the restarted proxy did not serve its snapshot: {reply:?}");
    // A destination never called before, called once during the outage.
    let reply = Client::http1().get(&steady.url("rare", "/")).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.header("x-backend")), (200, Some("b2")), "{reply:?}");

    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.ok > 100, "the load barely ran: {report:?}");

    // The proxies come back within their reconnect backoff (at most 5 s + half again).
    cp.start_again().await.unwrap();
    let b3 = Backend::start("b3").await;
    put(&cp, &inst_path("api", "i2"), instance(&b3, "HEALTHY", "api-2")).await;
    for proxy in [&steady, &restarted] {
        until(&proxy.url("api", "/"), Instant::now(), from("b3")).await;
    }
}

/// F9: an update a proxy cannot apply — its task's instance on an address this host does not
/// have, so its inbound listener cannot be bound — is refused: the proxy keeps serving the
/// previous config (including the outbound change that came with it), and applies the next
/// config that it can.
#[tokio::test]
async fn an_update_the_proxy_cannot_apply_is_refused_and_the_previous_config_serves() {
    let cp = shop().await;
    let b1 = Backend::start("b1").await;
    put(&cp, &inst_path("api", "i1"), instance(&b1, "HEALTHY", "api-1")).await;
    let state = tempfile::tempdir().unwrap();
    let proxy =
        Sidecar::start_fed(TETHER, &cp.url(), &cp.token, (NS, "api", "api-9"), state.path()).await.unwrap();
    until(&proxy.url("api", "/"), Instant::now(), from("b1")).await;

    // 192.0.2.1 (TEST-NET-1) is no address of this host.
    let bad = json!({ "task": "api-9", "address": "192.0.2.1", "port": 15001, "health": "HEALTHY" });
    put(&cp, &inst_path("api", "i9"), bad).await;
    assert_eventually!(
        Duration::from_secs(5),
        proxy.log().contains("config update refused"),
        "the proxy did not refuse the update:\n{}",
        proxy.log()
    );
    // Still the previous config: every request reaches b1, none tries the unreachable endpoint.
    let report = Load::start(Client::http1(), proxy.url("api", "/"), 2, 100).finish().await;
    report.assert_no_failures();
    assert_eq!(report.by_backend.get("b1").copied(), Some(100), "{report:?}");
    assert!(cp.log().contains("the proxy refused a config update"), "no NACK at the server:\n{}", cp.log());

    // The bad instance goes, another comes: the proxy applies the config again, whole.
    let b2 = Backend::start("b2").await;
    delete(&cp, &inst_path("api", "i9")).await;
    put(&cp, &inst_path("api", "i2"), instance(&b2, "HEALTHY", "api-2")).await;
    until(&proxy.url("api", "/"), Instant::now(), from("b2")).await;
}

/// An instance hangs on its runner's lease: renewed, it stays; no longer renewed, it is gone
/// from every proxy within the lease's TTL (and the propagation after it).
#[tokio::test]
async fn an_instance_whose_lease_is_not_renewed_disappears_from_every_proxy() {
    const TTL: Duration = Duration::from_secs(2);
    let cp = shop().await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    put(&cp, &inst_path("api", "stable"), instance(&b1, "HEALTHY", "api-1")).await;
    let lease = cp.post("/v1/leases", &json!({ "ttlSeconds": TTL.as_secs() })).await.unwrap();
    assert!(lease.status.is_success(), "{lease:?}");
    let id = lease.body["id"].as_i64().unwrap();
    let mut leased = instance(&b2, "HEALTHY", "api-2");
    leased["lease"] = json!(id);
    put(&cp, &inst_path("api", "leased"), leased).await;
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let proxies = [
        web_proxy(&cp, s1.path()).await,
        Sidecar::start_fed(TETHER, &cp.url(), &cp.token, (NS, "web", "web-2"), s2.path()).await.unwrap(),
    ];
    for proxy in &proxies {
        until(&proxy.url("api", "/"), Instant::now(), from("b2")).await;
    }
    // Renewed for twice its TTL: still there.
    let renew = || async {
        let renewed = cp.put(&format!("/v1/leases/{id}"), &json!({})).await.unwrap();
        assert!(renewed.status.is_success(), "{renewed:?}");
        Instant::now()
    };
    let mut renewed = renew().await;
    for _ in 0..4 {
        tokio::time::sleep(TTL / 2).await;
        renewed = renew().await;
    }
    for proxy in &proxies {
        assert!(routes_to(proxy, &b2).await, "the leased instance went while its lease was renewed");
    }
    // The runner stops renewing: gone from both proxies once the lease runs out.
    for proxy in &proxies {
        let took = stops_routing_to(proxy, &proxy.url("api", "/"), &b2, renewed).await;
        assert!(
            took >= TTL / 2,
            "the instance went {took:?} after the last renewal, before its lease ran out"
        );
        assert!(
            took <= TTL + Duration::from_secs(2),
            "the expired instance was routed to {took:?} after the last renewal"
        );
    }
    let left = cp.get(&format!("/v1/namespaces/{NS}/services/api/instances")).await.unwrap();
    assert_eq!(left.body["instances"].as_array().map(Vec::len), Some(1), "{left:?}");
}

/// F10: three etcd members, two `tether server` replicas on them, a proxy on the first. Kill
/// that replica: the proxy moves to the other and keeps following. Stop two etcd members:
/// writes fail fast with a clear error while the proxy keeps serving. Start them again: writes
/// succeed and reach the proxy through the resumed watches.
#[tokio::test]
async fn proxies_ride_out_a_replica_and_etcd_quorum_going_away() {
    let mut etcd = tether_testkit::etcd::EtcdCluster::cluster(3).await.unwrap();
    let endpoints: Vec<String> =
        etcd.endpoints().iter().map(|e| e.trim_start_matches("http://").to_owned()).collect();
    let store = format!("etcd://{}", endpoints.join(","));
    let args = ["--store", store.as_str(), "--etcd-prefix", "/f10"];
    let mut first = ControlPlane::start_with(TETHER, &args).await.unwrap();
    let second = ControlPlane::start_with(TETHER, &args).await.unwrap();
    put(&first, &format!("/v1/namespaces/{NS}"), json!({})).await;
    put(&first, &format!("/v1/namespaces/{NS}/services/api"), published("api")).await;
    put(&first, &format!("/v1/namespaces/{NS}/services/web"), client_only()).await;
    let (b1, b2, b3) = (Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await);
    put(&first, &inst_path("api", "i1"), instance(&b1, "HEALTHY", "api-1")).await;

    let state = tempfile::tempdir().unwrap();
    let servers = format!("{},{}", first.url(), second.url());
    let proxy =
        Sidecar::start_fed(TETHER, &servers, &first.token, (NS, "web", "web-1"), state.path()).await.unwrap();
    let url = proxy.url("api", "/");
    until(&url, Instant::now(), from("b1")).await;

    // The replica the proxy follows dies; a change made through the other still reaches it.
    let load = Load::start(Client::http1(), url.clone(), 2, 1_000_000);
    first.kill();
    put(&second, &inst_path("api", "i2"), instance(&b2, "HEALTHY", "api-2")).await;
    until(&url, Instant::now(), from("b2")).await;
    assert_eq!(proxy.addr("api").to_string(), url[7..url.len() - 1], "the proxy's listener moved");

    // etcd loses quorum: a write fails within seconds, saying why; the proxy keeps serving.
    etcd.stop(1);
    etcd.stop(2);
    let started = Instant::now();
    let refused = second.put(&inst_path("api", "i3"), &instance(&b3, "HEALTHY", "api-3")).await.unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.text.contains("unavailable"), "the error does not say why: {refused:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the write hung for {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Quorum returns: writes succeed again and the watches deliver them.
    etcd.start(1).await.unwrap();
    etcd.start(2).await.unwrap();
    etcd.wait_healthy().await.unwrap();
    assert_eventually!(
        Duration::from_secs(20),
        second
            .put(&inst_path("api", "i3"), &instance(&b3, "HEALTHY", "api-3"))
            .await
            .is_ok_and(|r| r.status.is_success()),
        "writes did not succeed again after quorum returned"
    );
    until(&url, Instant::now(), from("b3")).await;
    let report = load.stop().await;
    report.assert_no_failures();
}

/// `tether proxy --server` refuses what it cannot use at once, with exit status 64, rather than
/// retrying a malformed URL forever.
#[test]
fn a_fed_proxy_with_bad_arguments_says_why_and_exits_64() {
    let output = std::process::Command::new(TETHER)
        .args(["proxy", "--server", "ftp://x,nonsense", "--token", "t", "--namespace", " "])
        .args(["--service", "web", "--task", "web-1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("`ftp://x` is not an http://HOST:PORT URL"), "{stderr}");
    assert!(stderr.contains("`nonsense` is not an http://HOST:PORT URL"), "{stderr}");
    assert!(stderr.contains("--namespace is empty"), "{stderr}");
}
