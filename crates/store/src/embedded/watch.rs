//! Watches on the embedded store: replay from the event log, then live events from the writer.
//!
//! The seam has no gap because the watch subscribes to the live broadcast before it reads the
//! log: whatever was broadcast before the subscription was committed before it, so the log read
//! that follows holds it. It has no duplicate because the watch remembers the revision it has
//! covered and drops live events at or below it. A watcher too slow for the broadcast loses
//! nothing either: it subscribes again and catches up from the log, and only when the log no
//! longer reaches back that far does it get `Compacted` and relist.

use std::sync::Arc;

use redb::Database;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use super::codec::decode_events;
use super::{LOG, META, META_LOG_START, META_REVISION, read, storage_error};
use crate::{Error, Event, Result, Revision, Watch};

/// Events a watcher may leave unread before the forwarding task waits for it.
const WATCH_BUFFER: usize = 256;
/// Revisions read from the log per blocking read while catching up.
const CHUNK: i64 = 512;

pub(super) type Live = broadcast::Receiver<Arc<Vec<Event>>>;

/// Starts a watch of `prefix` after `after`. `live` must have been subscribed before this is
/// called, which is what makes the seam gapless.
pub(super) async fn start(db: Arc<Database>, live: Live, prefix: String, after: Revision) -> Result<Watch> {
    let log_start = read(&db, |rtx| {
        let meta = rtx.open_table(META).map_err(storage_error)?;
        Ok(meta.get(META_LOG_START).map_err(storage_error)?.map_or(1, |v| v.value()))
    })
    .await?;
    if after.saturating_add(1) < log_start {
        return Err(Error::Compacted { requested: after, oldest: log_start });
    }
    let (events, receiver) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(forward(db, live, prefix, after, events));
    Ok(Watch::new(receiver))
}

/// Runs until the watcher drops its [`Watch`] or the store shuts down.
async fn forward(
    db: Arc<Database>,
    mut live: Live,
    prefix: String,
    mut covered: Revision,
    events: mpsc::Sender<Result<Event>>,
) {
    loop {
        match catch_up(&db, &prefix, covered, &events).await {
            Ok(Some(revision)) => covered = revision,
            Ok(None) => return,
            Err(error) => {
                let _ = events.send(Err(error)).await;
                return;
            }
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = events.closed() => return,
            };
            match received {
                Ok(group) => {
                    for event in group.iter() {
                        if event.revision() > covered
                            && event.key().starts_with(&prefix)
                            && events.send(Ok(event.clone())).await.is_err()
                        {
                            return;
                        }
                    }
                    if let Some(last) = group.last() {
                        covered = covered.max(last.revision());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    live = live.resubscribe();
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Sends every logged event under `prefix` after `covered`, up to the store's revision when the
/// last chunk was read, and returns that revision; `None` once the watcher is gone.
async fn catch_up(
    db: &Arc<Database>,
    prefix: &str,
    mut covered: Revision,
    events: &mpsc::Sender<Result<Event>>,
) -> Result<Option<Revision>> {
    loop {
        let (prefix, from) = (prefix.to_owned(), covered);
        let chunk = read(db, move |rtx| read_chunk(rtx, &prefix, from)).await?;
        if covered.saturating_add(1) < chunk.log_start {
            return Err(Error::Compacted { requested: covered, oldest: chunk.log_start });
        }
        for event in chunk.events {
            if events.send(Ok(event)).await.is_err() {
                return Ok(None);
            }
        }
        covered = covered.max(chunk.through);
        if chunk.through >= chunk.current {
            return Ok(Some(covered));
        }
    }
}

struct Chunk {
    events: Vec<Event>,
    /// The last revision this chunk covers.
    through: Revision,
    /// The store's revision in the snapshot the chunk was read from.
    current: Revision,
    log_start: Revision,
}

fn read_chunk(rtx: &redb::ReadTransaction, prefix: &str, after: Revision) -> Result<Chunk> {
    let meta = rtx.open_table(META).map_err(storage_error)?;
    let value = |name: &str, default: i64| -> Result<i64> {
        Ok(meta.get(name).map_err(storage_error)?.map_or(default, |v| v.value()))
    };
    let current = value(META_REVISION, 0)?;
    let log_start = value(META_LOG_START, 1)?;
    let through = current.min(after.saturating_add(CHUNK));
    let mut events = Vec::new();
    if through > after && after.saturating_add(1) >= log_start {
        let log = rtx.open_table(LOG).map_err(storage_error)?;
        for entry in log.range::<i64>(after.saturating_add(1)..=through).map_err(storage_error)? {
            let (revision, bytes) = entry.map_err(storage_error)?;
            let decoded = decode_events(revision.value(), bytes.value())?;
            events.extend(decoded.into_iter().filter(|event| event.key().starts_with(prefix)));
        }
    }
    Ok(Chunk { events, through, current, log_start })
}
