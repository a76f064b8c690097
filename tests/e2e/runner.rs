//! The runner end to end, as root (as CI runs): `tether up` starting real apps in sandboxes,
//! health-gated traffic, replacing killed tasks, rolling deployments and rollback under load
//! from inside the mesh, and what a task sees from inside its sandbox.

use std::process::Command;
use std::time::Duration;

use tether_testkit::app::RunningApp;
use tether_testkit::{Backend, assert_eventually};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// An HTTP app: answers its task id and version; `/health` fails for START_DELAY seconds after
/// start, and any other request in that time is logged as EARLY (it reached a task that was
/// not yet healthy).
const API: &str = r#"
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
start, delay = time.time(), float(os.environ.get("START_DELAY", "0"))
body = json.dumps({"task": os.environ["TETHER_TASK"], "version": os.environ.get("VERSION", "")}).encode()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        ready = time.time() - start >= delay
        if self.path != "/health" and not ready:
            print("EARLY request before the health check passed", flush=True)
        code = 503 if self.path == "/health" and not ready else 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// The health check: GET /health on the app's port, inside the sandbox.
const CHECK: &str = r#"
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).read()
"#;

/// Steady load from inside the mesh: calls `http://api/` by name, logs every failure and a
/// running count; bounded in count and time.
const CALLER: &str = r#"
import json, time, urllib.request
ok = fail = 0
versions = set()
start = time.time()
deadline = time.time() + 300
while ok + fail < 40000 and time.time() < deadline:
    try:
        reply = json.loads(urllib.request.urlopen("http://api/", timeout=10).read())
        ok += 1
        if reply["version"] not in versions:
            versions.add(reply["version"])
            print(f"VERSION {reply['version']}", flush=True)
    except Exception as e:
        fail += 1
        cause = e.headers.get("x-tether-error") if hasattr(e, "headers") and e.headers else None
        print(f"FAIL {e!r} {cause or ''} at {time.time() - start:.2f}s", flush=True)
    if (ok + fail) % 50 == 0:
        print(f"STATS ok={ok} fail={fail}", flush=True)
    time.sleep(0.005)
"#;

fn spec(version: &str, start_delay: f64, check: &str) -> String {
    format!(
        r#"
namespace: runner.test
services:
  api:
    command: ["python3", "api.py", "9000"]
    desiredCount: 2
    environment:
      - {{ name: VERSION, value: "{version}" }}
      - {{ name: START_DELAY, value: "{start_delay}" }}
    portMappings: [{{ name: http, containerPort: 9000, appProtocol: http }}]
    healthCheck: {{ command: {check}, interval: 1, timeout: 2, retries: 2, startPeriod: 10 }}
    deploymentConfiguration: {{ minimumHealthyPercent: 100, maximumPercent: 200 }}
    serviceConnectConfiguration:
      enabled: true
      services: [{{ portName: http, discoveryName: api, clientAliases: [{{ port: 80, dnsName: api }}] }}]
  caller:
    command: ["python3", "caller.py"]
    serviceConnectConfiguration: {{ enabled: true }}
"#
    )
}

const GOOD_CHECK: &str = r#"["CMD", "python3", "check.py", "9000"]"#;
const NEVER_HEALTHY: &str = r#"["CMD-SHELL", "echo 'the database is not there' >&2; exit 1"]"#;

fn stats(app: &RunningApp) -> (u64, u64) {
    let logs = app.app_logs("caller");
    let last = logs.lines().rfind(|l| l.starts_with("STATS ")).unwrap_or("STATS ok=0 fail=0").to_owned();
    let number = |key: &str| -> u64 {
        last.split_whitespace().find_map(|kv| kv.strip_prefix(key)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    (number("ok="), number("fail="))
}

/// The caller's failed requests after the first `skip` (those before every task was healthy:
/// the caller may start before the service it calls).
fn failures(app: &RunningApp, skip: usize) -> Vec<String> {
    app.app_logs("caller").lines().filter(|l| l.starts_with("FAIL")).skip(skip).map(str::to_owned).collect()
}

/// Acceptance 3, 4 and 5 (F7), all under steady load from another service in the mesh: a
/// slow-starting version gets no request before its check passes; a killed app is replaced;
/// a version that never becomes healthy is rolled back with the reason. Zero failed requests.
#[tokio::test]
async fn deployments_and_crashes_under_load_fail_no_request() {
    let first = spec("1", 0.0, GOOD_CHECK);
    let mut app = RunningApp::start(
        BIN,
        &[("tether.yaml", &first), ("api.py", API), ("check.py", CHECK), ("caller.py", CALLER)],
    )
    .unwrap();
    app.wait_up(Duration::from_secs(60)).await.unwrap();
    assert_eventually!(Duration::from_secs(20), stats(&app).0 >= 100, "no load: {}", app.app_logs("caller"));
    let before = failures(&app, 0).len();

    // A new version whose app needs 3 s before its health check passes.
    let out = app.deploy(&spec("2", 3.0, GOOD_CHECK));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy: {said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("api: revision") && said.contains("running, 2/2 healthy"), "{said}");
    let old = stats(&app).0;
    assert_eventually!(
        Duration::from_secs(20),
        stats(&app).0 >= old + 100,
        "load stopped after the deployment"
    );
    assert!(app.app_logs("caller").contains("VERSION 2"), "the new version never answered");
    let early: Vec<String> =
        app.app_logs("api").lines().filter(|l| l.starts_with("EARLY")).map(str::to_owned).collect();
    assert!(early.is_empty(), "requests reached tasks before their health check passed: {early:?}");
    assert!(
        failures(&app, before).is_empty(),
        "failed requests during the deployment: {:?}\n{}",
        failures(&app, before),
        app.output()
    );

    // SIGKILL one app: the task is replaced and no caller notices.
    let tasks = app.tasks("api", "HEALTHY");
    assert_eq!(tasks.len(), 2, "{:#}", app.status());
    let victim = &tasks[0];
    let pid = app.app_pid(victim, "api.py").expect("the app's process");
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert_eventually!(
        Duration::from_secs(30),
        {
            let healthy = app.tasks("api", "HEALTHY");
            healthy.len() == 2 && !healthy.contains(victim)
        },
        "the killed task was not replaced: {:#}",
        app.status()
    );
    let old = stats(&app).0;
    assert_eventually!(Duration::from_secs(20), stats(&app).0 >= old + 100, "load stopped after the kill");
    assert_eq!(failures(&app, before), Vec::<String>::new(), "failed requests after SIGKILL");
    assert!(app.output().contains(&format!("{victim}: the app exited")), "{}", app.output());

    // A version that never becomes healthy: rolled back, saying why; version 2 keeps serving.
    let out = app.deploy(&spec("3", 0.0, NEVER_HEALTHY));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "deploy of a broken version: {said}");
    assert!(said.contains("rolled back to revision") && said.contains("the database is not there"), "{said}");
    let healthy = app.tasks("api", "HEALTHY");
    assert_eq!(healthy.len(), 2, "{:#}", app.status());
    let old = stats(&app).0;
    assert_eventually!(
        Duration::from_secs(20),
        stats(&app).0 >= old + 100,
        "load stopped after the rollback"
    );
    let caller_logs = app.app_logs("caller");
    let versions: Vec<&str> = caller_logs.lines().filter(|l| l.starts_with("VERSION")).collect();
    assert!(!versions.contains(&"VERSION 3"), "the broken version got traffic: {versions:?}");
    assert_eq!(failures(&app, before), Vec::<String>::new(), "failed requests during the rollback");
    let (ok, fail) = stats(&app);
    assert!(
        ok > 300 && fail as usize == before,
        "ok={ok} fail={fail}, {before} before every task was healthy"
    );

    app.stop(Duration::from_secs(60)).await.unwrap();
    assert_eq!(app.leftovers(), vec![], "processes left behind");
}

/// A small echo app for the sandbox test: answers its task id.
const ECHO: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["TETHER_TASK"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// Runs `python3 -c code` inside the task whose app is `pid` (its network and mount namespaces).
fn inside(pid: u32, code: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m", "python3", "-c", code])
        .output()
        .expect("nsenter (util-linux) is needed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn get(url: &str) -> String {
    format!("import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())")
}

fn connect(host: &str, port: u16) -> String {
    format!("import socket; socket.create_connection(('{host}', {port}), timeout=2); print('connected')")
}

/// Acceptance 2: inside a task, /etc/hosts holds the aliases and calling them works; nothing
/// else is reachable; two replicas listen on the same port. Also: an external service by name,
/// a service added later reachable from a running task, and `networkMode: host`.
// The backend answers on the test's runtime while `nsenter` blocks the test's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sees_only_its_aliases() {
    let legacy = Backend::start("legacy").await;
    let host_port = tether_testkit::free_port();
    let spec = sandbox_spec(legacy.addr, host_port, "");
    let mut app = RunningApp::start(BIN, &[("tether.yaml", &spec), ("echo.py", ECHO)]).unwrap();
    app.wait_up(Duration::from_secs(60)).await.unwrap();
    let probe = app.tasks("probe", "HEALTHY").pop().expect("a probe task");
    let pid = app.app_pid(&probe, "sleep").expect("the probe's process");

    let (_, hosts) = inside(pid, "print(open('/etc/hosts').read())");
    assert!(hosts.contains("\techo\n") && hosts.contains("\tlegacy-db\n"), "{hosts}");
    assert!(hosts.contains("127.255."), "{hosts}");
    assert!(
        !std::fs::read_to_string("/etc/hosts").unwrap().contains("legacy-db"),
        "the host's hosts file changed"
    );

    // Both replicas listen on containerPort 9000, and the alias reaches each.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (ok, text) = inside(pid, &get("http://echo/"));
        assert!(ok, "{text}");
        seen.insert(text.trim().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (ok, text) = inside(pid, &get("http://legacy-db:5432/"));
    assert!(ok, "the external service by name: {text}");

    // Nothing but the aliases: not the backend's own address, not the control plane, not the
    // host-network service.
    let control: u16 = app
        .output()
        .split("control plane http://127.0.0.1:")
        .nth(1)
        .and_then(|s| s[..5].trim_end_matches(')').parse().ok())
        .expect("control plane port");
    for (host, port) in [
        ("127.0.0.1", legacy.addr.port()),
        ("127.0.0.1", control),
        ("127.0.0.1", host_port),
        ("10.0.0.1", 80),
    ] {
        let (ok, text) = inside(pid, &connect(host, port));
        assert!(!ok, "{host}:{port} reachable from inside a task: {text}");
    }
    // networkMode: host runs on the host's network.
    let reply = reqwest_like(&format!("127.0.0.1:{host_port}"));
    assert!(reply.starts_with("onhost-"), "{reply}");

    // A service added later is reachable from the task that is already running.
    let late = r#"
  late:
    command: ["python3", "echo.py", "9100"]
    portMappings: [{ name: http, containerPort: 9100, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: http, discoveryName: late, clientAliases: [{ port: 80, dnsName: late }] }]"#;
    let later = sandbox_spec(legacy.addr, host_port, late);
    let out = app.deploy(&later);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eventually!(
        Duration::from_secs(10),
        inside(pid, &get("http://late/")).1.trim().starts_with("late-"),
        "the new service is not reachable from the running task: {}",
        inside(pid, &get("http://late/")).1
    );

    // `tether run`: one more task of `echo`, outside desiredCount, gets traffic once healthy.
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.data.join("up.json")).unwrap()).unwrap();
    let run_data = tempfile::tempdir().unwrap();
    let mut run = Command::new(BIN);
    run.current_dir(&app.dir)
        .args([
            "run",
            "--server",
            session["server"].as_str().unwrap(),
            "--token",
            session["token"].as_str().unwrap(),
        ])
        .args(["--namespace", "sandbox.test", "--service", "echo", "--drain-wait", "0", "--data"])
        .arg(run_data.path())
        .args(["--", "python3", "echo.py", "9000"]);
    let mut run = tether_testkit::LoggedChild::spawn_with_stdout(run).unwrap();
    assert_eventually!(Duration::from_secs(30), run.log().contains(": healthy"), "tether run: {}", run.log());
    assert_eventually!(
        Duration::from_secs(10),
        inside(pid, &get("http://echo/")).1.trim().starts_with("echo-run-"),
        "the standalone task gets no traffic"
    );
    run.signal("INT");
    let status = run.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "tether run: {status:?} {}", run.log());
    let left = tether_testkit::app::processes_with_env("TETHER_TASK=echo-run-");
    assert!(left.is_empty(), "tether run left its app behind: {left:?}");

    // `tether down` does what Ctrl-C does.
    let out = app.tether(&["down"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert!(app.stop(Duration::from_secs(5)).await.is_ok(), "tether up still runs after tether down");
    assert_eq!(app.leftovers(), vec![], "processes left behind");
}

fn sandbox_spec(legacy: std::net::SocketAddr, host_port: u16, extra: &str) -> String {
    format!(
        r#"
namespace: sandbox.test
services:{extra}
  echo:
    command: ["python3", "echo.py", "9000"]
    desiredCount: 2
    portMappings: [{{ name: http, containerPort: 9000, appProtocol: http }}]
    serviceConnectConfiguration:
      enabled: true
      services: [{{ portName: http, discoveryName: echo, clientAliases: [{{ port: 80, dnsName: echo }}] }}]
  probe:
    command: ["sleep", "600"]
    serviceConnectConfiguration: {{ enabled: true }}
  onhost:
    command: ["python3", "echo.py", "{host_port}"]
    networkMode: host
    portMappings: [{{ name: http, containerPort: {host_port}, appProtocol: http }}]
    serviceConnectConfiguration: {{ enabled: true }}
externalServices:
  legacy-db:
    endpoints: ["{legacy}"]
    appProtocol: http
    clientAliases: [{{ port: 5432, dnsName: legacy-db }}]
"#
    )
}

/// A plain HTTP/1.0 GET from the host.
fn reqwest_like(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// Acceptance 6: spec mistakes give a precise error, and `tether up` starts nothing.
#[test]
fn spec_mistakes_start_nothing() {
    let good = "namespace: shop.local\nservices:\n  api:\n    command: [\"sleep\", \"60\"]\n    portMappings: [{ name: http, containerPort: 9000, appProtocol: http }]\n    serviceConnectConfiguration:\n      enabled: true\n      services: [{ portName: http, clientAliases: [{ port: 80, dnsName: api }] }]\n";
    let mistakes: [(&str, String, &str, &str); 9] = [
        (
            "an unknown portName",
            good.replace("portName: http,", "portName: web,"),
            ":8:",
            "`web` names no port mapping",
        ),
        (
            "a per-request timeout on a tcp port",
            good.replace(", appProtocol: http }]", " }]")
                .replace("portName: http,", "portName: http, timeout: { perRequestTimeoutSeconds: 5 },"),
            ":8:",
            "per-request timeout",
        ),
        ("a bad service name", good.replace("  api:", "  Api_Service!:"), ":3:", "Api_Service!"),
        ("a bad dnsName", good.replace("dnsName: api", "dnsName: \"api service\""), ":8:", "dnsName"),
        ("a typo in a field", good.replace("portMappings", "portmappings"), ":5:", "portmappings"),
        (
            "a health check that is not CMD or CMD-SHELL",
            good.replace(
                "    portMappings",
                "    healthCheck: { command: [\"curl\", \"localhost\"] }\n    portMappings",
            ),
            ":5:",
            "CMD-SHELL",
        ),
        (
            "maximumPercent out of range",
            good.replace(
                "    portMappings",
                "    deploymentConfiguration: { maximumPercent: 300 }\n    portMappings",
            ),
            ":5:",
            "maximumPercent",
        ),
        (
            "networkMode bridge",
            good.replace("    portMappings", "    networkMode: bridge\n    portMappings"),
            ":5:",
            "awsvpc",
        ),
        (
            "a duplicate alias",
            format!(
                "{good}  api2:\n    command: [\"sleep\", \"60\"]\n    portMappings: [{{ name: http, containerPort: 9000, appProtocol: http }}]\n    serviceConnectConfiguration:\n      enabled: true\n      services: [{{ portName: http, discoveryName: api2, clientAliases: [{{ port: 80, dnsName: api }}] }}]\n"
            ),
            ":14:",
            "api:80",
        ),
    ];
    for (what, text, line, phrase) in mistakes {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("tether.yaml");
        std::fs::write(&spec, &text).unwrap();
        let out = Command::new(BIN).arg("up").arg(&spec).args(["--listen", "127.0.0.1:0"]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{what}: {said}");
        let first = said.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&*spec.to_string_lossy()) && first.contains(line),
            "{what}: no file and line {line}: {said}"
        );
        assert!(said.contains(phrase), "{what}: `{phrase}` missing: {said}");
        assert!(said.contains("nothing was started"), "{what}: {said}");
        assert!(!dir.path().join(".tether").exists(), "{what}: tether up created its state");
    }
}

/// Rootless: `tether up` as a user other than root (here `nobody`) moves into a user namespace
/// of its own and makes the same sandboxes: the task's hosts file names the alias, and the
/// sidecar listens on it inside the task's namespace.
#[tokio::test]
async fn sandboxes_without_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Copies `nobody` can read and run, wherever the checkout is.
    let bin = dir.path().join("tether");
    std::fs::copy(BIN, &bin).unwrap();
    let spec = r#"
namespace: rootless.test
services:
  api:
    command: ["sleep", "600"]
    portMappings: [{ name: http, containerPort: 9000, appProtocol: http }]
    healthCheck: { command: ["CMD", "true"], interval: 1 }
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: http, discoveryName: api, clientAliases: [{ port: 80, dnsName: api }] }]
"#;
    std::fs::write(dir.path().join("tether.yaml"), spec).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("up")
        .arg(dir.path().join("tether.yaml"))
        .args(["--listen", "127.0.0.1:0", "--drain-wait", "0"]);
    let mut up = tether_testkit::LoggedChild::spawn_with_stdout(command).unwrap();
    assert_eventually!(Duration::from_secs(30), up.log().contains(" is up: "), "not up: {}", up.log());

    let (pid, _) = tether_testkit::app::processes_with_env("TETHER_NAMESPACE=rootless.test")
        .into_iter()
        .find(|(_, cmd)| cmd.starts_with("sleep 600"))
        .expect("the task's app");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534\t")), "not run as nobody: {status}");
    let (ok, text) = inside(
        pid,
        "import socket; socket.create_connection(('api', 80), timeout=2); print(open('/etc/hosts').read())",
    );
    assert!(ok && text.contains("\tapi\n"), "{text}");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "the task shares the host's network"
    );

    up.signal("INT");
    assert!(up.wait_exit(Duration::from_secs(30)).await.is_some_and(|s| s.success()), "{}", up.log());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the app outlived tether up");
}

/// `tether up --server URL --token T` runs its tasks against a control plane that is already
/// there (`tether server`), which then knows the services and their healthy instances.
#[tokio::test]
async fn up_joins_an_existing_control_plane() {
    let control = tether_testkit::control::ControlPlane::start(BIN).await.unwrap();
    let spec = r#"
namespace: joined.test
services:
  echo:
    command: ["python3", "echo.py", "9000"]
    desiredCount: 2
    portMappings: [{ name: http, containerPort: 9000, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: http, discoveryName: echo, clientAliases: [{ port: 80, dnsName: echo }] }]
"#;
    let url = control.url();
    let args = ["--server", url.as_str(), "--token", control.token.as_str()];
    let mut app = RunningApp::start_with(BIN, &[("tether.yaml", spec), ("echo.py", ECHO)], &args).unwrap();
    app.wait_up(Duration::from_secs(60)).await.unwrap();
    let reply =
        control.get("/v1/namespaces/joined.test/services/echo/instances?health=HEALTHY").await.unwrap();
    assert_eq!(reply.body["instances"].as_array().map(Vec::len), Some(2), "{}", reply.text);
    app.stop(Duration::from_secs(60)).await.unwrap();
    let reply = control.get("/v1/namespaces/joined.test/services/echo/instances?health=ALL").await.unwrap();
    assert_eq!(
        reply.body["instances"].as_array().map(Vec::len),
        Some(0),
        "deregistered on stop: {}",
        reply.text
    );
    assert_eq!(app.leftovers(), vec![], "processes left behind");
}

/// A task that allocates past its `memory` is killed by the kernel (its cgroup's limit), the
/// runner says why, and the task is replaced; one within its limit runs on.
#[tokio::test]
async fn a_task_over_its_memory_is_killed_by_the_kernel_and_replaced() {
    const HOG: &str = r#"
import os, sys, time
print("started", flush=True)
time.sleep(1)
if os.environ["TETHER_SERVICE"] == "hog":
    block = bytearray(int(sys.argv[1]) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
print("allocated", flush=True)
time.sleep(600)
"#;
    let spec = r#"
namespace: memory.test
services:
  hog:
    command: ["python3", "hog.py", "200"]
    memory: 48
  modest:
    command: ["python3", "hog.py", "0"]
    memory: 48
"#;
    let mut app = RunningApp::start(BIN, &[("tether.yaml", spec), ("hog.py", HOG)]).unwrap();
    app.wait_for_output(
        "exceeded its memory limit (48 MiB) and was killed by the kernel",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // Replaced: another hog task starts after the first was killed.
    assert_eventually!(
        Duration::from_secs(30),
        app.output().matches("hog-").count() >= 2
            && app.output().lines().filter(|l| l.contains("hog-") && l.contains("starting")).count() >= 2,
        "the killed task was replaced:\n{}",
        app.output()
    );
    let ps = String::from_utf8_lossy(&app.tether(&["ps"]).stdout).into_owned();
    assert!(ps.contains("exceeded its memory limit"), "{ps}");
    assert!(app.app_logs("modest").contains("allocated"), "{}", app.app_logs("modest"));
    assert!(
        !app.output().contains("modest-")
            || !app.output().lines().any(|l| l.contains("modest") && l.contains("exceeded")),
        "{}",
        app.output()
    );
    app.stop(Duration::from_secs(30)).await.unwrap();
}
