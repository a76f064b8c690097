//! Outlier detection: gateway failures in a row eject an endpoint for a while (design §5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tether_model::OutlierDetection;
use tokio::time::Instant;

/// How an attempt on an endpoint went, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Could not connect, timed out, or answered 502, 503 or 504.
    GatewayFailure,
    /// Anything else (a 500, a 4xx): says nothing about the endpoint's reachability.
    Neutral,
}

/// Outlier detection for one route: its settings, how many of its endpoints are ejected, and
/// the metrics. Each endpoint carries its own [`OutlierState`], so that an endpoint keeps its
/// history when the route's set of endpoints changes around it.
pub struct Outliers {
    config: OutlierDetection,
    epoch: Instant,
    ejected: AtomicUsize,
    ejections: Counter,
    ejected_gauge: Gauge,
}

/// One endpoint's failures in a row and ejections.
#[derive(Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds after the route's epoch until which the endpoint is ejected; 0 when it is
    /// not.
    ejected_until: AtomicU64,
}

impl Outliers {
    pub fn new(config: OutlierDetection, ejections: Counter, ejected_gauge: Gauge) -> Self {
        Self { config, epoch: Instant::now(), ejected: AtomicUsize::new(0), ejections, ejected_gauge }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether the endpoint is ejected now. An ejection that has run out ends here.
    pub fn is_ejected(&self, e: &OutlierState) -> bool {
        let until = e.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if self.now_ms() < until {
            return true;
        }
        if e.ejected_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            self.ejected_gauge.dec();
            tracing::info!("outlier re-admitted");
        }
        false
    }

    /// Learns from one attempt on an endpoint of a route that has `endpoints` in all.
    pub fn record(&self, e: &OutlierState, outcome: Outcome, endpoints: usize) {
        match outcome {
            Outcome::Neutral => {}
            Outcome::Success => e.consecutive.store(0, Ordering::Relaxed),
            Outcome::GatewayFailure => {
                let threshold = self.config.consecutive_gateway_failures;
                let failures = e.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if threshold > 0 && failures >= threshold && !self.is_ejected(e) {
                    self.eject(e, endpoints);
                }
            }
        }
    }

    fn eject(&self, e: &OutlierState, endpoints: usize) {
        let max = endpoints * self.config.max_ejection_percent as usize / 100;
        let admitted =
            self.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        if admitted.is_err() {
            return; // ejecting it would leave too few endpoints
        }
        let times = e.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration =
            self.config.base_ejection_seconds.0.saturating_mul(times).min(self.config.max_ejection_seconds.0);
        e.ejected_until.store(self.now_ms() + duration_ms(duration), Ordering::Release);
        e.consecutive.store(0, Ordering::Relaxed);
        self.ejections.inc();
        self.ejected_gauge.inc();
        tracing::info!(?duration, times, "outlier ejected");
    }

    /// The outlier detection of a route's new set of endpoints: `previous`'s, carried over when
    /// its settings are unchanged, else a new one; counted again over `endpoints` either way.
    pub fn carry<'a>(
        previous: Option<&Arc<Outliers>>,
        config: OutlierDetection,
        ejections: &Counter,
        ejected_gauge: &Gauge,
        endpoints: impl Iterator<Item = &'a OutlierState>,
    ) -> Arc<Outliers> {
        let outliers = match previous {
            Some(p) if p.config == config => p.clone(),
            _ => Arc::new(Outliers::new(config, ejections.clone(), ejected_gauge.clone())),
        };
        outliers.recount(endpoints);
        outliers
    }

    /// Counts the ejected endpoints again after the route's set of endpoints changed: an
    /// endpoint removed while ejected no longer counts against the maximum share.
    pub fn recount<'a>(&self, endpoints: impl Iterator<Item = &'a OutlierState>) {
        let ejected = endpoints.filter(|e| self.is_ejected(e)).count();
        self.ejected.store(ejected, Ordering::Release);
        self.ejected_gauge.set(ejected as i64);
    }
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

#[cfg(test)]
mod tests {
    use tether_model::Seconds;

    use super::*;

    struct Route {
        outliers: Outliers,
        endpoints: Vec<OutlierState>,
        ejections: Counter,
    }

    impl Route {
        fn record(&self, i: usize, outcome: Outcome) {
            self.outliers.record(&self.endpoints[i], outcome, self.endpoints.len());
        }

        fn is_ejected(&self, i: usize) -> bool {
            self.outliers.is_ejected(&self.endpoints[i])
        }
    }

    fn outliers(endpoints: usize) -> Route {
        let config = OutlierDetection {
            consecutive_gateway_failures: 3,
            base_ejection_seconds: Seconds::from_secs(10),
            max_ejection_seconds: Seconds::from_secs(25),
            max_ejection_percent: 50,
        };
        let ejections = Counter::default();
        Route {
            outliers: Outliers::new(config, ejections.clone(), Gauge::default()),
            endpoints: (0..endpoints).map(|_| OutlierState::default()).collect(),
            ejections,
        }
    }

    fn fail(o: &Route, i: usize, times: usize) {
        for _ in 0..times {
            o.record(i, Outcome::GatewayFailure);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_eject_for_longer_each_time() {
        let o = outliers(4);
        fail(&o, 0, 2);
        o.record(0, Outcome::Success);
        fail(&o, 0, 2);
        assert!(!o.is_ejected(0), "a success resets the count");
        fail(&o, 0, 1);
        assert!(o.is_ejected(0));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!o.is_ejected(0), "re-admitted after the base ejection time");
        fail(&o, 0, 3);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(o.is_ejected(0), "the second ejection lasts twice as long");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!o.is_ejected(0));
        fail(&o, 0, 3);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(!o.is_ejected(0), "capped at the maximum");
        assert_eq!(o.ejections.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_maximum_share_is_ejected() {
        let o = outliers(3);
        for i in 0..3 {
            fail(&o, i, 3);
        }
        let ejected = (0..3).filter(|&i| o.is_ejected(i)).count();
        assert_eq!(ejected, 1, "50% of 3 endpoints is one");
        let single = outliers(1);
        fail(&single, 0, 10);
        assert!(!single.is_ejected(0), "the only endpoint is never ejected");
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_change_nothing() {
        let o = outliers(2);
        fail(&o, 1, 2);
        o.record(1, Outcome::Neutral);
        fail(&o, 1, 1);
        assert!(o.is_ejected(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_that_leaves_frees_its_share() {
        let o = outliers(2);
        fail(&o, 0, 3);
        assert!(o.is_ejected(0));
        fail(&o, 1, 3);
        assert!(!o.is_ejected(1), "one of two is the most that may be ejected");
        // Endpoint 0 leaves the route and two healthy ones join: 1 may now be ejected.
        let joined = [OutlierState::default(), OutlierState::default()];
        o.outliers.recount([&o.endpoints[1], &joined[0], &joined[1]].into_iter());
        o.outliers.record(&o.endpoints[1], Outcome::GatewayFailure, 3);
        assert!(o.is_ejected(1));
    }
}
