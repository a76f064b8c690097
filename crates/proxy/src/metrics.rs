//! Golden metrics, named after Service Connect's CloudWatch metrics (design §5).
//!
//! Families are registered once; each listener resolves its label set at construction so that
//! the request path only touches atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundLabels {
    discovery_name: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target_discovery_name: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetStateLabels {
    target_discovery_name: String,
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResponseLabels {
    target_discovery_name: String,
    service: String,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    service: String,
    listener: String,
    caller: String,
}

/// Response time buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    service: String,
    active_connections: Family<InboundLabels, Gauge>,
    new_connections: Family<InboundLabels, Counter>,
    processed_bytes: Family<InboundLabels, Counter>,
    requests: Family<InboundLabels, Counter>,
    grpc_requests: Family<InboundLabels, Counter>,
    target_requests: Family<TargetLabels, Counter>,
    target_responses: Family<TargetResponseLabels, Counter>,
    target_bytes: Family<TargetLabels, Counter>,
    target_response_time: Family<TargetLabels, Histogram>,
    target_retries: Family<TargetLabels, Counter>,
    target_retry_budget_exhausted: Family<TargetLabels, Counter>,
    target_ejections: Family<TargetLabels, Counter>,
    target_overflows: Family<TargetLabels, Counter>,
    target_no_healthy_endpoints: Family<TargetLabels, Counter>,
    target_endpoints: Family<TargetStateLabels, Gauge>,
    denied_requests: Family<DeniedLabels, Counter>,
    /// Downstream connections closed at once because `maxDownstreamConnections` were open.
    pub downstream_overflows: Counter,
}

/// The resilience counters of one route. An inbound route's are not registered: it sends to
/// its one app and never retries or ejects.
#[derive(Clone, Default)]
pub struct ResilienceMetrics {
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub ejections: Counter,
    pub overflows: Counter,
    /// Requests sent to an unusable endpoint because none was usable (HEALTHY_OR_ELSE_ALL).
    pub no_healthy_endpoints: Counter,
    pub endpoints_total: Gauge,
    pub endpoints_healthy: Gauge,
    pub endpoints_ejected: Gauge,
}

impl ResilienceMetrics {
    /// The gauges of a route's endpoints, after its set changed.
    pub fn set_endpoints(&self, total: usize, healthy: usize) {
        self.endpoints_total.set(total as i64);
        self.endpoints_healthy.set(healthy as i64);
    }
}

/// The handles one listener updates.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub active_connections: Option<Gauge>,
    pub new_connections: Option<Counter>,
    pub requests: Counter,
    pub grpc_requests: Option<Counter>,
    pub bytes: Counter,
    /// 1xx to 5xx; index 0 is 1xx.
    pub responses: Option<[Counter; 5]>,
    pub response_time: Option<Histogram>,
    pub resilience: ResilienceMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry, service: &str) -> Self {
        let m = Self {
            service: service.to_owned(),
            active_connections: Family::default(),
            new_connections: Family::default(),
            processed_bytes: Family::default(),
            requests: Family::default(),
            grpc_requests: Family::default(),
            target_requests: Family::default(),
            target_responses: Family::default(),
            target_bytes: Family::default(),
            target_response_time: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            target_retries: Family::default(),
            target_retry_budget_exhausted: Family::default(),
            target_ejections: Family::default(),
            target_overflows: Family::default(),
            target_no_healthy_endpoints: Family::default(),
            target_endpoints: Family::default(),
            denied_requests: Family::default(),
            downstream_overflows: Counter::default(),
        };
        let r = registry;
        r.register("active_connections", "Open inbound connections", m.active_connections.clone());
        r.register("new_connections", "Inbound connections accepted", m.new_connections.clone());
        r.register("processed_bytes", "Inbound bytes, both directions", m.processed_bytes.clone());
        r.register("requests", "Inbound requests (tcp: connections)", m.requests.clone());
        r.register("grpc_requests", "Inbound gRPC requests", m.grpc_requests.clone());
        r.register("target_requests", "Outbound requests (tcp: connections)", m.target_requests.clone());
        r.register("target_responses", "Outbound responses by status class", m.target_responses.clone());
        r.register("target_processed_bytes", "Outbound bytes, both directions", m.target_bytes.clone());
        r.register(
            "target_response_time_seconds",
            "Outbound time to response headers",
            m.target_response_time.clone(),
        );
        r.register("target_retries", "Outbound retries", m.target_retries.clone());
        r.register(
            "target_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            m.target_retry_budget_exhausted.clone(),
        );
        r.register("target_ejections", "Endpoints ejected by outlier detection", m.target_ejections.clone());
        r.register("target_overflows", "Requests refused by a limit", m.target_overflows.clone());
        r.register(
            "target_no_healthy_endpoints",
            "Requests sent to an unhealthy or ejected endpoint because none was usable",
            m.target_no_healthy_endpoints.clone(),
        );
        r.register(
            "target_endpoints",
            "Endpoints by state (total, healthy, ejected)",
            m.target_endpoints.clone(),
        );
        r.register(
            "denied_requests",
            "Requests (tcp: connections) an inbound listener's allowFrom refused, by caller",
            m.denied_requests.clone(),
        );
        r.register(
            "downstream_overflows",
            "Downstream connections closed at once because maxDownstreamConnections were open",
            m.downstream_overflows.clone(),
        );
        m
    }

    pub fn inbound(&self, discovery_name: &str) -> ListenerMetrics {
        let l = InboundLabels { discovery_name: discovery_name.to_owned(), service: self.service.clone() };
        ListenerMetrics {
            active_connections: Some(self.active_connections.get_or_create(&l).clone()),
            new_connections: Some(self.new_connections.get_or_create(&l).clone()),
            requests: self.requests.get_or_create(&l).clone(),
            grpc_requests: Some(self.grpc_requests.get_or_create(&l).clone()),
            bytes: self.processed_bytes.get_or_create(&l).clone(),
            responses: None,
            response_time: None,
            resilience: ResilienceMetrics::default(),
        }
    }

    pub fn outbound(&self, target: &str) -> ListenerMetrics {
        let l = TargetLabels { target_discovery_name: target.to_owned(), service: self.service.clone() };
        let state = |state| {
            let labels = TargetStateLabels {
                target_discovery_name: target.to_owned(),
                service: self.service.clone(),
                state,
            };
            self.target_endpoints.get_or_create(&labels).clone()
        };
        let class = |code_class| {
            let labels = TargetResponseLabels {
                target_discovery_name: target.to_owned(),
                service: self.service.clone(),
                code_class,
            };
            self.target_responses.get_or_create(&labels).clone()
        };
        ListenerMetrics {
            active_connections: None,
            new_connections: None,
            requests: self.target_requests.get_or_create(&l).clone(),
            grpc_requests: None,
            bytes: self.target_bytes.get_or_create(&l).clone(),
            responses: Some([class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")]),
            response_time: Some(self.target_response_time.get_or_create(&l).clone()),
            resilience: ResilienceMetrics {
                retries: self.target_retries.get_or_create(&l).clone(),
                retry_budget_exhausted: self.target_retry_budget_exhausted.get_or_create(&l).clone(),
                ejections: self.target_ejections.get_or_create(&l).clone(),
                overflows: self.target_overflows.get_or_create(&l).clone(),
                no_healthy_endpoints: self.target_no_healthy_endpoints.get_or_create(&l).clone(),
                endpoints_total: state("total"),
                endpoints_healthy: state("healthy"),
                endpoints_ejected: state("ejected"),
            },
        }
    }
}

/// Counts the callers an inbound listener refuses. The `caller` label is a SPIFFE ID the trust
/// bundle vouches for, so there are at most as many series as services in the mesh.
#[derive(Clone)]
pub struct DeniedMetrics {
    family: Family<DeniedLabels, Counter>,
    service: String,
}

impl DeniedMetrics {
    /// `caller`: the SPIFFE ID, or `none` on a plaintext connection.
    pub fn denied(&self, listener: &str, caller: &str) {
        let labels = DeniedLabels {
            service: self.service.clone(),
            listener: listener.to_owned(),
            caller: caller.to_owned(),
        };
        self.family.get_or_create(&labels).inc();
    }
}

impl Metrics {
    pub fn denied(&self) -> DeniedMetrics {
        DeniedMetrics { family: self.denied_requests.clone(), service: self.service.clone() }
    }
}

impl ListenerMetrics {
    pub fn response(&self, status: http::StatusCode) {
        if let Some(classes) = &self.responses {
            let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
            classes[i].inc();
        }
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn connection(&self) -> ConnectionGauge {
        if let Some(c) = &self.new_connections {
            c.inc();
        }
        if let Some(g) = &self.active_connections {
            g.inc();
        }
        ConnectionGauge(self.active_connections.clone())
    }
}

pub struct ConnectionGauge(Option<Gauge>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}
