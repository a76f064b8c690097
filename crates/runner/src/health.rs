//! Health checks (design §7): ECS's container health check, run inside the task's sandbox; with
//! no check, the app's first port accepting connections.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tether_model::spec::{HealthCheckPolicy, HealthCommand};

use crate::sandbox::Sandbox;

/// How often a task without a health check is probed until its port accepts.
pub const PORT_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// A task without a health check whose port does not accept within this long has failed.
pub const PORT_PROBE_DEADLINE: Duration = Duration::from_secs(60);

/// What decides whether a task is healthy.
pub enum Check {
    /// The user's command: healthy when it exits 0 within its timeout.
    Command(HealthCheckPolicy),
    /// Healthy once the port accepts connections inside the sandbox.
    Port(u16),
    /// Nothing to check: healthy while it runs.
    Running,
}

impl Check {
    pub fn interval(&self) -> Duration {
        match self {
            Check::Command(policy) => policy.interval,
            Check::Port(_) | Check::Running => PORT_PROBE_INTERVAL,
        }
    }

    /// Runs the check once: `Err` says why it failed.
    pub async fn run(
        &self,
        sandbox: &Sandbox,
        prepare: impl Fn(&mut tokio::process::Command),
    ) -> Result<(), String> {
        match self {
            Check::Running => Ok(()),
            Check::Port(port) => {
                if sandbox.accepts(*port, Duration::from_secs(1)).await {
                    Ok(())
                } else {
                    Err(format!("nothing accepts connections on port {port}"))
                }
            }
            Check::Command(policy) => run_command(sandbox, policy, prepare).await,
        }
    }
}

async fn run_command(
    sandbox: &Sandbox,
    policy: &HealthCheckPolicy,
    prepare: impl Fn(&mut tokio::process::Command),
) -> Result<(), String> {
    let (program, args): (&str, Vec<&str>) = match &policy.command {
        HealthCommand::Exec(argv) => match argv.split_first() {
            Some((program, args)) => (program, args.iter().map(String::as_str).collect()),
            None => return Err("the health check has no command".into()),
        },
        HealthCommand::Shell(line) => ("/bin/sh", vec!["-c", line]),
    };
    let mut command = sandbox.command(program).map_err(|e| format!("cannot start the health check: {e}"))?;
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    prepare(&mut command);
    let started = Instant::now();
    let child = command.spawn().map_err(|e| format!("cannot start the health check `{program}`: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(policy.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let mut said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            if said.is_empty() {
                said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            Err(format!("the health check exited with {}{}", output.status, excerpt(&said)))
        }
        Ok(Err(e)) => Err(format!("the health check failed to run: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                crate::process::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            Err(format!(
                "the health check took longer than its timeout ({:?})",
                started.elapsed().min(policy.timeout)
            ))
        }
    }
}

fn excerpt(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let last: String = text.lines().last().unwrap_or_default().chars().take(200).collect();
    format!(": {last}")
}

/// Counts results the way ECS does: failures during `startPeriod` do not count, and
/// `retries` failures in a row make the task unhealthy.
pub struct Verdicts {
    start_period_ends: Instant,
    retries: u32,
    failures: u32,
    healthy: Option<bool>,
}

impl Verdicts {
    pub fn new(check: &Check, started: Instant) -> Self {
        let (start_period, retries) = match check {
            Check::Command(policy) => (policy.start_period, policy.retries.max(1)),
            Check::Port(_) | Check::Running => (Duration::ZERO, 1),
        };
        Self { start_period_ends: started + start_period, retries, failures: 0, healthy: None }
    }

    /// Whether the last results made the task unhealthy.
    pub fn unhealthy(&self) -> bool {
        self.healthy == Some(false)
    }

    /// Records one result; returns the new state when it changed.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<bool> {
        let before = self.healthy;
        if passed {
            self.failures = 0;
            self.healthy = Some(true);
        } else if now >= self.start_period_ends || self.healthy == Some(true) {
            self.failures += 1;
            if self.failures >= self.retries {
                self.healthy = Some(false);
            }
        }
        (self.healthy != before).then_some(self.healthy).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32, start_period: u64) -> Check {
        Check::Command(HealthCheckPolicy {
            command: HealthCommand::Shell("true".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
        })
    }

    #[test]
    fn retries_in_a_row_make_a_task_unhealthy() {
        let t0 = Instant::now();
        let mut v = Verdicts::new(&policy(3, 0), t0);
        assert_eq!(v.record(false, t0), None);
        assert_eq!(v.record(false, t0), None);
        assert_eq!(v.record(false, t0), Some(false));
        assert_eq!(v.record(true, t0), Some(true));
        assert_eq!(v.record(false, t0), None);
        assert_eq!(v.record(true, t0), None, "a pass resets the count");
        assert_eq!(v.record(false, t0), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut v = Verdicts::new(&policy(1, 10), t0);
        assert_eq!(v.record(false, t0 + Duration::from_secs(5)), None);
        assert_eq!(v.record(false, t0 + Duration::from_secs(11)), Some(false));
    }

    #[tokio::test]
    async fn a_command_check_reports_why_it_failed() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::host(dir.path(), None);
        let check = Check::Command(HealthCheckPolicy {
            command: HealthCommand::Shell("echo not yet >&2; exit 3".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 1,
            start_period: Duration::ZERO,
        });
        let err = check.run(&sandbox, |_| {}).await.unwrap_err();
        assert!(err.contains("exit status: 3") && err.ends_with("not yet"), "{err}");
        let slow = Check::Command(HealthCheckPolicy {
            command: HealthCommand::Exec(vec!["sleep".into(), "5".into()]),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            retries: 1,
            start_period: Duration::ZERO,
        });
        let err = slow.run(&sandbox, |_| {}).await.unwrap_err();
        assert!(err.contains("longer than its timeout"), "{err}");
    }
}
