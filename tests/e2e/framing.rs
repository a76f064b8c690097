//! Reliability A1–A3: ambiguous or malformed requests are refused and never forwarded, and an
//! upstream's oversized response head becomes a 502.
//!
//! Every request here goes to a [`CountingBackend`], a raw TCP server that counts each connection
//! and byte it receives: a refused request must not reach it at all (the proxy does not even
//! connect). Both kinds of listener are checked: an outbound one (appProtocol http, facing the
//! local app) and an inbound one (facing untrusted peers), each with a backend of its own.
//!
//! - HTTP/1: a corpus of raw requests (`http1_corpus`), each sent in one write on a fresh
//!   connection: it must get the expected status (400, 431 or 501) and the connection must close.
//! - HTTP/2 (h2c): `peers/h2_peer.py` sends malformed requests frame by frame with Python's `h2`
//!   package; each must get a 400/431/501, a stream reset or a connection error.
//! - Each part ends with well-formed controls that must reach the backend, which shows that the
//!   counting works and that the checks refuse only what they should.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tether_testkit::{
    Client, CountingBackend, Sidecar, python, raw_exchange, require_python_module, workspace_path,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const H2_PEER: &str = "tests/e2e/peers/h2_peer.py";
/// How long one exchange may take before it counts as unanswered (only reached on failure).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A sidecar with an outbound listener `out` (appProtocol http) to `outbound` and an inbound
/// listener `api` (appProtocol http) to `inbound`.
async fn sidecar(outbound: &CountingBackend, inbound: &CountingBackend) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\n\
         inbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {}, appProtocol: http }}\n\
         outbound:\n  - {{ dnsName: out, listen: 127.0.0.1:0, appProtocol: http, endpoints: [\"{}\"] }}\n",
        inbound.addr, outbound.addr
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// One malformed HTTP/1 request and the statuses that may refuse it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static [u16],
}

const BAD: &[u16] = &[400];
/// Transfer codings tether does not implement: 501 (RFC 9112 §6.1), or 400 where the coding
/// list is malformed anyway (chunked not last).
const CODING: &[u16] = &[400, 501];
const TOO_LARGE: &[u16] = &[431];

fn case(name: &'static str, text: &str, expect: &'static [u16]) -> Case {
    Case { name, bytes: text.as_bytes().to_vec(), expect }
}

fn http1_corpus() -> Vec<Case> {
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let large = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    vec![
        // Request smuggling classics (RFC 9112 §6.1, §6.3).
        case(
            "CL.TE",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
            BAD,
        ),
        case(
            "TE.CL",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
             5c\r\nGPOST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "CL zero with TE",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "TE.TE space before colon",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "TE.TE xchunked",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case(
            "TE.TE chunked then x",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case(
            "TE.TE x then chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case(
            "TE.TE chunked twice",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "TE chunked, chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case(
            "TE obs-fold",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "TE in HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            BAD,
        ),
        // Unknown transfer codings.
        case(
            "TE gzip, chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case(
            "TE chunked, gzip",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            CODING,
        ),
        case("TE identity", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", CODING),
        case("TE gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", CODING),
        // Content-Length: duplicate, conflicting, malformed.
        case(
            "CL duplicate, same value",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            BAD,
        ),
        case(
            "CL conflicting",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            BAD,
        ),
        case("CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", BAD),
        case("CL not a number", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\nhello", BAD),
        case("CL negative", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nhello", BAD),
        case("CL plus sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", BAD),
        case("CL hexadecimal", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", BAD),
        case(
            "CL overflowing",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\nhello",
            BAD,
        ),
        case(
            "CL with inner space",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\nhellohello",
            BAD,
        ),
        case("CL empty", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", BAD),
        // Line syntax: obs-fold, bare LF, bare CR, NUL, whitespace before the colon.
        case("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n", BAD),
        case("bare LF everywhere", "GET / HTTP/1.1\nHost: h\nX-A: 1\n\n", BAD),
        case("bare LF after the request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", BAD),
        case("bare LF in one header", "GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n", BAD),
        case("bare LF ending the head", "GET / HTTP/1.1\r\nHost: h\r\n\n", BAD),
        case("bare CR in a value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", BAD),
        case("NUL in a value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n", BAD),
        case("NUL in a name", "GET / HTTP/1.1\r\nHost: h\r\nX\0A: 1\r\n\r\n", BAD),
        case("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", BAD),
        case("tab before colon", "GET / HTTP/1.1\r\nHost: h\r\nX-A\t: 1\r\n\r\n", BAD),
        case("separator in a name", "GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n", BAD),
        case("double space in the request line", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", BAD),
        // Host: one, agreeing with an absolute-form target, without userinfo.
        case("two Hosts", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", BAD),
        case(
            "absolute form naming another host",
            "GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n",
            BAD,
        ),
        case("userinfo in the target", "GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", BAD),
        // Chunked bodies whose framing is broken.
        case(
            "chunk size not hex",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "chunk size negative",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "chunk size overflowing",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "chunk lines with bare LF",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
            BAD,
        ),
        case(
            "chunk longer than its size",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            BAD,
        ),
        case(
            "chunk size with a space inside",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1 0\r\nhello\r\n0\r\n\r\n",
            BAD,
        ),
        // Design §5: at most 100 headers and 64 KiB of them.
        Case {
            name: "101 headers",
            bytes: format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n").into_bytes(),
            expect: TOO_LARGE,
        },
        Case {
            name: "70 KiB of headers",
            bytes: format!("GET / HTTP/1.1\r\nHost: h\r\n{large}\r\n").into_bytes(),
            expect: TOO_LARGE,
        },
    ]
}

/// Well-formed requests that must get through (each closes its connection, so the exchange
/// ends as soon as the response has been read).
fn http1_controls() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GET", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        ("GET absolute form", "GET http://h/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        (
            "POST with Content-Length",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ),
        (
            "POST chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ),
    ]
}

/// Sends every case of the corpus to `addr` and returns a line per violation.
async fn refuse_all(addr: SocketAddr, backend: &CountingBackend, listener: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for case in http1_corpus() {
        let reached = (backend.connections(), backend.bytes());
        let reply = raw_exchange(addr, &case.bytes, EXCHANGE_TIMEOUT).await.unwrap();
        let name = case.name;
        if !reply.status.is_some_and(|s| case.expect.contains(&s)) {
            failures.push(format!("{listener}: `{name}`: expected {:?}, got {:?}", case.expect, reply.head));
        }
        if !reply.closed {
            failures.push(format!("{listener}: `{name}`: the connection stayed open"));
        }
        if (backend.connections(), backend.bytes()) != reached {
            failures.push(format!(
                "{listener}: `{name}` reached the backend ({} connections, {} bytes)",
                backend.connections() - reached.0,
                backend.bytes() - reached.1,
            ));
        }
    }
    if backend.connections() + backend.bytes() as usize > 0 {
        failures.push(format!("{listener}: the backend received {:?}", backend.received()));
    }
    failures
}

#[tokio::test]
async fn http1_malformed_requests_are_refused_and_never_forwarded() {
    let (to_out, to_in) = (CountingBackend::start().await, CountingBackend::start().await);
    let proxy = sidecar(&to_out, &to_in).await;
    assert!(http1_corpus().len() >= 30);
    let mut failures = Vec::new();
    for (listener, backend) in [("out", &to_out), ("api", &to_in)] {
        failures.extend(refuse_all(proxy.addr(listener), backend, listener).await);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    // Refusals carry tether's cause; the process is still serving, and well-formed requests
    // (including chunked ones with extensions and trailers) still get through.
    let reply = raw_exchange(proxy.addr("api"), &http1_corpus()[0].bytes, EXCHANGE_TIMEOUT).await.unwrap();
    assert!(reply.header("x-tether-error").is_some(), "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    for (listener, backend) in [("out", &to_out), ("api", &to_in)] {
        for (name, request) in http1_controls() {
            let reply =
                raw_exchange(proxy.addr(listener), request.as_bytes(), EXCHANGE_TIMEOUT).await.unwrap();
            assert_eq!(reply.status, Some(200), "{listener}: control `{name}`: {reply:?}\n{}", proxy.log());
        }
        assert!(backend.bytes() > 0, "{listener}: the controls reached the backend");
    }
}

/// One case of `h2_peer.py`: what came back, and whether the backend saw anything meanwhile.
struct H2Outcome {
    case: String,
    outcome: String,
    detail: String,
    /// New connections and bytes at the backend during the case.
    reached: (usize, u64),
}

/// Runs `h2_peer.py ADDR MODE`, one case at a time, noting what reached `backend` during each.
async fn h2_peer(addr: SocketAddr, mode: &str, backend: &CountingBackend) -> Vec<H2Outcome> {
    let mut child = Command::new(python())
        .arg(workspace_path(H2_PEER))
        .arg(addr.to_string())
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run h2_peer.py");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut outcomes = Vec::new();
    // Bounded: the peer has a few dozen cases, each of which times out after 10 s.
    for _ in 0..100 {
        let before = (backend.connections(), backend.bytes());
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("h2_peer.py answered within 60 s")
            .expect("read h2_peer.py's output");
        let Some(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let reached = (backend.connections() - before.0, backend.bytes() - before.1);
        outcomes.push(H2Outcome {
            case: field("case"),
            outcome: field("outcome"),
            detail: field("detail"),
            reached,
        });
        if stdin.write_all(b"next\n").await.is_err() {
            break;
        }
    }
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "h2_peer.py failed: {status:?}");
    outcomes
}

/// Cases h2 finds malformed only when their DATA arrives, after the request has been handed to
/// the proxy: the stream is reset and not a byte is forwarded, but the proxy may already have
/// connected upstream. `h2_peer.py` runs them last, so no other case is blamed for that.
const LATE: [&str; 2] = ["content-length-above-data", "content-length-below-data"];

/// A refusal, for HTTP/2: a 400/431/501 response, a stream reset or a connection error.
fn refused(outcome: &str) -> bool {
    matches!(outcome, "status:400" | "status:431" | "status:501" | "closed")
        || outcome.starts_with("reset:")
        || outcome.starts_with("goaway:")
}

#[tokio::test]
async fn http2_downgrade_tricks_are_refused_and_never_forwarded() {
    require_python_module("h2.connection", "h2").await;
    let (to_out, to_in) = (CountingBackend::start().await, CountingBackend::start().await);
    let proxy = sidecar(&to_out, &to_in).await;
    let mut failures = Vec::new();
    for (listener, backend) in [("out", &to_out), ("api", &to_in)] {
        let results = h2_peer(proxy.addr(listener), "malformed", backend).await;
        assert!(results.len() >= 30, "h2_peer.py ran {} cases", results.len());
        for H2Outcome { case, outcome, detail, reached } in &results {
            println!("{listener}: {case}: {outcome} {detail}");
            if !refused(outcome) {
                failures.push(format!("{listener}: `{case}`: not refused: {outcome} {detail}"));
            }
            let (connections, bytes) = *reached;
            if bytes > 0 || (connections > 0 && !LATE.contains(&case.as_str())) {
                failures.push(format!(
                    "{listener}: `{case}` reached the backend ({connections} connections, {bytes} bytes)"
                ));
            }
        }
        if backend.bytes() > 0 {
            failures.push(format!("{listener}: the backend received {:?}", backend.received()));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    for (listener, backend) in [("out", &to_out), ("api", &to_in)] {
        for H2Outcome { case, outcome, detail, .. } in
            h2_peer(proxy.addr(listener), "controls", backend).await
        {
            assert_eq!(outcome, "status:200", "{listener}: control `{case}`: {detail}\n{}", proxy.log());
        }
        assert!(backend.bytes() > 0, "{listener}: the controls reached the backend");
    }
}

#[tokio::test]
async fn oversized_upstream_response_heads_become_502() {
    fn respond(line: &str) -> Vec<u8> {
        let headers = if line.contains("/large-head") {
            format!("x-big: {}\r\n", "a".repeat(70 * 1024))
        } else if line.contains("/many-headers") {
            (0..101).map(|i| format!("x-h{i}: v\r\n")).collect()
        } else {
            return CountingBackend::OK.to_vec();
        };
        format!("HTTP/1.1 200 OK\r\n{headers}content-length: 2\r\n\r\nok").into_bytes()
    }
    let (to_out, to_in) =
        (CountingBackend::answering(respond).await, CountingBackend::answering(respond).await);
    let proxy = sidecar(&to_out, &to_in).await;
    // A keep-alive connection that is open throughout, and one for the oversized responses.
    let (steady, other) = (Client::http1(), Client::http1());
    for listener in ["out", "api"] {
        let ok = proxy.url(listener, "/ok");
        assert_eq!(steady.get(&ok).await.unwrap().status, 200);
        for path in ["/large-head", "/many-headers"] {
            let url = proxy.url(listener, path);
            let (bad, good) = tokio::join!(other.get(&url), steady.get(&ok));
            let bad = bad.unwrap();
            assert_eq!(bad.status, 502, "{listener}{path}: {bad:?}");
            assert_eq!(bad.header("x-tether-error"), Some("upstream-headers-too-large"), "{listener}{path}");
            assert_eq!(good.unwrap().status, 200, "{listener}: the other connection was affected");
        }
        assert_eq!(steady.get(&ok).await.unwrap().status, 200);
        assert_eq!(other.get(&ok).await.unwrap().status, 200, "{listener}: the proxy recovered");
    }
}
