use super::*;

const GOOD: &str = "\
service: shop
admin: 127.0.0.1:9901
inbound:
  - { portName: api, listen: 0.0.0.0:15001, target: 127.0.0.1:3001, appProtocol: http }
outbound:
  - dnsName: payment-service
    listen: 127.255.0.1:80
    appProtocol: http
    endpoints: [\"127.0.0.1:18081\", { address: \"127.0.0.1:18082\", mesh: true }]
    timeout: { idleTimeoutSeconds: 0, perRequestTimeoutSeconds: 2.5 }
  - dnsName: db
    listen: 127.255.0.2:5432
    endpoints: [\"127.0.0.1:5432\"]
";

fn errors(text: &str) -> Vec<ConfigError> {
    ProxyConfig::parse("proxy.yaml", text).expect_err("config should be rejected").0
}

fn only_error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

#[test]
fn parses_a_full_config_with_defaults() {
    let c = ProxyConfig::parse("proxy.yaml", GOOD).unwrap();
    assert_eq!(c.service, "shop");
    assert_eq!(c.drain_wait_seconds, DRAIN_WAIT);
    assert_eq!(c.max_downstream_connections, 16_384);
    let api = &c.inbound[0];
    assert_eq!((api.discovery_name.as_str(), api.app_protocol), ("api", AppProtocol::Http));
    assert_eq!(api.timeout.idle(), Some(Duration::from_secs(300)));
    let pay = &c.outbound[0];
    assert_eq!(pay.load_balancing, LoadBalancing::P2cEwma);
    assert_eq!(
        pay.endpoints[1],
        Endpoint {
            address: "127.0.0.1:18082".parse().unwrap(),
            mesh: true,
            health: Health::Healthy,
            identity: None
        }
    );
    assert_eq!(pay.retry_policy.max_retries, 2);
    assert_eq!(pay.retry_policy.retry_on, [503]);
    assert_eq!(pay.outlier_detection.consecutive_gateway_failures, 5);
    assert_eq!(pay.limits.max_requests, 1024);
    assert_eq!(pay.timeout.idle(), None, "0 disables the idle timeout");
    assert_eq!(pay.timeout.per_request(), Some(Duration::from_millis(2500)));
    assert_eq!(pay.timeout.connect(), Duration::from_secs(1));
    let db = &c.outbound[1];
    assert_eq!(db.app_protocol, AppProtocol::Tcp, "absent appProtocol means tcp");
    assert_eq!(db.timeout.idle(), Some(Duration::from_secs(3600)));
}

#[test]
fn json_is_accepted() {
    let json = r#"{"admin": "127.0.0.1:9901", "outbound": [{"dnsName": "a", "listen": "127.0.0.1:80",
        "appProtocol": "grpc", "endpoints": [{"address": "127.0.0.1:1", "mesh": true}]}]}"#;
    let c = ProxyConfig::parse("proxy.json", json).unwrap();
    assert_eq!(c.outbound[0].app_protocol, AppProtocol::Grpc);
    assert!(c.outbound[0].endpoints[0].mesh);
}

#[test]
fn bad_address_names_line_and_field() {
    let e = only_error(&GOOD.replace("127.255.0.1:80", "127.255.0.1:99999"));
    assert_eq!((e.line, e.field.as_str()), (7, "outbound[0].listen"));
    assert!(e.message.contains("IP:PORT"), "{e}");
    assert!(e.to_string().starts_with("proxy.yaml:7:"), "{e}");
}

#[test]
fn unknown_field_lists_the_known_ones() {
    let e = only_error(&GOOD.replace("    appProtocol: http\n", "    appProtocl: http\n"));
    assert_eq!((e.line, e.field.as_str()), (8, "outbound[0].appProtocl"));
    assert!(e.message.contains("appProtocol"), "{e}");
}

#[test]
fn unknown_protocol_is_rejected_at_its_line() {
    let e = only_error(&GOOD.replace("appProtocol: http\n", "appProtocol: ftp\n"));
    assert_eq!(e.line, 8, "{e}");
    assert!(e.message.contains("ftp"), "{e}");
}

#[test]
fn per_request_timeout_on_tcp_is_an_error() {
    let text = GOOD.to_owned() + "    timeout: { perRequestTimeoutSeconds: 5 }\n";
    let e = only_error(&text);
    assert_eq!((e.line, e.field.as_str()), (14, "outbound[1].timeout.perRequestTimeoutSeconds"));
    assert!(e.message.contains("appProtocol"), "{e}");
}

#[test]
fn duplicate_listen_points_at_the_second_use() {
    let e = only_error(&GOOD.replace("127.255.0.2:5432", "127.255.0.1:80"));
    assert_eq!((e.line, e.field.as_str()), (12, "outbound[1].listen"));
    assert!(e.message.contains("outbound[0].listen"), "{e}");
}

#[test]
fn empty_endpoints_and_bad_names_are_all_reported() {
    let text = GOOD
        .replace("endpoints: [\"127.0.0.1:5432\"]", "endpoints: []")
        .replace("dnsName: db", "dnsName: DB!");
    let all = errors(&text);
    let fields: Vec<_> = all.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["outbound[1].dnsName", "outbound[1].endpoints"]);
}

#[test]
fn negative_and_non_numeric_timeouts() {
    let e = only_error(&GOOD.replace("perRequestTimeoutSeconds: 2.5", "perRequestTimeoutSeconds: -1"));
    assert!(e.message.contains("out of range"), "{e}");
    let e = only_error(&GOOD.replace("perRequestTimeoutSeconds: 2.5", "perRequestTimeoutSeconds: soon"));
    assert_eq!(e.line, 10, "{e}");
    assert!(e.message.contains("not a number"), "{e}");
}

#[test]
fn syntax_errors_duplicate_keys_and_missing_fields() {
    let e = only_error("admin: [unclosed\n");
    assert!(e.message.contains("not valid YAML"), "{e}");
    let e = only_error("admin: 127.0.0.1:1\nadmin: 127.0.0.1:2\noutbound: []\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("twice"), "{e}");
    let e = only_error("outbound:\n  - { listen: 127.0.0.1:1, endpoints: [] }\nadmin: 127.0.0.1:2\n");
    assert!(e.message.contains("dnsName"), "{e}");
    let e = only_error("");
    assert!(e.message.contains("empty"), "{e}");
}

#[test]
fn mesh_must_be_a_boolean() {
    let e = only_error(&GOOD.replace("mesh: true", "mesh: maybe"));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.message.contains("true"), "{e}");
}

#[test]
fn effective_config_serializes_with_defaults() {
    let c = ProxyConfig::parse("proxy.yaml", GOOD).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["outbound"][0]["timeout"]["perRequestTimeoutSeconds"], 2.5);
    assert_eq!(json["inbound"][0]["timeout"]["idleTimeoutSeconds"], 300.0);
    assert_eq!(json["outbound"][0]["loadBalancing"], "p2c-ewma");
}

#[test]
fn resilience_settings_are_validated() {
    let text = GOOD.to_owned()
        + "    retryPolicy: { maxRetries: 11, retryOn: [404] }\n    outlierDetection: { maxEjectionPercent: 120 }\n    limits: { maxRequests: 0 }\n";
    let fields: Vec<_> = errors(&text).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "outbound[1].retryPolicy.maxRetries",
            "outbound[1].retryPolicy.retryOn[0]",
            "outbound[1].outlierDetection.maxEjectionPercent",
            "outbound[1].limits.maxRequests",
        ]
    );
}

#[test]
fn endpoint_health_is_read() {
    let c = ProxyConfig::parse("proxy.yaml", &GOOD.replace("mesh: true", "mesh: true, health: UNHEALTHY"))
        .unwrap();
    assert_eq!(c.outbound[0].endpoints[1].health, Health::Unhealthy);
    let e = only_error(&GOOD.replace("mesh: true", "mesh: true, health: SICK"));
    assert!(e.message.contains("HEALTHY"), "{e}");
}

#[test]
fn max_downstream_connections_is_at_least_one() {
    let c = ProxyConfig::parse("proxy.yaml", &format!("maxDownstreamConnections: 200\n{GOOD}")).unwrap();
    assert_eq!(c.max_downstream_connections, 200);
    let e = only_error(&format!("maxDownstreamConnections: 0\n{GOOD}"));
    assert_eq!(e.field, "maxDownstreamConnections");
    assert!(e.message.contains("at least 1"), "{e}");
    let e = only_error(&format!("maxDownstreamConnections: -1\n{GOOD}"));
    assert!(e.to_string().contains("maxDownstreamConnections"), "{e}");
}

#[test]
fn the_effective_config_reads_back_as_the_same_config() {
    let c = ProxyConfig::parse("proxy.yaml", GOOD).unwrap();
    let effective = serde_json::to_string(&c).unwrap();
    let again =
        ProxyConfig::parse("effective.json", &effective).expect("the effective config is valid input");
    assert_eq!(again, c);
    assert!(c.outbound[1].timeout.per_request().is_none(), "tcp has no per-request timeout");
}

#[test]
fn mutual_tls_settings_are_read_and_checked() {
    let text = "\
admin: 127.0.0.1:9901
inbound:
  - portName: api
    listen: 0.0.0.0:15001
    target: 127.0.0.1:3001
    tls: { allowFrom: [\"spiffe://shop/orders\", \"spiffe://shop/_edge\"] }
  - { portName: any, listen: 0.0.0.0:15002, target: 127.0.0.1:3002, tls: {} }
outbound:
  - dnsName: payment
    listen: 127.255.0.1:80
    endpoints: [{ address: \"127.0.0.1:15001\", mesh: true, identity: \"spiffe://shop/payment\" }]
";
    let c = ProxyConfig::parse("proxy.yaml", text).unwrap();
    let (orders, edge, web) = (
        SpiffeId::new("shop", "orders").unwrap(),
        SpiffeId::edge("shop").unwrap(),
        SpiffeId::new("shop", "web").unwrap(),
    );
    let api = c.inbound[0].tls.as_ref().unwrap();
    assert_eq!(api.allow_from.as_deref(), Some(&[orders.clone(), edge][..]));
    assert!(api.allows(&orders) && !api.allows(&web));
    assert!(c.inbound[1].tls.as_ref().unwrap().allows(&web), "no allowFrom: any peer of the bundle");
    assert_eq!(c.outbound[0].endpoints[0].identity, Some(SpiffeId::new("shop", "payment").unwrap()));
    // And back: the effective config reads as the same config.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(ProxyConfig::parse("effective.json", &json).unwrap(), c);

    let bad = errors(
        "admin: 127.0.0.1:9901
inbound:
  - { portName: api, listen: 0.0.0.0:1, target: 127.0.0.1:2, tls: { allowFrom: [\"orders\"] } }
outbound:
  - dnsName: payment
    listen: 127.255.0.1:80
    endpoints:
      - { address: \"127.0.0.1:1\", mesh: true, identity: \"spiffe://shop/a/b\" }
      - { address: \"127.0.0.1:2\", identity: \"spiffe://shop/b\" }
",
    );
    let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["inbound[0].tls.allowFrom[0]", "outbound[0].endpoints[0].identity", "outbound[0].endpoints[1].mesh"],
        "{bad:#?}"
    );
    assert!(bad[0].message.contains("does not start with `spiffe://`"), "{}", bad[0].message);
}
