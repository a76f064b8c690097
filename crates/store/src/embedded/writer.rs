//! The one thread that writes. Callers queue requests; the writer takes everything queued, applies
//! the requests one after another inside a single redb write transaction, commits it (one fsync
//! for the whole group) and only then answers each caller. Every transaction still gets its own
//! revision and its own compare check: group commit changes how often the disk is synced, never
//! what a caller observes.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, MultimapTable, ReadableTable, Table};
use tokio::sync::{broadcast, oneshot};

use super::codec::{encode_events, encode_record, record_lease, record_revision};
use super::leases::Leases;
use super::{
    KEYS, LEASE_KEYS, LEASES, LOG, META, META_LAST_LEASE, META_LOG_START, META_REVISION, storage_error,
};
use crate::{Compare, Error, Event, KeyValue, LeaseId, Op, Result, Revision, Txn};

/// At most this many requests share one write transaction, so one group never holds callers
/// for long and a group's events stay a reasonable size for the broadcast.
const MAX_GROUP: usize = 1024;
/// How often expired leases are looked for. Expiry is that much late at worst.
const LEASE_TICK: Duration = Duration::from_millis(100);

pub(super) enum Request {
    Commit {
        txn: Txn,
        reply: oneshot::Sender<Result<Revision>>,
    },
    Grant {
        ttl: Duration,
        reply: oneshot::Sender<Result<LeaseId>>,
    },
    /// `reply` is `None` when the writer revokes an expired lease itself.
    Revoke {
        lease: LeaseId,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
}

/// What the database says about its own history; changed only by a committed write transaction.
#[derive(Clone, Copy, Debug)]
pub(super) struct State {
    pub(super) revision: Revision,
    /// The oldest revision whose events the log still holds.
    pub(super) log_start: Revision,
    last_lease: LeaseId,
}

impl State {
    /// Creates the tables on first open and reads the state and every lease's TTL.
    pub(super) fn init(db: &Database) -> Result<(State, Vec<(LeaseId, Duration)>)> {
        let wtx = db.begin_write().map_err(storage_error)?;
        let loaded = (|| -> Result<_, redb::Error> {
            wtx.open_table(KEYS)?;
            wtx.open_table(LOG)?;
            wtx.open_multimap_table(LEASE_KEYS)?;
            let meta = wtx.open_table(META)?;
            let read = |name: &str, default: i64| -> Result<i64, redb::Error> {
                Ok(meta.get(name)?.map_or(default, |v| v.value()))
            };
            let state = State {
                revision: read(META_REVISION, 0)?,
                log_start: read(META_LOG_START, 1)?,
                last_lease: read(META_LAST_LEASE, 0)?,
            };
            let mut leases = Vec::new();
            for entry in wtx.open_table(LEASES)?.iter()? {
                let (id, ttl_ms) = entry?;
                leases.push((id.value(), Duration::from_millis(ttl_ms.value())));
            }
            Ok((state, leases))
        })()
        .map_err(storage_error)?;
        wtx.commit().map_err(storage_error)?;
        Ok(loaded)
    }
}

pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) requests: Receiver<Request>,
    pub(super) events: broadcast::Sender<Arc<Vec<Event>>>,
    pub(super) leases: Arc<Leases>,
    /// How many revisions of events the log keeps for watches to replay.
    pub(super) history: i64,
    pub(super) state: State,
}

/// Why a request did not go through. A refusal is the request's own (a failed compare, an unknown
/// lease) and wrote nothing, so the rest of the group goes on; a storage failure aborts the group.
enum Failure {
    Refused(Error),
    Storage(String),
}

macro_rules! storage_failure_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::Storage(e.to_string())
            }
        }
    )*};
}
storage_failure_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl From<Error> for Failure {
    /// Only the codec produces crate errors here, and a record that does not decode is damage.
    fn from(e: Error) -> Self {
        Failure::Storage(e.to_string())
    }
}

enum Done {
    Committed(Revision),
    Granted(LeaseId, Duration),
    Revoked,
}

impl Writer {
    /// Runs until every sender is gone (the store was dropped), finishing the group in hand.
    pub(super) fn run(mut self) {
        let mut expired_unrevoked: Vec<LeaseId> = Vec::new();
        let mut next_expiry_check = Instant::now();
        loop {
            let mut group = Vec::new();
            match self.requests.recv_timeout(LEASE_TICK) {
                Ok(request) => group.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while group.len() < MAX_GROUP {
                match self.requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_expiry_check {
                expired_unrevoked.extend(self.leases.take_expired(now));
                next_expiry_check = now + LEASE_TICK;
            }
            group.extend(expired_unrevoked.drain(..).map(|lease| Request::Revoke { lease, reply: None }));
            if !group.is_empty() {
                expired_unrevoked = self.commit_group(group);
            }
        }
    }

    /// Commits `group` and answers each request. Returns the expired leases whose revoke did not
    /// make it to disk, to try again.
    fn commit_group(&mut self, group: Vec<Request>) -> Vec<LeaseId> {
        let mut state = self.state;
        let mut events = Vec::new();
        let outcomes = match self.apply_group(&group, &mut state, &mut events) {
            Ok(outcomes) => outcomes,
            Err(cause) => {
                let mut retry = Vec::new();
                for request in group {
                    let error =
                        || Error::Unavailable(format!("the embedded store could not commit: {cause}"));
                    match request {
                        Request::Commit { reply, .. } => drop(reply.send(Err(error()))),
                        Request::Grant { reply, .. } => drop(reply.send(Err(error()))),
                        Request::Revoke { reply: Some(reply), .. } => drop(reply.send(Err(error()))),
                        Request::Revoke { lease, reply: None } => retry.push(lease),
                    }
                }
                return retry;
            }
        };
        self.state = state;
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(events));
        }
        for (request, outcome) in group.into_iter().zip(outcomes) {
            // A caller that went away no longer wants its answer; the write stands either way.
            match (request, outcome) {
                (Request::Commit { reply, .. }, Ok(Done::Committed(revision))) => {
                    let _ = reply.send(Ok(revision));
                }
                (Request::Grant { reply, .. }, Ok(Done::Granted(lease, ttl))) => {
                    // Live before the caller hears of it, so its first keep_alive finds it.
                    self.leases.insert(lease, ttl);
                    let _ = reply.send(Ok(lease));
                }
                (Request::Revoke { reply: Some(reply), .. }, Ok(_)) => drop(reply.send(Ok(()))),
                (Request::Commit { reply, .. }, Err(error)) => drop(reply.send(Err(error))),
                (Request::Grant { reply, .. }, Err(error)) => drop(reply.send(Err(error))),
                (Request::Revoke { reply: Some(reply), .. }, Err(error)) => drop(reply.send(Err(error))),
                // An expiry, or an outcome that does not match its request (apply_group never
                // pairs them so).
                _ => {}
            }
        }
        Vec::new()
    }

    /// Applies the group in one write transaction and commits it. The outer error aborts the
    /// whole group; the inner results are each request's own.
    fn apply_group(
        &self,
        group: &[Request],
        state: &mut State,
        events: &mut Vec<Event>,
    ) -> Result<Vec<Result<Done>>, String> {
        self.try_apply_group(group, state, events).map_err(|failure| match failure {
            Failure::Storage(cause) => cause,
            Failure::Refused(error) => error.to_string(),
        })
    }

    fn try_apply_group(
        &self,
        group: &[Request],
        state: &mut State,
        events: &mut Vec<Event>,
    ) -> Result<Vec<Result<Done>>, Failure> {
        let wtx = self.db.begin_write()?;
        let mut outcomes = Vec::with_capacity(group.len());
        {
            let mut tables = Tables::open(&wtx)?;
            for request in group {
                let outcome = match request {
                    Request::Commit { txn, .. } => tables.commit(txn, state, events).map(Done::Committed),
                    Request::Grant { ttl, .. } => tables.grant(*ttl, state).map(|id| Done::Granted(id, *ttl)),
                    Request::Revoke { lease, .. } => {
                        tables.revoke(*lease, state, events).map(|()| Done::Revoked)
                    }
                };
                outcomes.push(match outcome {
                    Ok(done) => Ok(done),
                    Err(Failure::Refused(error)) => Err(error),
                    Err(storage @ Failure::Storage(_)) => return Err(storage),
                });
            }
            tables.trim_log(state, self.history)?;
            tables.save(state)?;
        }
        wtx.commit()?;
        Ok(outcomes)
    }
}

/// The tables, opened once per write transaction.
struct Tables<'txn> {
    keys: Table<'txn, &'static str, &'static [u8]>,
    log: Table<'txn, i64, &'static [u8]>,
    meta: Table<'txn, &'static str, i64>,
    leases: Table<'txn, i64, u64>,
    lease_keys: MultimapTable<'txn, i64, &'static str>,
}

impl<'txn> Tables<'txn> {
    fn open(wtx: &'txn redb::WriteTransaction) -> Result<Self, Failure> {
        Ok(Tables {
            keys: wtx.open_table(KEYS)?,
            log: wtx.open_table(LOG)?,
            meta: wtx.open_table(META)?,
            leases: wtx.open_table(LEASES)?,
            lease_keys: wtx.open_multimap_table(LEASE_KEYS)?,
        })
    }

    /// Checks every compare and every lease first, so a refused transaction writes nothing.
    fn commit(&mut self, txn: &Txn, state: &mut State, events: &mut Vec<Event>) -> Result<Revision, Failure> {
        for compare in &txn.when {
            if !self.holds(compare)? {
                return Err(Failure::Refused(Error::Conflict(describe(compare))));
            }
        }
        let leases = txn.ops.iter().filter_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            _ => None,
        });
        for lease in leases {
            if self.leases.get(lease)?.is_none() {
                return Err(Failure::Refused(Error::LeaseNotFound(lease)));
            }
        }
        let revision = state.revision + 1;
        let first = events.len();
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    self.put(key, value, *lease, revision)?;
                    let kv = KeyValue { key: key.clone(), value: value.clone(), revision, lease: *lease };
                    events.push(Event::Put(kv));
                }
                Op::Delete { key } => {
                    if self.delete(key)? {
                        events.push(Event::Delete { key: key.clone(), revision });
                    }
                }
                Op::DeletePrefix { prefix } => {
                    for key in self.keys_with_prefix(prefix)? {
                        self.delete(&key)?;
                        events.push(Event::Delete { key, revision });
                    }
                }
            }
        }
        self.record(revision, &events[first..], state)?;
        Ok(state.revision)
    }

    fn holds(&self, compare: &Compare) -> Result<bool, Failure> {
        Ok(match compare {
            Compare::Absent(key) => self.keys.get(key.as_str())?.is_none(),
            Compare::Present(key) => self.keys.get(key.as_str())?.is_some(),
            Compare::RevisionIs(key, expected) => match self.keys.get(key.as_str())? {
                Some(record) => record_revision(record.value())? == *expected,
                None => false,
            },
        })
    }

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        revision: Revision,
    ) -> Result<(), Failure> {
        let previous_lease = match self.keys.get(key)? {
            Some(record) => record_lease(record.value())?,
            None => None,
        };
        if let Some(previous) = previous_lease.filter(|previous| Some(*previous) != lease) {
            self.lease_keys.remove(previous, key)?;
        }
        self.keys.insert(key, encode_record(revision, lease, value).as_slice())?;
        if let Some(lease) = lease {
            self.lease_keys.insert(lease, key)?;
        }
        Ok(())
    }

    /// Deletes `key` and its lease attachment; false if it did not exist.
    fn delete(&mut self, key: &str) -> Result<bool, Failure> {
        let lease = match self.keys.remove(key)? {
            Some(record) => record_lease(record.value())?,
            None => return Ok(false),
        };
        if let Some(lease) = lease {
            self.lease_keys.remove(lease, key)?;
        }
        Ok(true)
    }

    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Failure> {
        let mut keys = Vec::new();
        for entry in self.keys.range::<&str>(prefix..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    fn grant(&mut self, ttl: Duration, state: &mut State) -> Result<LeaseId, Failure> {
        let lease = state.last_lease + 1;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.leases.insert(lease, ttl_ms)?;
        state.last_lease = lease;
        Ok(lease)
    }

    fn revoke(&mut self, lease: LeaseId, state: &mut State, events: &mut Vec<Event>) -> Result<(), Failure> {
        if self.leases.remove(lease)?.is_none() {
            return Err(Failure::Refused(Error::LeaseNotFound(lease)));
        }
        let mut keys = Vec::new();
        for key in self.lease_keys.remove_all(lease)? {
            keys.push(key?.value().to_owned());
        }
        let revision = state.revision + 1;
        let first = events.len();
        for key in keys {
            if self.keys.remove(key.as_str())?.is_some() {
                events.push(Event::Delete { key, revision });
            }
        }
        self.record(revision, &events[first..], state)
    }

    /// Logs a transaction's events under its revision. A transaction that changed nothing takes
    /// no revision, as in etcd.
    fn record(&mut self, revision: Revision, events: &[Event], state: &mut State) -> Result<(), Failure> {
        if !events.is_empty() {
            self.log.insert(revision, encode_events(events).as_slice())?;
            state.revision = revision;
        }
        Ok(())
    }

    /// Drops the events older than the last `history` revisions.
    fn trim_log(&mut self, state: &mut State, history: i64) -> Result<(), Failure> {
        let start = (state.revision - history + 1).max(state.log_start);
        if start > state.log_start {
            self.log.retain_in::<i64, _>(..start, |_, _| false)?;
            state.log_start = start;
        }
        Ok(())
    }

    fn save(&mut self, state: &State) -> Result<(), Failure> {
        self.meta.insert(META_REVISION, state.revision)?;
        self.meta.insert(META_LOG_START, state.log_start)?;
        self.meta.insert(META_LAST_LEASE, state.last_lease)?;
        Ok(())
    }
}

fn describe(compare: &Compare) -> String {
    match compare {
        Compare::Absent(key) => format!("{key} exists"),
        Compare::Present(key) => format!("{key} does not exist"),
        Compare::RevisionIs(key, revision) => format!("{key} is not at revision {revision}"),
    }
}
