//! Abusive peers against real sidecars (design §5 "Hardened defaults", reliability A4–A6).
//!
//! - A4, HTTP/2 floods (tests/e2e/peers/h2_abuse.py, one connection each) against an inbound
//!   listener (untrusted peers) and an outbound one: the abusive connection is closed early, the
//!   proxy's peak memory barely grows, its CPU goes quiet afterwards, and a well-behaved client
//!   on the same listener sees no error at all.
//! - A5, slow peers: slowloris is closed at the 10 s header timeout, a trickled request body is
//!   ended by the per-request timeout, and a client that never reads a large response makes the
//!   proxy buffer nothing (backpressure reaches the app) while others are served.
//! - A6, connection exhaustion: beyond `maxDownstreamConnections` connections are closed at
//!   once, the admin endpoint answers throughout, service is back within seconds, and the open
//!   files limit is raised to its hard limit at start.
//!
//! Every loop is bounded in count and time; timing bounds are generous (a loaded 2-core machine
//! runs these).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_testkit::{Backend, Client, Load, Sidecar, assert_eventually, metric_value, workspace_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
/// Frames the abusive peer sends at most…
const FLOOD_FRAMES: u64 = 2_000_000;
/// …for at most this long.
const FLOOD_SECONDS: f64 = 20.0;
/// An abusive connection must be closed within this long.
const CLOSE_WITHIN: f64 = 5.0;
/// The proxy's peak resident memory may grow by at most this much during an attack (KiB).
const MAX_PEAK_GROWTH_KIB: u64 = 8 * 1024;

/// A sidecar with an inbound listener `in` (appProtocol `inbound_protocol`) and an outbound
/// listener `out` (http), both to `backend`.
async fn sidecar(backend: &Backend, inbound_protocol: &str, extra: &str) -> Sidecar {
    let b = backend.addr;
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\n{extra}\
         inbound:\n  - {{ portName: in, listen: 127.0.0.1:0, target: \"{b}\", appProtocol: {inbound_protocol} }}\n\
         outbound:\n  - {{ dnsName: out, listen: 127.0.0.1:0, appProtocol: http, endpoints: [\"{b}\"] }}\n"
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// Runs h2_abuse.py against `listener` and returns its report.
async fn abuse(sidecar: &Sidecar, listener: &str, mode: &str) -> Value {
    let peer = workspace_path("tests/e2e/peers/h2_abuse.py");
    let run = tokio::process::Command::new("python3")
        .arg(peer)
        .arg(sidecar.addr(listener).to_string())
        .arg(mode)
        .arg(FLOOD_FRAMES.to_string())
        .arg(FLOOD_SECONDS.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs_f64(FLOOD_SECONDS + 30.0), run)
        .await
        .expect("the abusive peer outlived its own deadline")
        .expect("running python3 (is it installed?)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "Python's h2 package is missing: pip install h2\n{stderr}");
    assert!(out.status.success(), "h2_abuse.py {mode} failed: {}\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("h2_abuse.py said {:?}: {e}", out.stdout))
}

/// The proxy's CPU time so far (from /proc/PID/schedstat).
fn cpu_time(sidecar: &Sidecar) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/schedstat", sidecar.pid())).unwrap_or_default();
    Duration::from_nanos(stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// The CPU the proxy used over the next second, as a fraction of one core.
async fn cpu_use_over_a_second(sidecar: &Sidecar) -> f64 {
    let (before, start) = (cpu_time(sidecar), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    (cpu_time(sidecar) - before).as_secs_f64() / start.elapsed().as_secs_f64()
}

/// For the inbound listener and then the outbound one: a well-behaved HTTP/1.1 load runs while
/// `mode` floods the same listener over one HTTP/2 connection; asserts A4's outcomes.
async fn flood_is_contained(mode: &str, inbound_protocol: &str) {
    let backend = Backend::start("app").await;
    let sidecar = sidecar(&backend, inbound_protocol, "").await;
    for listener in ["in", "out"] {
        let load = Load::start(Client::http1(), sidecar.url(listener, "/"), 2, 1_000_000);
        let sent_before = load.sent();
        let peak_before = sidecar.peak_rss_kib();
        let report = abuse(&sidecar, listener, mode).await;
        let growth = sidecar.peak_rss_kib().saturating_sub(peak_before);
        // The load must have run during the attack, not only after it.
        assert_eventually!(
            Duration::from_secs(5),
            load.sent() > sent_before + 20,
            "the load made no progress"
        );
        let served = load.stop().await;
        eprintln!("{mode} on {listener}: {report}; peak RSS +{growth} KiB; load {} ok", served.ok);
        let outcome = report["outcome"].as_str().unwrap_or_default();
        let seconds = report["seconds"].as_f64().unwrap_or(f64::MAX);
        assert!(
            outcome.starts_with("goaway:") || outcome == "eof" || outcome == "reset",
            "{mode} on `{listener}`: the proxy did not close the abusive connection: {report}"
        );
        assert!(seconds < CLOSE_WITHIN, "{mode} on `{listener}`: closed only after {seconds} s: {report}");
        assert!(report["sent"].as_u64().unwrap_or(u64::MAX) < FLOOD_FRAMES, "{report}");
        assert!(growth < MAX_PEAK_GROWTH_KIB, "{mode} on `{listener}`: peak RSS grew by {growth} KiB");
        served.assert_no_failures();
        assert!(served.ok > 0);
        let cpu = cpu_use_over_a_second(&sidecar).await;
        assert!(
            cpu < 0.3,
            "{mode} on `{listener}`: the proxy still uses {:.0}% CPU after the attack",
            cpu * 100.0
        );
        // The listener still serves HTTP/2 clients.
        let reply = Client::http2().get(&sidecar.url(listener, "/")).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
    }
}

/// HEADERS + RST_STREAM in batches of 100: h2 itself answers GOAWAY(ENHANCE_YOUR_CALM) once 50
/// streams were reset before the server accepted them.
#[tokio::test]
async fn a4_rapid_reset_burst() {
    flood_is_contained("rapid-reset", "http2").await;
}

/// One HEADERS + RST_STREAM pair at a time, each stream accepted (its request sent to the app)
/// before the reset: h2 has no limit for this; tether's flood guard closes the connection once
/// the peer has reset 200 streams and most of those it opened.
#[tokio::test]
async fn a4_paced_rapid_reset() {
    flood_is_contained("paced-reset", "http").await;
}

/// Endless CONTINUATION frames without END_HEADERS: h2 counts them (GOAWAY ENHANCE_YOUR_CALM).
#[tokio::test]
async fn a4_continuation_flood() {
    flood_is_contained("continuation", "http2").await;
}

/// PINGs from a peer that never reads the ACKs: h2 only stops reading until the ACK is flushed;
/// the flood guard closes the connection once the control-frame budget is spent.
#[tokio::test]
async fn a4_ping_flood() {
    flood_is_contained("ping", "http").await;
}

/// SETTINGS frames (each needs an ACK) from a peer that never reads: as for PING.
#[tokio::test]
async fn a4_settings_flood() {
    flood_is_contained("settings", "http2").await;
}

/// WINDOW_UPDATE(1) on the connection, endlessly: h2 just adds them up; the flood guard closes.
#[tokio::test]
async fn a4_window_update_flood() {
    flood_is_contained("window-update", "http").await;
}

/// Waits up to `limit` for the peer to close `stream`, discarding whatever it sends; how long
/// that took, `None` if it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_elapsed) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A5: headers trickled one byte a second to an inbound listener are cut at the 10 s header
/// timeout, while a client on the same listener is served throughout.
#[tokio::test]
async fn a5_slowloris_is_closed_at_the_header_timeout() {
    let backend = Backend::start("app").await;
    let sidecar = sidecar(&backend, "http", "").await;
    let load = Load::start(Client::http1(), sidecar.url("in", "/"), 2, 1_000_000);
    let mut slow = TcpStream::connect(sidecar.addr("in")).await.unwrap();
    let start = Instant::now();
    let head = b"GET / HTTP/1.1\r\nhost: in\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = None;
    for byte in head {
        if slow.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed = Some(start.elapsed());
            break;
        }
        if let Some(after) = closed_within(&mut slow, Duration::from_secs(1)).await {
            closed = Some(start.elapsed() - Duration::from_secs(1) + after);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(16), "slowloris still open after 16 s");
    }
    let closed = closed.expect("the proxy never closed the slowloris connection");
    eprintln!("slowloris closed after {closed:?}");
    assert!(closed >= Duration::from_secs(9), "closed after only {closed:?}; the header timeout is 10 s");
    assert!(closed < Duration::from_secs(14), "closed only after {closed:?}; the header timeout is 10 s");
    let served = load.stop().await;
    served.assert_no_failures();
    assert!(served.ok > 0);
    assert_eq!(backend.requests(), served.ok, "the slowloris request must never reach the app");
}

/// A5: a request body trickled a byte every 100 ms is ended by the per-request timeout (here
/// 2 s) with a 504, on the inbound and the outbound listener.
#[tokio::test]
async fn a5_slow_body_is_bounded_by_the_per_request_timeout() {
    let backend = Backend::start("app").await;
    let b = backend.addr;
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\n\
         inbound:\n  - {{ portName: in, listen: 127.0.0.1:0, target: \"{b}\", appProtocol: http, timeout: {{ perRequestTimeoutSeconds: 2 }} }}\n\
         outbound:\n  - {{ dnsName: out, listen: 127.0.0.1:0, appProtocol: http, endpoints: [\"{b}\"], timeout: {{ perRequestTimeoutSeconds: 2 }} }}\n"
    );
    let sidecar = Sidecar::start(TETHER, &yaml).await.unwrap();
    for listener in ["in", "out"] {
        let load = Load::start(Client::http1(), sidecar.url(listener, "/"), 2, 1_000_000);
        let mut slow = TcpStream::connect(sidecar.addr(listener)).await.unwrap();
        let start = Instant::now();
        slow.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        // One byte every 100 ms for at most 10 s, reading whatever comes back.
        for _ in 0..100 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
                Err(_elapsed) => {}
            }
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let took = start.elapsed();
        let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
        eprintln!("slow body on {listener}: {:?} after {took:?}", head.lines().next());
        assert!(head.starts_with("http/1.1 504"), "{listener}: expected a 504, got {head:?} after {took:?}");
        assert!(head.contains("x-tether-error: request-timeout"), "{head}");
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(6), "{took:?}");
        let served = load.stop().await;
        served.assert_no_failures();
        assert!(served.ok > 0);
    }
}

/// A5: a client that asks for 256 MiB and reads only the first bytes makes the proxy buffer
/// nothing: hyper stops polling the response body when the socket is full, so backpressure
/// reaches the app. Other clients on the listener are served meanwhile.
#[tokio::test]
async fn a5_slow_reader_is_not_buffered() {
    let backend = Backend::start("app").await;
    let sidecar = sidecar(&backend, "http", "").await;
    for listener in ["in", "out"] {
        let peak_before = sidecar.peak_rss_kib();
        let load = Load::start(Client::http1(), sidecar.url(listener, "/"), 2, 1_000_000);
        let mut reader = TcpStream::connect(sidecar.addr(listener)).await.unwrap();
        reader.write_all(b"GET /bytes/268435456 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut head = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut head)).await.unwrap().unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head[..n]));
        // Never read again, for three seconds: the proxy could have buffered hundreds of MiB.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let growth = sidecar.peak_rss_kib().saturating_sub(peak_before);
        let served = load.stop().await;
        eprintln!("slow reader on {listener}: peak RSS +{growth} KiB; load {} ok", served.ok);
        assert!(growth < MAX_PEAK_GROWTH_KIB, "{listener}: peak RSS grew by {growth} KiB");
        served.assert_no_failures();
        assert!(served.ok > 0);
        drop(reader);
    }
}

/// The soft and hard `Max open files` of a process.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    let mut fields = line.split_whitespace().skip(3);
    (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
}

/// A6: with `maxDownstreamConnections: 200`, 3000 connections to the inbound listener: at most
/// 200 stay open, the rest are closed at once and counted; `/live` and `/ready` answer
/// throughout; once the flood is gone, requests succeed again within seconds. The proxy runs
/// with a soft open files limit of 512, which it raises to the hard limit at start.
#[tokio::test]
async fn a6_connection_flood_is_capped_and_admin_keeps_answering() {
    const CAP: usize = 200;
    const FLOOD: usize = 3000;
    const BATCH: usize = 250;
    let backend = Backend::start("app").await;
    // A wrapper that starts tether with a low soft limit on open files, as many systems do.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("tether-lowfiles");
    std::fs::write(&wrapper, format!("#!/bin/sh\nulimit -Sn 512\nexec {TETHER} \"$@\"\n")).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let extra = format!("maxDownstreamConnections: {CAP}\n");
    let b = backend.addr;
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\n{extra}\
         inbound:\n  - {{ portName: in, listen: 127.0.0.1:0, target: \"{b}\", appProtocol: http }}\n"
    );
    let sidecar = Sidecar::start(wrapper.to_str().unwrap(), &yaml).await.unwrap();
    let (soft, hard) = open_files_limits(sidecar.pid());
    assert_eq!(soft, hard, "the proxy must raise its soft open files limit to the hard one");
    let addr = sidecar.addr("in");
    let admin = Client::http1().timeout(Duration::from_secs(3));
    let mut held = Vec::new();
    let mut refused = 0;
    let start = Instant::now();
    for _ in 0..FLOOD / BATCH {
        let connects =
            (0..BATCH).map(|_| tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)));
        for connected in futures_join_all(connects).await {
            match connected {
                Ok(Ok(stream)) => held.push(stream),
                _ => refused += 1,
            }
        }
        // The admin endpoint answers in the middle of the flood.
        for path in ["/live", "/ready"] {
            let reply = admin.get(&format!("http://{}{path}", sidecar.admin)).await;
            assert!(reply.as_ref().is_ok_and(|r| r.status == 200), "{path} during the flood: {reply:?}");
        }
    }
    // Connections over the cap are closed at once: find which of the held ones are still open.
    let mut open = 0;
    for stream in &mut held {
        if closed_within(stream, Duration::from_millis(20)).await.is_none() {
            open += 1;
            if open > CAP {
                break; // already failed; checking the rest would only take long
            }
        }
    }
    let metrics = sidecar.metrics().await;
    let overflows = metric_value(&metrics, "tether_downstream_overflows_total", &[]);
    eprintln!(
        "{FLOOD} connections in {:?}: {open} open, {refused} refused, {overflows} overflows counted",
        start.elapsed()
    );
    assert!(open <= CAP, "{open} connections open; the cap is {CAP}");
    assert!(overflows >= (FLOOD - CAP - refused) as f64, "overflows counted: {overflows}");
    // A client gets a connection of its own once the flood is gone.
    drop(held);
    let recovered = Instant::now();
    let client = Client::http1().timeout(Duration::from_secs(2));
    assert_eventually!(
        Duration::from_secs(5),
        client.get(&sidecar.url("in", "/")).await.is_ok_and(|r| r.status == 200),
        "service did not recover within 5 s of the flood"
    );
    eprintln!("service recovered after {:?}", recovered.elapsed());
    let load = Load::start(Client::http1(), sidecar.url("in", "/"), 4, 200);
    load.finish().await.assert_no_failures();
}

/// Runs every future of `futures` concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a task panicked"));
    }
    out
}
