use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::spec::{Alias, HealthCommand, NetworkMode, PublishPort};

/// The example of design §3.
const DESIGN_EXAMPLE: &str = include_str!("testdata/design_example.yaml");

fn parse(text: &str) -> App {
    App::parse("tether.yaml", text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// Every error as `line field: message`, in order.
fn errors(text: &str) -> Vec<ConfigError> {
    match App::parse("tether.yaml", text) {
        Ok(app) => panic!("accepted: {app:#?}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// The text gives exactly one error, on `line` at `field`, whose message holds every fragment.
#[track_caller]
fn rejects(text: &str, line: usize, field: &str, fragments: &[&str]) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let e = &errors[0];
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
    for fragment in fragments {
        assert!(e.message.contains(fragment), "`{fragment}` missing from `{}`", e.message);
    }
}

#[test]
fn the_design_example_parses_into_its_effective_values() {
    let app = parse(DESIGN_EXAMPLE);
    assert_eq!(app.namespace, "shop.local");
    let names: Vec<&str> = app.services.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["frontend", "payment"], "in name order");

    let payment = app.service("payment").unwrap();
    assert_eq!(payment.desired_count, 2);
    let task = payment.task.as_ref().unwrap();
    assert_eq!(task.command, ["python3", "payment.py"]);
    assert_eq!(task.network_mode, NetworkMode::Sandbox);
    assert_eq!(task.grace_period, Duration::from_secs(30));
    let check = task.health_check.as_ref().unwrap();
    assert_eq!(check.command, HealthCommand::Shell("python3 health.py".into()));
    assert_eq!(check.interval, Duration::from_secs(5));
    assert_eq!(check.timeout, Duration::from_secs(2));
    assert_eq!(check.retries, 3);
    assert_eq!(check.start_period, Duration::from_secs(5));
    assert_eq!((task.deployment.minimum_healthy_percent, task.deployment.maximum_percent), (100, 200));
    assert!(task.deployment.circuit_breaker && task.deployment.rollback);
    let [d] = payment.discovery.as_slice() else { panic!("{:?}", payment.discovery) };
    assert_eq!(d.discovery_name, "payment-service");
    assert_eq!(d.client_aliases, [Alias { dns_name: "payment-service".into(), port: 80 }]);
    assert!(payment.publish.is_empty() && payment.external_endpoints.is_empty());

    let frontend = app.service("frontend").unwrap();
    assert_eq!(frontend.desired_count, 1);
    assert!(frontend.service_connect && frontend.discovery.is_empty());
    assert_eq!(
        frontend.publish,
        [PublishPort {
            port_name: "web".into(),
            host_port: 8080,
            container_port: 8000,
            app_protocol: AppProtocol::Http
        }]
    );
    let task = frontend.task.as_ref().unwrap();
    assert_eq!(task.health_check, None);
    assert_eq!(task.grace_period, Duration::ZERO);
    assert_eq!(task.deployment, crate::spec::DeploymentPolicy::default());
}

#[test]
fn json_is_accepted_and_the_file_serializes_back_as_written() {
    let spec: AppSpec = Source::parse("tether.yaml", DESIGN_EXAMPLE).unwrap().deserialize().unwrap();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let from_json = App::parse("tether.json", &json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_json, parse(DESIGN_EXAMPLE));
    let again: AppSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(again, spec);
}

const EXTERNAL: &str = "namespace: shop.local
services:
  orders:
    command: [./orders]
externalServices:
  db:
    endpoints: [\"10.0.0.5:5432\", \"10.0.0.6:5433\"]
    clientAliases: [{ port: 5432, dnsName: db }, { port: 5432 }]
";

#[test]
fn an_external_service_becomes_a_service_with_endpoints() {
    let app = parse(EXTERNAL);
    let (spec, db) = &app.services[0];
    assert_eq!(db.name, "db");
    assert_eq!(spec.endpoints, ["10.0.0.5:5432", "10.0.0.6:5433"]);
    assert_eq!(spec.port_mappings[0].name, "external");
    assert_eq!(db.task, None);
    assert_eq!(db.desired_count, 0);
    let endpoints: Vec<SocketAddr> = vec!["10.0.0.5:5432".parse().unwrap(), "10.0.0.6:5433".parse().unwrap()];
    assert_eq!(db.external_endpoints, endpoints);
    assert!(db.service_connect);
    let d = &db.discovery[0];
    assert_eq!((d.discovery_name.as_str(), d.container_port, d.app_protocol), ("db", 5432, AppProtocol::Tcp));
    assert_eq!(
        d.client_aliases,
        [Alias { dns_name: "db".into(), port: 5432 }, Alias { dns_name: "db.shop.local".into(), port: 5432 }]
    );
    // The converted spec is valid on its own (as the API would take it).
    assert_eq!(spec.validate("db", "shop.local").as_ref(), Ok(db));
}

#[test]
fn an_external_service_is_checked_in_its_own_terms() {
    rejects(
        &EXTERNAL.replace("10.0.0.6:5433", "db.example.com:5432"),
        7,
        "externalServices.db.endpoints[1]",
        &["host name", "does not resolve", "10.0.0.5:5432"],
    );
    let empty =
        errors(&EXTERNAL.replace("endpoints: [\"10.0.0.5:5432\", \"10.0.0.6:5433\"]", "endpoints: []"));
    let fields: Vec<&str> = empty.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["externalServices.db.endpoints"], "{empty:#?}");
    rejects(
        &EXTERNAL
            .replace("clientAliases: [{ port: 5432, dnsName: db }, { port: 5432 }]", "appProtocol: http"),
        6,
        "externalServices.db.clientAliases",
        &["at least one client alias"],
    );
    rejects(
        &EXTERNAL.replace("dnsName: db }", "dnsName: DB }"),
        8,
        "externalServices.db.clientAliases[0].dnsName",
        &["not a valid DNS name"],
    );
    rejects(
        &format!("{EXTERNAL}    timeout: {{ perRequestTimeoutSeconds: 5 }}\n"),
        9,
        "externalServices.db.timeout.perRequestTimeoutSeconds",
        &["set `appProtocol` to http"],
    );
    rejects(&EXTERNAL.replace("  db:", "  Db:"), 6, "externalServices.Db", &["not a valid service name"]);
    // No error ever names a field the user did not write.
    let errors = errors(
        &EXTERNAL
            .replace("10.0.0.5:5432", "10.0.0.5:0")
            .replace("{ port: 5432 }", "{ port: 0 }")
            .replace("  db:", "  -db:"),
    );
    assert!(
        errors
            .iter()
            .all(|e| !e.field.contains("serviceConnectConfiguration") && !e.field.contains("portMappings"))
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn names_are_unique_across_services_and_external_services() {
    let text = EXTERNAL.replace("  orders:", "  db:");
    rejects(&text, 6, "externalServices.db", &["also the name of a service"]);
}

#[test]
fn conflicts_between_services_are_placed_on_the_later_one() {
    let text = "namespace: shop.local
services:
  billing:
    portMappings: [{ name: api, containerPort: 80, appProtocol: http }]
    publish: [{ portName: api, hostPort: 8080 }]
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: api, discoveryName: pay, clientAliases: [{ port: 80, dnsName: pay }] }]
  payment:
    portMappings: [{ name: api, containerPort: 80, appProtocol: http }]
    publish: [{ portName: api, hostPort: 8080 }]
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: api, discoveryName: pay, clientAliases: [{ port: 80, dnsName: pay }] }]
externalServices:
  zdb:
    endpoints: [\"10.0.0.5:80\"]
    clientAliases: [{ port: 80, dnsName: pay }]
";
    let errors = errors(text);
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (11, "services.payment.publish[0].hostPort"),
            (14, "services.payment.serviceConnectConfiguration.services[0].discoveryName"),
            (14, "services.payment.serviceConnectConfiguration.services[0].clientAliases[0].dnsName"),
            (18, "externalServices.zdb.clientAliases[0].dnsName"),
        ],
        "{errors:#?}"
    );
    assert!(errors[0].message.contains("already published by service `billing`"), "{}", errors[0].message);
    assert!(errors[3].message.contains("`pay:80` is already a client alias of service `billing`"));
}

#[test]
fn every_error_of_the_file_is_reported_in_file_order() {
    let text = "namespace: Shop
services:
  web:
    command: [./web]
    healthCheck: { command: [CMD-SHELL, a, b], interval: 0 }
  api:
    command: [./api]
    networkMode: bridge
    serviceConnectConfiguration: { enabled: true, namespace: other.local }
";
    let errors = errors(text);
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (1, "namespace"),
            (5, "services.web.healthCheck.command"),
            (5, "services.web.healthCheck.interval"),
            (8, "services.api.networkMode"),
            (9, "services.api.serviceConnectConfiguration.namespace"),
        ],
        "{errors:#?}"
    );
}

#[test]
fn syntax_type_and_shape_errors_stop_at_the_first() {
    rejects(
        "namespace: shop.local\nservices:\n  web:\n    desiredcount: 2\n",
        4,
        "services.web.desiredcount",
        &["unknown field `desiredcount`", "desiredCount"],
    );
    let e = &errors(
        "namespace: shop.local\nservices:\n  web:\n    command: [\"a#\", 'b''[' # [\n    desiredCount: 2\n",
    )[0];
    assert!(e.message.contains("not valid YAML"), "{e}");
    assert!(e.message.contains("the `[` at line 4 column 14 is still open here: is a `]` missing?"), "{e}");
    rejects("services: {}\n", 1, "", &["missing field `namespace`", "namespace: shop.local"]);
    rejects("\n", 1, "", &["empty", "namespace: shop.local"]);
    rejects("namespace: shop.local\n", 1, "services", &["no services"]);
}

#[test]
fn a_file_that_cannot_be_read_is_one_error() {
    let errors = App::load(Path::new("/nonexistent/tether.yaml")).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].file, "/nonexistent/tether.yaml");
    assert!(errors.0[0].message.contains("cannot read"), "{}", errors.0[0]);
}

const CALLERS: &str = "namespace: shop.local
services:
  orders:
    command: [./orders]
  payment:
    command: [./payment]
    portMappings: [{ name: api, containerPort: 3001, appProtocol: http }]
    allowFrom: [orders, payment]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: api
          tls: { enabled: true }
externalServices:
  db:
    endpoints: [\"10.0.0.5:5432\"]
    clientAliases: [{ port: 5432 }]
";

#[test]
fn allow_from_names_services_of_the_file() {
    let app = parse(CALLERS);
    let payment = app.service("payment").unwrap();
    assert_eq!(payment.allow_from, Some(vec!["orders".into(), "payment".into()]));
    assert!(payment.ports[0].tls);
    assert_eq!(app.service("orders").unwrap().allow_from, None);
    assert!(!app.service("db").unwrap().ports[0].tls, "an external service has no sidecar");

    rejects(
        &CALLERS.replace("[orders, payment]", "[orders, billing]"),
        8,
        "services.payment.allowFrom[1]",
        &["`billing` names no service of this file", "expected one of: orders, payment"],
    );
    rejects(
        &CALLERS.replace("[orders, payment]", "[db]"),
        8,
        "services.payment.allowFrom[0]",
        &["`db` is an external service", "no certificate"],
    );
    // A name that is no service name is said once, by the service's own check.
    rejects(
        &CALLERS.replace("[orders, payment]", "[orders, -x]"),
        8,
        "services.payment.allowFrom[1]",
        &["not a valid service name"],
    );
    rejects(
        &CALLERS.replace("enabled: true }", "enabled: false }"),
        8,
        "services.payment.allowFrom",
        &["allowFrom needs tls: the caller's identity comes from its certificate"],
    );
}

#[test]
fn aws_tls_fields_are_placed_where_they_were_written() {
    let text = CALLERS.replace(
        "          tls: { enabled: true }\n",
        "          tls:\n            issuerCertificateAuthority:\n              awsPcaAuthorityArn: arn:aws:acm-pca:us-east-1:123:certificate-authority/x\n            kmsKey: arn:aws:kms:us-east-1:123:key/y\n",
    );
    let errors = errors(&text);
    let found: Vec<(usize, String)> = errors.iter().map(|e| (e.line, e.field.clone())).collect();
    let at = "services.payment.serviceConnectConfiguration.services[0].tls";
    assert_eq!(found, [(14, format!("{at}.issuerCertificateAuthority")), (16, format!("{at}.kmsKey"))]);
    assert!(errors[0].message.contains("tether's certificate authority is built in"), "{}", errors[0]);
}
