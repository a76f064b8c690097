//! Graceful drain (design §5, reliability F6): on SIGTERM or `POST /drain` a sidecar turns
//! unready, keeps serving new connections for the drain wait, lets in-flight requests finish and
//! exits within the drain deadline, and the clients see no failed request.

use std::time::{Duration, Instant};

use tether_testkit::{Backend, Client, Load, Sidecar, assert_eventually};
use tokio::task::JoinSet;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
/// Beyond drain wait + grace, what a loaded machine may need to notice the exit.
const EXIT_MARGIN: Duration = Duration::from_secs(4);

/// A drain's wait and grace, in whole seconds.
#[derive(Clone, Copy)]
struct DrainTimes {
    wait: u64,
    grace: u64,
}

impl DrainTimes {
    fn yaml(self) -> String {
        format!("drainWaitSeconds: {}\ndrainGraceSeconds: {}\n", self.wait, self.grace)
    }

    fn wait(self) -> Duration {
        Duration::from_secs(self.wait)
    }

    /// The longest a drain may take before the process must have exited.
    fn deadline(self) -> Duration {
        Duration::from_secs(self.wait + self.grace) + EXIT_MARGIN
    }
}

/// A server-side sidecar publishing `backend` over HTTP/1.1 as `api`.
async fn server_side(backend: &Backend, drain: DrainTimes) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\n{}inbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {}, appProtocol: http }}\n",
        drain.yaml(),
        backend.addr
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// A client-side sidecar with the alias `svc` over `endpoints` (YAML endpoint entries). Round
/// robin keeps every endpoint busy, so a draining one has requests in flight when it closes
/// (peak-EWMA might steer away from it for a while after any hiccup).
async fn client_side(endpoints: &[String], drain: DrainTimes) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\n{}outbound:\n  - {{ dnsName: svc, listen: 127.0.0.1:0, appProtocol: http, loadBalancing: round-robin, endpoints: [{}] }}\n",
        drain.yaml(),
        endpoints.join(", ")
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// `/ready`'s status, or 0 when the admin endpoint does not answer.
async fn readiness(sidecar: &Sidecar) -> u16 {
    let reply =
        Client::http1().timeout(Duration::from_secs(5)).get(&format!("http://{}/ready", sidecar.admin)).await;
    reply.map_or(0, |r| r.status.as_u16())
}

/// A GET over a connection of its own (a fresh client), as a caller that just arrived makes.
async fn fresh_get(url: &str) -> u16 {
    let reply = Client::http1().timeout(Duration::from_secs(10)).get(url).await;
    reply.unwrap_or_else(|e| panic!("GET {url}: {e:#}")).status.as_u16()
}

/// Waits for `sidecar` to exit after a drain started at `started`; fails unless it exits with
/// status 0 after the drain wait and before the deadline.
async fn assert_drains_in_time(sidecar: &mut Sidecar, started: Instant, drain: DrainTimes) {
    let status = sidecar.wait_exit(drain.deadline()).await;
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {took:?} after the drain began (deadline {:?}):\n{}",
            drain.deadline(),
            sidecar.log()
        )
    });
    assert!(status.success(), "exited with {status}:\n{}", sidecar.log());
    assert!(
        took >= drain.wait(),
        "exited after {took:?}, before the drain wait of {:?} was over",
        drain.wait()
    );
}

#[tokio::test]
async fn sigterm_to_a_server_side_sidecar_under_load_fails_no_request() {
    let drain = DrainTimes { wait: 1, grace: 5 };
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let mut s1 = server_side(&b1, drain).await;
    let s2 = server_side(&b2, drain).await;
    let mesh: Vec<String> =
        [&s1, &s2].iter().map(|s| format!("{{ address: \"{}\", mesh: true }}", s.addr("api"))).collect();
    let a = client_side(&mesh, drain).await;

    let load = Load::start(Client::http1(), a.url("svc", "/"), 4, 100_000);
    // Non-vacuous: both server sides carry the load before the drain.
    assert_eventually!(
        Duration::from_secs(20),
        b1.requests() >= 50 && b2.requests() >= 50,
        "load did not reach both sides: b1 {}, b2 {}",
        b1.requests(),
        b2.requests()
    );

    let sigterm = Instant::now();
    s1.terminate();
    assert_eventually!(Duration::from_secs(5), readiness(&s1).await == 503, "B1 never turned unready");
    // Unready, yet a caller that has not heard of it yet is still served on a new connection.
    assert_eq!(fresh_get(&s1.url("api", "/")).await, 200, "B1 refused a request during its drain wait");
    assert_drains_in_time(&mut s1, sigterm, drain).await;

    // The load goes on without B1 for a while: B1's endpoint now refuses connections.
    let b2_after = b2.requests();
    assert_eventually!(
        Duration::from_secs(20),
        b2.requests() >= b2_after + 200,
        "load stalled after B1 exited: b2 {} (was {b2_after})",
        b2.requests()
    );
    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.ok >= 300, "{report:?}");
    assert!(report.by_backend.get("b1").copied().unwrap_or(0) >= 50, "{:?}", report.by_backend);
}

#[tokio::test]
async fn sigterm_to_a_client_side_sidecar_finishes_in_flight_requests_and_serves_newcomers() {
    // The slow requests (4 s) outlive the drain wait (2 s) with room to spare, so they are still
    // in flight when the listeners close and must finish within the grace.
    let drain = DrainTimes { wait: 2, grace: 5 };
    const SLOW: usize = 3;
    let backend = Backend::start("b").await;
    let mut a = client_side(&[format!("\"{}\"", backend.addr)], drain).await;

    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        let url = a.url("svc", "/delay/4000");
        // One client each: every slow request on a connection of its own.
        slow.spawn(async move { Client::http1().get(&url).await });
    }
    assert_eventually!(
        Duration::from_secs(10),
        backend.requests() == SLOW,
        "the slow requests never arrived"
    );

    let sigterm = Instant::now();
    a.terminate();
    assert_eventually!(Duration::from_secs(5), readiness(&a).await == 503, "A never turned unready");
    assert_eq!(fresh_get(&a.url("svc", "/")).await, 200, "A refused a new connection during its drain wait");

    while let Some(reply) = slow.join_next().await {
        let reply =
            reply.unwrap().unwrap_or_else(|e| panic!("an in-flight request failed: {e:#}\n{}", a.log()));
        assert_eq!(reply.status, 200, "{reply:?}");
        // HTTP/1 connections are told to close as the proxy drains (design §5).
        assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    }
    assert_drains_in_time(&mut a, sigterm, drain).await;
}

#[tokio::test]
async fn post_drain_on_the_admin_endpoint_starts_the_same_drain() {
    let drain = DrainTimes { wait: 2, grace: 2 };
    let backend = Backend::start("b").await;
    let mut s = server_side(&backend, drain).await;
    assert_eq!(readiness(&s).await, 200);

    let admin = Client::http1();
    let get = admin.get(&format!("http://{}/drain", s.admin)).await.unwrap();
    assert_eq!(get.status, 405, "draining takes a POST: {get:?}");
    assert_eq!(readiness(&s).await, 200, "a GET must not drain");

    let started = Instant::now();
    let reply = admin.post(&format!("http://{}/drain", s.admin), "").await.unwrap();
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(readiness(&s).await, 503);
    assert_eq!(fresh_get(&s.url("api", "/")).await, 200, "new connections are served during the drain wait");
    assert_drains_in_time(&mut s, started, drain).await;
}
