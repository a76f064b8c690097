//! Watches on etcd that outlive their connection.
//!
//! A watch stream breaks when its member dies, loses its leader (the client requires one) or
//! stops answering pings. The forwarding task then opens a new stream on whichever member the
//! client reaches next, starting right after the last revision it delivered: etcd keeps the
//! history, so nothing is missed, and nothing at or below that revision is sent twice. The
//! caller hears of the break only if etcd compacted the revisions in between, as `Compacted`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::{Status, Streaming};

use super::members::Retry;
use super::proto::etcdserverpb::watch_request::RequestUnion;
use super::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use super::proto::mvccpb::event::EventType;
use super::{Etcd, prefix_end};
use crate::{Error, Event, Result, Revision, Watch};

/// Events a watcher may leave unread before the forwarding task stops reading from etcd.
const WATCH_BUFFER: usize = 256;
/// Waits between attempts to reopen a broken watch, doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Opens the watch now, so a compacted `after` or an unreachable cluster is the caller's error,
/// and forwards its events from a task.
pub(super) async fn start(etcd: Etcd, key: Vec<u8>, after: Revision) -> Result<Watch> {
    let stream = open(&etcd, &key, after).await?;
    let (events, receiver) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(forward(etcd, key, after, stream, events));
    Ok(Watch::new(receiver))
}

/// A watch of everything under `key` after `after`, once etcd confirmed it.
async fn open(etcd: &Etcd, key: &[u8], after: Revision) -> Result<Streaming<WatchResponse>> {
    let create = WatchCreateRequest {
        key: key.to_vec(),
        range_end: prefix_end(key),
        start_revision: after.saturating_add(1),
        ..WatchCreateRequest::default()
    };
    let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
    let (stream, first) = etcd
        .members
        .call("watch", Retry::Idempotent, |member| {
            // The request side stays open after the one request, for as long as the watch runs.
            let requests = tokio_stream::once(request.clone()).chain(tokio_stream::pending());
            async move {
                let mut stream = member.watch().watch(requests).await?.into_inner();
                // The first answer says whether etcd created the watch or refused it.
                let first = stream.message().await?;
                Ok::<_, Status>((stream, first))
            }
        })
        .await?;
    let Some(first) = first else {
        return Err(Error::Unavailable("etcd closed the watch stream as it opened".into()));
    };
    if first.compact_revision > 0 {
        return Err(Error::Compacted { requested: after, oldest: first.compact_revision });
    }
    if first.canceled || !first.created {
        return Err(Error::Unavailable(format!("etcd did not create the watch: {}", first.cancel_reason)));
    }
    Ok(stream)
}

/// Runs until the watcher drops its [`Watch`] or the history it needs is compacted.
async fn forward(
    etcd: Etcd,
    key: Vec<u8>,
    mut delivered: Revision,
    mut stream: Streaming<WatchResponse>,
    events: mpsc::Sender<Result<Event>>,
) {
    loop {
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = events.closed() => return,
            };
            let response = match message {
                Ok(Some(response)) => response,
                // A broken connection or a stream etcd ended: reopen below.
                Ok(None) | Err(_) => break,
            };
            if response.compact_revision > 0 {
                let oldest = response.compact_revision;
                let _ = events.send(Err(Error::Compacted { requested: delivered, oldest })).await;
                return;
            }
            if response.canceled {
                break;
            }
            match deliver(&etcd, &response, delivered, &events).await {
                Some(revision) => delivered = revision,
                None => return,
            }
        }
        let mut wait = RETRY_FIRST;
        stream = loop {
            match open(&etcd, &key, delivered).await {
                Ok(stream) => break stream,
                Err(error @ Error::Compacted { .. }) => {
                    let _ = events.send(Err(error)).await;
                    return;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = events.closed() => return,
            }
            wait = (wait * 2).min(RETRY_MAX);
        };
    }
}

/// Sends `response`'s events newer than `delivered` and returns the new high mark; `None` once
/// the watcher is gone. etcd sends a revision's events in one response, so a revision is never
/// split across a reconnect.
async fn deliver(
    etcd: &Etcd,
    response: &WatchResponse,
    mut delivered: Revision,
    events: &mpsc::Sender<Result<Event>>,
) -> Option<Revision> {
    let before = delivered;
    for event in &response.events {
        let Some(kv) = &event.kv else { continue };
        let revision = kv.mod_revision;
        if revision <= before {
            continue;
        }
        let converted = match event.r#type() {
            EventType::Put => etcd.key_value(kv).map(Event::Put),
            EventType::Delete => etcd.strip(&kv.key).map(|key| Event::Delete { key, revision }),
        };
        events.send(converted).await.ok()?;
        delivered = delivered.max(revision);
    }
    Some(delivered)
}
