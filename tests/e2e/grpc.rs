//! gRPC through one outbound hop and through two sidecars (outbound → inbound), between real
//! grpcio peers: `peers/grpc_peer.py` is the server (started here) and, in another mode, the
//! client, which prints what it got back as JSON for these tests to check.
//!
//! Checked: a 1 MiB unary echo arrives byte for byte with its initial and trailing metadata;
//! a NOT_FOUND arrives with its exact details and trailing metadata; a bidirectional stream of
//! 100 messages, sent ping-pong (so nothing may be held back), is echoed in order, byte for byte;
//! a deadline ends a call on time and a client's cancellation reaches the backend (F5).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tether_testkit::{Fnv, Sidecar, metric_value, pattern, python, require_python_module, workspace_path};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const PEER: &str = "tests/e2e/peers/grpc_peer.py";

// The payloads `grpc_peer.py` sends; keep in step with it.
const UNARY_LEN: usize = 1024 * 1024 + 7;
const CHAT_MESSAGES: usize = 100;

fn chat_message(i: usize) -> Vec<u8> {
    let len = if i == 50 { 300_000 } else { (i * 7919) % 20011 };
    (0..len).map(|j| ((31 * i + j) % 256) as u8).collect()
}

fn fnv_hex(bytes: &[u8]) -> String {
    let mut f = Fnv::new();
    f.write(bytes);
    format!("{:016x}", f.finish())
}

/// The gRPC server: a `grpc_peer.py server` process, killed when dropped.
struct GrpcServer {
    addr: SocketAddr,
    _child: Child,
    /// Held open: the server exits when its stdin closes, should the kill be missed.
    _stdin: ChildStdin,
}

impl GrpcServer {
    async fn start() -> Self {
        require_python_module("grpc", "grpcio").await;
        let mut child = Command::new(python())
            .arg(workspace_path(PEER))
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the gRPC server");
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("the gRPC server did not report its port within 60 s")
            .expect("read the gRPC server's stdout")
            .expect("the gRPC server exited before reporting its port");
        let reported: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let port = reported["port"].as_u64().unwrap_or_else(|| panic!("no port in {line}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()));
        Self { addr, _child: child, _stdin: stdin }
    }
}

/// Runs `grpc_peer.py client` against `target` and returns the JSON it prints.
async fn call_all(target: SocketAddr, id: &str) -> Value {
    run_peer(&["client", &target.to_string(), id]).await
}

/// Runs `grpc_peer.py ARGS…` and returns the JSON it prints.
async fn run_peer(args: &[&str]) -> Value {
    let run = Command::new(python())
        .arg(workspace_path(PEER))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the gRPC client did not finish within 120 s")
        .expect("run the gRPC client");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the gRPC client failed ({}):\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: the gRPC client printed:\n{stdout}\n{stderr}"))
}

/// Checks every call's result as `grpc_peer.py`'s server answers it.
fn check(result: &Value, id: &str) {
    let unary = &result["unary"];
    assert_eq!(unary["code"], "OK", "unary: {unary}");
    assert_eq!(unary["len"], UNARY_LEN, "unary: {unary}");
    assert_eq!(unary["fnv"], fnv_hex(&pattern(UNARY_LEN)), "the unary echo differs from the request");
    assert_eq!(unary["initial"]["x-echo-id"], id, "initial metadata: {unary}");
    assert_eq!(unary["initial"]["x-echo-bin"], "0001feff", "binary request metadata: {unary}");
    assert_eq!(unary["trailing"]["x-trailer"], format!("done:{id}"), "trailing metadata: {unary}");
    let bin: String =
        [0x00, 0xff, 0x01, 0xfe].iter().chain(id.as_bytes()).map(|b| format!("{b:02x}")).collect();
    assert_eq!(unary["trailing"]["x-trailer-bin"], bin, "binary trailing metadata: {unary}");

    let fail = &result["fail"];
    assert_eq!(fail["code"], "NOT_FOUND", "fail: {fail}");
    assert_eq!(fail["details"], format!("widget «{id}» not found"), "fail: {fail}");
    assert_eq!(fail["trailing"]["x-trailer"], format!("failed:{id}"), "fail: {fail}");

    let chat = &result["chat"];
    assert_eq!(chat["code"], "OK", "chat: {}", chat["details"]);
    let got = chat["messages"].as_array().expect("chat messages");
    assert_eq!(got.len(), CHAT_MESSAGES, "chat: {} of {CHAT_MESSAGES} messages came back", got.len());
    for (i, message) in got.iter().enumerate() {
        let sent = chat_message(i);
        assert_eq!(message[0], sent.len(), "chat message {i} came back with another length");
        assert_eq!(message[1], fnv_hex(&sent), "chat message {i} came back with other bytes");
    }
    assert_eq!(chat["extra"], 0, "chat: more replies than messages");
    assert_eq!(chat["trailing"]["x-trailer-count"], CHAT_MESSAGES.to_string(), "chat trailers: {chat}");
}

/// A client-side sidecar with one gRPC alias `name` to `endpoint`.
async fn outbound(name: &str, endpoint: &str) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n  - {{ dnsName: {name}, listen: 127.0.0.1:0, appProtocol: grpc, endpoints: [{endpoint}] }}\n"
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

/// What the client-side sidecar forwarded to `name`.
async fn target_requests(sidecar: &Sidecar, name: &str) -> f64 {
    metric_value(&sidecar.metrics().await, "tether_target_requests_total", &[("target_discovery_name", name)])
}

/// A server-side sidecar publishing `server` (grpc) as `api`, and a client-side sidecar whose
/// alias `mesh` reaches it: `(client side, server side)`.
async fn two_sidecars(server: &GrpcServer) -> (Sidecar, Sidecar) {
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {}, appProtocol: grpc }}\n",
        server.addr
    );
    let server_side = Sidecar::start(TETHER, &yaml).await.unwrap();
    let client_side =
        outbound("mesh", &format!("{{ address: \"{}\", mesh: true }}", server_side.addr("api"))).await;
    (client_side, server_side)
}

#[tokio::test]
async fn grpc_through_one_outbound_hop() {
    let server = GrpcServer::start().await;
    let proxy = outbound("direct", &format!("\"{}\"", server.addr)).await;
    let result = call_all(proxy.addr("direct"), "direct-1").await;
    check(&result, "direct-1");
    assert_eq!(target_requests(&proxy, "direct").await, 3.0, "every call went through the proxy");
}

#[tokio::test]
async fn grpc_through_two_sidecars() {
    let server = GrpcServer::start().await;
    let (client_side, server_side) = two_sidecars(&server).await;
    let result = call_all(client_side.addr("mesh"), "mesh-1").await;
    check(&result, "mesh-1");
    assert_eq!(target_requests(&client_side, "mesh").await, 3.0, "every call left through the outbound");
    let inbound = server_side.metrics().await;
    assert_eq!(
        metric_value(&inbound, "tether_grpc_requests_total", &[("discovery_name", "api")]),
        3.0,
        "every call arrived through the inbound, as gRPC"
    );
}

/// F5: a deadline shorter than the backend's work ends the call on time, and a call the client
/// cancels is cancelled at the backend too, through both sidecars. The second call carries no
/// deadline the backend could enforce by itself: it can only learn of the cancellation from
/// the stream reset each hop passes on.
#[tokio::test]
async fn deadlines_and_cancellations_reach_the_backend_through_two_sidecars() {
    const DEADLINE_MS: u64 = 300;
    let server = GrpcServer::start().await;
    let (client_side, _server_side) = two_sidecars(&server).await;
    let target = client_side.addr("mesh").to_string();
    let result = run_peer(&["cancel", &target, "f5", &DEADLINE_MS.to_string()]).await;

    let deadline = &result["deadline"];
    assert_eq!(deadline["code"], "DEADLINE_EXCEEDED", "{deadline}");
    let elapsed = deadline["elapsed_ms"].as_u64().expect("elapsed_ms");
    // On time: not before the deadline, and nowhere near the 10 s the backend would work.
    // The margin is for a loaded two-core machine running three processes of this test.
    assert!((DEADLINE_MS..DEADLINE_MS + 700).contains(&elapsed), "the call took {elapsed} ms: {deadline}");
    assert_eq!(deadline["server_saw_cancel"], true, "the backend kept working past the deadline: {deadline}");

    let cancel = &result["cancel"];
    assert_eq!(cancel["cancelled"], true, "{cancel}");
    assert_eq!(cancel["server_saw_cancel"], true, "the cancellation did not reach the backend: {cancel}");
}
