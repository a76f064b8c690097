//! The retry budget: retries may add a share of the recent requests plus a floor per second
//! (design §5: 20% + 10/s), so a failing upstream sees at most a bounded amplification.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back requests and retries are counted.
const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

pub struct RetryBudget {
    percent: f64,
    min_per_second: f64,
    window: Mutex<Window>,
}

/// Requests and retries per one-second slot of the last [`WINDOW`].
struct Window {
    slots: [(u64, u64); SLOTS],
    /// The slot `slots[current]` stands for, in seconds since `epoch`.
    second: u64,
    current: usize,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(percent: f64, min_per_second: u32) -> Self {
        let window = Window { slots: [(0, 0); SLOTS], second: 0, current: 0, epoch: Instant::now() };
        Self { percent, min_per_second: f64::from(min_per_second), window: Mutex::new(window) }
    }

    /// Counts a request (its first attempt).
    pub fn request(&self) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance();
        let c = w.current;
        w.slots[c].0 += 1;
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub fn try_retry(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance();
        let (requests, retries) = w.slots.iter().fold((0, 0), |(a, b), s| (a + s.0, b + s.1));
        let allowed = requests as f64 * self.percent / 100.0 + self.min_per_second * WINDOW.as_secs_f64();
        if (retries as f64) < allowed {
            let c = w.current;
            w.slots[c].1 += 1;
            true
        } else {
            false
        }
    }
}

impl Window {
    fn advance(&mut self) {
        let second = self.epoch.elapsed().as_secs();
        let passed = second.saturating_sub(self.second).min(SLOTS as u64) as usize;
        for _ in 0..passed {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = (0, 0);
        }
        self.second = second;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(20.0, 1);
        for _ in 0..100 {
            budget.request();
        }
        // 20% of 100 + 1/s over the 10 s window.
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 30);
        // Once the window has passed, the old requests no longer count: only the floor is left.
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_budget_allows_nothing() {
        let budget = RetryBudget::new(0.0, 0);
        budget.request();
        assert!(!budget.try_retry());
    }
}
