//! The control plane's own metrics (`GET /metrics`, OpenMetrics text).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    /// Who asked: `agent`.
    caller: &'static str,
    /// What it was refused: `bootstrap_token`, `instance`, `task_report`, `lease`, `route`, …
    action: &'static str,
}

#[derive(Clone)]
pub struct ControlMetrics {
    registry: Arc<Registry>,
    denied: Family<DeniedLabels, Counter>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "tether_control_denied_requests",
            "Requests refused because the caller may not act for what it named (403)",
            denied.clone(),
        );
        Self { registry: Arc::new(registry), denied }
    }
}

impl ControlMetrics {
    pub fn denied(&self, caller: &'static str, action: &'static str) {
        self.denied.get_or_create(&DeniedLabels { caller, action }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
