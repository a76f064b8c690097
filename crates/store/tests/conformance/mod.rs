//! What every [`Store`] must do, written once. `tests/embedded.rs` and `tests/etcd.rs` each run
//! every case against a fresh store of their kind through [`conformance_tests!`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tether_store::{Compare, Error, Event, Op, Revision, Store, Txn, Watch};

/// Expands to one `#[tokio::test]` per case. `$open` is an async fn returning `(store, guard)`;
/// the guard keeps whatever the store needs (a directory, an etcd process) alive.
macro_rules! conformance_tests {
    ($open:path) => {
        conformance_tests!(@cases $open;
            put_get_and_list_in_key_order,
            compares_decide_all_or_nothing,
            delete_prefix_deletes_only_under_the_prefix,
            concurrent_compare_and_swap_loses_no_increment,
            watch_replays_history_then_follows_live_writes,
            leases_expire_and_delete_their_keys,
            keep_alive_extends_a_lease,
            revoke_deletes_keys_at_once,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _guard) = $open().await;
            conformance::$case(&store).await;
        }
    )*};
}

/// How long any awaited event or state may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into(), lease: None }
}

async fn value_of<S: Store>(store: &S, key: &str) -> Option<String> {
    let kv = store.get(key).await.expect("get");
    kv.map(|kv| String::from_utf8(kv.value).expect("UTF-8 value"))
}

/// The next `n` events, failing the test on an error or if they take too long.
pub async fn next_events(watch: &mut Watch, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    let deadline = Instant::now() + PATIENCE;
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", events.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", events.len()),
            Err(_) => panic!("only {} of {n} events within {PATIENCE:?}: {events:?}", events.len()),
        }
    }
    events
}

/// The error a watch from compacted history reports, at once or as its first item (the trait
/// allows both); fails the test if there is none.
pub async fn refusal(watch: Result<Watch, Error>) -> Error {
    match watch {
        Err(error) => error,
        Ok(mut watch) => match tokio::time::timeout(PATIENCE, watch.next()).await {
            Ok(Some(Err(error))) => error,
            other => panic!("expected the watch to be refused, got {other:?}"),
        },
    }
}

/// Fails if the watch delivers anything within `quiet`.
pub async fn assert_quiet(watch: &mut Watch, quiet: Duration) {
    if let Ok(event) = tokio::time::timeout(quiet, watch.next()).await {
        panic!("expected no more events, got {event:?}");
    }
}

async fn eventually_absent<S: Store>(store: &S, key: &str) {
    let deadline = Instant::now() + PATIENCE;
    while store.get(key).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{key} still present after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn put_get_and_list_in_key_order<S: Store>(store: &S) {
    assert_eq!(store.get("a/1").await.unwrap(), None);
    let r1 = store.put("a/1", b"one".to_vec()).await.unwrap();
    let r2 = store.put("a/2", b"two".to_vec()).await.unwrap();
    let r10 = store.put("a/10", b"ten".to_vec()).await.unwrap();
    store.put("b/1", b"other".to_vec()).await.unwrap();
    assert!(r1 < r2 && r2 < r10, "revisions grow: {r1} {r2} {r10}");

    let kv = store.get("a/1").await.unwrap().expect("a/1 exists");
    assert_eq!((kv.key.as_str(), kv.value.as_slice(), kv.revision, kv.lease), ("a/1", &b"one"[..], r1, None));

    let r1_again = store.put("a/1", b"uno".to_vec()).await.unwrap();
    assert!(r1_again > r10);
    assert_eq!(store.get("a/1").await.unwrap().unwrap().revision, r1_again);

    let listing = store.list("a/").await.unwrap();
    let keys: Vec<_> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["a/1", "a/10", "a/2"], "key order, nothing outside the prefix");
    assert_eq!(listing.items[0].value, b"uno");
    assert_eq!(listing.revision, r1_again, "a listing is as of the store's latest write");

    let empty = store.list("nothing/").await.unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.revision, listing.revision);
}

pub async fn compares_decide_all_or_nothing<S: Store>(store: &S) {
    let created = store
        .commit(Txn {
            when: vec![Compare::Absent("c/k".into())],
            ops: vec![put("c/k", "v1"), put("c/side", "s1")],
        })
        .await
        .unwrap();
    for key in ["c/k", "c/side"] {
        assert_eq!(store.get(key).await.unwrap().unwrap().revision, created, "one revision for all ops");
    }

    // A failing compare among holding ones writes none of the ops.
    let refused = store
        .commit(Txn {
            when: vec![Compare::Present("c/k".into()), Compare::Absent("c/k".into())],
            ops: vec![put("c/k", "v2"), put("c/side", "s2"), Op::Delete { key: "c/other".into() }],
        })
        .await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    assert_eq!(value_of(store, "c/k").await.as_deref(), Some("v1"));
    assert_eq!(value_of(store, "c/side").await.as_deref(), Some("s1"));
    assert_eq!(store.list("").await.unwrap().revision, created, "a refused txn takes no revision");

    let refused =
        store.commit(Txn { when: vec![Compare::Present("c/missing".into())], ops: vec![put("c/k", "x")] });
    assert!(matches!(refused.await, Err(Error::Conflict(_))));

    let stale = store.commit(Txn {
        when: vec![Compare::RevisionIs("c/k".into(), created - 1)],
        ops: vec![put("c/k", "x")],
    });
    assert!(matches!(stale.await, Err(Error::Conflict(_))));
    let missing =
        store.commit(Txn { when: vec![Compare::RevisionIs("c/none".into(), created)], ops: vec![] });
    assert!(matches!(missing.await, Err(Error::Conflict(_))));

    let swapped = store
        .commit(Txn {
            when: vec![Compare::RevisionIs("c/k".into(), created), Compare::Present("c/side".into())],
            ops: vec![put("c/k", "v2"), Op::Delete { key: "c/side".into() }],
        })
        .await
        .unwrap();
    assert!(swapped > created);
    assert_eq!(store.get("c/k").await.unwrap().unwrap().revision, swapped);
    assert_eq!(store.get("c/side").await.unwrap(), None);

    let again = store
        .commit(Txn { when: vec![Compare::RevisionIs("c/k".into(), created)], ops: vec![put("c/k", "v3")] });
    assert!(matches!(again.await, Err(Error::Conflict(_))), "the revision moved on");
    assert_eq!(value_of(store, "c/k").await.as_deref(), Some("v2"));
}

pub async fn delete_prefix_deletes_only_under_the_prefix<S: Store>(store: &S) {
    let ops = ["x/a", "x/b", "x/c/d", "xy", "w/x/a"].iter().map(|k| put(k, "v")).collect();
    let written = store.commit(Txn { when: vec![], ops }).await.unwrap();
    let mut watch = store.watch("", written).await.unwrap();

    let deleted = store
        .commit(Txn { when: vec![], ops: vec![Op::DeletePrefix { prefix: "x/".into() }] })
        .await
        .unwrap();
    assert!(store.list("x/").await.unwrap().items.is_empty());
    let left: Vec<_> = store.list("").await.unwrap().items.into_iter().map(|kv| kv.key).collect();
    assert_eq!(left, ["w/x/a", "xy"]);

    let events = next_events(&mut watch, 3).await;
    let expected: Vec<Event> = ["x/a", "x/b", "x/c/d"]
        .iter()
        .map(|k| Event::Delete { key: (*k).into(), revision: deleted })
        .collect();
    assert_eq!(events, expected, "one delete each, in key order, at one revision");

    // Deleting nothing changes nothing.
    store.commit(Txn { when: vec![], ops: vec![Op::DeletePrefix { prefix: "x/".into() }] }).await.unwrap();
    assert_quiet(&mut watch, Duration::from_millis(300)).await;
}

/// Many callers increment one counter with compare-and-swap; every increment that was
/// acknowledged counts exactly once, which fails if two transactions ever pass their compares
/// against the same state.
pub async fn concurrent_compare_and_swap_loses_no_increment<S: Store>(store: &S) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 15;
    store.put("counter", b"0".to_vec()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let kv = store.get("counter").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    let txn = Txn {
                        when: vec![Compare::RevisionIs("counter".into(), kv.revision)],
                        ops: vec![put("counter", &(n + 1).to_string())],
                    };
                    match store.commit(txn).await {
                        Ok(_) => break,
                        Err(Error::Conflict(_)) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(value_of(store, "counter").await, Some((TASKS * INCREMENTS).to_string()));
}

/// A watch from an old revision replays what happened since, then continues with writes made
/// while it replays, each event exactly once and in revision order.
pub async fn watch_replays_history_then_follows_live_writes<S: Store>(store: &S) {
    const BEFORE: usize = 40;
    const DURING: usize = 200;
    let start = store.put("noise", b"start".to_vec()).await.unwrap();
    let mut history = Vec::new();
    for i in 0..BEFORE {
        history.push(store.put(&format!("w/{i:03}"), format!("{i}").into_bytes()).await.unwrap());
        store.put("noise", b"n".to_vec()).await.unwrap();
    }
    let middle = history[BEFORE / 2 - 1];

    let mut from_start = store.watch("w/", start).await.unwrap();
    let mut from_middle = store.watch("w/", middle).await.unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (w..DURING).step_by(4) {
                    store.put(&format!("w/{:03}", BEFORE + i), b"live".to_vec()).await.unwrap();
                    store.put(&format!("noise/{w}"), b"n".to_vec()).await.unwrap();
                }
            })
        })
        .collect();

    let total = BEFORE + DURING;
    let events = next_events(&mut from_start, total).await;
    for writer in writers {
        writer.await.unwrap();
    }
    assert_exactly_once_in_order(&events, start, total);
    let replayed: Vec<Revision> = events[..BEFORE].iter().map(Event::revision).collect();
    assert_eq!(replayed, history, "the replay is the history");

    let events = next_events(&mut from_middle, total - BEFORE / 2).await;
    assert_exactly_once_in_order(&events, middle, total - BEFORE / 2);
    assert_eq!(events[0].key(), format!("w/{:03}", BEFORE / 2));
    assert_quiet(&mut from_start, Duration::from_millis(300)).await;
    assert_quiet(&mut from_middle, Duration::from_millis(10)).await;
}

fn assert_exactly_once_in_order(events: &[Event], after: Revision, n: usize) {
    let revisions: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert!(revisions[0] > after, "first event {} not after {after}", revisions[0]);
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions out of order or repeated: {revisions:?}");
    let keys: BTreeSet<&str> = events.iter().map(Event::key).collect();
    assert_eq!(keys.len(), n, "a key missing or repeated");
    assert!(keys.iter().all(|k| k.starts_with("w/")), "an event outside the prefix");
}

pub async fn leases_expire_and_delete_their_keys<S: Store>(store: &S) {
    let lease = store.grant(Duration::from_secs(1)).await.unwrap();
    let at = store
        .commit(Txn {
            when: vec![],
            ops: vec![
                Op::Put { key: "l/a".into(), value: b"a".to_vec(), lease: Some(lease) },
                Op::Put { key: "l/b".into(), value: b"b".to_vec(), lease: Some(lease) },
            ],
        })
        .await
        .unwrap();
    store.put("l/kept", b"k".to_vec()).await.unwrap();
    assert_eq!(store.get("l/a").await.unwrap().unwrap().lease, Some(lease));
    let mut watch = store.watch("l/", at).await.unwrap();
    next_events(&mut watch, 1).await;

    eventually_absent(store, "l/a").await;
    let deletes = next_events(&mut watch, 2).await;
    let keys: BTreeSet<&str> = deletes.iter().map(Event::key).collect();
    assert_eq!(keys, BTreeSet::from(["l/a", "l/b"]));
    assert!(deletes.iter().all(|e| matches!(e, Event::Delete { .. })));
    assert_eq!(deletes[0].revision(), deletes[1].revision(), "an expiry deletes in one txn");
    assert!(store.get("l/kept").await.unwrap().is_some());
    assert!(matches!(store.keep_alive(lease).await, Err(Error::LeaseNotFound(l)) if l == lease));
}

pub async fn keep_alive_extends_a_lease<S: Store>(store: &S) {
    let lease = store.grant(Duration::from_secs(1)).await.unwrap();
    store
        .commit(Txn {
            when: vec![],
            ops: vec![Op::Put { key: "kept".into(), value: b"v".to_vec(), lease: Some(lease) }],
        })
        .await
        .unwrap();
    // Three TTLs of renewals.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(store.get("kept").await.unwrap().is_some(), "renewed, so still there");
    eventually_absent(store, "kept").await;
}

pub async fn revoke_deletes_keys_at_once<S: Store>(store: &S) {
    let lease = store.grant(Duration::from_secs(60)).await.unwrap();
    let other = store.grant(Duration::from_secs(60)).await.unwrap();
    let ops = vec![
        Op::Put { key: "r/a".into(), value: b"a".to_vec(), lease: Some(lease) },
        Op::Put { key: "r/b".into(), value: b"b".to_vec(), lease: Some(lease) },
        // Moved to another lease before the revoke: not the revoked lease's any more.
        Op::Put { key: "r/moved".into(), value: b"m".to_vec(), lease: Some(lease) },
    ];
    store.commit(Txn { when: vec![], ops }).await.unwrap();
    let moved = Op::Put { key: "r/moved".into(), value: b"m".to_vec(), lease: Some(other) };
    store.commit(Txn { when: vec![], ops: vec![moved] }).await.unwrap();
    store.put("r/plain", b"p".to_vec()).await.unwrap();

    store.revoke(lease).await.unwrap();
    let left: Vec<_> = store.list("r/").await.unwrap().items.into_iter().map(|kv| kv.key).collect();
    assert_eq!(left, ["r/moved", "r/plain"]);

    assert!(matches!(store.revoke(lease).await, Err(Error::LeaseNotFound(l)) if l == lease));
    assert!(matches!(store.keep_alive(lease).await, Err(Error::LeaseNotFound(l)) if l == lease));
    let orphan = Op::Put { key: "r/orphan".into(), value: vec![], lease: Some(lease) };
    let refused = store.commit(Txn { when: vec![], ops: vec![orphan, put("r/with-orphan", "x")] }).await;
    assert!(matches!(refused, Err(Error::LeaseNotFound(l)) if l == lease), "{refused:?}");
    assert_eq!(store.get("r/with-orphan").await.unwrap(), None, "nothing of a refused txn is written");
    store.keep_alive(other).await.unwrap();
}
