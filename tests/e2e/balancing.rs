//! Load balancing across three backends through one outbound hop: both policies spread load
//! fairly over equal backends, and power of two choices over peak-EWMA latency (the default)
//! steers away from a slow backend where round robin keeps feeding it its third, and from an
//! endpoint whose connects time out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tether_testkit::{Backend, BackendOptions, Client, Load, Sidecar, Unanswered};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const WORKERS: usize = 8;
const REQUESTS: usize = 300;

/// A client-side sidecar with one alias per `(dnsName, loadBalancing)` pair, each balancing
/// across all of `backends`; `None` leaves the policy at its default.
async fn balancer(backends: &[Backend], aliases: &[(&str, Option<&str>)]) -> Sidecar {
    let endpoints: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let mut yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned();
    for (name, policy) in aliases {
        let policy = policy.map(|p| format!("loadBalancing: {p}, ")).unwrap_or_default();
        yaml += &format!(
            "  - {{ dnsName: {name}, listen: 127.0.0.1:0, appProtocol: http, {policy}endpoints: [{}] }}\n",
            endpoints.join(", ")
        );
    }
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

async fn backends(delays_ms: &[u64]) -> Vec<Backend> {
    let mut backends = Vec::new();
    for (i, &ms) in delays_ms.iter().enumerate() {
        let options = BackendOptions { name: format!("b{i}"), delay: Duration::from_millis(ms) };
        backends.push(Backend::with(options).await);
    }
    backends
}

/// Sends [`REQUESTS`] through `alias` from [`WORKERS`] concurrent workers; successes per backend.
async fn spread(proxy: &Sidecar, alias: &str) -> HashMap<String, usize> {
    let load = Load::start(Client::http1(), proxy.url(alias, "/"), WORKERS, REQUESTS);
    let report = load.finish().await;
    report.assert_no_failures();
    assert_eq!(report.ok, REQUESTS);
    report.by_backend
}

fn share(counts: &HashMap<String, usize>, backend: &str) -> usize {
    counts.get(backend).copied().unwrap_or(0)
}

#[tokio::test]
async fn load_spreads_fairly_over_equal_backends() {
    let backends = backends(&[0, 0, 0]).await;
    let proxy = balancer(&backends, &[("rr", Some("round-robin")), ("default", None)]).await;
    for alias in ["rr", "default"] {
        let counts = spread(&proxy, alias).await;
        // A fair share is a third (100 of 300). Peak-EWMA remembers a latency spike for
        // seconds, so on a busy machine one backend may get noticeably less; accept anything
        // from a tenth, which a policy that starves a backend or sticks to one never reaches.
        for b in &backends {
            let got = share(&counts, &b.name);
            assert!(got >= REQUESTS / 10, "{alias}: {} got {got} of {REQUESTS}: {counts:?}", b.name);
        }
    }
    // Every request the proxy answered came from a backend, each exactly once.
    let served: usize = backends.iter().map(Backend::requests).sum();
    assert_eq!(served, 2 * REQUESTS);
}

#[tokio::test]
async fn p2c_ewma_avoids_a_slow_backend_that_round_robin_keeps_feeding() {
    let backends = backends(&[0, 0, 50]).await;
    let slow = backends[2].name.clone();
    let proxy = balancer(&backends, &[("rr", Some("round-robin")), ("p2c", Some("p2c-ewma"))]).await;

    let rr = spread(&proxy, "rr").await;
    let rr_slow = share(&rr, &slow);
    // Round robin ignores latency: the slow backend gets its third (100 of 300).
    assert!(rr_slow >= REQUESTS / 4, "round robin gave the slow backend only {rr_slow}: {rr:?}");

    let p2c = spread(&proxy, "p2c").await;
    let p2c_slow = share(&p2c, &slow);
    // Peak-EWMA sees the 50 ms: after its first answers the slow backend loses nearly every
    // comparison. Under the same load it gets less than a third of round robin's share.
    assert!(
        p2c_slow * 3 < rr_slow,
        "p2c-ewma gave the slow backend {p2c_slow}, round robin {rr_slow}: p2c {p2c:?}, rr {rr:?}"
    );
    for fast in &backends[..2] {
        assert!(share(&p2c, &fast.name) > share(&rr, &fast.name), "p2c {p2c:?}, rr {rr:?}");
    }
}

#[tokio::test]
async fn p2c_ewma_learns_from_connect_timeouts_and_avoids_an_unreachable_endpoint() {
    // Two backends and an endpoint whose handshake never completes: each request that tries it
    // first waits for the connect timeout, then goes to another endpoint. Outlier detection is
    // off, so what is measured is what the balancer itself learns.
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
    const N: usize = 30;
    let live = backends(&[0, 0]).await;
    let dead = Unanswered::start().unwrap();
    let endpoints = format!("\"{}\", \"{}\", \"{}\"", live[0].addr, live[1].addr, dead.addr);
    let mut yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned();
    for (name, protocol, policy) in [
        ("http-rr", "appProtocol: http, ", "round-robin"),
        ("http-p2c", "appProtocol: http, ", "p2c-ewma"),
        ("tcp-rr", "", "round-robin"),
        ("tcp-p2c", "", "p2c-ewma"),
    ] {
        yaml += &format!(
            "  - {{ dnsName: {name}, listen: 127.0.0.1:0, {protocol}loadBalancing: {policy}, endpoints: [{endpoints}], \
             timeout: {{ connectTimeoutSeconds: {} }}, outlierDetection: {{ consecutiveGatewayFailures: 0 }} }}\n",
            CONNECT_TIMEOUT.as_secs_f64()
        );
    }
    let proxy = Sidecar::start(TETHER, &yaml).await.unwrap();

    // Sequential requests, each on a new connection (a tcp listener balances connections); how
    // many had to wait for the connect timeout. None fails: the retry goes elsewhere.
    let waits = |alias: &'static str| {
        let url = proxy.url(alias, "/");
        async move {
            let mut waited = 0;
            for _ in 0..N {
                let start = Instant::now();
                let reply = Client::http1().get(&url).await.unwrap();
                assert_eq!(reply.status, 200, "{alias}: {reply:?}");
                if start.elapsed() >= CONNECT_TIMEOUT {
                    waited += 1;
                }
            }
            waited
        }
    };
    let (http_rr, http_p2c, tcp_rr, tcp_p2c) =
        tokio::join!(waits("http-rr"), waits("http-p2c"), waits("tcp-rr"), waits("tcp-p2c"));
    // Round robin tries the unreachable endpoint for every third request.
    assert!(http_rr >= N / 4 && tcp_rr >= N / 4, "round robin waited only {http_rr} (http), {tcp_rr} (tcp)");
    // Peak-EWMA counts the time lost on a connect timeout against that endpoint and avoids it
    // from then on (a request or two may try it before it has been charged).
    assert!(http_p2c <= N / 6, "p2c-ewma (http) waited for the connect timeout {http_p2c} times of {N}");
    assert!(tcp_p2c <= N / 6, "p2c-ewma (tcp) waited for the connect timeout {tcp_p2c} times of {N}");
}
