//! Resilience through one outbound hop (design §5, reliability F1–F4): retries within a budget,
//! outlier ejection and re-admission, endpoint health, and limits that fail fast.
//!
//! Where a test is about ejection it balances round robin: power of two choices over latency
//! steers away from a failing endpoint on its own and would hide whether ejection works, while
//! round robin keeps sending it its share until it is ejected. Timing bounds are generous (a
//! loaded 2-core machine runs these) but each separates the behaviour from its absence: a 503
//! overflow in well under the backend's delay, a timed-out request that is not sent twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tether_testkit::{
    Backend, BackendOptions, BackendProcess, Client, Load, Reply, Sidecar, assert_eventually, metric_value,
    pattern, pattern_checksum, refused_addr,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const RETRIES: &str = "tether_target_retries_total";
const BUDGET_EXHAUSTED: &str = "tether_target_retry_budget_exhausted_total";
const EJECTIONS: &str = "tether_target_ejections_total";
const OVERFLOWS: &str = "tether_target_overflows_total";
const NO_HEALTHY: &str = "tether_target_no_healthy_endpoints_total";
const ENDPOINTS: &str = "tether_target_endpoints";
/// Outlier detection off, for tests where ejecting would hide what they look at.
const NO_EJECTION: &str = "outlierDetection: { consecutiveGatewayFailures: 0 }";
/// A budget that never stops a retry in these tests' handful of requests.
const AMPLE_BUDGET: &str = "retryPolicy: { budgetPercent: 100, budgetMinPerSecond: 1000 }";

/// An endpoint entry: `"ADDR"`.
fn endpoint(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// An endpoint entry with a health: `{ address: "ADDR", health: HEALTH }`.
fn endpoint_with(addr: SocketAddr, health: &str) -> String {
    format!("{{ address: \"{addr}\", health: {health} }}")
}

/// One HTTP outbound alias to `endpoints`, with `settings` (`key: value` pairs, comma-separated).
fn alias(name: &str, endpoints: &[String], settings: &[&str]) -> String {
    let settings: String = settings.iter().map(|s| format!(", {s}")).collect();
    format!(
        "  - {{ dnsName: {name}, listen: 127.0.0.1:0, appProtocol: http, endpoints: [{}]{settings} }}\n",
        endpoints.join(", ")
    )
}

async fn proxy(aliases: &[String]) -> Sidecar {
    let yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned() + &aliases.concat();
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// The value of the outbound metric `name` of `alias`, with `labels` besides.
async fn metric(proxy: &Sidecar, name: &str, alias: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("target_discovery_name", alias)];
    all.extend_from_slice(labels);
    metric_value(&proxy.metrics().await, name, &all)
}

/// How many endpoints of `alias` are in `state` (`total`, `healthy`, `ejected`).
async fn endpoints_in(proxy: &Sidecar, alias: &str, state: &str) -> f64 {
    metric(proxy, ENDPOINTS, alias, &[("state", state)]).await
}

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::start(name).await);
    }
    backends
}

fn client() -> Client {
    Client::http1().timeout(Duration::from_secs(15))
}

/// The first word of `x-tether-error`, the cause of a failure the proxy answered itself.
fn cause(reply: &Reply) -> Option<&str> {
    reply.header("x-tether-error").and_then(|v| v.split_whitespace().next())
}

/// A listener that counts the connections it accepts and closes each at once.
struct ConnectionCounter {
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionCounter {
    /// Binds `addr`, trying for a while: a port freed by a killed process may linger.
    async fn bind(addr: SocketAddr) -> Self {
        let mut listener = None;
        for _ in 0..50 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("could not bind {addr} again"));
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        });
        Self { count, task }
    }

    fn connections(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// F1: one of three backend processes is SIGKILLed under steady load. With the default retry
/// policy no client request fails: those cut off in flight and those whose connect is refused
/// go to another endpoint. Within a second the dead endpoint is ejected (default outlier
/// detection: 5 gateway failures in a row, 30 s): when its port is opened again a second after
/// the kill, the proxy does not connect to it at all.
#[tokio::test]
async fn f1_sigkill_of_one_backend_fails_no_request_and_ejects_it_at_once() {
    let mut backends: Vec<BackendProcess> =
        (0..3).map(|i| BackendProcess::start(&format!("p{i}")).unwrap()).collect();
    let endpoints: Vec<String> = backends.iter().map(|b| endpoint(b.addr)).collect();
    let proxy = proxy(&[alias("svc", &endpoints, &["loadBalancing: round-robin"])]).await;

    let load = Load::start(client(), proxy.url("svc", "/"), 6, 1_000_000);
    assert_eventually!(Duration::from_secs(10), load.sent() >= 300, "the load did not get going");
    let dead = backends[2].addr;
    backends[2].kill();
    let killed = Instant::now();

    assert_eventually!(
        Duration::from_secs(3),
        metric(&proxy, EJECTIONS, "svc", &[]).await >= 1.0,
        "the dead endpoint was not ejected within 3 s of the kill:\n{}",
        proxy.metrics().await
    );
    let ejected_after = killed.elapsed();
    tokio::time::sleep_until((killed + Duration::from_secs(1)).into()).await;
    let reopened = ConnectionCounter::bind(dead).await;
    let sent_when_reopened = load.sent();
    // Two seconds of traffic, a third of which round robin would send to the reopened port.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_while_watched = load.sent() - sent_when_reopened;
    let report = load.stop().await;

    report.assert_no_failures();
    assert!(report.by_backend.get("p2").copied().unwrap_or(0) > 0, "p2 served nothing before the kill");
    assert!(sent_while_watched >= 100, "only {sent_while_watched} requests while the port was watched");
    assert_eq!(
        reopened.connections(),
        0,
        "the proxy connected to the dead endpoint's port 1 s after the kill (ejected after {ejected_after:?})"
    );
    assert_eq!(metric(&proxy, EJECTIONS, "svc", &[]).await, 1.0);
    assert_eq!(endpoints_in(&proxy, "svc", "ejected").await, 1.0);
}

/// F2: one of three backends accepts requests and never answers. Every request ends within the
/// per-request timeout (0.5 s) plus 50 ms, as seen by the client, the endpoint is ejected (no
/// request reaches it while it is), and once it answers again it is re-admitted and gets its
/// share. (The slowest request typically ends 3–5 ms after the timeout, 11 ms with two busy
/// loops competing for the machine's two cores.)
#[tokio::test]
async fn f2_a_backend_that_never_answers_costs_the_timeout_and_is_ejected_then_readmitted() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    const MARGIN: Duration = Duration::from_millis(50);
    let backends = backends(&["ok0", "ok1", "hang"]).await;
    let hang = &backends[2];
    hang.set_delay(Duration::from_secs(3600));
    let endpoints: Vec<String> = backends.iter().map(|b| endpoint(b.addr)).collect();
    let settings = [
        "loadBalancing: round-robin",
        "timeout: { perRequestTimeoutSeconds: 0.5 }",
        "outlierDetection: { consecutiveGatewayFailures: 3, baseEjectionSeconds: 2, maxEjectionSeconds: 2 }",
    ];
    let proxy = proxy(&[alias("svc", &endpoints, &settings)]).await;

    // Load until the hanging endpoint is ejected: three requests time out on it first.
    let load = Load::start(client(), proxy.url("svc", "/"), 6, 100_000);
    assert_eventually!(
        Duration::from_secs(10),
        metric(&proxy, EJECTIONS, "svc", &[]).await >= 1.0,
        "the endpoint that never answers was not ejected:\n{}",
        proxy.metrics().await
    );
    let report = load.stop().await;
    assert!(report.failures_with(504) >= 3, "expected the timeouts that ejected it: {:?}", report.failures);
    assert_eq!(report.failures_with(504), report.failures.len(), "only timeouts: {:?}", report.failures);
    assert!(
        report.slowest <= TIMEOUT + MARGIN,
        "a request took {:?}, beyond the per-request timeout {TIMEOUT:?} + {MARGIN:?}",
        report.slowest
    );

    // While it is ejected (the gauge says so before and after, and no new ejection began in
    // between), no request reaches it.
    let ejections = metric(&proxy, EJECTIONS, "svc", &[]).await;
    assert_eq!(endpoints_in(&proxy, "svc", "ejected").await, 1.0);
    let reached = hang.requests();
    for _ in 0..30 {
        let reply = client().get(&proxy.url("svc", "/")).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(endpoints_in(&proxy, "svc", "ejected").await, 1.0, "the ejection ended too soon to tell");
    assert_eq!(metric(&proxy, EJECTIONS, "svc", &[]).await, ejections);
    assert_eq!(hang.requests(), reached, "an ejected endpoint got requests");

    // It recovers; after the ejection (2 s) it is re-admitted and gets traffic again.
    hang.set_delay(Duration::ZERO);
    assert_eventually!(
        Duration::from_secs(10),
        {
            let reply = client().get(&proxy.url("svc", "/")).await.unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
            reply.header("x-backend") == Some("hang")
        },
        "the recovered endpoint was not re-admitted within 10 s"
    );
    let report = Load::start(client(), proxy.url("svc", "/"), 3, 60).finish().await;
    report.assert_no_failures();
    let share = report.by_backend.get("hang").copied().unwrap_or(0);
    assert!(share >= 10, "the re-admitted endpoint got {share} of 60: {:?}", report.by_backend);
    assert_eq!(endpoints_in(&proxy, "svc", "ejected").await, 0.0);
}

/// F3: the only backend answers 503 to everything. With the default policy (2 retries on 503,
/// budget 20% of requests + 10/s) retries happen, but the backend sees at most 1.2 × the
/// client's requests plus the floor, where unbudgeted retries would triple the load. The
/// floor is counted over the budget's window of 10 s (a reserve of 100 retries), the usual
/// shape of a retry budget (Finagle's, Linkerd's). Once the backend heals, requests succeed
/// again at once.
#[tokio::test]
async fn f3_retries_against_a_failing_backend_stay_within_the_budget() {
    const REQUESTS: usize = 3000;
    const FLOOR_RESERVE: f64 = 10.0 * 10.0;
    let failing = Backend::start("failing").await;
    failing.set_status(Some(503));
    let proxy = proxy(&[alias("svc", &[endpoint(failing.addr)], &[])]).await;

    let report = Load::start(client(), proxy.url("svc", "/"), 4, REQUESTS).finish().await;
    assert_eq!(report.ok, 0);
    assert_eq!(report.failures.len(), REQUESTS);
    // The backend's own 503 reaches the client once retries are spent or refused.
    assert_eq!(report.failures_with(503), REQUESTS, "first: {:?}", &report.failures[..3]);
    assert!(report.failures[0].contains("503 from failing"), "{:?}", report.failures[0]);

    let upstream = failing.requests();
    let bound = 1.2 * REQUESTS as f64 + FLOOR_RESERVE;
    assert!(upstream > REQUESTS, "no retries at all: {upstream} upstream requests for {REQUESTS}");
    assert!(
        upstream as f64 <= bound,
        "the backend got {upstream} requests for {REQUESTS} client requests; the budget allows {bound}"
    );
    let retries = metric(&proxy, RETRIES, "svc", &[]).await;
    assert_eq!(retries, (upstream - REQUESTS) as f64, "every extra upstream request is a counted retry");
    assert!(metric(&proxy, BUDGET_EXHAUSTED, "svc", &[]).await > 0.0);

    failing.set_status(None);
    let healed = Instant::now();
    assert_eventually!(
        Duration::from_secs(5),
        client().get(&proxy.url("svc", "/")).await.is_ok_and(|r| r.status == 200),
        "no success within 5 s of the backend healing"
    );
    let report = Load::start(client(), proxy.url("svc", "/"), 4, 100).finish().await;
    report.assert_no_failures();
    assert!(healed.elapsed() < Duration::from_secs(5), "recovery took {:?}", healed.elapsed());
}

/// A GET through `url`, timed.
async fn timed_get(url: String) -> (Reply, Duration) {
    let start = Instant::now();
    let reply = client().get(&url).await.unwrap();
    (reply, start.elapsed())
}

/// What a burst of concurrent requests got: how many succeeded, how many were refused with
/// 503 `overflow` and how long the slowest refusal took.
#[derive(Debug, Default)]
struct Burst {
    ok: usize,
    overflow: usize,
    slowest_overflow: Duration,
}

/// Sends `n` GETs to `url` at once, each on a connection of its own. Fails on anything but a
/// 200 (which must have waited for the backend's `delay`) or a 503 `overflow`.
async fn burst(url: String, n: usize, delay: Duration) -> Burst {
    let mut requests = JoinSet::new();
    for _ in 0..n {
        requests.spawn(timed_get(url.clone()));
    }
    let mut burst = Burst::default();
    while let Some(result) = requests.join_next().await {
        let (reply, took) = result.unwrap();
        match reply.status.as_u16() {
            200 => {
                assert!(took >= delay, "a 200 after {took:?}, before the backend's delay");
                burst.ok += 1;
            }
            503 => {
                assert_eq!(cause(&reply), Some("overflow"), "{reply:?}");
                burst.overflow += 1;
                burst.slowest_overflow = burst.slowest_overflow.max(took);
            }
            _ => panic!("unexpected reply {reply:?}"),
        }
    }
    burst
}

/// F4: a hundred concurrent requests to a 2 s backend, ten times what an alias admits, once
/// with `maxRequests: 10` and once with 5 connections and 5 requests waiting for one: the
/// admitted requests reach the backend, the other ninety get 503 `overflow` at once instead of
/// queueing, and the proxy's memory hardly moves.
#[tokio::test]
async fn f4_requests_beyond_the_limits_fail_fast_with_overflow() {
    const CONCURRENT: usize = 100;
    const DELAY: Duration = Duration::from_secs(2);
    let slow = |name: &str| Backend::with(BackendOptions { name: name.into(), delay: DELAY });
    let (in_flight, pooled) = (slow("in-flight").await, slow("pooled").await);
    let proxy = proxy(&[
        alias("requests", &[endpoint(in_flight.addr)], &["limits: { maxRequests: 10 }"]),
        alias("pending", &[endpoint(pooled.addr)], &["limits: { maxConnections: 5, maxPendingRequests: 5 }"]),
    ])
    .await;
    // Warm up, so that what follows measures the bursts and not first-use allocations.
    assert_eq!(timed_get(proxy.url("requests", "/")).await.0.status, 200);
    assert_eq!(timed_get(proxy.url("pending", "/")).await.0.status, 200);
    let rss_before = proxy.rss_kib();

    let (requests, pending) = tokio::join!(
        burst(proxy.url("requests", "/"), CONCURRENT, DELAY),
        burst(proxy.url("pending", "/"), CONCURRENT, DELAY)
    );
    // Ten in flight; the ninety others never left the proxy.
    assert_eq!((requests.ok, requests.overflow), (10, CONCURRENT - 10), "maxRequests 10: {requests:?}");
    assert_eq!(in_flight.requests(), 1 + 10);
    // Five on the five connections, five waiting for one of them and served after them.
    assert_eq!(
        (pending.ok, pending.overflow),
        (10, CONCURRENT - 10),
        "5 connections + 5 pending: {pending:?}"
    );
    assert_eq!(pooled.requests(), 1 + 10);
    assert!(pooled.connections() <= 5, "{} connections with maxConnections 5", pooled.connections());
    for (alias, burst) in [("requests", &requests), ("pending", &pending)] {
        assert!(burst.slowest_overflow < DELAY / 2, "{alias}: an overflow took {burst:?}: it queued");
        assert_eq!(metric(&proxy, OVERFLOWS, alias, &[]).await, (CONCURRENT - 10) as f64);
    }

    // Two hundred connections and requests, a hundred and eighty refused: a few MiB at most
    // (about 5 MiB on the machine this was written on, mostly connection buffers).
    let grown = proxy.peak_rss_kib().saturating_sub(rss_before);
    assert!(grown <= 8 * 1024, "peak RSS grew by {grown} KiB during the bursts (from {rss_before} KiB)");
}

/// Only HEALTHY endpoints get traffic while there is one; when none is, all of them do
/// (HEALTHY_OR_ELSE_ALL), and a metric says so.
#[tokio::test]
async fn only_healthy_endpoints_get_traffic_unless_none_is() {
    let some = backends(&["healthy", "unhealthy", "starting", "draining"]).await;
    let none = backends(&["sick0", "sick1"]).await;
    let some_endpoints = [
        endpoint_with(some[0].addr, "HEALTHY"),
        endpoint_with(some[1].addr, "UNHEALTHY"),
        endpoint_with(some[2].addr, "STARTING"),
        endpoint_with(some[3].addr, "DRAINING"),
    ];
    let none_endpoints: Vec<String> = none.iter().map(|b| endpoint_with(b.addr, "UNHEALTHY")).collect();
    let rr = ["loadBalancing: round-robin"];
    let proxy = proxy(&[alias("some", &some_endpoints, &rr), alias("none", &none_endpoints, &rr)]).await;

    let report = Load::start(client(), proxy.url("some", "/"), 4, 80).finish().await;
    report.assert_no_failures();
    assert_eq!(report.by_backend.get("healthy"), Some(&80), "{:?}", report.by_backend);
    assert_eq!(some[1..].iter().map(Backend::requests).sum::<usize>(), 0);
    assert_eq!(endpoints_in(&proxy, "some", "total").await, 4.0);
    assert_eq!(endpoints_in(&proxy, "some", "healthy").await, 1.0);
    assert_eq!(metric(&proxy, NO_HEALTHY, "some", &[]).await, 0.0);

    let report = Load::start(client(), proxy.url("none", "/"), 4, 80).finish().await;
    report.assert_no_failures();
    for b in &none {
        assert!(b.requests() >= 20, "{} got {} of 80 with no healthy endpoint", b.name, b.requests());
    }
    assert_eq!(endpoints_in(&proxy, "none", "healthy").await, 0.0);
    assert!(metric(&proxy, NO_HEALTHY, "none", &[]).await >= 80.0, "{}", proxy.metrics().await);
}

/// Two endpoints answering 503 at once and a healthy one that takes 20 ms, balanced by latency:
/// power of two choices prefers the fast failing endpoints, so a request meets them first, yet
/// with two retries every request succeeds, because each retry avoids the endpoints already
/// tried. Retries that ignored what was tried would pick a failing endpoint again and fail.
#[tokio::test]
async fn retries_avoid_the_endpoints_already_tried() {
    const REQUESTS: usize = 40;
    let mut backends = backends(&["fail0", "fail1"]).await;
    let slow_ok = BackendOptions { name: "ok".into(), delay: Duration::from_millis(20) };
    backends.push(Backend::with(slow_ok).await);
    backends[0].set_status(Some(503));
    backends[1].set_status(Some(503));
    let endpoints: Vec<String> = backends.iter().map(|b| endpoint(b.addr)).collect();
    let proxy = proxy(&[alias("svc", &endpoints, &[NO_EJECTION, AMPLE_BUDGET])]).await;

    for i in 0..REQUESTS {
        let reply = client().get(&proxy.url("svc", "/")).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.header("x-backend"), Some("ok"));
    }
    let failed = backends[0].requests() + backends[1].requests();
    assert_eq!(backends[2].requests(), REQUESTS);
    // At most once on each failing endpoint per request; and most requests met both.
    assert!((REQUESTS..=2 * REQUESTS).contains(&failed), "the failing endpoints got {failed}");
    assert_eq!(metric(&proxy, RETRIES, "svc", &[]).await, failed as f64);
}

/// Replies to `n` sequential `method` requests carrying `len` bytes of [`pattern`] to `/sink`.
async fn send_n(url: &str, method: Method, len: usize, n: usize) -> Vec<Reply> {
    let body = Bytes::from(pattern(len));
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(client().send(method.clone(), url, body.clone()).await.unwrap());
    }
    replies
}

/// Checks that every reply is either the failing backend's own 503 (the request was not
/// retried) or `/sink`'s answer for the whole body from the healthy one; returns how many 503s.
fn unretried_503s(replies: &[Reply], len: usize) -> usize {
    let sunk = format!("{len} {:016x}", pattern_checksum(len as u64));
    replies
        .iter()
        .filter(|r| {
            if r.status == 503 {
                assert_eq!(r.header("x-backend"), Some("fail"), "{r:?}");
                return true;
            }
            assert_eq!((r.status.as_u16(), r.text()), (200, sunk.clone()), "{r:?}");
            false
        })
        .count()
}

/// Which requests are tried again after a response (round robin over an endpoint answering
/// 503 and a healthy one, so every other request meets the 503 first): a POST is not (it may
/// have done something), nor a PUT whose body is over 64 KiB (not kept for replay); a PUT of
/// exactly 64 KiB is, with its body intact. A POST whose connect was refused is, since it
/// never reached the app.
#[tokio::test]
async fn only_replayable_requests_are_retried() {
    const N: usize = 10;
    const KEPT: usize = 64 * 1024;
    let backends = backends(&["fail", "ok"]).await;
    let (fail, ok) = (&backends[0], &backends[1]);
    fail.set_status(Some(503));
    let settings = ["loadBalancing: round-robin", NO_EJECTION, AMPLE_BUDGET];
    let refused = [endpoint(refused_addr()), endpoint(ok.addr)];
    let proxy = proxy(&[
        alias("svc", &[endpoint(fail.addr), endpoint(ok.addr)], &settings),
        alias("refused", &refused, &settings),
    ])
    .await;
    let url = proxy.url("svc", "/sink");

    // Not idempotent: the 503 goes back to the client.
    let replies = send_n(&url, Method::POST, 100, N).await;
    let failed = unretried_503s(&replies, 100);
    assert!(failed >= N / 4, "round robin sent {failed} of {N} POSTs to the failing endpoint first");
    assert_eq!((fail.requests(), ok.requests()), (failed, N - failed), "a POST was sent twice");
    assert_eq!(metric(&proxy, RETRIES, "svc", &[]).await, 0.0);

    // Idempotent with a body of 64 KiB: kept and replayed whole.
    let before = fail.requests();
    let replies = send_n(&url, Method::PUT, KEPT, N).await;
    assert_eq!(unretried_503s(&replies, KEPT), 0, "a replayable PUT was not retried");
    let retried = fail.requests() - before;
    assert!(retried >= N / 4, "only {retried} of {N} PUTs met the failing endpoint");
    assert_eq!(metric(&proxy, RETRIES, "svc", &[]).await, retried as f64);

    // One byte more: not kept, so not retried.
    let before = (fail.requests(), ok.requests());
    let replies = send_n(&url, Method::PUT, KEPT + 1, N).await;
    let failed = unretried_503s(&replies, KEPT + 1);
    assert!(failed >= N / 4, "round robin sent {failed} of {N} large PUTs to the failing endpoint first");
    assert_eq!((fail.requests() - before.0, ok.requests() - before.1), (failed, N - failed));

    // Connect refused: never reached the app, so even a POST goes to the other endpoint.
    let ok_before = ok.requests();
    let replies = send_n(&proxy.url("refused", "/sink"), Method::POST, 1000, N).await;
    assert_eq!(unretried_503s(&replies, 1000), 0);
    assert_eq!(ok.requests() - ok_before, N);
    let retried = metric(&proxy, RETRIES, "refused", &[]).await;
    assert!(retried >= (N / 4) as f64, "only {retried} of {N} POSTs met the refused endpoint");
}

/// An endpoint that closes each connection once a request has arrived, without answering (an
/// app crashing on every request), and a healthy one, in turn: a GET cut off like that goes to
/// the healthy endpoint, a POST gets 502, since it may have done something before the crash.
#[tokio::test]
async fn requests_cut_off_before_a_response_are_retried_only_when_idempotent() {
    const N: usize = 10;
    let crashing = Backend::closing_before_answering("crashing").await;
    let ok = Backend::start("ok").await;
    let settings = ["loadBalancing: round-robin", NO_EJECTION, AMPLE_BUDGET];
    let proxy = proxy(&[alias("svc", &[endpoint(crashing.addr), endpoint(ok.addr)], &settings)]).await;

    for _ in 0..N {
        let reply = client().get(&proxy.url("svc", "/")).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.header("x-backend")), (200, Some("ok")), "{reply:?}");
    }
    let cut_off = crashing.requests();
    assert!(cut_off >= N / 4, "only {cut_off} of {N} GETs met the crashing endpoint");
    assert_eq!(ok.requests(), N);
    assert_eq!(metric(&proxy, RETRIES, "svc", &[]).await, cut_off as f64);

    let mut failed = 0;
    for _ in 0..N {
        let reply = client().post(&proxy.url("svc", "/sink"), pattern(100)).await.unwrap();
        match reply.status.as_u16() {
            502 => failed += 1,
            200 => assert_eq!(reply.header("x-backend"), Some("ok"), "{reply:?}"),
            _ => panic!("unexpected reply {reply:?}"),
        }
    }
    assert!(failed >= N / 4, "only {failed} of {N} POSTs met the crashing endpoint");
    assert_eq!(crashing.requests() - cut_off, failed, "a cut-off POST was sent again");
    assert_eq!(ok.requests() - N, N - failed);
}

/// An app that dies with requests in hand, behind its own sidecar: that sidecar answers 502
/// `upstream-failed`, and the caller's sidecar tries a request that may be sent again (a GET)
/// on another endpoint, where it succeeds. A POST is not sent twice: its 502 reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dying_mid_request_behind_a_peer_sidecar_costs_no_idempotent_request() {
    let mut dying = BackendProcess::start("dying").unwrap();
    let healthy = Backend::start("healthy").await;
    let inbound = |target: SocketAddr| {
        format!(
            "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {target}, appProtocol: http }}\n"
        )
    };
    let peer_dying = Sidecar::start(TETHER, &inbound(dying.addr)).await.unwrap();
    let peer_healthy = Sidecar::start(TETHER, &inbound(healthy.addr)).await.unwrap();
    let mesh = |addr: SocketAddr| format!("{{ address: \"{addr}\", mesh: true }}");
    let caller = proxy(&[alias(
        "api",
        &[mesh(peer_dying.addr("api")), mesh(peer_healthy.addr("api"))],
        &["loadBalancing: round-robin", NO_EJECTION, AMPLE_BUDGET],
    )])
    .await;
    let url = format!("http://{}/delay/1500", caller.addr("api"));
    let client = Client::http1();
    let mut requests = JoinSet::new();
    for i in 0..6 {
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move {
            let reply = if i == 0 { client.post(&url, "order").await } else { client.get(&url).await };
            (i == 0, reply.unwrap())
        });
    }
    // Round robin: half went to each app; once the healthy one has its share, the dying one
    // holds the others.
    assert_eventually!(Duration::from_secs(5), healthy.requests() >= 3, "requests are not in flight");
    dying.kill();
    while let Some(outcome) = requests.join_next().await {
        let (post, reply) = outcome.unwrap();
        let cause = reply.headers.get("x-tether-error").map(|v| v.to_str().unwrap().to_owned());
        match (post, reply.status.as_u16()) {
            (_, 200) => {}
            (true, 502) => assert_eq!(cause.as_deref(), Some("upstream-failed")),
            (post, status) => {
                panic!("{} answered {status} ({cause:?})", if post { "the POST" } else { "a GET" })
            }
        }
    }
    // The GETs the dying app held were answered by the healthy one.
    assert!(healthy.requests() >= 5, "only {} requests reached the healthy app", healthy.requests());
}
