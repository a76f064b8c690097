//! When each lease runs out. Deadlines live in memory only: the database keeps each lease's TTL,
//! and a restart gives every lease a full TTL from then, so runners have time to renew after the
//! control plane comes back.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::LeaseId;

#[derive(Default)]
pub(super) struct Leases {
    live: Mutex<HashMap<LeaseId, Lease>>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

impl Leases {
    /// Starts (or restarts) `lease`'s clock: it expires `ttl` from now unless renewed.
    pub(super) fn insert(&self, lease: LeaseId, ttl: Duration) {
        self.lock().insert(lease, Lease { ttl, deadline: deadline(Instant::now(), ttl) });
    }

    /// Pushes the deadline a full TTL out; false if the lease is unknown or already expired.
    pub(super) fn renew(&self, lease: LeaseId) -> bool {
        let now = Instant::now();
        match self.lock().get_mut(&lease) {
            Some(live) if live.deadline > now => {
                live.deadline = deadline(now, live.ttl);
                true
            }
            _ => false,
        }
    }

    /// Forgets `lease`; false if it was not live. Whoever gets true owns deleting its keys, so a
    /// revoke racing the expiry deletes them once.
    pub(super) fn remove(&self, lease: LeaseId) -> bool {
        self.lock().remove(&lease).is_some()
    }

    /// Removes and returns every lease whose deadline has passed.
    pub(super) fn take_expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut live = self.lock();
        let expired: Vec<LeaseId> =
            live.iter().filter(|(_, lease)| lease.deadline <= now).map(|(id, _)| *id).collect();
        for id in &expired {
            live.remove(id);
        }
        expired
    }

    /// Nothing panics while holding the lock, but a poisoned map is still the right map.
    fn lock(&self) -> MutexGuard<'_, HashMap<LeaseId, Lease>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `now + ttl`, or a century from now for a TTL so long that the sum would overflow.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_once_and_cannot_be_renewed_after() {
        let leases = Leases::default();
        leases.insert(1, Duration::from_millis(50));
        leases.insert(2, Duration::from_secs(60));
        assert!(leases.renew(1));
        assert!(leases.take_expired(Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_millis(100);
        assert_eq!(leases.take_expired(later), vec![1]);
        assert!(leases.take_expired(later).is_empty());
        assert!(!leases.renew(1));
        assert!(leases.remove(2));
        assert!(!leases.remove(2));
    }

    #[test]
    fn an_endless_ttl_does_not_overflow() {
        let leases = Leases::default();
        leases.insert(1, Duration::MAX);
        assert!(leases.renew(1));
    }
}
