//! The single-node store, on redb.
//!
//! One writer thread owns every write (`writer.rs`): queued transactions are committed
//! together in one redb write transaction, so a burst costs one fsync per group rather than one
//! per caller, and each caller hears back only after that fsync. Reads run on tokio's blocking
//! pool against redb's snapshots and never wait for the writer. Watches replay from an event
//! log kept in the same database (the last [`Options::history`] revisions) and then follow a
//! broadcast from the writer (`watch.rs`).
//!
//! Crash safety is redb's: a commit either reached the disk whole or is absent after a restart,
//! and nothing is acknowledged before its commit returned.

mod codec;
mod leases;
#[cfg(test)]
mod tests;
mod watch;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, MultimapTableDefinition, ReadableDatabase, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{Error, Event, KeyValue, LeaseId, Listing, Result, Revision, Store, Txn, Watch};
use leases::Leases;
use writer::{Request, State, Writer};

/// The database file inside the directory given to [`Embedded::open`].
const FILE: &str = "store.redb";
/// redb's page cache. Its default (1 GiB) is sized for databases much larger than a control
/// plane's registry.
const CACHE_BYTES: usize = 64 << 20;
/// Groups of live events the broadcast holds for watchers; one that falls further behind catches
/// up from the log.
const LIVE_GROUPS: usize = 1024;

/// key → record (see `codec`).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// revision → that revision's events.
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
/// The counters below.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_LOG_START: &str = "log_start";
const META_LAST_LEASE: &str = "last_lease";
/// lease → TTL in milliseconds.
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
/// lease → the keys attached to it, so expiry need not scan every key.
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

#[derive(Clone, Debug)]
pub struct Options {
    /// How many revisions of events the store keeps for watches to replay; a watch from further
    /// back gets [`Error::Compacted`]. Default 10,000.
    pub history: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { history: 10_000 }
    }
}

/// The embedded store. Clones share one database and one writer; dropping the last clone
/// finishes the writes in hand, stops the writer and ends every watch.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    /// `None` only while dropping, which is what tells the writer to stop.
    requests: Option<mpsc::Sender<Request>>,
    live: broadcast::Sender<Arc<Vec<Event>>>,
    leases: Arc<Leases>,
    writer: Option<JoinHandle<()>>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir`. Blocks while redb opens the file, which after a
    /// crash includes its repair: call it before serving, or from a blocking task.
    pub fn open(dir: &Path) -> Result<Embedded> {
        Embedded::open_with(dir, Options::default())
    }

    pub fn open_with(dir: &Path, options: Options) -> Result<Embedded> {
        Embedded::open_tuned(dir, options, LIVE_GROUPS)
    }

    fn open_tuned(dir: &Path, options: Options, live_groups: usize) -> Result<Embedded> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Unavailable(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::Unavailable(format!("{} is already open in another process", path.display()))
            }
            other => Error::Unavailable(format!("opening {}: {other}", path.display())),
        })?;
        let db = Arc::new(db);
        let (state, leases) = State::init(&db)?;
        let live_leases = Arc::new(Leases::default());
        for (lease, ttl) in leases {
            live_leases.insert(lease, ttl);
        }
        let (requests, receiver) = mpsc::channel();
        let (live, _) = broadcast::channel(live_groups);
        let writer = Writer {
            db: db.clone(),
            requests: receiver,
            events: live.clone(),
            leases: live_leases.clone(),
            history: i64::try_from(options.history.max(1)).unwrap_or(i64::MAX),
            state,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Unavailable(format!("starting the store's writer thread: {e}")))?;
        Ok(Embedded {
            inner: Arc::new(Inner {
                path,
                db,
                requests: Some(requests),
                live,
                leases: live_leases,
                writer: Some(writer),
            }),
        })
    }

    /// Queues a request for the writer and waits for its answer. Dropping the future does not
    /// withdraw the request: it may still commit.
    async fn submit<T>(&self, request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let requests = self.inner.requests.as_ref().ok_or_else(shut_down)?;
        requests.send(request(reply)).map_err(|_| shut_down())?;
        answer.await.map_err(|_| shut_down())?
    }
}

impl Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        read(&self.inner.db, move |rtx| {
            let keys = rtx.open_table(KEYS).map_err(storage_error)?;
            match keys.get(key.as_str()).map_err(storage_error)? {
                Some(record) => Ok(Some(codec::decode_record(&key, record.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_owned();
        read(&self.inner.db, move |rtx| {
            let meta = rtx.open_table(META).map_err(storage_error)?;
            let revision = meta.get(META_REVISION).map_err(storage_error)?.map_or(0, |v| v.value());
            let keys = rtx.open_table(KEYS).map_err(storage_error)?;
            let mut items = Vec::new();
            for entry in keys.range::<&str>(prefix.as_str()..).map_err(storage_error)? {
                let (key, record) = entry.map_err(storage_error)?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                items.push(codec::decode_record(key.value(), record.value())?);
            }
            Ok(Listing { items, revision })
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<Revision> {
        self.submit(|reply| Request::Commit { txn, reply }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let live = self.inner.live.subscribe();
        watch::start(self.inner.db.clone(), live, prefix.to_owned(), after).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(Error::Other("a lease needs a TTL above zero".into()));
        }
        self.submit(|reply| Request::Grant { ttl, reply }).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // Renewing touches memory only: a restart renews every lease anyway.
        if self.inner.leases.renew(lease) { Ok(()) } else { Err(Error::LeaseNotFound(lease)) }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        if !self.inner.leases.remove(lease) {
            return Err(Error::LeaseNotFound(lease));
        }
        self.submit(|reply| Request::Revoke { lease, reply: Some(reply) }).await
    }
}

impl fmt::Debug for Embedded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Embedded").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    /// Waits for the writer to finish its group, so the database file is closed (and may be
    /// opened again) once the last clone is gone, apart from watches still draining.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Runs a read on the blocking pool: redb reads touch the disk.
async fn read<T: Send + 'static>(
    db: &Arc<Database>,
    read: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || read(&db.begin_read().map_err(storage_error)?))
        .await
        .map_err(|e| Error::Other(format!("a store read failed: {e}")))?
}

fn storage_error(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Io(e) => Error::Unavailable(format!("embedded store: {e}")),
        other => Error::Other(format!("embedded store: {other}")),
    }
}

fn shut_down() -> Error {
    Error::Unavailable("the embedded store has shut down".into())
}
