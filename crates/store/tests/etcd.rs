//! The etcd store against real etcd servers this test starts: the conformance suite, compaction,
//! watches that outlive their member, and F10 (quorum lost, then back).

#[macro_use]
mod conformance;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tether_store::{Error, Etcd, Event, Revision, Store, Watch};
use tether_testkit::etcd::EtcdCluster;

use conformance::{next_events, refusal};

/// Each test gets its own member, and keys under a prefix so that stripping it is tested too.
async fn open() -> (Etcd, EtcdCluster) {
    let cluster = EtcdCluster::single().await.unwrap();
    let store = Etcd::connect(&cluster.endpoints(), "/tether-test/").await.unwrap();
    (store, cluster)
}

conformance_tests!(open);

#[tokio::test]
async fn keys_outside_the_prefix_are_invisible() {
    let (store, cluster) = open().await;
    let neighbour = Etcd::connect(&cluster.endpoints(), "/neighbour/").await.unwrap();
    neighbour.put("k", b"theirs".to_vec()).await.unwrap();
    store.put("k", b"ours".to_vec()).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"ours");
    let listing = store.list("").await.unwrap();
    assert_eq!(listing.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["k"]);
}

#[tokio::test]
async fn watching_from_a_compacted_revision_asks_for_a_relist() {
    let (store, _cluster) = open().await;
    let first = store.put("c/0", vec![]).await.unwrap();
    let mut last = first;
    for i in 1..5 {
        last = store.put(&format!("c/{i}"), vec![]).await.unwrap();
    }
    store.compact(last).await.unwrap();

    let refused = refusal(store.watch("c/", first).await).await;
    assert!(
        matches!(refused, Error::Compacted { requested, oldest } if requested == first && oldest == last),
        "{refused}"
    );
    // From the listing's revision there is nothing to replay, and nothing is missed.
    let listing = store.list("c/").await.unwrap();
    assert_eq!(listing.items.len(), 5);
    let mut watch = store.watch("c/", listing.revision).await.unwrap();
    let next = store.put("c/new", vec![]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await[0].revision(), next);
}

#[tokio::test]
async fn a_watch_resumes_after_its_member_restarts() {
    let (store, mut cluster) = open().await;
    let start = store.put("r/0", vec![]).await.unwrap();
    let mut watch = store.watch("r/", start).await.unwrap();
    let before = store.put("r/1", vec![]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await[0].revision(), before);

    cluster.stop(0);
    cluster.start(0).await.unwrap();
    cluster.wait_healthy().await.unwrap();
    let written = write_until_accepted(&store, keys("r/", 2..12)).await;

    let events = next_events(&mut watch, written.len()).await;
    assert_delivered_once(&events, before, &written);
}

/// F10: two of three members stop. Writes fail fast with `Unavailable`; a watch opened before
/// keeps its place and, once the members are back, delivers every later write exactly once.
#[tokio::test]
async fn f10_writes_fail_fast_without_quorum_and_watches_resume_after() {
    let mut cluster = EtcdCluster::cluster(3).await.unwrap();
    let store = Etcd::connect(&cluster.endpoints(), "/f10/").await.unwrap();
    let start = store.put("k/0", vec![]).await.unwrap();
    let mut watch = store.watch("k/", start).await.unwrap();

    // The client starts on the first endpoint, so this is the member the watch is on. Two of
    // three still make a quorum: writes go on, once the two have elected a leader.
    cluster.stop(0);
    let mut written = write_until_accepted(&store, keys("k/with-two-", 0..1)).await;

    cluster.stop(1);
    for attempt in 0..3 {
        let began = Instant::now();
        let refused = store.put(&format!("k/lost-{attempt}"), vec![]).await;
        let took = began.elapsed();
        eprintln!("without quorum, write {attempt}: {refused:?} after {took:?}");
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        assert!(took < Duration::from_secs(10), "a write without quorum took {took:?}");
    }

    cluster.start(0).await.unwrap();
    cluster.start(1).await.unwrap();
    cluster.wait_healthy().await.unwrap();
    written.extend(write_until_accepted(&store, keys("k/", 1..31)).await);

    // A write that timed out without quorum may still have committed once the quorum came
    // back (etcd cannot tell the client): such keys may appear, but only once.
    let mut events = Vec::new();
    while !written.iter().all(|(key, _)| events.iter().any(|e: &Event| e.key() == key)) {
        events.extend(next_events(&mut watch, 1).await);
    }
    assert_no_duplicates_in_order(&events, start);
    let late: Vec<&str> = events.iter().map(Event::key).filter(|k| k.starts_with("k/lost-")).collect();
    let delivered: Vec<(&str, Revision)> =
        events.iter().filter(|e| !e.key().starts_with("k/lost-")).map(|e| (e.key(), e.revision())).collect();
    let expected: Vec<(&str, Revision)> = written.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    assert_eq!(
        delivered, expected,
        "every acknowledged write, in order (late writes from the outage: {late:?})"
    );
    drain_quietly(&mut watch).await;
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Puts each key in turn, retrying the first until the cluster takes writes again.
async fn write_until_accepted(store: &Etcd, keys: Vec<String>) -> Vec<(String, Revision)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut written = Vec::new();
    for key in keys {
        loop {
            match store.put(&key, vec![]).await {
                Ok(revision) => {
                    written.push((key, revision));
                    break;
                }
                // Only until the first write lands: after that, every write must.
                Err(Error::Unavailable(_)) if written.is_empty() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("writing {key}: {e}"),
            }
        }
    }
    written
}

fn assert_delivered_once(events: &[Event], after: Revision, written: &[(String, Revision)]) {
    assert_no_duplicates_in_order(events, after);
    let delivered: Vec<(&str, Revision)> = events.iter().map(|e| (e.key(), e.revision())).collect();
    let expected: Vec<(&str, Revision)> = written.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    assert_eq!(delivered, expected);
}

fn assert_no_duplicates_in_order(events: &[Event], after: Revision) {
    let revisions: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert!(revisions.iter().all(|r| *r > after), "an event from before the watch: {revisions:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "out of order or repeated: {revisions:?}");
    let keys: BTreeSet<&str> = events.iter().map(Event::key).collect();
    assert_eq!(keys.len(), events.len(), "a key delivered twice");
}

/// Fails on anything but silence: an error or a stray event after the last expected one.
async fn drain_quietly(watch: &mut Watch) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("unexpected after the last write: {next:?}");
    }
}
