//! The control plane's store: one small key-value interface with revisions, watches and leases,
//! shaped after etcd's, and two implementations behind it.
//!
//! - [`Embedded`] (the default, one node): durable, a write is on disk before
//!   it is acknowledged.
//! - [`Etcd`]: several control-plane replicas share one etcd cluster.
//!
//! Everything above this crate (the registry, the REST API, the proxy stream) is written against
//! [`Store`] and never learns which one it has.

pub mod embedded;
pub mod etcd;

pub use embedded::Embedded;
pub use etcd::Etcd;

use std::future::Future;
use std::time::Duration;

/// A point in the store's history. Every committed write gets a new, larger one; every key
/// remembers the revision that last changed it.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it is revoked or not renewed within its TTL.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that last changed this key.
    pub revision: Revision,
    pub lease: Option<LeaseId>,
}

/// What a watch reports, in revision order, each event exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// Every key under a prefix, as of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub items: Vec<KeyValue>,
    /// The store's revision when the listing was taken: watch from here to miss nothing.
    pub revision: Revision,
}

/// A condition a transaction checks before it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists (any value).
    Present(String),
    /// The key was last changed at exactly this revision.
    RevisionIs(String, Revision),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

/// All of `ops`, atomically and at one revision, if every compare in `when` holds; otherwise
/// nothing, and [`Error::Conflict`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A transaction's condition did not hold; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A watch asked for history the store no longer keeps: list again, then watch from the
    /// listing's revision.
    #[error("revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted { requested: Revision, oldest: Revision },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    /// The store cannot be reached or cannot commit (etcd without quorum, a full disk). Writes
    /// fail fast with this rather than hang.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream of events after some revision. Dropping it cancels the watch.
pub struct Watch {
    events: tokio::sync::mpsc::Receiver<Result<Event>>,
}

impl Watch {
    pub fn new(events: tokio::sync::mpsc::Receiver<Result<Event>>) -> Self {
        Self { events }
    }

    /// The next event; `Some(Err(Compacted))` means the watch fell too far behind and the caller
    /// must relist. `None` when the store shut down.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.events.recv().await
    }
}

/// The store's interface. Cheap to clone: clones share one connection or database.
pub trait Store: Clone + Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Every key starting with `prefix`, in key order, at one revision.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing>> + Send;

    /// Commits `txn`; returns the revision it was committed at. Acknowledged means durable.
    fn commit(&self, txn: Txn) -> impl Future<Output = Result<Revision>> + Send;

    /// Events for keys under `prefix` with a revision greater than `after`, in order, with no
    /// gaps and no duplicates, continuing live. When `after` is older than the history the store
    /// keeps, the answer is [`Error::Compacted`], either at once or as the watch's first item
    /// (etcd says so only once the watch exists): relist, then watch from the listing.
    fn watch(&self, prefix: &str, after: Revision) -> impl Future<Output = Result<Watch>> + Send;

    /// A new lease that lives for `ttl` unless renewed.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId>> + Send;

    /// Renews a lease for another TTL. [`Error::LeaseNotFound`] once it has expired.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// Ends a lease now, deleting every key attached to it.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// A single put, for convenience.
    fn put(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<Revision>> + Send {
        self.commit(Txn { when: vec![], ops: vec![Op::Put { key: key.to_owned(), value, lease: None }] })
    }
}
