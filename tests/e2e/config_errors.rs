//! A config that cannot be used stops `tether proxy` before it binds anything: exit status 64
//! and a message that names the file, the line, the field, what is wrong and what would be right.

use std::process::{Command, Output};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

const GOOD: &str = "\
admin: 127.0.0.1:0
outbound:
  - dnsName: payment-service
    listen: 127.0.0.1:0
    appProtocol: http
    endpoints: [\"127.0.0.1:18081\"]
";

fn run(config: &str, extra: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config).unwrap();
    let output =
        Command::new(TETHER).args(["proxy", "--check", "--config"]).arg(&path).args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&path.display().to_string(), "proxy.yaml");
    (output, stderr)
}

/// Runs a broken config and checks the exit status and that the message holds every fragment.
#[track_caller]
fn rejects(config: &str, fragments: &[&str]) {
    let (output, stderr) = run(config, &[]);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    for fragment in fragments {
        assert!(stderr.contains(fragment), "`{fragment}` missing from:\n{stderr}");
    }
}

#[test]
fn the_good_config_passes_the_check() {
    let (output, stderr) = run(GOOD, &[]);
    assert!(output.status.success(), "{stderr}");
    let effective: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(effective["outbound"][0]["timeout"]["perRequestTimeoutSeconds"], 15.0);
}

#[test]
fn a_bad_address() {
    rejects(
        &GOOD.replace("127.0.0.1:18081", "localhost"),
        &["proxy.yaml:6:", "outbound[0].endpoints[0]", "`localhost` is not an address", "IP:PORT"],
    );
}

#[test]
fn a_misspelt_field() {
    rejects(
        &GOOD.replace("appProtocol", "protocol"),
        &["proxy.yaml:5:", "outbound[0].protocol", "unknown field `protocol`", "appProtocol"],
    );
}

#[test]
fn an_unknown_protocol() {
    rejects(&GOOD.replace("appProtocol: http", "appProtocol: https"), &["proxy.yaml:5:", "https", "http2"]);
}

#[test]
fn a_per_request_timeout_on_a_tcp_port() {
    let config = GOOD.replace("appProtocol: http\n", "timeout: { perRequestTimeoutSeconds: 5 }\n");
    rejects(
        &config,
        &[
            "proxy.yaml:5:",
            "outbound[0].timeout.perRequestTimeoutSeconds",
            "set `appProtocol` to http, http2 or grpc",
        ],
    );
}

#[test]
fn two_listeners_on_one_address() {
    let config = GOOD.replace("127.0.0.1:0\n    appProtocol", "127.0.0.1:7000\n    appProtocol").to_owned()
        + "  - { dnsName: other, listen: 127.0.0.1:7000, endpoints: [\"127.0.0.1:1\"] }\n";
    rejects(&config, &["proxy.yaml:7:", "outbound[1].listen", "already used by `outbound[0].listen`"]);
}

#[test]
fn no_endpoints_and_a_bad_name_are_both_reported() {
    let config = GOOD.replace("[\"127.0.0.1:18081\"]", "[]").replace("payment-service", "Payment Service");
    rejects(&config, &["outbound[0].dnsName", "a-z, 0-9", "outbound[0].endpoints", "no endpoints"]);
}

#[test]
fn a_negative_timeout() {
    let config = GOOD.to_owned() + "    timeout: { idleTimeoutSeconds: -3 }\n";
    rejects(&config, &["proxy.yaml:7:", "idleTimeoutSeconds", "-3 is out of range", "from 0 to"]);
}

#[test]
fn broken_yaml() {
    rejects("admin: 127.0.0.1:0\noutbound: [ { dnsName: a\n", &["proxy.yaml:", "not valid YAML"]);
}

#[test]
fn a_missing_file() {
    let output =
        Command::new(TETHER).args(["proxy", "--config", "/nonexistent/proxy.yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/proxy.yaml: cannot read the config file"), "{stderr}");
}

#[test]
fn a_port_in_use_fails_at_start_and_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, GOOD.replace("listen: 127.0.0.1:0", &format!("listen: {addr}"))).unwrap();
    let output = Command::new(TETHER).args(["proxy", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr} for outbound `payment-service`")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}
