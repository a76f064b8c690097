//! The demo from the README, end to end, as root (as CI runs). Alone in its test binary:
//! cargo runs test binaries one after another, so no other test creates network namespaces
//! while this one checks that the demo's are gone (a namespace's inode number may be reused).

use std::time::Duration;

use tether_testkit::app::RunningApp;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// Acceptance 1: the demo from the README (`tether up examples/shop/tether.yaml`, which
/// `scripts/demo` runs) answers through the whole chain, and Ctrl-C leaves nothing behind: no
/// process, no sandbox (its namespaces go with its processes), no listening socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_demo_answers_through_the_whole_chain() {
    let data = tempfile::tempdir().unwrap();
    let spec = tether_testkit::workspace_path("examples/shop/tether.yaml");
    let mut shop = RunningApp::start_spec(BIN, &spec, data.path()).unwrap();
    shop.wait_up(Duration::from_secs(90)).await.unwrap();
    let control: u16 = shop
        .output()
        .split("control plane http://127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("the control plane's port");

    let reply = get("127.0.0.1:8080");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    let chain: Vec<&str> = reply["chain"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(chain.len(), 4, "{reply:#}");
    for (hop, who) in chain.iter().zip([
        "frontend frontend-",
        "orders orders-",
        "payment-service payment-",
        "inventory: OK",
    ]) {
        assert!(hop.starts_with(who), "{hop} is not {who}: {reply:#}");
    }
    assert_eq!(reply["order"]["payment"]["status"], "approved", "{reply:#}");

    // payment allows orders only: the frontend, calling it by name from inside its task, is
    // refused by payment's sidecar, which knows the caller by its certificate.
    let frontend = shop.tasks("frontend", "HEALTHY");
    let pid = shop.app_pid(&frontend[0], "frontend.py").expect("a frontend app");
    let refused = inside(
        pid,
        "import urllib.request, urllib.error\n\
         try:\n    urllib.request.urlopen('http://payment-service/api/process-payment', timeout=5)\n\
         except urllib.error.HTTPError as e:\n    print(e.code, e.headers['x-tether-error'], e.read().decode())",
    );
    assert!(
        refused.starts_with("403 forbidden forbidden: `spiffe://shop.local/frontend` may not call"),
        "the frontend reached payment: {refused}"
    );

    // The processes of the run, and its sandboxes' network namespaces.
    let running = shop.leftovers();
    assert!(running.len() >= 14, "7 apps and 7 sidecars expected: {running:?}");
    let namespaces: std::collections::BTreeSet<String> = running
        .iter()
        .filter_map(|(pid, _)| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect();
    assert!(namespaces.len() >= 8, "the host's and one per task: {namespaces:?}");

    shop.stop(Duration::from_secs(60)).await.unwrap();
    assert_eq!(shop.leftovers(), vec![], "processes left behind");
    let alive: Vec<String> =
        namespaces.iter().filter(|ns| all_net_namespaces().contains(*ns)).cloned().collect();
    assert!(alive.len() <= 1, "sandbox namespaces left behind: {alive:?}");
    for port in [8080, control] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still listens");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*data.path().to_string_lossy()), "mounts left behind: {mounts}");
}

/// What `python3 -c code` prints inside the task whose app is `pid` (its network and mount
/// namespaces, so its `/etc/hosts`).
fn inside(pid: u32, code: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m", "python3", "-c", code])
        .output()
        .expect("nsenter (util-linux) is needed");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The network namespaces any process is in.
fn all_net_namespaces() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("ns/net")).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}

/// A plain HTTP/1.0 GET from the host; the body.
fn get(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}
