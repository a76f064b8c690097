//! `tether validate` on broken spec files (reliability A9): every mistake is reported with the
//! file, the line, the field, what is wrong and what would be right, and the exit status is 65
//! (EX_DATAERR). The real binary runs on small files in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// The example of design §3.
const DESIGN_EXAMPLE: &str = include_str!("../../crates/model/src/spec/testdata/design_example.yaml");

/// Runs `tether validate ARGS…` in `dir`.
fn validate_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(TETHER).arg("validate").args(args).current_dir(dir).output().unwrap()
}

/// Writes `spec` as tether.yaml in a fresh directory and validates it (the default file name).
fn validate(spec: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tether.yaml"), spec).unwrap();
    validate_in(dir.path(), args)
}

/// The spec is refused with status 65, and one of the lines printed is
/// `tether.yaml:LINE:COLUMN: FIELD: message` with a message holding every fragment.
#[track_caller]
fn rejects(spec: &str, line: usize, field: &str, fragments: &[&str]) {
    let output = validate(spec, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "stderr:\n{stderr}");
    let prefix = format!("tether.yaml:{line}:");
    let found = stderr.lines().find(|l| {
        l.starts_with(&prefix)
            && l.split_once(": ").is_some_and(|(_, rest)| rest.starts_with(&format!("{field}: ")))
    });
    let Some(found) = found else { panic!("no error at line {line} on `{field}` in:\n{stderr}") };
    for fragment in fragments {
        assert!(found.contains(fragment), "`{fragment}` missing from:\n{found}");
    }
}

#[test]
fn the_design_example_is_valid() {
    let output = validate(DESIGN_EXAMPLE, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), "tether.yaml: ok — namespace shop.local, 2 services (frontend, payment)");

    let output = validate(DESIGN_EXAMPLE, &["--output", "json"]);
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["errors"], serde_json::json!([]));
}

#[test]
fn a_client_alias_used_by_two_services() {
    let spec = "\
namespace: shop.local
services:
  billing:
    portMappings: [{ name: api, containerPort: 3000, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services: [{ portName: api, clientAliases: [{ port: 80, dnsName: payments }] }]
  payment:
    portMappings: [{ name: api, containerPort: 3001, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: api
          discoveryName: payment
          clientAliases: [{ port: 80, dnsName: payments }]
";
    rejects(
        spec,
        15,
        "services.payment.serviceConnectConfiguration.services[0].clientAliases[0].dnsName",
        &["`payments:80` is already a client alias of service `billing`", "must be unique"],
    );
}

#[test]
fn a_port_name_that_names_no_port_mapping() {
    let spec = "\
namespace: shop.local
services:
  payment:
    portMappings: [{ name: api, containerPort: 3001 }]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: http
";
    rejects(
        spec,
        8,
        "services.payment.serviceConnectConfiguration.services[0].portName",
        &["`http` names no port mapping", "expected one of: api"],
    );
}

#[test]
fn a_per_request_timeout_on_a_tcp_port() {
    let spec = "\
namespace: shop.local
services:
  db:
    portMappings: [{ name: pg, containerPort: 5432 }]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: pg
          timeout:
            perRequestTimeoutSeconds: 5
";
    rejects(
        spec,
        10,
        "services.db.serviceConnectConfiguration.services[0].timeout.perRequestTimeoutSeconds",
        &["port `pg` is tcp", "appProtocol", "http, http2 or grpc"],
    );
}

#[test]
fn a_bad_service_name() {
    let spec = "\
namespace: shop.local
services:
  Payment_Service:
    command: [./payment]
";
    rejects(spec, 3, "services.Payment_Service", &["not a valid service name", "a-z, 0-9"]);
}

#[test]
fn a_bad_dns_name() {
    let spec = "\
namespace: shop.local
services:
  payment:
    portMappings: [{ name: api, containerPort: 3001, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: api
          clientAliases:
            - port: 80
              dnsName: Payment/Service
";
    rejects(
        spec,
        11,
        "services.payment.serviceConnectConfiguration.services[0].clientAliases[0].dnsName",
        &["`Payment/Service` is not a valid DNS name", "e.g. `payment-service`"],
    );
}

#[test]
fn a_discovery_name_used_by_two_services() {
    let spec = "\
namespace: shop.local
services:
  payment:
    portMappings: [{ name: api, containerPort: 3001, appProtocol: http }]
    serviceConnectConfiguration: { enabled: true, services: [{ portName: api, discoveryName: pay }] }
  payment-v2:
    portMappings: [{ name: api, containerPort: 3002, appProtocol: http }]
    serviceConnectConfiguration:
      enabled: true
      services:
        - portName: api
          discoveryName: pay
";
    rejects(
        spec,
        12,
        "services.payment-v2.serviceConnectConfiguration.services[0].discoveryName",
        &["`pay` is already the discovery name of service `payment`", "choose another"],
    );
}

#[test]
fn endpoints_and_a_command_mixed_up() {
    let spec = "\
namespace: shop.local
services:
  legacy:
    endpoints: [\"10.0.0.7:8080\"]
    command: [./legacy]
";
    rejects(spec, 5, "services.legacy.command", &["runs no tasks", "remove `command`", "remove `endpoints`"]);
}

#[test]
fn a_health_check_that_is_neither_cmd_nor_cmd_shell() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment]
    healthCheck:
      command: [curl, -f, http://localhost/health]
";
    rejects(
        spec,
        6,
        "services.payment.healthCheck.command[0]",
        &["`curl` is not a kind of check", "[\"CMD-SHELL\", ", "[\"CMD\", "],
    );
}

#[test]
fn maximum_percent_out_of_range() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment]
    deploymentConfiguration:
      maximumPercent: 300
";
    rejects(
        spec,
        6,
        "services.payment.deploymentConfiguration.maximumPercent",
        &["300 is out of range", "100 to 200"],
    );
}

#[test]
fn a_host_port_published_twice() {
    let spec = "\
namespace: shop.local
services:
  admin:
    command: [./admin]
    portMappings: [{ name: web, containerPort: 9000, appProtocol: http }]
    publish: [{ portName: web, hostPort: 8080 }]
  frontend:
    command: [./frontend]
    portMappings: [{ name: web, containerPort: 8000, appProtocol: http }]
    publish:
      - portName: web
        hostPort: 8080
";
    rejects(
        spec,
        12,
        "services.frontend.publish[0].hostPort",
        &["host port 8080 is already published by service `admin`", "choose another"],
    );
}

#[test]
fn a_misspelt_field() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment]
    desiredcount: 2
";
    rejects(spec, 5, "services.payment.desiredcount", &["unknown field `desiredcount`", "desiredCount"]);
}

#[test]
fn a_yaml_syntax_error() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment
    desiredCount: 2
";
    let output = validate(spec, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert!(stderr.starts_with("tether.yaml:"), "{stderr}");
    assert!(stderr.contains("not valid YAML"), "{stderr}");
    assert!(stderr.contains("tether.yaml:5:17: not valid YAML: illegal placement of ':'"), "{stderr}");
    assert!(stderr.contains("the `[` at line 4 column 14 is still open here: is a `]` missing?"), "{stderr}");
}

#[test]
fn network_mode_bridge() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment]
    networkMode: bridge
";
    rejects(spec, 5, "services.payment.networkMode", &["`bridge` is not supported", "`awsvpc`", "`host`"]);
}

#[test]
fn an_external_endpoint_that_is_a_host_name() {
    let spec = "\
namespace: shop.local
services:
  orders:
    command: [./orders]
externalServices:
  db:
    endpoints:
      - 10.0.0.5:5432
      - db.example.com:5432
    clientAliases: [{ port: 5432, dnsName: db }]
";
    rejects(
        spec,
        9,
        "externalServices.db.endpoints[1]",
        &["`db.example.com:5432` is a host name", "does not resolve", "IP address"],
    );
}

#[test]
fn every_error_in_the_file_is_printed_one_per_line() {
    let spec = "\
namespace: shop.local
services:
  payment:
    command: [./payment]
    networkMode: bridge
    healthCheck: { command: [CMD], interval: 0 }
  Web:
    command: [./web]
";
    let output = validate(spec, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].starts_with("tether.yaml:5:18: services.payment.networkMode: "), "{stderr}");
    assert!(lines[1].starts_with("tether.yaml:6:"), "{stderr}");
    assert!(lines[3].starts_with("tether.yaml:7:3: services.Web: "), "{stderr}");

    let output = validate(spec, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(65));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert_eq!(errors[0]["file"], "tether.yaml");
    assert_eq!(errors[0]["line"], 5);
    assert_eq!(errors[0]["column"], 18);
    assert_eq!(errors[0]["field"], "services.payment.networkMode");
    assert!(errors[0]["message"].as_str().unwrap().contains("bridge"));
}

#[test]
fn a_file_named_on_the_command_line_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.json"),
        r#"{"namespace": "shop.local", "services": {"web": {"command": ["./web"]}}}"#,
    )
    .unwrap();
    let output = validate_in(dir.path(), &["shop.json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "shop.json: ok — namespace shop.local, 1 service (web)"
    );

    let output = validate_in(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(66), "{stderr}");
    assert!(stderr.starts_with("tether.yaml: no such file"), "{stderr}");
}
