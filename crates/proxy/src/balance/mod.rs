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

impl Balancer {
    pub fn new(policy: LoadBalancing) -> Self {
        Self { policy, next: AtomicUsize::new(0) }
    }

    /// Picks one of `n` endpoints whose costs `cost(i)` gives, skipping the indices in `avoid`
    /// when any other is left. Returns the index.
    pub fn pick(&self, n: usize, cost: impl Fn(usize) -> f64, avoid: &[usize]) -> Option<usize> {
        let usable = n - avoid.iter().filter(|&&i| i < n).count();
        if usable == 0 {
            return (n > 0).then(|| self.next.fetch_add(1, Ordering::Relaxed) % n);
        }
        let nth_usable = |k: usize| (0..n).filter(|i| !avoid.contains(i)).nth(k);
        match (self.policy, usable) {
            (_, 1) => nth_usable(0),
            (LoadBalancing::RoundRobin, _) => nth_usable(self.next.fetch_add(1, Ordering::Relaxed) % usable),
            (LoadBalancing::P2cEwma, _) => {
                let a = fastrand::usize(..usable);
                let mut b = fastrand::usize(..usable - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth_usable(a)?, nth_usable(b)?);
                Some(if cost(a) <= cost(b) { a } else { b })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn shares(policy: LoadBalancing, loads: &[Load], picks: usize) -> Vec<usize> {
        let b = Balancer::new(policy);
        let mut counts = vec![0; loads.len()];
        for _ in 0..picks {
            counts[b.pick(loads.len(), |i| loads[i].cost(), &[]).unwrap()] += 1;
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
        for policy in [LoadBalancing::P2cEwma, LoadBalancing::RoundRobin] {
            let b = Balancer::new(policy);
            for _ in 0..50 {
                assert_eq!(b.pick(3, cost, &[0, 2]), Some(1));
                assert_ne!(b.pick(3, cost, &[1]), Some(1));
            }
            assert!(b.pick(3, cost, &[0, 1, 2]).is_some());
            assert_eq!(b.pick(0, cost, &[]), None);
        }
    }
}
