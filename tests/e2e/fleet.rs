//! The fleet end to end, as root: three emulated hosts (network namespaces on a bridge, made
//! by the test), a `tether server` on the bridge's gateway and a real `tether agent` in each.
//! Tasks are spread across hosts and call each other across them over mutual TLS; the
//! published port answers on every host; a host cut off under load is replaced without a
//! failed request, and when it comes back its orphaned tasks stop without being routed to.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_testkit::control::ControlPlane;
use tether_testkit::hosts::{Fleet, Host};
use tether_testkit::{Client, Load, LoggedChild, assert_eventually};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const NS: &str = "fleet.test";
/// Short, so that a lost host is noticed quickly.
const LEASE_TTL: u64 = 3;
const PUBLISHED: u16 = 18080;

/// Answers its task id. It writes each response at once (buffered, flushed when done), as most
/// servers do for small answers: a response whose headers already left when its host vanished
/// can only be cut short, and the test is about requests the mesh can still save.
const API: &str = r#"
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = json.dumps({"task": os.environ["TETHER_TASK"]}).encode()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-backend", os.environ["TETHER_TASK"])
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// Calls `http://api/` by name from inside its sandbox; prints every task that answered.
const CALLER: &str = r#"
import json, time, urllib.request
seen = set()
deadline = time.time() + 600
while time.time() < deadline:
    try:
        task = json.loads(urllib.request.urlopen("http://api/", timeout=10).read())["task"]
        if task not in seen:
            seen.add(task)
            print(f"ANSWERED {task}", flush=True)
    except Exception as e:
        print(f"FAIL {e!r}", flush=True)
    time.sleep(0.05)
"#;

fn spec(dir: &Path) -> Vec<(&'static str, Value)> {
    let dir = dir.to_str().unwrap();
    let check = json!({ "command": ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/', timeout=2)"], "interval": 1, "timeout": 2, "retries": 2 });
    vec![
        (
            "api",
            json!({
                "command": ["python3", "api.py", "9000"],
                "workingDirectory": dir,
                "desiredCount": 2,
                "portMappings": [{ "name": "http", "containerPort": 9000, "appProtocol": "http" }],
                "healthCheck": check,
                "publish": [{ "portName": "http", "hostPort": PUBLISHED }],
                "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "http", "discoveryName": "api", "clientAliases": [{ "port": 80, "dnsName": "api" }] }] },
            }),
        ),
        (
            "caller",
            json!({
                "command": ["python3", "caller.py"],
                "workingDirectory": dir,
                "desiredCount": 1,
                "serviceConnectConfiguration": { "enabled": true },
            }),
        ),
    ]
}

struct Agents {
    processes: Vec<LoggedChild>,
    _data: tempfile::TempDir,
}

fn start_agent(host: &Host, url: &str, token: &str, data: &Path) -> LoggedChild {
    let mut command = host.command(BIN);
    command
        .args(["agent", "--server", url, "--token", token, "--name", &host.name])
        .args(["--advertise", &host.address.to_string(), "--lease-ttl", &LEASE_TTL.to_string()])
        .args(["--drain-wait", "1", "--attribute", &format!("zone={}", host.name)])
        .arg("--data")
        .arg(data.join(&host.name))
        .env("TETHER_LOG", "info");
    LoggedChild::spawn(command).unwrap()
}

async fn agents_joined(control: &ControlPlane) -> Vec<String> {
    let reply = control.get("/v1/agents").await.unwrap();
    reply.body["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect()
}

/// The service's healthy tasks that should run: id → host.
async fn healthy(control: &ControlPlane, service: &str) -> BTreeMap<String, String> {
    let reply = control.get(&format!("/v1/namespaces/{NS}/tasks")).await.unwrap();
    reply.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["service"] == service && t["desired"] == "RUNNING" && t["state"] == "HEALTHY")
        .map(|t| (t["id"].as_str().unwrap().to_owned(), t["host"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The service's registered instances: (task, address).
async fn instances(control: &ControlPlane, service: &str) -> Vec<(String, String)> {
    let reply = control.get(&format!("/v1/namespaces/{NS}/services/{service}/instances")).await.unwrap();
    reply.body["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| (i["task"].as_str().unwrap().to_owned(), i["address"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn tasks_spread_across_hosts_and_a_lost_host_is_replaced_without_a_failed_request() {
    let fleet = Fleet::create(3).unwrap();
    let mut control = ControlPlane::start_on(BIN, &format!("{}:0", fleet.gateway()), &[]).await.unwrap();
    let url = control.url();
    let apps = tempfile::tempdir().unwrap();
    std::fs::write(apps.path().join("api.py"), API).unwrap();
    std::fs::write(apps.path().join("caller.py"), CALLER).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut agents = Agents { processes: Vec::new(), _data: tempfile::tempdir().unwrap() };
    for host in fleet.hosts() {
        let reply = control.post("/v1/join-tokens", &json!({ "agent": host.name })).await.unwrap();
        let token = reply.body["token"].as_str().unwrap().to_owned();
        agents.processes.push(start_agent(host, &url, &token, data.path()));
    }
    let logs =
        |agents: &Agents| agents.processes.iter().map(LoggedChild::log).collect::<Vec<_>>().join("\n---\n");
    assert_eventually!(
        Duration::from_secs(20),
        agents_joined(&control).await.len() == 3,
        "three agents: {}",
        logs(&agents)
    );

    assert_eq!(control.put(&format!("/v1/namespaces/{NS}"), &json!({})).await.unwrap().status, 201);
    for (name, spec) in spec(apps.path()) {
        let reply = control.put(&format!("/v1/namespaces/{NS}/services/{name}"), &spec).await.unwrap();
        assert!(reply.status.is_success(), "{}", reply.text);
    }
    assert_eventually!(
        Duration::from_secs(60),
        healthy(&control, "api").await.len() == 2 && healthy(&control, "caller").await.len() == 1,
        "every task healthy: {}",
        logs(&agents)
    );

    // Spread: the two api tasks on two hosts, registered on their hosts' addresses.
    let api = healthy(&control, "api").await;
    let api_hosts: Vec<&String> = api.values().collect();
    assert_ne!(api_hosts[0], api_hosts[1], "{api:?}");
    let address_of = |name: &str| fleet.hosts().iter().find(|h| h.name == name).unwrap().address.to_string();
    let mut registered = instances(&control, "api").await;
    registered.sort();
    let mut expected: Vec<(String, String)> = api.iter().map(|(t, h)| (t.clone(), address_of(h))).collect();
    expected.sort();
    assert_eq!(registered, expected, "instances on their hosts' addresses");

    // The caller reaches both api tasks by name, so at least one call crossed hosts, over
    // mutual TLS (on by default): the callee's inbound listener takes nothing else.
    let (caller_task, caller_host) = healthy(&control, "caller").await.into_iter().next().unwrap();
    let caller_log = data.path().join(&caller_host).join("logs/caller").join(format!("{caller_task}.log"));
    assert_eventually!(
        Duration::from_secs(20),
        api.keys().all(|t| std::fs::read_to_string(&caller_log)
            .unwrap_or_default()
            .contains(&format!("ANSWERED {t}"))),
        "the caller reached both api tasks: {}",
        std::fs::read_to_string(&caller_log).unwrap_or_default()
    );
    assert!(api.values().any(|h| *h != caller_host), "an api task on another host than the caller");
    let plaintext = Client::http1().timeout(Duration::from_secs(3));
    let (some_task, some_host) = api.iter().next().unwrap();
    let port =
        control.get(&format!("/v1/namespaces/{NS}/services/api/instances")).await.unwrap().body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["task"] == some_task.as_str())
            .unwrap()["port"]
            .as_u64()
            .unwrap();
    assert!(
        plaintext.get(&format!("http://{}:{port}/", address_of(some_host))).await.is_err(),
        "a sidecar's inbound port refuses plaintext"
    );

    // The published port answers on every host, whether it runs an api task or not.
    let client = Client::http1().timeout(Duration::from_secs(5));
    for host in fleet.hosts() {
        let answer = format!("http://{}:{PUBLISHED}/", host.address);
        assert_eventually!(
            Duration::from_secs(15),
            client.get(&answer).await.is_ok_and(|r| r.status == 200),
            "{answer} answers"
        );
    }

    // A host with an api task cut off, under load through another host's published port.
    let victim = fleet.hosts().iter().find(|h| api.values().any(|a| *a == h.name)).unwrap();
    let entry = fleet.hosts().iter().find(|h| h.name != victim.name).unwrap();
    let load = Load::start(client.clone(), format!("http://{}:{PUBLISHED}/", entry.address), 4, 200_000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = Instant::now();
    victim.cut().unwrap();
    let victim_address = victim.address.to_string();
    assert_eventually!(
        Duration::from_secs(LEASE_TTL + 2),
        !instances(&control, "api").await.iter().any(|(_, a)| *a == victim_address),
        "the lost host's instances are gone within the lease TTL"
    );
    let dropped = cut.elapsed();
    assert_eventually!(
        Duration::from_secs(60),
        {
            let now = healthy(&control, "api").await;
            now.len() == 2 && now.values().all(|h| *h != victim.name)
        },
        "replacements healthy on the other hosts: {}",
        logs(&agents)
    );
    let restored = cut.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    eprintln!(
        "host cut: instances gone after {:.2} s, desiredCount restored after {:.2} s; {} requests, p50 {:?}, p99 {:?}, slowest {:?}",
        dropped.as_secs_f64(),
        restored.as_secs_f64(),
        report.ok + report.failures.len(),
        report.quantile(0.5),
        report.quantile(0.99),
        report.slowest
    );
    report.assert_no_failures();

    // The host comes back: its agent joins again, stops what was replaced, and none of it is
    // registered again; the service never has more instances than its tasks.
    let replaced: Vec<String> =
        api.iter().filter(|(_, h)| **h == victim.name).map(|(t, _)| t.clone()).collect();
    victim.restore().unwrap();
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(2 * LEASE_TTL + 4) {
        let now = instances(&control, "api").await;
        assert!(now.len() <= 2, "more api instances than tasks: {now:?}");
        assert!(!now.iter().any(|(t, _)| replaced.contains(t)), "an orphan registered again: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let victim_log =
        agents.processes[fleet.hosts().iter().position(|h| h.name == victim.name).unwrap()].log();
    assert!(victim_log.contains("joining again"), "{victim_log}");
    assert!(victim_log.contains("no longer placed on this host"), "{victim_log}");
    assert_eq!(agents_joined(&control).await.len(), 3);
    let answer = format!("http://{}:{PUBLISHED}/", victim.address);
    assert_eventually!(
        Duration::from_secs(15),
        client.get(&answer).await.is_ok_and(|r| r.status == 200),
        "{answer} answers again"
    );

    // A rolling deployment across the hosts under load, the control plane SIGKILLed and started
    // again once the first new task is healthy: the deployment completes from its record, and
    // no request fails.
    let load = Load::start(client.clone(), format!("http://{}:{PUBLISHED}/", entry.address), 4, 200_000);
    let mut next = spec(apps.path()).remove(0).1;
    next["environment"] = json!([{ "name": "VERSION", "value": "2" }]);
    let reply = control.put(&format!("/v1/namespaces/{NS}/services/api"), &next).await.unwrap();
    assert!(reply.status.is_success(), "{}", reply.text);
    let revision = reply.body["revision"].as_u64().unwrap();
    let new_healthy = |tasks: Value| {
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["service"] == "api"
                    && t["revision"] == revision
                    && t["state"] == "HEALTHY"
                    && t["desired"] == "RUNNING"
            })
            .count()
    };
    let tasks_path = format!("/v1/namespaces/{NS}/tasks");
    assert_eventually!(
        Duration::from_secs(60),
        new_healthy(control.get(&tasks_path).await.unwrap().body) >= 1,
        "a task of revision {revision} healthy: {}",
        logs(&agents)
    );
    control.kill();
    control.wait_exit(Duration::from_secs(5)).await;
    control.start_again().await.unwrap();
    let deployments_path = format!("/v1/namespaces/{NS}/deployments?service=api");
    let deployment_state = |body: Value| {
        body["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|d| d["toRevision"] == revision)
            .map(|d| d["state"].as_str().unwrap().to_owned())
    };
    assert_eventually!(
        Duration::from_secs(60),
        deployment_state(control.get(&deployments_path).await.unwrap().body).as_deref() == Some("COMPLETED"),
        "the deployment completed after the restart: {}",
        control.get(&deployments_path).await.unwrap().text
    );
    assert_eq!(new_healthy(control.get(&tasks_path).await.unwrap().body), 2);
    let report = load.stop().await;
    eprintln!(
        "rolling deployment with a control-plane restart: {} requests, p99 {:?}, slowest {:?}",
        report.ok + report.failures.len(),
        report.quantile(0.99),
        report.slowest
    );
    report.assert_no_failures();
    drop(agents);
}
