//! The embedded store: the conformance suite, and what only a single-node store on disk does
//! (surviving a reopen, bounded history, lease clocks that restart with the process).

#[macro_use]
mod conformance;

use std::time::Duration;

use tether_store::embedded::Options;
use tether_store::{Embedded, Error, Event, Op, Store, Txn};

use conformance::{next_events, refusal};

async fn open() -> (Embedded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Embedded::open(dir.path()).unwrap(), dir)
}

conformance_tests!(open);

#[tokio::test]
async fn reopening_keeps_keys_revisions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let first = store.put("k/1", b"one".to_vec()).await.unwrap();
    let second = store.put("k/2", b"two".to_vec()).await.unwrap();
    drop(store);

    let store = Embedded::open(dir.path()).unwrap();
    assert_eq!(store.get("k/1").await.unwrap().unwrap().revision, first);
    assert_eq!(store.list("k/").await.unwrap().revision, second);
    let third = store.put("k/3", b"three".to_vec()).await.unwrap();
    assert_eq!(third, second + 1, "revisions continue where they were");

    let mut watch = store.watch("k/", 0).await.unwrap();
    let keys: Vec<String> = next_events(&mut watch, 3).await.iter().map(|e| e.key().to_owned()).collect();
    assert_eq!(keys, ["k/1", "k/2", "k/3"], "history survives a reopen");
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Embedded::open(dir.path()).unwrap();
    let second = Embedded::open(dir.path());
    assert!(matches!(second, Err(Error::Unavailable(_))), "{second:?}");
}

#[tokio::test]
async fn watching_from_before_the_kept_history_asks_for_a_relist() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open_with(dir.path(), Options { history: 5 }).unwrap();
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(store.put(&format!("h/{i}"), vec![]).await.unwrap());
    }
    // The last five revisions are kept: a watch may start right before the oldest of them.
    let oldest = revisions[5];
    let refused = refusal(store.watch("h/", oldest - 2).await).await;
    assert!(
        matches!(refused, Error::Compacted { requested, oldest: o } if requested == oldest - 2 && o == oldest),
        "{refused}"
    );
    let mut watch = store.watch("h/", oldest - 1).await.unwrap();
    let events = next_events(&mut watch, 5).await;
    assert_eq!(events.iter().map(Event::revision).collect::<Vec<_>>(), revisions[5..]);

    // A relist and a watch from its revision miss nothing.
    let listing = store.list("h/").await.unwrap();
    assert_eq!(listing.items.len(), 10);
    let mut watch = store.watch("h/", listing.revision).await.unwrap();
    let next = store.put("h/new", vec![]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await[0].revision(), next);
}

#[tokio::test]
async fn a_lease_gets_a_full_ttl_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let lease = store.grant(Duration::from_secs(1)).await.unwrap();
    let put = Op::Put { key: "leased".into(), value: vec![], lease: Some(lease) };
    store.commit(Txn { when: vec![], ops: vec![put] }).await.unwrap();
    drop(store);

    // Down for longer than the TTL: the lease must not be expired on arrival.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let store = Embedded::open(dir.path()).unwrap();
    assert!(store.get("leased").await.unwrap().is_some());
    store.keep_alive(lease).await.unwrap();
    let mut watch = store.watch("", store.list("").await.unwrap().revision).await.unwrap();
    let deleted = next_events(&mut watch, 1).await;
    assert!(matches!(&deleted[0], Event::Delete { key, .. } if key == "leased"), "{deleted:?}");
    assert!(matches!(store.keep_alive(lease).await, Err(Error::LeaseNotFound(_))));

    // Lease ids are never reused, even across a restart.
    assert!(store.grant(Duration::from_secs(5)).await.unwrap() > lease);
}

#[tokio::test]
async fn dropping_the_store_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    store.put("k", vec![]).await.unwrap();
    next_events(&mut watch, 1).await;
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("the watch ends");
    assert!(end.is_none(), "{end:?}");
}
