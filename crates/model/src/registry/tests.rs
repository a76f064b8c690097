use serde_json::json;

use super::*;
use crate::spec::ServiceSpec;

fn instance(id: &str, health: Health) -> Instance {
    Instance {
        id: id.into(),
        task: id.into(),
        address: "10.0.0.1".parse().unwrap(),
        port: 15001,
        app_protocol: AppProtocol::Http,
        health,
        attributes: BTreeMap::new(),
        port_name: None,
        lease: None,
        revision: 1,
    }
}

fn ids(selected: Vec<&Instance>) -> Vec<&str> {
    selected.into_iter().map(|i| i.id.as_str()).collect()
}

#[test]
fn health_filters() {
    let all = vec![
        instance("a", Health::Healthy),
        instance("b", Health::Unhealthy),
        instance("c", Health::Starting),
        instance("d", Health::Draining),
        instance("e", Health::Healthy),
    ];
    assert_eq!(ids(HealthFilter::Healthy.instances(&all)), ["a", "e"]);
    assert_eq!(ids(HealthFilter::Unhealthy.instances(&all)), ["b"]);
    assert_eq!(ids(HealthFilter::All.instances(&all)), ["a", "b", "c", "d", "e"]);
    assert_eq!(ids(HealthFilter::HealthyOrElseAll.instances(&all)), ["a", "e"]);

    let none_healthy = vec![instance("b", Health::Unhealthy), instance("c", Health::Starting)];
    assert_eq!(ids(HealthFilter::HealthyOrElseAll.instances(&none_healthy)), ["b", "c"]);
    assert!(HealthFilter::Healthy.instances(&none_healthy).is_empty());
    assert!(HealthFilter::HealthyOrElseAll.instances(&[]).is_empty());
}

#[test]
fn health_filters_parse_and_print_by_their_cloud_map_names() {
    for name in HealthFilter::NAMES {
        let filter: HealthFilter = name.parse().unwrap();
        assert_eq!(filter.to_string(), name);
        assert_eq!(serde_json::to_value(filter).unwrap(), json!(name));
    }
    let e = "healthy".parse::<HealthFilter>().unwrap_err();
    assert!(e.contains("`healthy`") && e.contains("HEALTHY_OR_ELSE_ALL"), "{e}");
    assert_eq!(HealthFilter::default(), HealthFilter::All);
}

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value::<ServiceSpec>(value).unwrap().validate("payment", "shop.local").unwrap()
}

fn two_ports() -> Service {
    service(json!({
        "portMappings": [
            { "name": "api", "containerPort": 3000, "appProtocol": "grpc" },
            { "name": "metrics", "containerPort": 9000, "appProtocol": "http" }
        ],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "api" }, { "portName": "metrics" }] }
    }))
}

fn registration(value: serde_json::Value) -> Registration {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_registration_takes_its_port_and_protocol_from_the_service() {
    let one = service(json!({
        "portMappings": [{ "name": "api", "containerPort": 3000, "appProtocol": "http2" }],
        "serviceConnectConfiguration": { "enabled": true, "services": [{ "portName": "api" }] }
    }));
    let i = registration(json!({ "address": "10.0.0.7", "port": 15001, "health": "STARTING" }))
        .validate("t1", &one)
        .unwrap();
    assert_eq!(
        (i.task.as_str(), i.port_name.as_deref(), i.app_protocol),
        ("t1", Some("api"), AppProtocol::Http2)
    );

    let i = registration(
        json!({ "address": "::1", "port": 1, "health": "HEALTHY", "portName": "metrics", "task": "task-9" }),
    )
    .validate("t2", &two_ports())
    .unwrap();
    assert_eq!((i.task.as_str(), i.app_protocol), ("task-9", AppProtocol::Http));

    // A service without ports takes what it is told, tcp by default.
    let bare = service(json!({}));
    let i = registration(json!({ "address": "10.0.0.7", "port": 5432, "health": "HEALTHY" }))
        .validate("db", &bare)
        .unwrap();
    assert_eq!((i.port_name, i.app_protocol), (None, AppProtocol::Tcp));
}

#[track_caller]
fn rejects(value: serde_json::Value, service: &Service, field: &str, fragment: &str) {
    let errors = registration(value).validate("t1", service).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, field);
    assert!(errors[0].message.contains(fragment), "`{fragment}` missing from `{}`", errors[0].message);
}

#[test]
fn registration_rules() {
    let base = json!({ "address": "10.0.0.7", "port": 15001, "health": "HEALTHY", "portName": "api" });
    let with = |key: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let svc = two_ports();
    rejects(with("portName", serde_json::Value::Null), &svc, "portName", "one of api, metrics");
    rejects(with("portName", json!("web")), &svc, "portName", "expected one of: api, metrics");
    rejects(with("appProtocol", json!("http")), &svc, "appProtocol", "speaks grpc");
    rejects(with("port", json!(0)), &svc, "port", "1 to 65535");
    rejects(with("task", json!("")), &svc, "task", "1 to 255");
    rejects(with("lease", json!(-3)), &svc, "lease", "POST /v1/leases");
    rejects(with("attributes", json!({ "zone": "x".repeat(1025) })), &svc, "attributes.zone", "at most 1024");
    let many: BTreeMap<String, String> = (0..31).map(|i| (format!("k{i}"), "v".into())).collect();
    rejects(with("attributes", json!(many)), &svc, "attributes", "at most 30");
    assert!(registration(with("appProtocol", json!("grpc"))).validate("t1", &svc).is_ok());
}

#[test]
fn a_registration_rejects_unknown_fields_and_bad_values() {
    let e = serde_json::from_value::<Registration>(
        json!({ "address": "10.0.0.7", "port": 1, "health": "HEALTHY", "weight": 3 }),
    );
    assert!(e.unwrap_err().to_string().contains("unknown field `weight`"));
    let e =
        serde_json::from_value::<Registration>(json!({ "address": "host", "port": 1, "health": "HEALTHY" }));
    assert!(e.unwrap_err().to_string().contains("IP address"));
    let e =
        serde_json::from_value::<Registration>(json!({ "address": "10.0.0.7", "port": 1, "health": "OK" }));
    assert!(e.unwrap_err().to_string().contains("HEALTHY"));
}

#[test]
fn names() {
    for good in ["shop.local", "shop", "a_b-c.d1"] {
        assert!(check_namespace_name(good).is_ok(), "{good}");
    }
    for bad in ["", "Shop.local", "shop..local", ".shop", "shop.", "-shop", "shop/x", &"a".repeat(64)] {
        assert!(check_namespace_name(bad).is_err(), "{bad}");
    }
    for good in ["payment", "Payment_2", "a-b"] {
        assert!(check_service_name(good).is_ok(), "{good}");
    }
    for bad in ["", "-a", "a.b", "a/b", "a b", &"a".repeat(256)] {
        assert!(check_service_name(bad).is_err(), "{bad}");
    }
    for good in ["t1", "task-7.abc_1", "0"] {
        assert!(check_instance_id(good).is_ok(), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "-x", "a:b"] {
        assert!(check_instance_id(bad).is_err(), "{bad}");
    }
}
