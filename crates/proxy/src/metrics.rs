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
struct TargetResponseLabels {
    target_discovery_name: String,
    service: String,
    code_class: &'static str,
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
        }
    }

    pub fn outbound(&self, target: &str) -> ListenerMetrics {
        let l = TargetLabels { target_discovery_name: target.to_owned(), service: self.service.clone() };
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
        }
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
