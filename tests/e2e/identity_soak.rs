//! Identity under steady load (reliability.md, Identity): certificates renewed again and again,
//! and the CA's root rotated, while an application in `tether up` serves traffic, without a
//! failed request or a reset stream.
//!
//! The application (`identity_soak/`): `ticks`, a gRPC service (grpcio) with a unary echo and a
//! stream that stays open for the whole run; `web`, an HTTP service on two ports, one behind an
//! http alias (sidecars carry it over one HTTP/2 connection per peer, opened once, so it proves
//! that open connections outlive the certificates they were opened with) and one behind a tcp
//! alias (one mutual-TLS handshake per connection, so every certificate a sidecar renews is
//! soon presented and checked by fresh handshakes); and `caller`, load from inside the mesh
//! (sidecar → sidecar). The same load runs from the host through ports the edge publishes
//! (edge → sidecar). Each load client paces each kind of request, holds one stream open and
//! prints what it saw; renewals are read from every proxy's admin `/config`.
//!
//! CI runs a short soak (20 s certificates for 75 s); `scripts/soak` runs the acceptance one,
//! 2-minute certificates for 10 minutes (`TETHER_SOAK_MINUTES`, `TETHER_SOAK_LIFETIME`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_testkit::app::{RunningApp, RunningProxy};
use tether_testkit::{Client, LoggedChild, assert_eventually, free_port, metric_value, python};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const TICKS: &str = include_str!("identity_soak/ticks.py");
const WEB: &str = include_str!("identity_soak/web.py");
const LOAD: &str = include_str!("identity_soak/load.py");

/// The least number of renewals every proxy must go through while the streams are open.
const RENEWALS: usize = 3;
/// Until both load clients have warmed up and opened their streams (load.py allows 60 s).
const WARM_UP: Duration = Duration::from_secs(120);

/// Acceptance 4: certificates renewed at least three times on every sidecar and on the edge,
/// under steady load from inside the mesh and from the host, with zero failed requests and
/// both long-lived streams complete, in order, on the call and connection they started on.
#[tokio::test]
async fn renewals_under_load_fail_no_request_and_reset_no_stream() {
    let soak = Soak::from_env();
    let lifetime = format!("{}s", soak.lifetime.as_secs());
    let args = ["--listen", "127.0.0.1:0", "--certificate-lifetime", &lifetime];
    let (mut app, mut host) = start("renewals.test", soak.load, &args).await;
    let proxies = wait_measuring(&app, &host).await;
    let http = Client::http1().timeout(Duration::from_secs(10));
    let errors_before = handshake_errors(&http, &proxies).await;

    // Every proxy's certificate, each second, while both streams are open.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut least_left: BTreeMap<String, i64> = BTreeMap::new();
    let deadline = Instant::now() + soak.load + WARM_UP;
    while results(&app, &host).iter().all(Option::is_none) {
        assert!(Instant::now() < deadline, "the load did not end:\n{}", outputs(&app, &host));
        for proxy in &proxies {
            let identity = admin_config(&http, proxy).await["identity"].clone();
            let not_after = identity["notAfter"].as_str().expect("a certificate").to_owned();
            let left = identity["expiresInSeconds"].as_i64().expect("its time left");
            let certificates = seen.entry(proxy.task.clone()).or_default();
            if certificates.last() != Some(&not_after) {
                certificates.push(not_after);
            }
            let least = least_left.entry(proxy.task.clone()).or_insert(left);
            *least = (*least).min(left);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let [inside, outside] = wait_results(&app, &host, WARM_UP).await;

    let renewals: BTreeMap<&str, usize> = seen.iter().map(|(task, c)| (task.as_str(), c.len() - 1)).collect();
    for (task, count) in &renewals {
        assert!(
            *count >= RENEWALS,
            "{task} renewed its certificate {count} times while the streams were open, not {RENEWALS} \
             (certificates of {lifetime} renew at half-life): {:?}",
            seen[*task]
        );
        assert!(
            least_left[*task] > 0,
            "{task}'s certificate expired before it was renewed: {:?}",
            seen[*task]
        );
    }
    let inside = check_load("inside the mesh", &inside);
    let outside = check_load("from the host", &outside);
    assert_eq!(handshake_errors(&http, &proxies).await, errors_before, "handshakes failed during the soak");
    println!(
        "identity soak: {} s of load, certificates of {lifetime}\n  renewals: {renewals:?}\n  inside the mesh: {inside}\n  from the host:   {outside}",
        soak.load.as_secs()
    );

    stop(&mut app, &mut host).await;
}

/// Acceptance 5: `tether ca rotate` under the same load moves every sidecar and the edge to a
/// new root (one root left, another than before, every certificate signed by it) with zero
/// failed requests or failed handshakes, and neither stream reset.
#[tokio::test]
async fn a_ca_rotation_under_load_fails_no_request_and_resets_no_stream() {
    const LOAD: Duration = Duration::from_secs(40);
    let (mut app, mut host) = start("rotation.test", LOAD, &["--listen", "127.0.0.1:0"]).await;
    let proxies = wait_measuring(&app, &host).await;
    assert_eventually!(
        WARM_UP,
        app.app_logs("caller").contains("STATS ") && host.log().contains("STATS "),
        "no load under way:\n{}",
        outputs(&app, &host)
    );
    let http = Client::http1().timeout(Duration::from_secs(10));
    let errors_before = handshake_errors(&http, &proxies).await;
    let (server, token) = app.control_plane().unwrap();
    let before = ca_status(&server, &token);
    let roots = before["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "{before:#}");
    let original = roots[0]["fingerprint"].as_str().expect("a fingerprint").to_owned();
    let mut certificates = BTreeMap::new();
    for proxy in &proxies {
        certificates
            .insert(proxy.task.clone(), admin_config(&http, proxy).await["identity"]["notAfter"].clone());
    }

    let rotate = tokio::process::Command::new(BIN)
        .args(["ca", "rotate", "--server", &server, "--token", &token, "--wait", "60s"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(200), rotate)
        .await
        .expect("tether ca rotate did not end within 200 s")
        .expect("running tether ca rotate");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tether ca rotate: {}\n{said}", out.status);
    assert!(said.contains("finish   done"), "{said}");
    // Else the rotation was not under load, and the rest proves nothing.
    assert!(
        results(&app, &host).iter().all(Option::is_none),
        "the load ended before the rotation did; make it longer:\n{said}"
    );

    let [inside, outside] = wait_results(&app, &host, LOAD + WARM_UP).await;
    let after = ca_status(&server, &token);
    let roots = after["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "more than one root after the rotation: {after:#}");
    let new = roots[0]["fingerprint"].as_str().expect("a fingerprint");
    assert_ne!(new, original, "the root did not change: {after:#}");
    let connected = after["proxies"].as_array().expect("proxies");
    assert_eq!(connected.len(), proxies.len(), "every proxy is connected: {after:#}");
    for proxy in connected {
        assert_eq!(proxy["signedBy"], new, "a certificate not from the new root: {proxy}");
        assert_eq!(proxy["trusts"], serde_json::json!([new]), "a proxy trusts another root: {proxy}");
    }
    for proxy in &proxies {
        let config = admin_config(&http, proxy).await;
        assert_eq!(config["trustBundle"]["roots"], 1, "{}: {}", proxy.task, config["trustBundle"]);
        assert_ne!(
            config["identity"]["notAfter"], certificates[&proxy.task],
            "{} kept its certificate",
            proxy.task
        );
    }
    let inside = check_load("inside the mesh", &inside);
    let outside = check_load("from the host", &outside);
    assert_eq!(
        handshake_errors(&http, &proxies).await,
        errors_before,
        "handshakes failed during the rotation"
    );
    println!("CA rotation under load\n  inside the mesh: {inside}\n  from the host:   {outside}");

    stop(&mut app, &mut host).await;
}

/// The soak's length and its certificates' lifetime: 75 s of 20 s certificates, or
/// `TETHER_SOAK_MINUTES` of `TETHER_SOAK_LIFETIME` (a number with s, m or h).
struct Soak {
    load: Duration,
    lifetime: Duration,
}

impl Soak {
    fn from_env() -> Self {
        let load = match std::env::var("TETHER_SOAK_MINUTES") {
            Ok(minutes) => {
                let minutes: f64 = minutes.parse().expect("TETHER_SOAK_MINUTES: a number of minutes");
                Duration::from_secs_f64(minutes * 60.0)
            }
            Err(_) => Duration::from_secs(75),
        };
        let lifetime = std::env::var("TETHER_SOAK_LIFETIME").unwrap_or_else(|_| "20s".to_owned());
        let lifetime = parse_lifetime(&lifetime)
            .unwrap_or_else(|| panic!("TETHER_SOAK_LIFETIME: `{lifetime}` is not e.g. 20s, 2m or 1h"));
        // A renewal comes every half lifetime, the first up to half a lifetime into the run.
        assert!(
            load >= lifetime * (RENEWALS as u32 + 1) / 2,
            "{} s of load is too short to see {RENEWALS} renewals of certificates living {} s",
            load.as_secs(),
            lifetime.as_secs()
        );
        Self { load, lifetime }
    }
}

fn parse_lifetime(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(Duration::from_secs(number.parse::<u64>().ok()? * unit))
}

/// The host ports the edge publishes.
struct Published {
    grpc: u16,
    http: u16,
    raw: u16,
}

/// The application; `caller` loads it for `load`.
fn spec(namespace: &str, ports: &Published, load: Duration) -> String {
    let Published { grpc, http, raw } = ports;
    let seconds = load.as_secs();
    format!(
        r#"
namespace: {namespace}
services:
  ticks:
    command: ["python3", "ticks.py", "9000"]
    portMappings: [{{ name: grpc, containerPort: 9000, appProtocol: grpc }}]
    publish: [{{ portName: grpc, hostPort: {grpc} }}]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: grpc
          discoveryName: ticks
          clientAliases: [{{ port: 80, dnsName: ticks }}]
          # The stream lasts the whole run.
          timeout: {{ perRequestTimeoutSeconds: 0 }}
  web:
    command: ["python3", "web.py", "9100", "9101"]
    portMappings:
      - {{ name: http, containerPort: 9100, appProtocol: http }}
      - {{ name: raw, containerPort: 9101 }}
    publish: [{{ portName: http, hostPort: {http} }}, {{ portName: raw, hostPort: {raw} }}]
    serviceConnectConfiguration:
      enabled: true
      services:
        - {{ portName: http, discoveryName: web, clientAliases: [{{ port: 80, dnsName: web }}] }}
        - {{ portName: raw, discoveryName: web-raw, clientAliases: [{{ port: 80, dnsName: web-raw }}] }}
  caller:
    command: ["python3", "load.py", "--http", "http://web/", "--raw", "http://web-raw/", "--grpc", "ticks:80", "--seconds", "{seconds}", "--stay"]
    serviceConnectConfiguration: {{ enabled: true }}
"#
    )
}

/// `tether up` on the application, and the same load from the host through the edge.
async fn start(namespace: &str, load: Duration, args: &[&str]) -> (RunningApp, LoggedChild) {
    tether_testkit::require_python_module("grpc", "grpcio").await;
    let ports = Published { grpc: free_port(), http: free_port(), raw: free_port() };
    let spec = spec(namespace, &ports, load);
    let files = [("tether.yaml", spec.as_str()), ("ticks.py", TICKS), ("web.py", WEB), ("load.py", LOAD)];
    let mut app = RunningApp::start_with(BIN, &files, args).unwrap();
    app.wait_up(Duration::from_secs(60)).await.unwrap();
    let mut command = std::process::Command::new(python());
    command.current_dir(&app.dir).arg("load.py").args([
        "--http",
        &format!("http://127.0.0.1:{}/", ports.http),
        "--raw",
        &format!("http://127.0.0.1:{}/", ports.raw),
        "--grpc",
        &format!("127.0.0.1:{}", ports.grpc),
        "--seconds",
        &load.as_secs().to_string(),
    ]);
    let host = LoggedChild::spawn_with_stdout(command).unwrap();
    (app, host)
}

/// Waits until both clients measure (their streams are open), and returns every proxy: the
/// three sidecars and the edge.
async fn wait_measuring(app: &RunningApp, host: &LoggedChild) -> Vec<RunningProxy> {
    assert_eventually!(
        WARM_UP,
        app.app_logs("caller").contains("MEASURING\n") && host.log().contains("MEASURING\n"),
        "the load did not start:\n{}",
        outputs(app, host)
    );
    let proxies = app.proxies();
    let mut kinds: Vec<&str> = proxies.iter().filter_map(|p| p.task.split('-').next()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["caller", "edge", "ticks", "web"], "{proxies:?}");
    proxies
}

/// What each client printed, for failure messages.
fn outputs(app: &RunningApp, host: &LoggedChild) -> String {
    format!("inside the mesh:\n{}\nfrom the host:\n{}", app.app_logs("caller"), host.log())
}

/// Each client's `RESULT`, once it printed the whole line: inside the mesh, then from the host.
fn results(app: &RunningApp, host: &LoggedChild) -> [Option<Value>; 2] {
    let result = |output: String| {
        let line =
            output.split_inclusive('\n').find_map(|l| l.strip_prefix("RESULT ")?.strip_suffix('\n'))?;
        Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
    };
    [result(app.app_logs("caller")), result(host.log())]
}

async fn wait_results(app: &RunningApp, host: &LoggedChild, timeout: Duration) -> [Value; 2] {
    assert_eventually!(
        timeout,
        results(app, host).iter().all(Option::is_some),
        "the load did not end:\n{}",
        outputs(app, host)
    );
    results(app, host).map(Option::unwrap)
}

/// Checks one client's result: each kind of request sent and none failed; the stream one call
/// on one connection, ended by the server with every message it sent, in order. Returns the
/// numbers, for people.
fn check_load(who: &str, result: &Value) -> String {
    assert!(result["warmup"].is_null(), "{who}: {}", result["warmup"]);
    assert_eq!(result["failures"], serde_json::json!([]), "{who}: failed requests: {result:#}");
    let mut counts = Vec::new();
    for kind in ["http", "raw", "grpc"] {
        let (ok, failed) = (&result[kind]["ok"], &result[kind]["failed"]);
        assert!(ok.as_u64() > Some(0) && failed == 0, "{who}: {kind}: {}", result[kind]);
        counts.push(format!("{kind} {ok}"));
    }
    let stream = &result["stream"];
    assert_eq!(stream["code"], "OK", "{who}: the stream ended badly: {stream}");
    assert!(stream["messages"].as_u64() > Some(0), "{who}: the stream carried nothing: {stream}");
    assert_eq!(stream["messages"], stream["sent"], "{who}: stream messages lost: {stream}");
    assert_eq!(stream["anomalies"], serde_json::json!([]), "{who}: stream messages out of order: {stream}");
    let one = |key: &str| stream[key].as_array().map(Vec::len) == Some(1);
    assert!(one("calls") && one("peers"), "{who}: the stream was opened again: {stream}");
    format!(
        "{} requests, 0 failed; stream of {} messages on one call (longest pause {} ms)",
        counts.join(", "),
        stream["messages"],
        stream["longest_pause_ms"]
    )
}

async fn admin_config(http: &Client, proxy: &RunningProxy) -> Value {
    let reply = http.get(&format!("http://{}/config", proxy.admin)).await;
    let reply = reply.unwrap_or_else(|e| panic!("{}'s admin endpoint: {e:#}", proxy.task));
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{}'s /config: {e}", proxy.task))
}

/// Every proxy's failed TLS handshakes, all sides and reasons together.
async fn handshake_errors(http: &Client, proxies: &[RunningProxy]) -> BTreeMap<String, f64> {
    let mut errors = BTreeMap::new();
    for proxy in proxies {
        let reply = http.get(&format!("http://{}/metrics", proxy.admin)).await;
        let text = reply.unwrap_or_else(|e| panic!("{}'s admin endpoint: {e:#}", proxy.task)).text();
        errors.insert(proxy.task.clone(), metric_value(&text, "tether_tls_handshake_errors_total", &[]));
    }
    errors
}

/// `tether ca status --json`.
fn ca_status(server: &str, token: &str) -> Value {
    let out = std::process::Command::new(BIN)
        .args(["ca", "status", "--json", "--server", server, "--token", token])
        .output()
        .expect("running tether ca status");
    assert!(out.status.success(), "tether ca status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("tether ca status --json prints JSON")
}

async fn stop(app: &mut RunningApp, host: &mut LoggedChild) {
    host.kill();
    app.stop(Duration::from_secs(60)).await.unwrap();
    assert_eq!(app.leftovers(), vec![], "processes left behind");
}
