//! Mutual TLS on the data path, end to end: a caller's sidecar (outbound) → a callee's sidecar
//! (inbound with `tls`) → apps, with real sockets, real handshakes and a CA made by the test.

mod allow_from;
mod expiry;
mod harness;
mod path;
mod refusals;
mod renewal;
mod switch;

use std::net::SocketAddr;

use harness::{EchoBackend, HttpBackend};

/// The callee, `payment`: an HTTP port `api` and a tcp port `raw` in front of its apps, both
/// taking mutual TLS as `tls` says (`{}`: any caller of the mesh), or plaintext if `tls` is
/// `None`.
fn callee_config(http: &HttpBackend, echo: &EchoBackend, tls: Option<&str>) -> String {
    let tls = tls.map(|tls| format!(", tls: {tls}")).unwrap_or_default();
    format!(
        "service: payment\nadmin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n\
         - {{ portName: api, listen: \"127.0.0.1:0\", target: \"{}\", appProtocol: http{tls} }}\n\
         - {{ portName: raw, listen: \"127.0.0.1:0\", target: \"{}\", appProtocol: tcp{tls} }}\n",
        http.addr, echo.addr,
    )
}

/// A caller: aliases `payment` (HTTP) and `payment-raw` (tcp) for the callee's two ports, whose
/// sidecar must prove it is `spiffe://shop/payment`. Connects time out after `connect` seconds.
fn caller_config(service: &str, api: SocketAddr, raw: SocketAddr, connect: f64) -> String {
    let endpoint =
        |addr| format!("[{{ address: \"{addr}\", mesh: true, identity: \"spiffe://shop/payment\" }}]");
    format!(
        "service: {service}\nadmin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n\
         - {{ dnsName: payment, listen: \"127.0.0.1:0\", appProtocol: http, endpoints: {},\n    \
              timeout: {{ connectTimeoutSeconds: {connect} }} }}\n\
         - {{ dnsName: payment-raw, listen: \"127.0.0.1:0\", appProtocol: tcp, endpoints: {},\n    \
              timeout: {{ connectTimeoutSeconds: {connect} }} }}\n",
        endpoint(api),
        endpoint(raw),
    )
}
