//! Picking an endpoint: power of two choices over peak-EWMA latency × outstanding requests
//! (the default), or round robin.

mod load;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use load::Load;
use tether_model::LoadBalancing;

pub struct Balancer {
    policy: LoadBalancing,
    next: AtomicUsize,
}

/// The endpoint picked, and whether it was picked although not usable because none was
/// (HEALTHY_OR_ELSE_ALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub fell_back: bool,
}

impl Balancer {
    pub fn new(policy: LoadBalancing) -> Self {
        Self { policy, next: AtomicUsize::new(0) }
    }

    /// Picks one of `n` endpoints. `cost(i)` is an endpoint's load, `usable(i)` whether it may
    /// get traffic (healthy, not ejected); `avoid` lists endpoints already tried. In order of
    /// preference: usable and untried, usable, untried, any.
    pub fn pick(
        &self,
        n: usize,
        cost: impl Fn(usize) -> f64,
        usable: impl Fn(usize) -> bool,
        avoid: &[usize],
    ) -> Option<Choice> {
        if n == 0 {
            return None;
        }
        let untried = |i: usize| !avoid.contains(&i);
        if let Some(index) = self.pick_among(n, &cost, &|i| usable(i) && untried(i)) {
            return Some(Choice { index, fell_back: false });
        }
        if let Some(index) = self.pick_among(n, &cost, &usable) {
            return Some(Choice { index, fell_back: false });
        }
        let index = self.pick_among(n, &cost, &untried).or_else(|| self.pick_among(n, &cost, &|_| true))?;
        Some(Choice { index, fell_back: true })
    }

    fn pick_among(&self, n: usize, cost: &dyn Fn(usize) -> f64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self.policy {
            LoadBalancing::RoundRobin => {
                // The k-th usable endpoint, k counting up: an unusable endpoint's turns are
                // spread over all the others, not given to its neighbour.
                let usable = (0..n).filter(|&i| ok(i)).count();
                let k = self.next.fetch_add(1, Ordering::Relaxed) % usable.max(1);
                (0..n).filter(|&i| ok(i)).nth(k)
            }
            LoadBalancing::P2cEwma => {
                let a = sample(n, ok, None)?;
                Some(match sample(n, ok, Some(a)) {
                    Some(b) if cost(b) < cost(a) => b,
                    _ => a,
                })
            }
        }
    }
}

/// A uniformly random index in `0..n` that `ok` accepts, other than `except`.
fn sample(n: usize, ok: &dyn Fn(usize) -> bool, except: Option<usize>) -> Option<usize> {
    let fits = |i: usize| Some(i) != except && ok(i);
    // Usually most endpoints fit: a few random draws find one without scanning.
    for _ in 0..8 {
        let i = fastrand::usize(..n);
        if fits(i) {
            return Some(i);
        }
    }
    let count = (0..n).filter(|&i| fits(i)).count();
    (count > 0).then(|| (0..n).filter(|&i| fits(i)).nth(fastrand::usize(..count))).flatten()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn shares(policy: LoadBalancing, loads: &[Load], picks: usize) -> Vec<usize> {
        let b = Balancer::new(policy);
        let mut counts = vec![0; loads.len()];
        for _ in 0..picks {
            counts[b.pick(loads.len(), |i| loads[i].cost(), |_| true, &[]).unwrap().index] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_the_slow_endpoint_and_round_robin_does_not() {
        let loads = [Load::new(), Load::new(), Load::new()];
        for _ in 0..5 {
            loads[0].observe(Duration::from_micros(300));
            loads[1].observe(Duration::from_micros(300));
            loads[2].observe(Duration::from_millis(50));
        }
        let p2c = shares(LoadBalancing::P2cEwma, &loads, 3000);
        assert!(p2c[2] < 100, "slow endpoint got {p2c:?}");
        let rr = shares(LoadBalancing::RoundRobin, &loads, 3000);
        assert_eq!(rr, [1000, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn outstanding_requests_raise_the_cost() {
        let loads = [Load::new(), Load::new()];
        loads[0].observe(Duration::from_millis(1));
        loads[1].observe(Duration::from_millis(1));
        let _busy: Vec<_> = (0..4).map(|_| loads[0].start()).collect();
        let counts = shares(LoadBalancing::P2cEwma, &loads, 100);
        assert_eq!(counts, [0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_does_not_make_an_endpoint_look_fast() {
        let loads = [Load::new(), Load::new()];
        loads[0].observe(Duration::from_millis(2));
        loads[1].observe_attempt(Duration::from_micros(50), false, Duration::from_secs(1));
        assert_eq!(shares(LoadBalancing::P2cEwma, &loads, 100), [100, 0]);
    }

    #[test]
    fn avoid_skips_endpoints_unless_none_is_left() {
        let loads = [Load::new(), Load::new(), Load::new()];
        let cost = |i: usize| loads[i].cost();
        let all = |_| true;
        for policy in [LoadBalancing::P2cEwma, LoadBalancing::RoundRobin] {
            let b = Balancer::new(policy);
            for _ in 0..50 {
                assert_eq!(b.pick(3, cost, all, &[0, 2]).map(|c| c.index), Some(1));
                assert_ne!(b.pick(3, cost, all, &[1]).map(|c| c.index), Some(1));
            }
            assert!(b.pick(3, cost, all, &[0, 1, 2]).is_some_and(|c| !c.fell_back));
            assert_eq!(b.pick(0, cost, all, &[]), None);
        }
    }

    #[test]
    fn round_robin_spreads_an_unusable_endpoints_turns_evenly() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[b.pick(3, |_| 1.0, |i| i != 2, &[]).unwrap().index] += 1;
        }
        assert_eq!(counts, [300, 300, 0]);
    }

    #[test]
    fn unusable_endpoints_get_traffic_only_when_none_is_usable() {
        let loads = [Load::new(), Load::new(), Load::new()];
        let cost = |i: usize| loads[i].cost();
        for policy in [LoadBalancing::P2cEwma, LoadBalancing::RoundRobin] {
            let b = Balancer::new(policy);
            for _ in 0..50 {
                let c = b.pick(3, cost, |i| i == 1, &[]).unwrap();
                assert_eq!((c.index, c.fell_back), (1, false));
                // A retry prefers the usable endpoint it already tried over unusable ones.
                assert_eq!(b.pick(3, cost, |i| i == 1, &[1]).unwrap().index, 1);
                let c = b.pick(3, cost, |_| false, &[0]).unwrap();
                assert!(c.fell_back && c.index != 0, "{c:?}");
            }
        }
    }
}
