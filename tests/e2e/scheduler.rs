//! The scheduler and the agents' least privilege, against a real `tether server`: agents here
//! are the REST calls a `tether agent` makes (join with a lease, read assignments, report), so
//! placement can be shown on hosts with any attributes and capacity without running tasks.
//! `tests/e2e/fleet.rs` runs real agents on emulated hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tether_testkit::assert_eventually;
use tether_testkit::control::{ControlPlane, JsonReply};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const NS: &str = "sched.test";

/// An agent as the control plane sees one: its name and join token.
struct FakeAgent {
    name: String,
    token: String,
}

async fn call(
    control: &ControlPlane,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> JsonReply {
    let method: http::Method = method.parse().unwrap();
    let token = (!token.is_empty()).then_some(token);
    control.request(method, path, body.map(|b| b.to_string()), token).await.unwrap()
}

impl FakeAgent {
    /// Gets a join token and joins with a lease of 60 s, with these attributes and capacity.
    async fn join(control: &ControlPlane, name: &str, attributes: Value, memory: u64) -> Self {
        let reply = control.post("/v1/join-tokens", &json!({ "agent": name })).await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text);
        let token = reply.body["token"].as_str().unwrap().to_owned();
        let agent = Self { name: name.to_owned(), token };
        let lease = agent.call(control, "POST", "/v1/leases", Some(json!({ "ttlSeconds": 60 }))).await;
        assert_eq!(lease.status, 201, "{}", lease.text);
        let body = json!({
            "address": "198.18.255.1",
            "attributes": attributes,
            "capacity": { "cpu": 4096, "memoryMib": memory },
            "lease": lease.body["id"],
        });
        let joined = agent.call(control, "PUT", &format!("/v1/agents/{name}"), Some(body)).await;
        assert_eq!(joined.status, 200, "{}", joined.text);
        agent
    }

    async fn call(&self, control: &ControlPlane, method: &str, path: &str, body: Option<Value>) -> JsonReply {
        call(control, method, path, &self.token, body).await
    }

    /// Reports every task placed here HEALTHY, as an agent does once their checks pass.
    async fn run_everything(&self, control: &ControlPlane) {
        let assigned =
            self.call(control, "GET", &format!("/v1/agents/{}/assignments", self.name), None).await;
        for task in assigned.body["tasks"].as_array().unwrap() {
            if task["state"] != "HEALTHY" && task["desired"] == "RUNNING" {
                let path = format!(
                    "/v1/namespaces/{}/tasks/{}/status",
                    task["namespace"].as_str().unwrap(),
                    task["id"].as_str().unwrap()
                );
                let reply = self.call(control, "PUT", &path, Some(json!({ "state": "HEALTHY" }))).await;
                assert_eq!(reply.status, 200, "{}", reply.text);
            }
        }
    }
}

async fn put_service(control: &ControlPlane, name: &str, extra: Value) {
    let mut spec = json!({ "command": ["sleep", "600"], "desiredCount": 2 });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let reply = control.put(&format!("/v1/namespaces/{NS}/services/{name}"), &spec).await.unwrap();
    assert!(reply.status.is_success(), "{}", reply.text);
}

/// The service's running tasks: id → (host or "", state, reason).
async fn tasks(control: &ControlPlane, service: &str) -> BTreeMap<String, (String, String, String)> {
    let reply = control.get(&format!("/v1/namespaces/{NS}/tasks")).await.unwrap();
    reply.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["service"] == service && t["desired"] == "RUNNING")
        .map(|t| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&t["id"]), (text(&t["host"]), text(&t["state"]), text(&t["reason"])))
        })
        .collect()
}

async fn started() -> ControlPlane {
    let control = ControlPlane::start(BIN).await.unwrap();
    assert_eq!(control.put(&format!("/v1/namespaces/{NS}"), &json!({})).await.unwrap().status, 201);
    control
}

#[tokio::test]
async fn placement_spreads_constrains_and_waits_for_room() {
    let control = started().await;
    let zone = |z: &str| json!({ "zone": z });
    let _a1 = FakeAgent::join(&control, "a1", zone("a"), 1024).await;
    let _a2 = FakeAgent::join(&control, "a2", zone("a"), 1024).await;
    let _b1 = FakeAgent::join(&control, "b1", zone("b"), 1024).await;

    // Spread by host (the default): two tasks on two hosts.
    put_service(&control, "plain", json!({})).await;
    assert_eventually!(
        Duration::from_secs(10),
        tasks(&control, "plain").await.len() == 2,
        "two tasks placed"
    );
    let hosts: Vec<String> = tasks(&control, "plain").await.into_values().map(|t| t.0).collect();
    assert!(!hosts[0].is_empty() && hosts[0] != hosts[1], "spread by host: {hosts:?}");

    // Spread by zone: one task in each zone, although zone a has two hosts.
    put_service(
        &control,
        "zoned",
        json!({ "placementStrategy": [{ "type": "spread", "field": "attribute:zone" }] }),
    )
    .await;
    assert_eventually!(Duration::from_secs(10), tasks(&control, "zoned").await.len() == 2, "two zoned tasks");
    let mut hosts: Vec<String> = tasks(&control, "zoned").await.into_values().map(|t| t.0).collect();
    hosts.sort();
    assert!(
        hosts.contains(&"b1".to_owned())
            && (hosts.contains(&"a1".to_owned()) || hosts.contains(&"a2".to_owned())),
        "{hosts:?}"
    );

    // memberOf: only zone a's hosts.
    put_service(
        &control,
        "only-a",
        json!({ "desiredCount": 3, "placementConstraints": [{ "type": "memberOf", "expression": "attribute:zone == a" }] }),
    )
    .await;
    assert_eventually!(Duration::from_secs(10), tasks(&control, "only-a").await.len() == 3, "three tasks");
    for (id, (host, _, _)) in tasks(&control, "only-a").await {
        assert!(host == "a1" || host == "a2", "{id} placed on {host}");
    }

    // distinctInstance with more tasks than hosts: one waits, and says why.
    put_service(
        &control,
        "distinct",
        json!({ "desiredCount": 4, "placementConstraints": [{ "type": "distinctInstance" }] }),
    )
    .await;
    assert_eventually!(
        Duration::from_secs(10),
        tasks(&control, "distinct").await.values().filter(|t| t.1 == "PENDING").count() == 1,
        "one distinct task pending: {:?}",
        tasks(&control, "distinct").await
    );
    let distinct = tasks(&control, "distinct").await;
    let placed: Vec<&String> = distinct.values().map(|t| &t.0).filter(|h| !h.is_empty()).collect();
    assert_eq!(placed.len(), 3);
    assert!(placed[0] != placed[1] && placed[1] != placed[2] && placed[0] != placed[2], "{placed:?}");
    let pending = distinct.values().find(|t| t.1 == "PENDING").unwrap();
    assert!(pending.2.contains("distinctInstance"), "{pending:?}");

    // A memory reservation no host has room for: PENDING with the reason, in the API and in
    // `tether ps`, then placed once a host with room joins.
    put_service(&control, "big", json!({ "desiredCount": 1, "memory": 4096 })).await;
    assert_eventually!(
        Duration::from_secs(10),
        tasks(&control, "big").await.values().any(|t| t.1 == "PENDING" && t.2.contains("4096 MiB of memory")),
        "big waits for memory: {:?}",
        tasks(&control, "big").await
    );
    let ps = std::process::Command::new(BIN)
        .args(["ps", "--server", &control.url(), "--token", &control.token, "--namespace", NS])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("HOST") && ps.contains("PENDING") && ps.contains("4096 MiB of memory"), "{ps}");
    let _roomy = FakeAgent::join(&control, "roomy", zone("c"), 8192).await;
    assert_eventually!(
        Duration::from_secs(10),
        tasks(&control, "big").await.values().any(|t| t.0 == "roomy" && t.1 == "PROVISIONING"),
        "big placed on the host with room: {:?}",
        tasks(&control, "big").await
    );
    let hosts = std::process::Command::new(BIN)
        .args(["hosts", "--server", &control.url(), "--token", &control.token])
        .output()
        .unwrap();
    let hosts = String::from_utf8_lossy(&hosts.stdout);
    assert!(
        hosts.contains("roomy") && hosts.contains("4096/8192 MiB") && hosts.contains("zone=c"),
        "{hosts}"
    );
}

#[tokio::test]
async fn an_agent_acts_for_its_own_host_only() {
    let control = started().await;
    let one = FakeAgent::join(&control, "one", json!({}), 1024).await;
    let two = FakeAgent::join(&control, "two", json!({}), 1024).await;
    put_service(&control, "api", json!({ "desiredCount": 1, "placementConstraints": [{ "type": "memberOf", "expression": "attribute:x not_in [y]" }] })).await;
    assert_eventually!(
        Duration::from_secs(10),
        tasks(&control, "api").await.values().any(|t| !t.0.is_empty()),
        "the task is placed"
    );
    let (task, (host, _, _)) = tasks(&control, "api").await.into_iter().next().unwrap();
    let (owner, other) = if host == "one" { (&one, &two) } else { (&two, &one) };

    // The owner gets its task's bootstrap token; the other agent gets a 403 for it, for an
    // instance of it, for a report on it, for another host's record and for admin routes.
    let body = json!({ "service": "api", "task": task });
    let path = format!("/v1/namespaces/{NS}/bootstrap-tokens");
    assert_eq!(owner.call(&control, "POST", &path, Some(body.clone())).await.status, 201);
    let refused = other.call(&control, "POST", &path, Some(body)).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("placed on"), "{}", refused.text);
    let edge =
        other.call(&control, "POST", &path, Some(json!({ "edge": true, "task": "edge-somebody" }))).await;
    assert_eq!(edge.status, 403, "{}", edge.text);
    let instance = json!({ "task": task, "address": "198.18.255.1", "port": 8080, "health": "HEALTHY" });
    let path = format!("/v1/namespaces/{NS}/services/api/instances/{task}-x");
    assert_eq!(other.call(&control, "PUT", &path, Some(instance)).await.status, 403);
    let path = format!("/v1/namespaces/{NS}/tasks/{task}/status");
    assert_eq!(other.call(&control, "PUT", &path, Some(json!({ "state": "STOPPED" }))).await.status, 403);
    let path = format!("/v1/agents/{}", owner.name);
    let body = json!({ "address": "198.18.255.9", "lease": 1 });
    assert_eq!(other.call(&control, "PUT", &path, Some(body)).await.status, 403);
    for (method, path) in [
        ("GET", "/v1/namespaces".to_owned()),
        ("POST", "/v1/join-tokens".to_owned()),
        ("GET", format!("/v1/namespaces/{NS}/tasks")),
    ] {
        let reply = other.call(&control, method, &path, Some(json!({ "agent": "x" }))).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text);
    }
    // Not a token at all, or none: 401; a join token is needed to join.
    let body = json!({ "address": "198.18.255.9", "lease": 1 });
    assert_eq!(
        call(&control, "PUT", "/v1/agents/three", "jt1:three:00", Some(body.clone())).await.status,
        401
    );
    assert_eq!(call(&control, "PUT", "/v1/agents/three", "", Some(body)).await.status, 401);

    let metrics = control.get("/metrics").await.unwrap().text;
    for action in ["bootstrap_token", "instance", "task_report", "join_as_another", "route"] {
        let line = format!("tether_control_denied_requests_total{{caller=\"agent\",action=\"{action}\"}}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{action} not counted:\n{metrics}"
        );
    }
    // The owner's report is taken.
    owner.run_everything(&control).await;
    assert_eventually!(
        Duration::from_secs(5),
        tasks(&control, "api").await[&task].1 == "HEALTHY",
        "reported healthy"
    );
}
