//! The sidecar's static configuration (design §5): what `tether proxy --config FILE` reads and
//! what the control plane will later stream. Raw shapes mirror the file; [`ProxyConfig::from_source`]
//! validates the whole document and fills in defaults.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::identity::SpiffeId;
use crate::{ConfigError, ConfigErrors, Seconds, Source};

/// Service Connect's defaults.
const HTTP_IDLE_TIMEOUT: Seconds = Seconds::from_secs(300);
const TCP_IDLE_TIMEOUT: Seconds = Seconds::from_secs(3600);
const PER_REQUEST_TIMEOUT: Seconds = Seconds::from_secs(15);
const CONNECT_TIMEOUT: Seconds = Seconds::from_secs(1);
const DRAIN_WAIT: Seconds = Seconds::from_secs(20);
const DRAIN_GRACE: Seconds = Seconds::from_secs(30);
const MAX_DOWNSTREAM_CONNECTIONS: u32 = 16_384;
/// Longest idle timeout accepted (a day): anything longer is almost surely a unit mistake.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// The protocol a port speaks (`portMappings[].appProtocol`; absent means raw tcp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl AppProtocol {
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }

    /// Whether the app itself speaks HTTP/2 (h2c with prior knowledge).
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// How an outbound listener picks an endpoint for each request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    /// Power of two choices over peak-EWMA latency × outstanding requests.
    #[default]
    P2cEwma,
    RoundRobin,
}

/// The validated configuration of one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The task's service name, the `service` label of every metric. Default `tether`.
    pub service: String,
    /// Admin endpoint (`/live`, `/ready`, `/metrics`, `/config`, `POST /drain`).
    pub admin: SocketAddr,
    /// How long a draining proxy keeps serving new connections while its removal propagates.
    /// Default 20 s, at most 110 s.
    pub drain_wait_seconds: Seconds,
    /// After the drain wait, how long in-flight requests may take before the proxy exits anyway.
    /// Default 30 s.
    pub drain_grace_seconds: Seconds,
    /// Connections open at once on all inbound and outbound listeners together (the admin
    /// endpoint's do not count); one more is accepted and closed at once, and counted in
    /// `tether_downstream_overflows_total`. Default 16384, at least 1.
    pub max_downstream_connections: u32,
    pub inbound: Vec<Inbound>,
    pub outbound: Vec<Outbound>,
}

/// A published port: traffic arriving at `listen` goes to the app at `target`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub port_name: String,
    /// The name metrics use for this port; default `portName`.
    pub discovery_name: String,
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub app_protocol: AppProtocol,
    pub timeout: Timeouts,
    /// Mutual TLS: only peers with a certificate from the trust bundle may connect (the
    /// control plane's CA issues the proxy's own). Without it the port takes plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<InboundTls>,
}

/// The mutual TLS of an inbound listener (design §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundTls {
    /// The identities that may call: any other peer's requests are refused with 403 (tcp: the
    /// connection is closed). `None`: every identity the trust bundle vouches for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<SpiffeId>>,
}

impl InboundTls {
    /// Whether `peer` may call this listener.
    pub fn allows(&self, peer: &SpiffeId) -> bool {
        self.allow_from.as_ref().is_none_or(|allowed| allowed.contains(peer))
    }
}

/// A client alias: traffic to `listen` is balanced across `endpoints`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    pub dns_name: String,
    pub listen: SocketAddr,
    pub app_protocol: AppProtocol,
    pub load_balancing: LoadBalancing,
    pub endpoints: Vec<Endpoint>,
    pub timeout: Timeouts,
    pub retry_policy: RetryPolicy,
    pub outlier_detection: OutlierDetection,
    pub limits: Limits,
}

/// One place an outbound listener may send traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The address is another tether sidecar's inbound listener: HTTP travels to it as HTTP/2.
    pub mesh: bool,
    /// Only HEALTHY endpoints get traffic, unless none is (then all do). Default HEALTHY.
    pub health: Health,
    /// Connect with mutual TLS, and only to a peer with this identity (a sidecar of the
    /// endpoint's service). Without it the connection is plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
}

/// An instance's health, as the registry knows it (design §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Starting,
    #[default]
    Healthy,
    Unhealthy,
    Draining,
}

/// When and how often a failed request is tried again (design §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Tries after the first, at most. Default 2; 0 disables retries.
    pub max_retries: u32,
    /// Response statuses that are retried (besides failures to connect or to get a response).
    /// Default `[503]`.
    pub retry_on: Vec<u16>,
    /// Retries may add this percentage of the requests… Default 20.
    pub budget_percent: f64,
    /// …plus this many per second. Default 10.
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 2, retry_on: vec![503], budget_percent: 20.0, budget_min_per_second: 10 }
    }
}

impl RetryPolicy {
    /// No retries at all (a sidecar's inbound side: the caller's sidecar retries).
    pub fn none() -> Self {
        Self { max_retries: 0, retry_on: Vec::new(), budget_percent: 0.0, budget_min_per_second: 0 }
    }
}

/// Ejecting endpoints that keep failing (design §5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Gateway failures in a row (connect failure, timeout, 502, 503, 504) that eject an
    /// endpoint. Default 5; 0 disables ejection.
    pub consecutive_gateway_failures: u32,
    /// An ejection lasts this long × the number of times the endpoint was ejected. Default 30 s.
    pub base_ejection_seconds: Seconds,
    /// …but never longer than this. Default 300 s.
    pub max_ejection_seconds: Seconds,
    /// Never more than this percentage of the endpoints is ejected at once. Default 50.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_gateway_failures: 5,
            base_ejection_seconds: Seconds::from_secs(30),
            max_ejection_seconds: Seconds::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Never eject (a route with one endpoint, such as an inbound listener's app).
    pub fn disabled() -> Self {
        Self { consecutive_gateway_failures: 0, ..Self::default() }
    }
}

/// Bounds on what one outbound listener may ask of its endpoints; beyond them requests fail
/// fast with 503 instead of queueing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests in flight to the endpoints, in all. Default 1024.
    pub max_requests: u32,
    /// Requests waiting for an HTTP/1 connection, in all. Default 1024.
    pub max_pending_requests: u32,
    /// HTTP/1 connections per endpoint (an HTTP/2 endpoint shares one). Default 1024.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_requests: 1024, max_pending_requests: 1024, max_connections: 1024 }
    }
}

/// Timeouts of one listener; zero disables the idle and per-request timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Close a connection with no request in flight (tcp: no bytes) for this long.
    /// Default 300 s for HTTP, 3600 s for tcp.
    pub idle_timeout_seconds: Seconds,
    /// Give up on a request whose response has not completed in this long (504). HTTP only:
    /// absent for tcp. Default 15 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_request_timeout_seconds: Option<Seconds>,
    /// Give up on opening an upstream connection after this long. Default 1 s.
    pub connect_timeout_seconds: Seconds,
}

impl Timeouts {
    /// Service Connect's defaults for a port speaking `protocol`.
    pub fn default_for(protocol: AppProtocol) -> Self {
        let http = protocol.is_http();
        Self {
            idle_timeout_seconds: if http { HTTP_IDLE_TIMEOUT } else { TCP_IDLE_TIMEOUT },
            per_request_timeout_seconds: http.then_some(PER_REQUEST_TIMEOUT),
            connect_timeout_seconds: CONNECT_TIMEOUT,
        }
    }

    pub fn idle(&self) -> Option<Duration> {
        self.idle_timeout_seconds.non_zero()
    }

    pub fn per_request(&self) -> Option<Duration> {
        self.per_request_timeout_seconds.and_then(Seconds::non_zero)
    }

    pub fn connect(&self) -> Duration {
        self.connect_timeout_seconds.0
    }
}

// ---- raw shapes, as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    service: Option<String>,
    admin: Option<String>,
    drain_wait_seconds: Option<f64>,
    drain_grace_seconds: Option<f64>,
    max_downstream_connections: Option<u32>,
    #[serde(default)]
    inbound: Vec<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawOutbound>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawInbound {
    port_name: String,
    discovery_name: Option<String>,
    listen: String,
    target: String,
    app_protocol: Option<AppProtocol>,
    timeout: Option<RawTimeouts>,
    tls: Option<RawInboundTls>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawInboundTls {
    allow_from: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOutbound {
    dns_name: String,
    listen: String,
    app_protocol: Option<AppProtocol>,
    load_balancing: Option<LoadBalancing>,
    endpoints: Vec<RawEndpoint>,
    timeout: Option<RawTimeouts>,
    retry_policy: Option<RawRetryPolicy>,
    outlier_detection: Option<RawOutlierDetection>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRetryPolicy {
    max_retries: Option<u32>,
    retry_on: Option<Vec<u16>>,
    budget_percent: Option<f64>,
    budget_min_per_second: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOutlierDetection {
    consecutive_gateway_failures: Option<u32>,
    base_ejection_seconds: Option<f64>,
    max_ejection_seconds: Option<f64>,
    max_ejection_percent: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLimits {
    max_requests: Option<u32>,
    max_pending_requests: Option<u32>,
    max_connections: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTimeouts {
    idle_timeout_seconds: Option<f64>,
    per_request_timeout_seconds: Option<f64>,
    connect_timeout_seconds: Option<f64>,
}

/// `"127.0.0.1:8080"` or
/// `{ address: "127.0.0.1:8080", mesh: true, health: UNHEALTHY, identity: "spiffe://ns/svc" }`.
struct RawEndpoint {
    address: String,
    mesh: bool,
    health: Health,
    identity: Option<String>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;
        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address `HOST:PORT` or a mapping `{ address: HOST:PORT, mesh: true }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    mesh: false,
                    health: Health::default(),
                    identity: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEndpoint, A::Error> {
                let (mut address, mut mesh, mut health, mut identity) =
                    (None, false, Health::default(), None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(map.next_value::<String>()?),
                        "mesh" => mesh = map.next_value::<bool>()?,
                        "health" => health = map.next_value::<Health>()?,
                        "identity" => identity = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["address", "mesh", "health", "identity"],
                            ));
                        }
                    }
                }
                let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
                Ok(RawEndpoint { address, mesh, health, identity })
            }
        }
        d.deserialize_any(EndpointVisitor)
    }
}

// ---- validation ------------------------------------------------------------------------------

impl ProxyConfig {
    /// Parses and validates a whole config file; every problem found is reported.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigErrors> {
        let source = Source::parse(file, text)?;
        Self::from_source(&source)
    }

    pub fn from_source(source: &Source) -> Result<Self, ConfigErrors> {
        Self::validate(source, false)
    }

    /// Parses and validates a config assembled from the control plane's stream. The same rules
    /// as a file's, but for two that only catch mistakes in hand-written files: a sidecar of a
    /// namespace with nothing to call has no listeners yet, and an alias whose service has no
    /// instances yet has no endpoints (its requests fail with 503 until one registers).
    pub fn parse_streamed(name: &str, text: &str) -> Result<Self, ConfigErrors> {
        Self::validate(&Source::parse(name, text)?, true)
    }

    fn validate(source: &Source, streamed: bool) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = source.deserialize()?;
        let mut v = Validator { source, errors: Vec::new(), listens: HashMap::new(), streamed };
        let config = v.config(raw);
        if v.errors.is_empty() { Ok(config) } else { Err(ConfigErrors(v.errors)) }
    }

    /// The listener names for log lines: `(kind, name, address)`.
    pub fn listeners(&self) -> impl Iterator<Item = (&'static str, &str, SocketAddr)> {
        let inbound = self.inbound.iter().map(|i| ("inbound", i.port_name.as_str(), i.listen));
        let outbound = self.outbound.iter().map(|o| ("outbound", o.dns_name.as_str(), o.listen));
        std::iter::once(("admin", "admin", self.admin)).chain(inbound).chain(outbound)
    }
}

struct Validator<'a> {
    source: &'a Source,
    errors: Vec<ConfigError>,
    /// From the control plane rather than a file ([`ProxyConfig::parse_streamed`]).
    streamed: bool,
    /// Every address bound so far, with the field that binds it.
    listens: HashMap<SocketAddr, String>,
}

impl Validator<'_> {
    fn fail(&mut self, field: String, message: impl Into<String>) {
        self.errors.push(self.source.error(field, message));
    }

    fn config(&mut self, raw: RawConfig) -> ProxyConfig {
        let admin = match raw.admin {
            Some(a) => self.listen_addr("admin".into(), &a),
            None => {
                self.fail(String::new(), "missing field `admin`; add e.g. `admin: 127.0.0.1:9901`");
                unspecified()
            }
        };
        if raw.inbound.is_empty() && raw.outbound.is_empty() && !self.streamed {
            self.fail(
                String::new(),
                "no listeners: add at least one `inbound` (a published port) or `outbound` (a client alias) entry",
            );
        }
        let service = raw.service.unwrap_or_else(|| "tether".into());
        if !is_name(&service, 64) {
            self.fail("service".into(), name_rule(64));
        }
        let drain_wait_seconds = self.seconds("drainWaitSeconds", raw.drain_wait_seconds, DRAIN_WAIT, 110.0);
        let drain_grace_seconds =
            self.seconds("drainGraceSeconds", raw.drain_grace_seconds, DRAIN_GRACE, 3600.0);
        let max_downstream_connections = raw.max_downstream_connections.unwrap_or(MAX_DOWNSTREAM_CONNECTIONS);
        if max_downstream_connections == 0 {
            self.fail("maxDownstreamConnections".into(), "must be at least 1; the default is 16384");
        }
        let inbound = raw.inbound.into_iter().enumerate().map(|(i, r)| self.inbound(i, r)).collect();
        let outbound = raw.outbound.into_iter().enumerate().map(|(i, r)| self.outbound(i, r)).collect();
        ProxyConfig {
            service,
            admin,
            drain_wait_seconds,
            drain_grace_seconds,
            max_downstream_connections: max_downstream_connections.max(1),
            inbound,
            outbound,
        }
    }

    fn inbound(&mut self, i: usize, raw: RawInbound) -> Inbound {
        let at = |f: &str| format!("inbound[{i}].{f}");
        if !is_name(&raw.port_name, 64) {
            self.fail(at("portName"), name_rule(64));
        }
        let discovery_name = raw.discovery_name.unwrap_or_else(|| raw.port_name.clone());
        if !is_name(&discovery_name, 64) {
            self.fail(at("discoveryName"), name_rule(64));
        }
        let app_protocol = raw.app_protocol.unwrap_or(AppProtocol::Tcp);
        let tls = raw.tls.map(|tls| InboundTls {
            allow_from: tls.allow_from.map(|ids| {
                let at = |j: usize| format!("inbound[{i}].tls.allowFrom[{j}]");
                ids.iter().enumerate().filter_map(|(j, id)| self.spiffe_id(at(j), id)).collect()
            }),
        });
        Inbound {
            port_name: raw.port_name,
            discovery_name,
            listen: self.listen_addr(at("listen"), &raw.listen),
            target: self.socket_addr(at("target"), &raw.target),
            app_protocol,
            timeout: self.timeouts(&at("timeout"), raw.timeout, app_protocol),
            tls,
        }
    }

    fn outbound(&mut self, i: usize, raw: RawOutbound) -> Outbound {
        let at = |f: &str| format!("outbound[{i}].{f}");
        if raw.dns_name.is_empty()
            || raw.dns_name.len() > 127
            || !raw
                .dns_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        {
            self.fail(
                at("dnsName"),
                "must be 1 to 127 characters of a-z, 0-9, `_`, `.` and `-`, e.g. `payment-service`",
            );
        }
        if raw.endpoints.is_empty() && !self.streamed {
            self.fail(
                at("endpoints"),
                "no endpoints; list at least one, e.g. `endpoints: [\"127.0.0.1:8080\"]`",
            );
        }
        let mut seen = HashMap::new();
        let mut endpoints = Vec::with_capacity(raw.endpoints.len());
        for (j, e) in raw.endpoints.into_iter().enumerate() {
            let field = format!("outbound[{i}].endpoints[{j}]");
            let address = self.socket_addr(field.clone(), &e.address);
            let identity = e.identity.and_then(|id| self.spiffe_id(format!("{field}.identity"), &id));
            if identity.is_some() && !e.mesh {
                self.fail(
                    format!("{field}.mesh"),
                    "an endpoint with an `identity` is a sidecar: set `mesh: true`",
                );
            }
            if let Some(first) = seen.insert(address, j) {
                self.fail(
                    field,
                    format!("`{address}` is listed twice (also endpoints[{first}]); list each endpoint once"),
                );
            }
            endpoints.push(Endpoint { address, mesh: e.mesh, health: e.health, identity });
        }
        let app_protocol = raw.app_protocol.unwrap_or(AppProtocol::Tcp);
        Outbound {
            dns_name: raw.dns_name,
            listen: self.listen_addr(at("listen"), &raw.listen),
            app_protocol,
            load_balancing: raw.load_balancing.unwrap_or_default(),
            endpoints,
            timeout: self.timeouts(&at("timeout"), raw.timeout, app_protocol),
            retry_policy: self.retry_policy(&at("retryPolicy"), raw.retry_policy.unwrap_or_default()),
            outlier_detection: self
                .outlier_detection(&at("outlierDetection"), raw.outlier_detection.unwrap_or_default()),
            limits: self.limits(&at("limits"), raw.limits.unwrap_or_default()),
        }
    }

    fn retry_policy(&mut self, at: &str, raw: RawRetryPolicy) -> RetryPolicy {
        let default = RetryPolicy::default();
        let max_retries = raw.max_retries.unwrap_or(default.max_retries);
        if max_retries > 10 {
            self.fail(format!("{at}.maxRetries"), format!("{max_retries} is too many; expected 0 to 10"));
        }
        let retry_on = raw.retry_on.unwrap_or(default.retry_on);
        for (i, status) in retry_on.iter().enumerate() {
            if !(500..=599).contains(status) {
                self.fail(
                    format!("{at}.retryOn[{i}]"),
                    format!("{status} is not retried; expected a 5xx status such as 503"),
                );
            }
        }
        let budget_percent = raw.budget_percent.unwrap_or(default.budget_percent);
        if !(0.0..=100.0).contains(&budget_percent) {
            self.fail(
                format!("{at}.budgetPercent"),
                format!("{budget_percent} is out of range; expected 0 to 100"),
            );
        }
        RetryPolicy {
            max_retries,
            retry_on,
            budget_percent,
            budget_min_per_second: raw.budget_min_per_second.unwrap_or(10),
        }
    }

    fn outlier_detection(&mut self, at: &str, raw: RawOutlierDetection) -> OutlierDetection {
        let default = OutlierDetection::default();
        let max_ejection_percent = raw.max_ejection_percent.unwrap_or(default.max_ejection_percent);
        if max_ejection_percent > 100 {
            self.fail(
                format!("{at}.maxEjectionPercent"),
                format!("{max_ejection_percent} is out of range; expected 0 to 100"),
            );
        }
        let base = self.seconds(
            &format!("{at}.baseEjectionSeconds"),
            raw.base_ejection_seconds,
            Seconds::from_secs(30),
            3600.0,
        );
        let max = self.seconds(
            &format!("{at}.maxEjectionSeconds"),
            raw.max_ejection_seconds,
            Seconds::from_secs(300),
            86_400.0,
        );
        if max < base {
            self.fail(
                format!("{at}.maxEjectionSeconds"),
                "is shorter than baseEjectionSeconds; make it at least as long",
            );
        }
        OutlierDetection {
            consecutive_gateway_failures: raw
                .consecutive_gateway_failures
                .unwrap_or(default.consecutive_gateway_failures),
            base_ejection_seconds: base,
            max_ejection_seconds: max,
            max_ejection_percent,
        }
    }

    fn limits(&mut self, at: &str, raw: RawLimits) -> Limits {
        let mut limit = |field: &str, value: Option<u32>| {
            let value = value.unwrap_or(Limits::default().max_requests);
            if value == 0 {
                self.fail(format!("{at}.{field}"), "must be at least 1; the default is 1024");
            }
            value.max(1)
        };
        Limits {
            max_requests: limit("maxRequests", raw.max_requests),
            max_pending_requests: limit("maxPendingRequests", raw.max_pending_requests),
            max_connections: limit("maxConnections", raw.max_connections),
        }
    }

    fn timeouts(&mut self, at: &str, raw: Option<RawTimeouts>, protocol: AppProtocol) -> Timeouts {
        let raw = raw.unwrap_or_default();
        let idle_default = if protocol.is_http() { HTTP_IDLE_TIMEOUT } else { TCP_IDLE_TIMEOUT };
        if protocol == AppProtocol::Tcp && raw.per_request_timeout_seconds.is_some() {
            self.fail(
                format!("{at}.perRequestTimeoutSeconds"),
                "a per-request timeout needs requests: remove it, or set `appProtocol` to http, http2 or grpc",
            );
        }
        Timeouts {
            idle_timeout_seconds: self.seconds(
                &format!("{at}.idleTimeoutSeconds"),
                raw.idle_timeout_seconds,
                idle_default,
                MAX_TIMEOUT_SECS,
            ),
            per_request_timeout_seconds: protocol.is_http().then(|| {
                self.seconds(
                    &format!("{at}.perRequestTimeoutSeconds"),
                    raw.per_request_timeout_seconds,
                    PER_REQUEST_TIMEOUT,
                    MAX_TIMEOUT_SECS,
                )
            }),
            connect_timeout_seconds: match raw.connect_timeout_seconds {
                Some(0.0) => {
                    self.fail(format!("{at}.connectTimeoutSeconds"), "must be more than 0; the default is 1");
                    CONNECT_TIMEOUT
                }
                other => self.seconds(&format!("{at}.connectTimeoutSeconds"), other, CONNECT_TIMEOUT, 60.0),
            },
        }
    }

    fn seconds(&mut self, field: &str, value: Option<f64>, default: Seconds, max: f64) -> Seconds {
        match value {
            None => default,
            Some(s) if s.is_finite() && (0.0..=max).contains(&s) => Seconds(Duration::from_secs_f64(s)),
            Some(s) => {
                self.fail(field.to_owned(), format!("{s} is out of range; expected seconds from 0 to {max}"));
                default
            }
        }
    }

    fn spiffe_id(&mut self, field: String, text: &str) -> Option<SpiffeId> {
        match SpiffeId::parse(text) {
            Ok(id) => Some(id),
            Err(e) => {
                self.fail(field, e.to_string());
                None
            }
        }
    }

    fn socket_addr(&mut self, field: String, text: &str) -> SocketAddr {
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.fail(field, format!("`{text}` is not an address; expected IP:PORT such as `127.0.0.1:8080` or `[::1]:8080`"));
                unspecified()
            }
        }
    }

    /// A socket address that this proxy binds: also checked against every other listener.
    fn listen_addr(&mut self, field: String, text: &str) -> SocketAddr {
        let addr = self.socket_addr(field.clone(), text);
        if addr.port() == 0 && !text.is_empty() && text.parse::<SocketAddr>().is_ok() {
            return addr; // port 0: the kernel picks; never conflicts
        }
        if addr != unspecified() {
            if let Some(first) = self.listens.get(&addr) {
                let message =
                    format!("`{addr}` is already used by `{first}`; every listener needs its own address");
                self.fail(field, message);
            } else {
                self.listens.insert(addr, field);
            }
        }
        addr
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Service Connect's rule for names: lowercase letters, digits, `_` and `-`, not starting with `-`.
fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn name_rule(max: usize) -> String {
    format!("must be 1 to {max} characters of a-z, 0-9, `_` and `-`, not starting with `-`")
}

#[cfg(test)]
mod tests;
