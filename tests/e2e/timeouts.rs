//! Timeouts through one outbound hop: per-request (504, `0` disables it), idle (HTTP/1
//! keep-alive and raw tcp connections closed after the idle timeout, `0` disables it) and
//! connect (an endpoint whose handshake never completes → 503 after the configured time; a
//! refused one → 503 at once).
//!
//! Timing bounds are generous (a loaded 2-core machine runs these): each test shows an ordering
//! that only holds with the feature, e.g. a 504 after at least the timeout and long before the
//! backend would have answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_testkit::{Backend, Client, Reply, Sidecar, Unanswered, refused_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// One outbound listener per `(dnsName, appProtocol, timeout)` entry, to `endpoint`. An empty
/// protocol leaves it out (raw tcp).
async fn proxy(endpoint: SocketAddr, aliases: &[(&str, &str, &str)]) -> Sidecar {
    let mut yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned();
    for (name, protocol, timeout) in aliases {
        let protocol = if protocol.is_empty() { String::new() } else { format!("appProtocol: {protocol}, ") };
        yaml += &format!(
            "  - {{ dnsName: {name}, listen: 127.0.0.1:0, {protocol}endpoints: [\"{endpoint}\"], timeout: {{ {timeout} }} }}\n"
        );
    }
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// GETs `url` and measures how long the whole exchange took.
async fn timed_get(url: String) -> (Reply, Duration) {
    let start = Instant::now();
    let reply = Client::http1().get(&url).await.unwrap();
    (reply, start.elapsed())
}

fn assert_tether_error(reply: &Reply, status: u16, cause: &str) {
    assert_eq!(reply.status.as_u16(), status, "{reply:?}");
    assert_eq!(reply.header("x-tether-error"), Some(cause), "{reply:?}");
}

#[tokio::test]
async fn per_request_timeout_answers_504_long_before_the_backend() {
    let backend = Backend::start("slow").await;
    let proxy = proxy(backend.addr, &[("svc", "http", "perRequestTimeoutSeconds: 0.5")]).await;
    let (reply, took) = timed_get(proxy.url("svc", "/delay/3000")).await;
    assert_tether_error(&reply, 504, "request-timeout");
    assert!(took >= Duration::from_millis(500), "504 after only {took:?}");
    assert!(took < Duration::from_millis(2500), "504 after {took:?}; the backend answers at 3 s");
    // A request within the timeout is untouched.
    let (reply, _) = timed_get(proxy.url("svc", "/delay/10")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn per_request_timeout_of_zero_disables_it() {
    let backend = Backend::start("slow").await;
    let proxy = proxy(
        backend.addr,
        &[("off", "http", "perRequestTimeoutSeconds: 0"), ("short", "http", "perRequestTimeoutSeconds: 1")],
    )
    .await;
    // The same 2 s request through both listeners at once.
    let (off, short) = tokio::join!(
        timed_get(proxy.url("off", "/delay/2000")),
        timed_get(proxy.url("short", "/delay/2000"))
    );
    let ((off, off_took), (short, short_took)) = (off, short);
    assert_eq!(off.status, 200, "timeout 0 must wait for the backend: {off:?}");
    assert!(off_took >= Duration::from_secs(2), "{off_took:?}");
    assert_tether_error(&short, 504, "request-timeout");
    assert!(short_took >= Duration::from_secs(1) && short_took < off_took, "{short_took:?} vs {off_took:?}");
}

/// Sends a GET over a raw HTTP/1.1 keep-alive connection and reads the whole response; returns
/// its head.
async fn exchange(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: svc\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return head;
            }
        }
    };
    let head = tokio::time::timeout(Duration::from_secs(10), read).await.expect("a response within 10 s");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "the proxy must keep the connection alive: {head}");
    head
}

/// Waits up to `limit` for the peer to close `stream`; how long that took, `None` if it stayed
/// open. Fails if the peer sends anything.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Err(_elapsed) => None,
        Ok(Ok(0)) => Some(start.elapsed()),
        Ok(Ok(_)) => panic!("unexpected data on an idle connection"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
        Ok(Err(e)) => panic!("reading an idle connection: {e}"),
    }
}

/// Over one listener with idle timeout 1 s and one with 0: after an exchange of `first_path`,
/// the first connection is closed by the proxy after about a second of silence; the second is
/// still open (and usable) after three.
async fn idle_timeout_closes_only_when_enabled(protocol: &str, first_path: &str) {
    let backend = Backend::start("b").await;
    let proxy = proxy(
        backend.addr,
        &[("short", protocol, "idleTimeoutSeconds: 1"), ("off", protocol, "idleTimeoutSeconds: 0")],
    )
    .await;
    let mut short = TcpStream::connect(proxy.addr("short")).await.unwrap();
    let mut off = TcpStream::connect(proxy.addr("off")).await.unwrap();
    exchange(&mut short, first_path).await;
    exchange(&mut off, "/").await;

    let (short_closed, off_closed) = tokio::join!(
        closed_within(&mut short, Duration::from_secs(6)),
        closed_within(&mut off, Duration::from_secs(3))
    );
    let after = short_closed.expect("idle timeout 1 s: the proxy never closed the connection");
    assert!(after >= Duration::from_millis(900), "closed after only {after:?} of silence");
    assert_eq!(off_closed, None, "idle timeout 0 must keep the connection open");
    // Still open means still usable.
    exchange(&mut off, "/").await;
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn http1_idle_timeout_closes_keep_alive_connections_and_zero_disables_it() {
    // HTTP idles only between requests: one that takes longer than the idle timeout is not cut.
    idle_timeout_closes_only_when_enabled("http", "/delay/1500").await;
}

#[tokio::test]
async fn tcp_idle_timeout_closes_silent_connections_and_zero_disables_it() {
    // No appProtocol: raw tcp spliced to the backend, which speaks HTTP/1.1 over it.
    idle_timeout_closes_only_when_enabled("", "/").await;
}

#[tokio::test]
async fn connect_timeout_answers_503_after_the_configured_time() {
    // A handshake that never completes: with the configured 0.5 s the proxy gives up long
    // before a kernel would, and with 3 s it demonstrably waits longer than the 1 s default.
    let unanswered = Unanswered::start().unwrap();
    let proxy = proxy(
        unanswered.addr,
        &[("short", "http", "connectTimeoutSeconds: 0.5"), ("long", "http", "connectTimeoutSeconds: 3")],
    )
    .await;
    let ((short, short_took), (long, long_took)) =
        tokio::join!(timed_get(proxy.url("short", "/")), timed_get(proxy.url("long", "/")));
    assert_tether_error(&short, 503, "connect-timeout");
    assert!(short_took >= Duration::from_millis(500), "{short_took:?}");
    assert!(short_took < Duration::from_millis(2500), "connect timeout 0.5 s answered after {short_took:?}");
    assert_tether_error(&long, 503, "connect-timeout");
    assert!(long_took >= Duration::from_secs(3), "connect timeout 3 s answered after {long_took:?}");
}

#[tokio::test]
async fn refused_connection_answers_503_connect_failed() {
    let proxy = proxy(refused_addr(), &[("svc", "http", "connectTimeoutSeconds: 5")]).await;
    let (reply, took) = timed_get(proxy.url("svc", "/")).await;
    assert_tether_error(&reply, 503, "connect-failed");
    assert!(took < Duration::from_millis(2500), "a refusal is immediate, took {took:?}");
}
