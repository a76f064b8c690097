use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How fast an old latency observation fades: after `DECAY` without samples an endpoint's
/// estimate has shrunk to 1/e, so an endpoint that was slow is eventually tried again.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint that has not answered yet: high enough that it is not flooded
/// before its first answer, low enough that it is tried.
const INITIAL_RTT: Duration = Duration::from_millis(1);

/// What the balancer knows about one endpoint.
pub struct Load {
    outstanding: AtomicUsize,
    rtt: Mutex<Ewma>,
}

struct Ewma {
    nanos: f64,
    at: Instant,
}

/// Counts a request as outstanding until dropped.
pub struct LoadGuard<'a>(&'a Load);

impl Load {
    pub fn new() -> Self {
        let rtt = Ewma { nanos: INITIAL_RTT.as_nanos() as f64, at: Instant::now() };
        Self { outstanding: AtomicUsize::new(0), rtt: Mutex::new(rtt) }
    }

    pub fn start(&self) -> LoadGuard<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        LoadGuard(self)
    }

    /// Marks the start of a request without a borrow; pair with [`Load::finish`].
    pub fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Peak-EWMA: a slower sample is taken at once, faster ones are averaged in.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut e = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        if sample > e.nanos {
            e.nanos = sample;
        } else {
            let w = decay_weight(now - e.at);
            e.nanos = e.nanos * w + sample * (1.0 - w);
        }
        e.at = now;
    }

    /// Observes one attempt. A failed one counts as at least `failure_cost`: a refused connect
    /// fails in microseconds, and must not make a dead endpoint look like the fastest.
    pub fn observe_attempt(&self, elapsed: Duration, succeeded: bool, failure_cost: Duration) {
        self.observe(if succeeded { elapsed } else { elapsed.max(failure_cost) });
    }

    /// Latency estimate, decayed by the time since the last sample, × (outstanding + 1).
    pub fn cost(&self) -> f64 {
        let e = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        let rtt = e.nanos * decay_weight(Instant::now() - e.at);
        drop(e);
        rtt * (self.outstanding() + 1) as f64
    }
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

fn decay_weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
