//! A rolling deployment's next step, worked out from a service's tasks alone: how many tasks
//! to start and which to stop, within the deployment's bounds; and what makes two task
//! versions the same. No IO, so every case is a unit test. The control plane's scheduler and
//! the single-host runner both drive their rollouts with it.

use std::cmp::Reverse;
use std::time::SystemTime;

use crate::spec::{DeploymentPolicy, Service};

/// What a task of `service` runs, as text: two versions whose tasks would be the same have the
/// same fingerprint, so changing only `desiredCount` or a client alias rolls nothing. `None`
/// for a service without tasks.
pub fn fingerprint(service: &Service) -> Option<String> {
    let task = service.task.as_ref()?;
    let ports: Vec<(&str, Option<&str>)> = service
        .ports
        .iter()
        .map(|p| (p.name.as_str(), service.discovery_for_port(&p.name).map(|d| d.discovery_name.as_str())))
        .collect();
    Some(
        serde_json::json!({
            "task": task,
            "ports": service.ports,
            "published": ports,
            "publish": service.publish,
        })
        .to_string(),
    )
}

/// A running task (not one already stopping) as the plan sees it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub id: String,
    /// Of the version the service is moving to.
    pub current: bool,
    pub healthy: bool,
    pub started: SystemTime,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub start: usize,
    pub stop: Vec<String>,
}

/// `desired` tasks of the current version, reached within `policy`: at most `maximumPercent`
/// of `desired` running while old tasks remain, and old tasks stopped only while at least
/// `minimumHealthyPercent` stay healthy (those that serve nothing go first). `may_start` is
/// false during a backoff or after a halted deployment; `one_at_a_time` after failures.
pub fn plan(
    tasks: &[TaskView],
    desired: usize,
    policy: &DeploymentPolicy,
    may_start: bool,
    one_at_a_time: bool,
) -> Plan {
    let (new, old): (Vec<&TaskView>, Vec<&TaskView>) = tasks.iter().partition(|t| t.current);
    let mut stop = Vec::new();

    // Too many of the current version (desiredCount went down): unhealthy ones first, then the
    // youngest.
    if new.len() > desired {
        let mut extra = new.clone();
        extra.sort_by_key(|t| (t.healthy, Reverse(t.started)));
        stop.extend(extra.iter().take(new.len() - desired).map(|t| t.id.clone()));
    }

    let max_total = (desired * policy.maximum_percent as usize / 100).max(desired);
    let min_healthy = (desired * policy.minimum_healthy_percent as usize).div_ceil(100);
    let live = new.len().min(desired) + old.len();
    let room = if old.is_empty() { desired } else { max_total }.saturating_sub(live);
    let missing = desired.saturating_sub(new.len()).min(room);
    let start = match (missing, may_start, one_at_a_time) {
        (0, _, _) | (_, false, _) => 0,
        (_, true, true) => 1,
        (n, true, false) => n,
    };

    // The old version leaves as the new one becomes healthy.
    let mut healthy = tasks.iter().filter(|t| t.healthy && !stop.contains(&t.id)).count();
    let mut leaving = old.clone();
    leaving.sort_by_key(|t| (t.healthy, t.id.clone()));
    for task in leaving {
        if !task.healthy {
            stop.push(task.id.clone());
        } else if healthy > min_healthy {
            stop.push(task.id.clone());
            healthy -= 1;
        }
    }
    Plan { start, stop }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(min: u32, max: u32) -> DeploymentPolicy {
        DeploymentPolicy { minimum_healthy_percent: min, maximum_percent: max, ..DeploymentPolicy::default() }
    }

    /// Tasks from a picture: `O` old healthy, `o` old starting, `N` new healthy, `n` new
    /// starting; later letters started later.
    fn tasks(picture: &str) -> Vec<TaskView> {
        picture
            .chars()
            .enumerate()
            .map(|(i, c)| TaskView {
                id: format!("{c}{i}"),
                current: c.eq_ignore_ascii_case(&'n'),
                healthy: c.is_ascii_uppercase(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
            })
            .collect()
    }

    fn run(picture: &str, desired: usize, min: u32, max: u32) -> Plan {
        plan(&tasks(picture), desired, &policy(min, max), true, false)
    }

    fn stop(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_first_start_starts_every_task() {
        assert_eq!(run("", 3, 100, 200), Plan { start: 3, stop: vec![] });
        assert_eq!(run("nN", 3, 100, 200), Plan { start: 1, stop: vec![] });
    }

    #[test]
    fn with_100_200_new_tasks_come_up_beside_the_old_and_the_old_leave_once_they_are_healthy() {
        assert_eq!(run("OO", 2, 100, 200), Plan { start: 2, stop: vec![] });
        assert_eq!(run("OOnn", 2, 100, 200), Plan { start: 0, stop: vec![] }, "nothing healthy yet");
        assert_eq!(run("OONn", 2, 100, 200), Plan { start: 0, stop: stop(&["O0"]) });
        assert_eq!(run("ONN", 2, 100, 200), Plan { start: 0, stop: stop(&["O0"]) });
    }

    #[test]
    fn with_50_100_an_old_task_leaves_first_to_make_room() {
        assert_eq!(run("OO", 2, 50, 100), Plan { start: 0, stop: stop(&["O0"]) });
        assert_eq!(run("O", 2, 50, 100), Plan { start: 1, stop: vec![] });
        assert_eq!(run("On", 2, 50, 100), Plan { start: 0, stop: vec![] }, "the last old task waits");
        assert_eq!(run("ON", 2, 50, 100), Plan { start: 0, stop: stop(&["O0"]) });
        assert_eq!(run("N", 2, 50, 100), Plan { start: 1, stop: vec![] });
    }

    #[test]
    fn maximum_percent_bounds_the_tasks_running_at_once() {
        // 4 desired at 150%: at most 6 at once, so 2 new beside the 4 old.
        assert_eq!(run("OOOO", 4, 100, 150), Plan { start: 2, stop: vec![] });
        // Two new healthy: two old may leave (6 healthy, 4 needed).
        assert_eq!(run("OOOONN", 4, 100, 150), Plan { start: 0, stop: stop(&["O0", "O1"]) });
    }

    #[test]
    fn old_tasks_that_serve_nothing_leave_at_once() {
        assert_eq!(run("oO", 2, 100, 200), Plan { start: 2, stop: stop(&["o0"]) });
    }

    #[test]
    fn scaling_down_stops_unhealthy_then_the_youngest() {
        assert_eq!(run("NNN", 2, 100, 200), Plan { start: 0, stop: stop(&["N2"]) });
        assert_eq!(run("NnN", 2, 100, 200), Plan { start: 0, stop: stop(&["n1"]) });
    }

    #[test]
    fn after_failures_one_task_starts_at_a_time_and_none_during_a_backoff() {
        let picture = tasks("");
        assert_eq!(plan(&picture, 3, &policy(100, 200), true, true).start, 1);
        assert_eq!(plan(&picture, 3, &policy(100, 200), false, false).start, 0);
    }
}
