//! The control plane's REST API end to end: a real `tether server` on a temporary data
//! directory, spoken to over HTTP and through `tether services` / `tether endpoints`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tether_testkit::control::ControlPlane;
use tether_testkit::refused_addr;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const NS: &str = "/v1/namespaces/shop.local";

fn payment() -> Value {
    json!({
        "command": ["python3", "payment.py"],
        "desiredCount": 2,
        "portMappings": [{ "name": "api", "containerPort": 3001, "appProtocol": "http" }],
        "serviceConnectConfiguration": {
            "enabled": true,
            "services": [{ "portName": "api", "discoveryName": "payment-service", "clientAliases": [{ "port": 80, "dnsName": "payment-service" }] }]
        }
    })
}

fn instance(address: &str, health: &str) -> Value {
    json!({ "address": address, "port": 15001, "health": health, "attributes": { "zone": "a" } })
}

/// A server with namespace `shop.local` and service `payment`.
async fn with_payment() -> ControlPlane {
    let control = ControlPlane::start(TETHER).await.unwrap();
    assert_eq!(control.put(NS, &json!({})).await.unwrap().status, StatusCode::CREATED);
    let reply = control.put(&format!("{NS}/services/payment"), &payment()).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    control
}

#[tokio::test]
async fn rest_round_trip() {
    let control = with_payment().await;
    // Namespaces: idempotent PUT, listed, refused deletion while services remain.
    assert_eq!(control.put(NS, &json!({})).await.unwrap().status, StatusCode::OK);
    let list = control.get("/v1/namespaces").await.unwrap();
    assert_eq!(list.body["namespaces"][0]["name"], "shop.local", "{}", list.text);
    let refused = control.delete(NS).await.unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.body["error"].as_str().unwrap().contains("payment"), "{}", refused.text);

    // The service reads back as written, with its effective values beside it.
    let service = control.get(&format!("{NS}/services/payment")).await.unwrap();
    assert_eq!(service.status, StatusCode::OK);
    assert_eq!(service.body["spec"], payment());
    let discovery = &service.body["effective"]["discovery"][0];
    assert_eq!(discovery["discoveryName"], "payment-service");
    assert_eq!(discovery["timeout"]["perRequestTimeoutSeconds"], 15.0);
    assert_eq!(
        control.put(&format!("{NS}/services/payment"), &payment()).await.unwrap().status,
        StatusCode::OK
    );

    // Instances.
    let path = format!("{NS}/services/payment/instances/task-1");
    let created = control.put(&path, &instance("10.0.0.1", "HEALTHY")).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["portName"], "api");
    assert_eq!(created.body["appProtocol"], "http");
    assert_eq!(created.body["task"], "task-1");
    let updated = control.put(&path, &instance("10.0.0.1", "DRAINING")).await.unwrap();
    assert_eq!(updated.status, StatusCode::OK);
    assert!(updated.body["revision"].as_i64() > created.body["revision"].as_i64());
    control
        .put(&format!("{NS}/services/payment/instances/task-2"), &instance("::1", "HEALTHY"))
        .await
        .unwrap();
    let got = control.get(&path).await.unwrap();
    assert_eq!(
        (got.body["health"].as_str(), got.body["attributes"]["zone"].as_str()),
        (Some("DRAINING"), Some("a"))
    );

    let services = control.get(&format!("{NS}/services")).await.unwrap();
    assert_eq!(
        services.body["services"][0]["instances"],
        json!({ "total": 2, "healthy": 1 }),
        "{}",
        services.text
    );

    assert_eq!(control.delete(&path).await.unwrap().status, StatusCode::NO_CONTENT);
    assert_eq!(control.get(&path).await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(control.delete(&path).await.unwrap().status, StatusCode::NOT_FOUND);

    // Deleting the service takes its instances; then the namespace may go.
    assert_eq!(
        control.delete(&format!("{NS}/services/payment")).await.unwrap().status,
        StatusCode::NO_CONTENT
    );
    let gone = control.get(&format!("{NS}/services/payment/instances")).await.unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.body["error"].as_str().unwrap().contains("service `payment`"), "{}", gone.text);
    assert_eq!(control.delete(NS).await.unwrap().status, StatusCode::NO_CONTENT);
    assert_eq!(control.get(NS).await.unwrap().status, StatusCode::NOT_FOUND);
}

async fn ids(control: &ControlPlane, query: &str) -> Vec<String> {
    let reply = control.get(&format!("{NS}/services/payment/instances{query}")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn health_filters() {
    let control = with_payment().await;
    for (id, health) in
        [("a", "HEALTHY"), ("b", "UNHEALTHY"), ("c", "STARTING"), ("d", "DRAINING"), ("e", "HEALTHY")]
    {
        let path = format!("{NS}/services/payment/instances/{id}");
        assert_eq!(
            control.put(&path, &instance("10.0.0.1", health)).await.unwrap().status,
            StatusCode::CREATED
        );
    }
    assert_eq!(ids(&control, "").await, ["a", "b", "c", "d", "e"]);
    assert_eq!(ids(&control, "?health=ALL").await, ["a", "b", "c", "d", "e"]);
    assert_eq!(ids(&control, "?health=HEALTHY").await, ["a", "e"]);
    assert_eq!(ids(&control, "?health=UNHEALTHY").await, ["b"]);
    assert_eq!(ids(&control, "?health=HEALTHY_OR_ELSE_ALL").await, ["a", "e"]);
    for id in ["a", "e"] {
        control.delete(&format!("{NS}/services/payment/instances/{id}")).await.unwrap();
    }
    assert!(ids(&control, "?health=HEALTHY").await.is_empty());
    assert_eq!(ids(&control, "?health=HEALTHY_OR_ELSE_ALL").await, ["b", "c", "d"], "none healthy, so all");

    let bad = control.get(&format!("{NS}/services/payment/instances?health=GREEN")).await.unwrap();
    assert_eq!((bad.status, bad.field()), (StatusCode::BAD_REQUEST, Some("health")), "{}", bad.text);
    assert!(bad.body["error"].as_str().unwrap().contains("HEALTHY_OR_ELSE_ALL"), "{}", bad.text);
}

/// Everything a reader can see of the namespace, to prove a refused request changed nothing.
async fn state(control: &ControlPlane) -> (Value, Value, Value) {
    let ns = control.get(NS).await.unwrap().body;
    let services = control.get(&format!("{NS}/services")).await.unwrap().body;
    let instances = control.get(&format!("{NS}/services/payment/instances")).await.unwrap().body;
    (ns, services, instances)
}

#[tokio::test]
async fn malformed_requests_get_field_errors_and_change_nothing() {
    let control = with_payment().await;
    let instance_path = format!("{NS}/services/payment/instances/task-1");
    control.put(&instance_path, &instance("10.0.0.1", "HEALTHY")).await.unwrap();
    let before = state(&control).await;
    let service = |changes: &dyn Fn(&mut Value)| {
        let mut spec = payment();
        changes(&mut spec);
        spec
    };
    let billing = format!("{NS}/services/billing");
    let payment_path = format!("{NS}/services/payment");
    let cases: Vec<(&str, String, String, StatusCode, &str, &str)> = vec![
        (
            "a value of the wrong type",
            billing.clone(),
            service(&|s| s["desiredCount"] = json!("two")).to_string(),
            StatusCode::BAD_REQUEST,
            "desiredCount",
            "invalid type",
        ),
        (
            "an unknown field",
            payment_path.clone(),
            service(&|s| s["serviceConnectConfiguration"]["services"][0]["discoverName"] = json!("x"))
                .to_string(),
            StatusCode::BAD_REQUEST,
            "serviceConnectConfiguration.services[0].discoverName",
            "unknown field `discoverName`",
        ),
        (
            "broken JSON",
            payment_path.clone(),
            "{\"command\": [".into(),
            StatusCode::BAD_REQUEST,
            "command",
            "not valid JSON",
        ),
        (
            "an invalid discoveryName",
            payment_path.clone(),
            service(&|s| {
                s["serviceConnectConfiguration"]["services"][0]["discoveryName"] = json!("-payment")
            })
            .to_string(),
            StatusCode::BAD_REQUEST,
            "serviceConnectConfiguration.services[0].discoveryName",
            "not starting with `-`",
        ),
        (
            "a dnsName:port another service has",
            billing.clone(),
            service(&|s| s["serviceConnectConfiguration"]["services"][0]["discoveryName"] = json!("billing"))
                .to_string(),
            StatusCode::CONFLICT,
            "serviceConnectConfiguration.services[0].clientAliases[0].dnsName",
            "`payment-service:80` is already a client alias of service `payment`",
        ),
        (
            "a per-request timeout on a tcp port",
            payment_path.clone(),
            service(&|s| {
                s["portMappings"][0].as_object_mut().unwrap().remove("appProtocol");
                s["serviceConnectConfiguration"]["services"][0]["timeout"] =
                    json!({ "perRequestTimeoutSeconds": 5 });
            })
            .to_string(),
            StatusCode::BAD_REQUEST,
            "serviceConnectConfiguration.services[0].timeout.perRequestTimeoutSeconds",
            "tcp",
        ),
        (
            "a health nobody knows",
            instance_path.clone(),
            json!({ "address": "10.0.0.9", "port": 1, "health": "GREEN" }).to_string(),
            StatusCode::BAD_REQUEST,
            "health",
            "unknown variant `GREEN`",
        ),
        (
            "an address that is a name",
            instance_path.clone(),
            json!({ "address": "localhost", "port": 1, "health": "HEALTHY" }).to_string(),
            StatusCode::BAD_REQUEST,
            "address",
            "IP address",
        ),
        (
            "a port mapping the service lacks",
            instance_path.clone(),
            json!({ "address": "10.0.0.9", "port": 1, "health": "HEALTHY", "portName": "admin" }).to_string(),
            StatusCode::BAD_REQUEST,
            "portName",
            "expected one of: api",
        ),
        (
            "an invalid service name",
            format!("{NS}/services/bad.name"),
            payment().to_string(),
            StatusCode::BAD_REQUEST,
            "name",
            "not a valid service name",
        ),
    ];
    for (what, path, body, status, field, fragment) in cases {
        let reply = control.call(Method::PUT, &path, Some(body)).await.unwrap();
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        assert_eq!(reply.field(), Some(field), "{what}: {}", reply.text);
        let message = reply.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{what}: `{fragment}` missing from {}", reply.text);
    }

    // Several mistakes at once: every one is reported, and no single field is blamed.
    let several = service(&|s| {
        s["portMappings"][0]["containerPort"] = json!(0);
        s["serviceConnectConfiguration"]["services"][0]["portName"] = json!("web");
    });
    let reply = control.put(&payment_path, &several).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.field(), None, "{}", reply.text);
    let fields: Vec<&str> =
        reply.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["portMappings[0].containerPort", "serviceConnectConfiguration.services[0].portName"]);

    assert_eq!(state(&control).await, before, "a refused request changed something");
}

#[tokio::test]
async fn the_token_guards_everything_but_health_and_the_document() {
    let control = ControlPlane::start(TETHER).await.unwrap();
    for token in [None, Some("wrong"), Some(&control.token[..control.token.len() - 1])] {
        let reply = control.request(Method::GET, "/v1/namespaces", None, token).await.unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}: {}", reply.text);
        assert!(reply.body["error"].as_str().unwrap().contains("token"), "{}", reply.text);
        let put = control.request(Method::PUT, NS, None, token).await.unwrap();
        assert_eq!(put.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        control.get(NS).await.unwrap().status,
        StatusCode::NOT_FOUND,
        "the refused PUTs created nothing"
    );
    for path in ["/healthz", "/openapi.json"] {
        let reply = control.request(Method::GET, path, None, None).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let document = control.request(Method::GET, "/openapi.json", None, None).await.unwrap();
    assert!(document.body["paths"]["/v1/namespaces/{ns}/services/{name}"]["put"].is_object());

    let token_file = control.data_dir().join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token is {mode:o}");
    let dir_mode = std::fs::metadata(control.data_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "the data directory is {dir_mode:o}");
    assert_eq!(control.token.len(), 64);
}

#[tokio::test]
async fn a_restart_keeps_the_data_and_the_token() {
    let mut control = with_payment().await;
    control
        .put(&format!("{NS}/services/payment/instances/task-1"), &instance("10.0.0.1", "HEALTHY"))
        .await
        .unwrap();
    let (token, before) = (control.token.clone(), state(&control).await);
    control.restart().await.unwrap();
    assert_eq!(control.token, token);
    assert_eq!(state(&control).await, before);
}

#[tokio::test]
async fn leases_take_their_instances_with_them() {
    let control = with_payment().await;
    let lease = control.post("/v1/leases", &json!({ "ttlSeconds": 30 })).await.unwrap();
    assert_eq!(lease.status, StatusCode::CREATED, "{}", lease.text);
    let id = lease.body["id"].as_i64().unwrap();
    let path = format!("{NS}/services/payment/instances/task-1");
    let mut body = instance("10.0.0.1", "HEALTHY");
    body["lease"] = json!(id);
    let registered = control.put(&path, &body).await.unwrap();
    assert_eq!(registered.body["lease"], id, "{}", registered.text);
    assert_eq!(control.put(&format!("/v1/leases/{id}"), &json!({})).await.unwrap().status, StatusCode::OK);
    assert_eq!(control.delete(&format!("/v1/leases/{id}")).await.unwrap().status, StatusCode::NO_CONTENT);
    assert_eq!(control.get(&path).await.unwrap().status, StatusCode::NOT_FOUND);
    let stale = control.put(&path, &body).await.unwrap();
    assert_eq!((stale.status, stale.field()), (StatusCode::NOT_FOUND, Some("lease")), "{}", stale.text);
}

fn cli(args: &[&str]) -> (Output, String, String) {
    let output = Command::new(TETHER)
        .args(args)
        .env_remove("TETHER_TOKEN")
        .env_remove("TETHER_SERVER")
        .env_remove("TETHER_NAMESPACE")
        .env("TETHER_DATA", "/nonexistent")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    (output, stdout, stderr)
}

#[tokio::test]
async fn services_and_endpoints_from_the_command_line() {
    let control = with_payment().await;
    let frontend =
        json!({ "command": ["python3", "frontend.py"], "serviceConnectConfiguration": { "enabled": true } });
    control.put(&format!("{NS}/services/frontend"), &frontend).await.unwrap();
    for (id, address, health) in [("task-1", "10.0.0.1", "HEALTHY"), ("task-2", "10.0.0.2", "UNHEALTHY")] {
        control
            .put(&format!("{NS}/services/payment/instances/{id}"), &instance(address, health))
            .await
            .unwrap();
    }
    let (url, token) = (control.url(), control.token.clone());
    let base = ["--server", url.as_str(), "--token", token.as_str()];
    let with = |extra: &[&str]| cli(&[extra, &base[..]].concat());

    // The namespace is found when there is only one.
    let (out, stdout, stderr) = with(&["services"]);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("DISCOVERY NAMES")
            && lines[0].contains("HEALTHY/TOTAL")
    );
    let columns = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(columns(lines[1]), ["frontend", "-", "-", "0/0"], "{stdout}");
    assert_eq!(columns(lines[2]), ["payment", "payment-service", "payment-service:80", "1/2"], "{stdout}");
    // Aligned: every row's second column starts where the header's does.
    let at = lines[0].find("DISCOVERY").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[at..].starts_with(|c: char| !c.is_whitespace()) && l[..at].ends_with("  "))
    );

    let (out, stdout, _) = with(&["services", "--output", "json", "--namespace", "shop.local"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json[1]["name"], "payment");
    assert_eq!(json[1]["instances"]["healthy"], 1);

    for name in ["payment-service", "payment"] {
        let (out, stdout, stderr) = with(&["endpoints", name]);
        assert!(out.status.success(), "{stderr}");
        let lines: Vec<Vec<String>> = stdout.lines().map(columns).collect();
        assert_eq!(lines[0][..3], ["ID", "ADDRESS", "HEALTH"], "{stdout}");
        assert_eq!(lines[1][..4], ["task-1", "10.0.0.1:15001", "HEALTHY", "task-1"], "{stdout}");
        assert_eq!(lines[2][..3], ["task-2", "10.0.0.2:15001", "UNHEALTHY"], "{stdout}");
    }
    let (out, stdout, _) = with(&["endpoints", "payment-service", "--health", "HEALTHY", "-o", "json"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["address"], "10.0.0.1");

    let (out, _, stderr) = with(&["endpoints", "nothing"]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no service or discovery name `nothing`") && stderr.contains("frontend, payment"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_command_line_says_when_the_server_is_down_or_the_token_wrong() {
    let control = ControlPlane::start(TETHER).await.unwrap();
    let url = control.url();
    let (out, _, stderr) = cli(&["services", "--server", &url, "--token", "wrong"]);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the token") && stderr.contains("--token"), "{stderr}");
    let (out, _, stderr) = cli(&["services", "--server", &url]);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the token") && stderr.contains("cannot be read"), "{stderr}");
    // The token file in --data is used when no token is given.
    let data = control.data_dir().display().to_string();
    let (out, _, stderr) = cli(&["services", "--server", &url, "--data", &data]);
    assert!(!out.status.success());
    assert!(stderr.contains("no namespaces yet"), "{stderr}");

    let down = format!("http://{}", refused_addr());
    let (out, _, stderr) = cli(&["services", "--server", &down, "--token", "x"]);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the control plane") && stderr.contains("refused"), "{stderr}");
}

/// Two servers on one etcd are replicas: one token, one registry, uniqueness across both.
#[tokio::test]
async fn replicas_on_etcd_share_the_registry_and_the_token() {
    let mut etcd = tether_testkit::etcd::EtcdCluster::single().await.unwrap();
    let store = format!("etcd://{}", etcd.endpoint(0).trim_start_matches("http://"));
    let args = ["--store", store.as_str(), "--etcd-prefix", "/e2e"];
    let a = ControlPlane::start_with(TETHER, &args).await.unwrap();
    let b = ControlPlane::start_with(TETHER, &args).await.unwrap();
    assert_eq!(a.token, b.token, "replicas must accept the same token");

    assert_eq!(a.put(NS, &json!({})).await.unwrap().status, StatusCode::CREATED);
    assert_eq!(
        a.put(&format!("{NS}/services/payment"), &payment()).await.unwrap().status,
        StatusCode::CREATED
    );
    let seen = b.get(&format!("{NS}/services/payment")).await.unwrap();
    assert_eq!((seen.status, &seen.body["spec"]), (StatusCode::OK, &payment()), "{}", seen.text);

    let mut clash = payment();
    clash["serviceConnectConfiguration"]["services"][0]["clientAliases"] = json!([{ "port": 81 }]);
    let refused = b.put(&format!("{NS}/services/billing"), &clash).await.unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.field(), Some("serviceConnectConfiguration.services[0].discoveryName"));

    let registered =
        b.put(&format!("{NS}/services/payment/instances/t1"), &instance("10.0.0.1", "HEALTHY")).await;
    assert_eq!(registered.unwrap().status, StatusCode::CREATED);
    let listed = a.get(&format!("{NS}/services/payment/instances?health=HEALTHY")).await.unwrap();
    assert_eq!(listed.body["instances"][0]["id"], "t1", "{}", listed.text);

    // Without its store the API says so (503, with the store's reason) instead of hanging.
    etcd.stop(0);
    let unavailable =
        a.put(&format!("{NS}/services/payment/instances/t2"), &instance("10.0.0.2", "HEALTHY")).await;
    let unavailable = unavailable.unwrap();
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE, "{}", unavailable.text);
    assert!(
        unavailable.body["error"].as_str().unwrap().contains("store unavailable"),
        "{}",
        unavailable.text
    );
}
