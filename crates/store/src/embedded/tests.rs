//! Watchers too slow for the live broadcast, with a broadcast small enough to overflow.

use std::time::Duration;

use super::{Embedded, Options};
use crate::{Error, Event, Store};

/// Live groups the broadcast holds in these tests: a handful of commits overflow it.
const TINY: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open_tuned(dir.path(), Options { history: 10_000 }, TINY).unwrap();
    let mut watch = store.watch("s/", 0).await.unwrap();
    let written = burst(&store, 8, 100).await;

    let mut revisions = Vec::new();
    while revisions.len() < written {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap();
        revisions.push(event.unwrap().unwrap().revision());
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "a gap or a duplicate: {revisions:?}");
    assert!(tokio::time::timeout(Duration::from_millis(100), watch.next()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_the_kept_history_is_told_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open_tuned(dir.path(), Options { history: 50 }, TINY).unwrap();
    let mut watch = store.watch("s/", 0).await.unwrap();
    let written = burst(&store, 8, 100).await;

    let mut seen = 0;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap() {
            Some(Ok(_)) => seen += 1,
            Some(Err(error)) => break error,
            None => panic!("the watch ended without an error"),
        }
    };
    assert!(seen < written);
    assert!(matches!(error, Error::Compacted { .. }), "{error}");
    assert!(watch.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn a_refused_transaction_in_a_group_leaves_the_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    // Queued together, so the writer commits them as one group.
    let txns = (0..20).map(|i| {
        let store = store.clone();
        async move {
            let when = if i % 2 == 0 { vec![] } else { vec![crate::Compare::Present("absent".into())] };
            let ops = vec![crate::Op::Put { key: format!("g/{i:02}"), value: vec![], lease: None }];
            store.commit(crate::Txn { when, ops }).await
        }
    });
    let results = futures_join_all(txns).await;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_ok(), i % 2 == 0, "txn {i}: {result:?}");
    }
    let mut keys = Vec::new();
    for _ in 0..10 {
        match watch.next().await {
            Some(Ok(Event::Put(kv))) => keys.push(kv.key),
            other => panic!("{other:?}"),
        }
    }
    keys.sort();
    assert_eq!(keys, (0..20).step_by(2).map(|i| format!("g/{i:02}")).collect::<Vec<_>>());
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// `tasks` concurrent writers with `each` puts under `s/`; returns how many.
async fn burst(store: &Embedded, tasks: usize, each: usize) -> usize {
    let writers: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    store.put(&format!("s/{t}/{i}"), vec![0; 64]).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    tasks * each
}
