//! The README's demo works as written: the example backends and the example proxy config
//! balance requests on the addresses the README names.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tether_testkit::{Client, Load, Sidecar, assert_eventually, workspace_path};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_proxy_demo_spreads_requests_over_the_three_backends() {
    let script = workspace_path("examples/proxy/backends.py");
    let backends =
        Killed(Command::new("python3").arg(script).stdout(Stdio::null()).spawn().expect("python3 is needed"));
    let client = Client::http1().timeout(Duration::from_secs(5));
    assert_eventually!(
        Duration::from_secs(10),
        client.get("http://127.0.0.1:9003/").await.is_ok(),
        "the example backends did not start"
    );
    let config = std::fs::read_to_string(workspace_path("examples/proxy/proxy.yaml")).unwrap();
    let proxy = Sidecar::start(TETHER, &config).await.unwrap();
    assert_eq!(proxy.addr("backends").to_string(), "127.0.0.1:8080");

    let report = Load::start(client, "http://127.0.0.1:8080/".into(), 4, 300).finish().await;
    report.assert_no_failures();
    assert_eq!(report.ok, 300);
    for name in ["backend-1", "backend-2", "backend-3"] {
        let share = report.by_backend.get(name).copied().unwrap_or(0);
        assert!(share >= 30, "{name} served {share} of 300: {:?}", report.by_backend);
    }
    drop(backends);
}
