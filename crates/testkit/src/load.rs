//! A bounded load generator: a fixed number of workers sending requests until stopped, until
//! a request count is reached, or until a hard time limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Client;

/// No load runs longer than this, whatever the test asked.
const HARD_LIMIT: Duration = Duration::from_secs(120);

pub struct Load {
    stop: Arc<AtomicBool>,
    workers: JoinSet<Vec<(Outcome, Duration)>>,
    sent: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    /// Each failure: a status other than 2xx, or a transport error.
    pub failures: Vec<String>,
    /// Successful responses per `x-backend`.
    pub by_backend: HashMap<String, usize>,
    /// The longest any request took, from sending it to the end of its response.
    pub slowest: Duration,
    /// Every request's time, fastest first.
    pub latencies: Vec<Duration>,
}

enum Outcome {
    Ok(Option<String>),
    Failed(String),
}

impl Load {
    /// Starts `workers` loops sending GET `url`, at most `max_requests` in all.
    pub fn start(client: Client, url: String, workers: usize, max_requests: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        let deadline = Instant::now() + HARD_LIMIT;
        for _ in 0..workers {
            let (client, url, stop, sent) = (client.clone(), url.clone(), stop.clone(), sent.clone());
            set.spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && sent.fetch_add(1, Ordering::Relaxed) < max_requests
                {
                    let start = Instant::now();
                    let reply = client.get(&url).await;
                    let took = start.elapsed();
                    let outcome = match reply {
                        Ok(r) if r.status.is_success() => {
                            Outcome::Ok(r.header("x-backend").map(str::to_owned))
                        }
                        Ok(r) => Outcome::Failed(format!("{} {}", r.status, r.text().trim())),
                        Err(e) => Outcome::Failed(format!("{e:#}")),
                    };
                    outcomes.push((outcome, took));
                }
                outcomes
            });
        }
        Self { stop, workers: set, sent }
    }

    /// Requests started so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for every worker to finish on its own (the request count reached).
    pub async fn finish(self) -> LoadReport {
        self.collect().await
    }

    /// Stops the workers after their current request and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.collect().await
    }

    async fn collect(mut self) -> LoadReport {
        let mut report = LoadReport::default();
        while let Some(outcomes) = self.workers.join_next().await {
            for (outcome, took) in outcomes.expect("a load worker panicked") {
                report.slowest = report.slowest.max(took);
                report.latencies.push(took);
                match outcome {
                    Outcome::Ok(backend) => {
                        report.ok += 1;
                        *report.by_backend.entry(backend.unwrap_or_default()).or_default() += 1;
                    }
                    Outcome::Failed(why) => report.failures.push(why),
                }
            }
        }
        report.latencies.sort();
        report
    }
}

impl LoadReport {
    /// The time within which `q` (0 to 1) of the requests were answered.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    }

    /// Failures whose status is `status` (their text starts with it).
    pub fn failures_with(&self, status: u16) -> usize {
        let prefix = format!("{status} ");
        self.failures.iter().filter(|f| f.starts_with(&prefix)).count()
    }

    /// Panics with the first failures if there were any.
    pub fn assert_no_failures(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed; first: {:?}",
            self.failures.len(),
            self.ok + self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
    }
}
