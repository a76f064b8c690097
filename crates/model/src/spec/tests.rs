use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::Seconds;

pub(super) const NS: &str = "shop.local";

pub(super) fn payment() -> Value {
    json!({
        "command": ["python3", "payment.py"],
        "desiredCount": 2,
        "portMappings": [{ "name": "api", "containerPort": 3001, "appProtocol": "http" }],
        "healthCheck": { "command": ["CMD-SHELL", "python3 health.py"], "interval": 5, "timeout": 2, "retries": 3, "startPeriod": 5 },
        "healthCheckGracePeriodSeconds": 30,
        "deploymentConfiguration": { "minimumHealthyPercent": 100, "maximumPercent": 200 },
        "serviceConnectConfiguration": {
            "enabled": true,
            "services": [{
                "portName": "api",
                "discoveryName": "payment-service",
                "clientAliases": [{ "port": 80, "dnsName": "payment-service" }]
            }]
        }
    })
}

pub(super) fn spec(value: Value) -> ServiceSpec {
    serde_json::from_value(value).expect("the spec deserializes")
}

pub(super) fn valid(value: Value) -> Service {
    spec(value).validate("payment", NS).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// Applies `change` to the good spec and returns every error as `field: message`.
pub(super) fn errors(change: impl FnOnce(&mut Value)) -> Vec<FieldError> {
    let mut value = payment();
    change(&mut value);
    match spec(value).validate("payment", NS) {
        Ok(_) => panic!("the spec was accepted"),
        Err(FieldErrors(errors)) => errors,
    }
}

/// The change gives exactly one error, at `field`, whose message holds every fragment.
#[track_caller]
pub(super) fn rejects(change: impl FnOnce(&mut Value), field: &str, fragments: &[&str]) {
    let errors = errors(change);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert_eq!(errors[0].field, field, "{errors:#?}");
    for fragment in fragments {
        assert!(errors[0].message.contains(fragment), "`{fragment}` missing from `{}`", errors[0].message);
    }
}

#[test]
fn the_design_example_is_valid_with_defaults_filled_in() {
    let service = valid(payment());
    assert_eq!(service.desired_count, 2);
    assert!(service.service_connect);
    let [d] = service.discovery.as_slice() else { panic!("one entry: {:?}", service.discovery) };
    assert_eq!(d.discovery_name, "payment-service");
    assert_eq!(d.app_protocol, AppProtocol::Http);
    assert_eq!(d.container_port, 3001);
    assert_eq!(d.client_aliases, [Alias { dns_name: "payment-service".into(), port: 80 }]);
    assert_eq!(d.timeout.idle_timeout_seconds, Seconds::from_secs(300));
    assert_eq!(d.timeout.per_request_timeout_seconds, Some(Seconds::from_secs(15)));
    assert_eq!(d.timeout.connect_timeout_seconds, Seconds::from_secs(1));
    assert_eq!(service.retry_policy, RetryPolicy::default());
    assert_eq!(service.ports[0].app_protocol, AppProtocol::Http);
}

#[test]
fn a_spec_serializes_back_as_written() {
    let written = payment();
    assert_eq!(serde_json::to_value(spec(written.clone())).unwrap(), written);
}

#[test]
fn discovery_name_defaults_to_port_name_and_dns_name_to_discovery_name_dot_namespace() {
    let service = valid(json!({
        "portMappings": [{ "name": "db", "containerPort": 5432 }],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "db", "clientAliases": [{ "port": 5432 }] }] }
    }));
    let d = &service.discovery[0];
    assert_eq!(d.discovery_name, "db");
    assert_eq!(d.client_aliases[0].dns_name, "db.shop.local");
    // tcp: the long idle timeout and no per-request timeout.
    assert_eq!(d.app_protocol, AppProtocol::Tcp);
    assert_eq!(d.timeout.idle_timeout_seconds, Seconds::from_secs(3600));
    assert_eq!(d.timeout.per_request_timeout_seconds, None);
}

#[test]
fn a_client_only_service_publishes_nothing() {
    let service = valid(
        json!({ "command": ["python3", "frontend.py"], "serviceConnectConfiguration": { "enabled": true } }),
    );
    assert!(service.service_connect);
    assert!(service.discovery.is_empty());
    assert_eq!(service.desired_count, 1);
}

#[test]
fn a_disabled_block_publishes_nothing_but_is_still_checked() {
    let mut value = payment();
    value["serviceConnectConfiguration"]["enabled"] = json!(false);
    let service = valid(value.clone());
    assert!(!service.service_connect && service.discovery.is_empty());
    value["serviceConnectConfiguration"]["services"][0]["portName"] = json!("nope");
    assert!(spec(value).validate("payment", NS).is_err());
}

#[test]
fn more_than_one_client_alias_is_allowed() {
    let mut value = payment();
    value["serviceConnectConfiguration"]["services"][0]["clientAliases"] =
        json!([{ "port": 80, "dnsName": "payment" }, { "port": 8080, "dnsName": "payment" }]);
    assert_eq!(valid(value).discovery[0].client_aliases.len(), 2);
}

#[test]
fn unknown_fields_are_errors() {
    let mut value = payment();
    value["serviceConnectConfiguration"]["services"][0]["discoverName"] = json!("x");
    let e = serde_json::from_value::<ServiceSpec>(value).unwrap_err().to_string();
    assert!(e.contains("unknown field `discoverName`") && e.contains("discoveryName"), "{e}");
    let e = serde_json::from_value::<ServiceSpec>(json!({ "replicas": 2 })).unwrap_err().to_string();
    assert!(e.contains("unknown field `replicas`"), "{e}");
}

#[test]
fn discovery_name_rules() {
    let at = "serviceConnectConfiguration.services[0].discoveryName";
    for bad in ["-payment", "Payment", "pay.ment", "", &"a".repeat(65)] {
        rejects(
            |v| v["serviceConnectConfiguration"]["services"][0]["discoveryName"] = json!(bad),
            at,
            &["a-z, 0-9"],
        );
    }
    valid({
        let mut v = payment();
        v["serviceConnectConfiguration"]["services"][0]["discoveryName"] = json!("a".repeat(64));
        v
    });
}

#[test]
fn dns_name_rules() {
    let at = "serviceConnectConfiguration.services[0].clientAliases[0].dnsName";
    for bad in ["Payment", "pay/ment", "", &"a".repeat(128)] {
        rejects(
            |v| v["serviceConnectConfiguration"]["services"][0]["clientAliases"][0]["dnsName"] = json!(bad),
            at,
            &["a-z, 0-9, `_`, `.` and `-`"],
        );
    }
}

#[test]
fn a_default_dns_name_too_long_is_reported_on_the_alias() {
    let long_ns = format!("{}.{}", "a".repeat(63), "b".repeat(63));
    let value = json!({
        "portMappings": [{ "name": "api", "containerPort": 1 }],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "api", "discoveryName": "a-rather-long-discovery-name", "clientAliases": [{ "port": 80 }] }] }
    });
    let errors = spec(value).validate("payment", &long_ns).unwrap_err().0;
    assert_eq!(errors[0].field, "serviceConnectConfiguration.services[0].clientAliases[0].dnsName");
    assert!(errors[0].message.contains("default dnsName"), "{}", errors[0].message);
}

#[test]
fn port_name_must_name_a_port_mapping() {
    rejects(
        |v| v["serviceConnectConfiguration"]["services"][0]["portName"] = json!("web"),
        "serviceConnectConfiguration.services[0].portName",
        &["`web` names no port mapping", "expected one of: api"],
    );
    rejects(
        |v| v["publish"] = json!([{ "portName": "web", "hostPort": 8080 }]),
        "publish[0].portName",
        &["`web`"],
    );
}

#[test]
fn a_per_request_timeout_on_a_tcp_port_is_an_error() {
    rejects(
        |v| {
            v["portMappings"][0]["appProtocol"] = Value::Null;
            v["serviceConnectConfiguration"]["services"][0]["timeout"] =
                json!({ "perRequestTimeoutSeconds": 5 });
        },
        "serviceConnectConfiguration.services[0].timeout.perRequestTimeoutSeconds",
        &["tcp", "appProtocol"],
    );
}

#[test]
fn timeouts_zero_disables_and_out_of_range_is_an_error() {
    let mut value = payment();
    value["serviceConnectConfiguration"]["services"][0]["timeout"] =
        json!({ "idleTimeoutSeconds": 0, "perRequestTimeoutSeconds": 0 });
    let timeout = valid(value).discovery[0].timeout;
    assert_eq!(timeout.idle(), None);
    assert_eq!(timeout.per_request(), None);
    rejects(
        |v| v["serviceConnectConfiguration"]["services"][0]["timeout"] = json!({ "idleTimeoutSeconds": -1 }),
        "serviceConnectConfiguration.services[0].timeout.idleTimeoutSeconds",
        &["out of range"],
    );
    rejects(
        |v| {
            v["serviceConnectConfiguration"]["services"][0]["timeout"] = json!({ "connectTimeoutSeconds": 0 })
        },
        "serviceConnectConfiguration.services[0].timeout.connectTimeoutSeconds",
        &["more than 0"],
    );
}

#[test]
fn names_and_ports_unique_within_the_service() {
    rejects(
        |v| {
            v["portMappings"] =
                json!([{ "name": "api", "containerPort": 1 }, { "name": "api", "containerPort": 2 }])
        },
        "portMappings[1].name",
        &["also names portMappings[0]"],
    );
    rejects(
        |v| {
            v["portMappings"] =
                json!([{ "name": "api", "containerPort": 1 }, { "name": "web", "containerPort": 1 }])
        },
        "portMappings[1].containerPort",
        &["also portMappings[0]"],
    );
    let errors = errors(|v| {
        v["portMappings"] =
            json!([{ "name": "api", "containerPort": 1 }, { "name": "web", "containerPort": 2 }]);
        v["serviceConnectConfiguration"]["services"] = json!([
            { "portName": "api", "discoveryName": "same", "clientAliases": [{ "port": 80, "dnsName": "x" }] },
            { "portName": "web", "discoveryName": "same", "clientAliases": [{ "port": 80, "dnsName": "x" }] }
        ]);
    });
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "serviceConnectConfiguration.services[1].discoveryName",
            "serviceConnectConfiguration.services[1].clientAliases[0].dnsName"
        ]
    );
    rejects(
        |v| {
            let services = v["serviceConnectConfiguration"]["services"].as_array_mut().unwrap();
            services.push(json!({ "portName": "api", "discoveryName": "other" }));
        },
        "serviceConnectConfiguration.services[1].portName",
        &["already published"],
    );
    rejects(
        |v| {
            v["publish"] =
                json!([{ "portName": "api", "hostPort": 8080 }, { "portName": "api", "hostPort": 8080 }])
        },
        "publish[1].hostPort",
        &["publish each host port once"],
    );
}

#[test]
fn ports_must_not_be_zero() {
    rejects(
        |v| v["portMappings"][0]["containerPort"] = json!(0),
        "portMappings[0].containerPort",
        &["1 to 65535"],
    );
    rejects(
        |v| v["serviceConnectConfiguration"]["services"][0]["clientAliases"][0]["port"] = json!(0),
        "serviceConnectConfiguration.services[0].clientAliases[0].port",
        &["1 to 65535"],
    );
    rejects(
        |v| v["serviceConnectConfiguration"]["services"][0]["ingressPortOverride"] = json!(0),
        "serviceConnectConfiguration.services[0].ingressPortOverride",
        &["1 to 65535"],
    );
}

#[test]
fn the_namespace_in_the_block_must_be_this_one() {
    valid({
        let mut v = payment();
        v["serviceConnectConfiguration"]["namespace"] = json!(NS);
        v
    });
    rejects(
        |v| v["serviceConnectConfiguration"]["namespace"] = json!("other.local"),
        "serviceConnectConfiguration.namespace",
        &["`other.local` is not this service's namespace `shop.local`"],
    );
}

#[test]
fn health_check_rules() {
    rejects(|v| v["healthCheck"]["command"] = json!([]), "healthCheck.command", &["empty", "CMD-SHELL"]);
    rejects(|v| v["healthCheck"]["command"] = json!(["SHELL", "x"]), "healthCheck.command[0]", &["`SHELL`"]);
    rejects(|v| v["healthCheck"]["command"] = json!(["CMD"]), "healthCheck.command", &["program"]);
    rejects(
        |v| v["healthCheck"]["command"] = json!(["CMD-SHELL", "a", "b"]),
        "healthCheck.command",
        &["one shell"],
    );
    rejects(|v| v["healthCheck"]["interval"] = json!(0), "healthCheck.interval", &["1 to 300", "ECS from 5"]);
    rejects(|v| v["healthCheck"]["timeout"] = json!(61), "healthCheck.timeout", &["1 to 60"]);
    rejects(|v| v["healthCheck"]["retries"] = json!(0), "healthCheck.retries", &["1 to 10"]);
    rejects(|v| v["healthCheck"]["startPeriod"] = json!(301), "healthCheck.startPeriod", &["0 to 300"]);
    valid({
        let mut v = payment();
        v["healthCheck"] = json!({ "command": ["CMD", "/bin/true"] });
        v
    });
}

#[test]
fn deployment_rules() {
    let at = "deploymentConfiguration";
    rejects(
        |v| v[at]["minimumHealthyPercent"] = json!(101),
        &format!("{at}.minimumHealthyPercent"),
        &["0 to 100"],
    );
    rejects(|v| v[at]["maximumPercent"] = json!(99), &format!("{at}.maximumPercent"), &["100 to 200"]);
    rejects(
        |v| v[at] = json!({ "minimumHealthyPercent": 100, "maximumPercent": 100 }),
        &format!("{at}.maximumPercent"),
        &["cannot make progress", "above 100", "below 100"],
    );
}

#[test]
fn command_and_retry_policy_rules() {
    rejects(|v| v["command"] = json!(["", "x"]), "command[0]", &["empty"]);
    rejects(|v| v["retryPolicy"] = json!({ "maxRetries": 11 }), "retryPolicy.maxRetries", &["0 to 10"]);
    rejects(|v| v["retryPolicy"] = json!({ "retryOn": [503, 404] }), "retryPolicy.retryOn[1]", &["5xx"]);
    rejects(
        |v| v["retryPolicy"] = json!({ "budgetPercent": 101 }),
        "retryPolicy.budgetPercent",
        &["0 to 100"],
    );
    let mut value = payment();
    value["retryPolicy"] = json!({ "maxRetries": 0 });
    assert_eq!(valid(value).retry_policy.max_retries, 0);
}

#[test]
fn every_error_is_reported_at_once() {
    let errors = errors(|v| {
        v["portMappings"][0]["containerPort"] = json!(0);
        v["healthCheck"]["interval"] = json!(0);
        v["serviceConnectConfiguration"]["services"][0]["discoveryName"] = json!("-x");
    });
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

fn service(name: &str, discovery: &str, aliases: &[(&str, u16)]) -> Service {
    let aliases: Vec<Value> = aliases.iter().map(|(d, p)| json!({ "dnsName": d, "port": p })).collect();
    spec(json!({
        "portMappings": [{ "name": "api", "containerPort": 3000, "appProtocol": "http" }],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "api", "discoveryName": discovery, "clientAliases": aliases }] }
    }))
    .validate(name, NS)
    .unwrap()
}

#[test]
fn namespace_wide_uniqueness() {
    let billing = service("billing", "billing", &[("billing", 80)]);
    let clash = service("payment", "billing", &[("billing", 80), ("billing", 81)]);
    let errors = namespace_conflicts(&clash, [&billing]);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "serviceConnectConfiguration.services[0].discoveryName",
            "serviceConnectConfiguration.services[0].clientAliases[0].dnsName"
        ]
    );
    assert!(errors[0].message.contains("service `billing`"), "{}", errors[0].message);
    assert!(errors[1].message.contains("`billing:80`"), "{}", errors[1].message);
    // The same name on another port, or a service's own previous version, is no conflict.
    assert!(namespace_conflicts(&service("payment", "payment", &[("billing", 81)]), [&billing]).is_empty());
    assert!(namespace_conflicts(&service("billing", "billing", &[("billing", 80)]), [&billing]).is_empty());
}

#[test]
fn errors_are_placed_in_a_file_under_a_prefix() {
    let text = "services:\n  payment:\n    portMappings:\n      - { name: api, containerPort: 0 }\n";
    let source = Source::parse("tether.yaml", text).unwrap();
    let errors = FieldErrors(vec![FieldError::new("portMappings[0].containerPort", "must be a port")]);
    let located = errors.locate(&source, "services.payment");
    assert_eq!(located.0[0].field, "services.payment.portMappings[0].containerPort");
    assert_eq!(located.0[0].line, 4);
}

// ---- what one task runs ----------------------------------------------------------------------

#[test]
fn the_task_has_its_defaults_filled_in() {
    let task = valid(payment()).task.expect("a service with a command has a task");
    assert_eq!(task.command, ["python3", "payment.py"]);
    assert!(task.environment.is_empty());
    assert_eq!(task.working_directory, None);
    assert_eq!(task.network_mode, NetworkMode::Sandbox);
    assert_eq!(task.grace_period, Duration::from_secs(30));
    let check = task.health_check.expect("the health check");
    assert_eq!(check.command, HealthCommand::Shell("python3 health.py".into()));
    assert_eq!((check.interval, check.timeout), (Duration::from_secs(5), Duration::from_secs(2)));
    assert_eq!((check.retries, check.start_period), (3, Duration::from_secs(5)));
    assert_eq!(task.deployment, DeploymentPolicy::default());
    assert_eq!(
        task.deployment,
        DeploymentPolicy {
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            circuit_breaker: true,
            rollback: true
        }
    );

    let bare =
        valid(json!({ "command": ["./app"], "healthCheck": { "command": ["CMD", "/bin/check", "-q"] } }));
    let task = bare.task.unwrap();
    let check = task.health_check.unwrap();
    assert_eq!(check.command, HealthCommand::Exec(vec!["/bin/check".into(), "-q".into()]));
    assert_eq!(
        (check.interval, check.timeout, check.retries),
        (Duration::from_secs(30), Duration::from_secs(5), 3)
    );
    assert_eq!(check.start_period, Duration::ZERO);
    assert_eq!(task.grace_period, Duration::ZERO);
    // The effective task reads back in seconds, as written.
    let effective = serde_json::to_value(&check).unwrap();
    assert_eq!(effective["interval"], 30.0);
    assert_eq!(effective["command"], json!({ "exec": ["/bin/check", "-q"] }));
}

#[test]
fn environment_working_directory_and_network_mode() {
    let mut value = payment();
    value["environment"] =
        json!([{ "name": "LOG_LEVEL", "value": "debug" }, { "name": "PORT", "value": "3001" }]);
    value["workingDirectory"] = json!("services/payment");
    value["networkMode"] = json!("host");
    let task = valid(value.clone()).task.unwrap();
    assert_eq!(task.environment.get("LOG_LEVEL").map(String::as_str), Some("debug"));
    assert_eq!(task.environment.len(), 2);
    assert_eq!(task.working_directory.as_deref(), Some("services/payment"));
    assert_eq!(task.network_mode, NetworkMode::Host);
    assert_eq!(serde_json::to_value(spec(value.clone())).unwrap(), value, "serializes back as written");
    value["networkMode"] = json!("awsvpc");
    assert_eq!(valid(value).task.unwrap().network_mode, NetworkMode::Sandbox);

    rejects(
        |v| v["environment"] = json!([{ "name": "A", "value": "1" }, { "name": "A", "value": "2" }]),
        "environment[1].name",
        &["also environment[0]'s name"],
    );
    rejects(
        |v| v["environment"] = json!([{ "name": "A=B", "value": "1" }]),
        "environment[0].name",
        &["without `=`"],
    );
    rejects(
        |v| v["workingDirectory"] = json!(" "),
        "workingDirectory",
        &["relative to the spec file's directory"],
    );
    for unsupported in ["bridge", "none"] {
        rejects(
            |v| v["networkMode"] = json!(unsupported),
            "networkMode",
            &["not supported", "`awsvpc`", "`host`"],
        );
    }
    let e = serde_json::from_value::<ServiceSpec>(json!({ "networkMode": "nat" })).unwrap_err().to_string();
    assert!(e.contains("`awsvpc` or `host`"), "{e}");
}

#[test]
fn deployment_bounds_and_circuit_breaker() {
    let at = "deploymentConfiguration";
    // A stopped task (below 100%) is progress too.
    let mut value = payment();
    value[at] = json!({ "minimumHealthyPercent": 50, "maximumPercent": 100,
        "deploymentCircuitBreaker": { "enable": false, "rollback": false } });
    let deployment = valid(value).task.unwrap().deployment;
    assert_eq!(
        deployment,
        DeploymentPolicy {
            minimum_healthy_percent: 50,
            maximum_percent: 100,
            circuit_breaker: false,
            rollback: false
        }
    );
    rejects(|v| v[at]["maximumPercent"] = json!(201), &format!("{at}.maximumPercent"), &["100 to 200"]);
    rejects(
        |v| v[at]["deploymentCircuitBreaker"] = json!({ "enable": false, "rollback": true }),
        &format!("{at}.deploymentCircuitBreaker.rollback"),
        &["enable: true"],
    );
}

#[test]
fn a_service_without_a_command_has_no_task() {
    let service = valid(json!({ "portMappings": [{ "name": "api", "containerPort": 80 }] }));
    assert_eq!(service.task, None);
    assert!(service.external_endpoints.is_empty());
}

#[test]
fn a_service_with_endpoints_is_external_and_runs_no_tasks() {
    let service = valid(json!({
        "endpoints": ["10.0.0.5:5432", "[2001:db8::5]:5432"],
        "portMappings": [{ "name": "db", "containerPort": 5432 }],
    }));
    assert_eq!(service.task, None);
    assert_eq!(service.desired_count, 0);
    assert_eq!(
        service.external_endpoints,
        ["10.0.0.5:5432".parse::<std::net::SocketAddr>().unwrap(), "[2001:db8::5]:5432".parse().unwrap()]
    );
    let errors = errors(|v| v["endpoints"] = json!(["10.0.0.5:5432"]));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "command",
            "desiredCount",
            "healthCheck",
            "healthCheckGracePeriodSeconds",
            "deploymentConfiguration"
        ]
    );
    assert!(errors[0].message.contains("runs no tasks"), "{}", errors[0].message);
    rejects(
        |v| {
            *v = json!({ "endpoints": ["db.example.com:5432"] });
        },
        "endpoints[0]",
        &["host name", "does not resolve"],
    );
    rejects(|v| *v = json!({ "endpoints": ["10.0.0.5"] }), "endpoints[0]", &["IP:PORT"]);
    rejects(
        |v| *v = json!({ "endpoints": ["10.0.0.5:1", "10.0.0.5:1"] }),
        "endpoints[1]",
        &["list each endpoint once"],
    );
}

#[test]
fn published_ports_carry_their_mapping() {
    let mut value = payment();
    value["publish"] = json!([{ "portName": "api", "hostPort": 8080 }]);
    let publish = valid(value).publish;
    assert_eq!(
        publish,
        [PublishPort {
            port_name: "api".into(),
            host_port: 8080,
            container_port: 3001,
            app_protocol: AppProtocol::Http
        }]
    );
}

// ---- mutual TLS and allowFrom ----------------------------------------------------------------

#[test]
fn tls_is_on_unless_a_port_turns_it_off() {
    let mut value = payment();
    value["portMappings"] = json!([
        { "name": "api", "containerPort": 3001, "appProtocol": "http" },
        { "name": "admin", "containerPort": 3002, "appProtocol": "http" },
        { "name": "raw", "containerPort": 3003 }
    ]);
    value["publish"] = json!([{ "portName": "admin", "hostPort": 8080 }]);
    let tls = |service: &Service| -> Vec<bool> { service.ports.iter().map(|p| p.tls).collect() };
    // A port with an entry, a port only published, a port with neither: all TLS.
    let service = valid(value.clone());
    assert_eq!(tls(&service), [true, true, true]);
    assert_eq!(service.allow_from, None);

    for (written, on) in
        [(json!({}), true), (json!({ "enabled": true }), true), (json!({ "enabled": false }), false)]
    {
        value["serviceConnectConfiguration"]["services"][0]["tls"] = written.clone();
        let service = valid(value.clone());
        assert_eq!(tls(&service), [on, true, true], "tls: {written}");
        assert_eq!(service.port("api").map(|p| p.tls), Some(on));
    }
    // Service Connect off changes nothing: every task still has its sidecar.
    value["serviceConnectConfiguration"]["enabled"] = json!(false);
    assert_eq!(tls(&valid(value)), [false, true, true]);
}

#[test]
fn tls_takes_only_enabled_and_says_that_the_ca_is_built_in() {
    let at = "serviceConnectConfiguration.services[0].tls";
    for (field, value) in [
        ("issuerCertificateAuthority", json!({ "awsPcaAuthorityArn": "arn:aws:acm-pca:…" })),
        ("kmsKey", json!("arn:aws:kms:…")),
        ("roleArn", json!("arn:aws:iam::…")),
    ] {
        rejects(
            |v| {
                v["serviceConnectConfiguration"]["services"][0]["tls"] =
                    json!({ "enabled": true, field: value })
            },
            &format!("{at}.{field}"),
            &["AWS-specific", "tether's certificate authority is built in", &format!("remove `{field}`")],
        );
    }
    let mut value = payment();
    value["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enable": true });
    let e = serde_json::from_value::<ServiceSpec>(value).unwrap_err().to_string();
    assert!(e.contains("unknown field `enable`") && e.contains("`enabled`"), "{e}");
}

#[test]
fn allow_from_is_carried_as_written() {
    let mut value = payment();
    value["allowFrom"] = json!(["orders", "payment", "Billing_2"]);
    value["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enabled": true });
    let service = valid(value.clone());
    assert_eq!(service.allow_from, Some(vec!["orders".into(), "payment".into(), "Billing_2".into()]));
    assert_eq!(serde_json::to_value(spec(value.clone())).unwrap(), value, "serializes back as written");
    // Nobody but the edge: a service reached only through `publish`.
    value["allowFrom"] = json!([]);
    assert_eq!(valid(value).allow_from, Some(Vec::new()));
}

#[test]
fn allow_from_rules() {
    rejects(|v| v["allowFrom"] = json!(["orders", "-x"]), "allowFrom[1]", &["not a valid service name"]);
    rejects(
        |v| v["allowFrom"] = json!(["orders", "frontend", "orders"]),
        "allowFrom[2]",
        &["also allowFrom[0]", "list each service once"],
    );
    rejects(
        |v| {
            v["allowFrom"] = json!(["orders"]);
            v["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enabled": false });
        },
        "allowFrom",
        &["allowFrom needs tls: the caller's identity comes from its certificate", "enabled: false"],
    );
    rejects(
        |v| {
            *v = json!({ "command": ["./web"], "allowFrom": ["orders"] });
        },
        "allowFrom",
        &["no port mappings"],
    );
    // One TLS port is enough to check callers on.
    let mut value = payment();
    value["portMappings"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "metrics", "containerPort": 9100, "appProtocol": "http" }));
    value["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enabled": false });
    value["allowFrom"] = json!(["orders"]);
    valid(value);
}

#[test]
fn an_external_service_has_neither_tls_nor_allow_from() {
    let external = json!({
        "endpoints": ["10.0.0.5:5432"],
        "portMappings": [{ "name": "db", "containerPort": 5432 }],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "db", "clientAliases": [{ "port": 5432 }] }] }
    });
    assert!(!valid(external.clone()).ports[0].tls, "its endpoints have no sidecar");
    rejects(
        |v| {
            *v = external.clone();
            v["serviceConnectConfiguration"]["services"][0]["tls"] = json!({ "enabled": true });
        },
        "serviceConnectConfiguration.services[0].tls",
        &["outside the mesh", "no sidecar"],
    );
    rejects(
        |v| {
            *v = external.clone();
            v["allowFrom"] = json!(["orders"]);
        },
        "allowFrom",
        &["outside the mesh", "`allowFrom` has no meaning"],
    );
}

#[test]
fn a_bundle_is_a_sha256_reference_and_part_of_the_task_fingerprint() {
    let mut value = payment();
    let plain = crate::rollout::fingerprint(&valid(value.clone())).unwrap();
    value["bundle"] = json!(format!("sha256:{}", "0a".repeat(32)));
    let first = crate::rollout::fingerprint(&valid(value.clone())).unwrap();
    value["bundle"] = json!(format!("sha256:{}", "0b".repeat(32)));
    let second = crate::rollout::fingerprint(&valid(value.clone())).unwrap();
    assert!(plain != first && first != second, "a changed folder rolls out new tasks");
    assert!(!plain.contains("bundle"), "specs without one keep their fingerprint");
    rejects(|v| v["bundle"] = json!("sha256:xyz"), "bundle", &["64 lowercase hex digits"]);
}
