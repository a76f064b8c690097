//! The CA state in the store, so that every control-plane replica on a shared store signs with
//! the same root and a restart keeps it.
//!
//! The value is JSON with PEM strings:
//!
//! ```text
//! { "format": 1,
//!   "active": { "cert": "-----BEGIN CERTIFICATE-----…", "key": "-----BEGIN PRIVATE KEY-----…" },
//!   "staged": null | { "cert": …, "key": … },
//!   "bundle": [ "-----BEGIN CERTIFICATE-----…", … ] }
//! ```
//!
//! **The private keys are in the store, unencrypted**, like the admin token: whoever can read the
//! store (the data directory, or etcd without auth) can issue any identity. Protect it as such.

use serde::{Deserialize, Serialize};
use tether_store::{Compare, Op, Revision, Store, Txn};

use super::{Ca, CaState, Error, Result, TrustBundle};

/// Where the CA state is kept unless told otherwise, beside `/admin-token`.
pub const CA_KEY: &str = "/ca";
/// The version of the stored layout; a reader refuses one it does not know.
const FORMAT: u32 = 1;

/// A [`CaState`] and the store revision it was read or written at: what a later
/// [`CaStore::save`] compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCa {
    pub state: CaState,
    pub revision: Revision,
}

/// The CA state at one key of a store.
#[derive(Clone, Debug)]
pub struct CaStore<S> {
    store: S,
    key: String,
}

impl<S: Store> CaStore<S> {
    /// The state at `key` (usually [`CA_KEY`]).
    pub fn new(store: S, key: impl Into<String>) -> Self {
        Self { store, key: key.into() }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored state, if there is one.
    pub async fn load(&self) -> Result<Option<StoredCa>> {
        let Some(kv) = self.store.get(&self.key).await? else { return Ok(None) };
        let state = decode(&kv.value).map_err(|reason| Error::Corrupt { key: self.key.clone(), reason })?;
        Ok(Some(StoredCa { state, revision: kv.revision }))
    }

    /// The stored state; on first start, a new root named `name` (see [`Ca::generate`]), stored
    /// in one transaction that writes only if the key is still absent, so that replicas starting
    /// at once agree on one CA: the losers read the winner's.
    pub async fn load_or_create(&self, name: &str) -> Result<StoredCa> {
        match self.load().await? {
            Some(stored) => Ok(stored),
            None => self.load_or_insert(Ca::generate(name)?).await,
        }
    }

    /// The stored state if there is one (which may hold another CA than `ca`: compare
    /// [`CaState::active`] to find out); otherwise `ca`'s, written if the key is still absent.
    /// For a CA the operator supplies, and the second half of [`load_or_create`](Self::load_or_create).
    pub async fn load_or_insert(&self, ca: Ca) -> Result<StoredCa> {
        let state = CaState::new(ca);
        let txn = Txn {
            when: vec![Compare::Absent(self.key.clone())],
            ops: vec![Op::Put { key: self.key.clone(), value: encode(&state), lease: None }],
        };
        match self.store.commit(txn).await {
            Ok(revision) => Ok(StoredCa { state, revision }),
            Err(tether_store::Error::Conflict(_)) => self.load().await?.ok_or_else(|| Error::Corrupt {
                key: self.key.clone(),
                reason: "it was deleted while it was being read".to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `state` if the stored one is still the one read at `expected`; otherwise nothing,
    /// and [`Error::Stale`]. Returns the new revision, for the next save.
    pub async fn save(&self, state: &CaState, expected: Revision) -> Result<Revision> {
        let txn = Txn {
            when: vec![Compare::RevisionIs(self.key.clone(), expected)],
            ops: vec![Op::Put { key: self.key.clone(), value: encode(state), lease: None }],
        };
        match self.store.commit(txn).await {
            Ok(revision) => Ok(revision),
            Err(tether_store::Error::Conflict(_)) => Err(Error::Stale { key: self.key.clone(), expected }),
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    active: StoredKeyPair,
    staged: Option<StoredKeyPair>,
    bundle: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeyPair {
    cert: String,
    key: String,
}

impl StoredKeyPair {
    fn of(ca: &Ca) -> Self {
        let (cert, key) = ca.to_pem();
        Self { cert, key }
    }

    /// Checked as a supplied CA is (but an expired one still loads, to be rotated out): a
    /// hand-edited or damaged value fails here, not at signing.
    fn open(&self, which: &str) -> Result<Ca, String> {
        Ca::read_pem(&self.cert, &self.key).map_err(|e| format!("the {which} CA: {e}"))
    }
}

fn encode(state: &CaState) -> Vec<u8> {
    let stored = Stored {
        format: FORMAT,
        active: StoredKeyPair::of(state.active()),
        staged: state.staged().map(StoredKeyPair::of),
        bundle: state.bundle().roots().map(str::to_owned).collect(),
    };
    serde_json::to_vec(&stored).expect("the CA state is strings only, which always encode")
}

fn decode(value: &[u8]) -> Result<CaState, String> {
    let stored: Stored =
        serde_json::from_slice(value).map_err(|e| format!("not the CA state's JSON: {e}"))?;
    if stored.format != FORMAT {
        return Err(format!("format {} is not one this version reads (it reads {FORMAT})", stored.format));
    }
    let active = stored.active.open("active")?;
    let staged = stored.staged.as_ref().map(|pair| pair.open("staged")).transpose()?;
    let bundle = TrustBundle::from_pems(&stored.bundle)?;
    CaState::from_parts(active, bundle, staged)
}

#[cfg(test)]
mod tests {
    use tether_store::Embedded;

    use super::*;

    fn open(dir: &tempfile::TempDir) -> CaStore<Embedded> {
        CaStore::new(Embedded::open(dir.path()).unwrap(), CA_KEY)
    }

    #[tokio::test]
    async fn the_state_survives_a_restart_and_saves_are_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let cas = open(&dir);
        assert_eq!(cas.load().await.unwrap(), None);
        let first = cas.load_or_create("shop.local").await.unwrap();
        assert_eq!(first.state.bundle().len(), 1);
        assert_eq!(cas.load_or_create("shop.local").await.unwrap(), first, "created once");

        let mut rotated = first.state.clone();
        rotated.begin_rotation("shop.local").unwrap();
        let revision = cas.save(&rotated, first.revision).await.unwrap();
        assert!(revision > first.revision);
        // A replica that read before the save may not overwrite it.
        let mut other = first.state.clone();
        other.begin_rotation("shop.local").unwrap();
        match cas.save(&other, first.revision).await {
            Err(e @ Error::Stale { .. }) => assert!(e.to_string().contains("load it again and retry"), "{e}"),
            wrong => panic!("{wrong:?}"),
        }

        drop(cas);
        let cas = open(&dir);
        let stored = cas.load().await.unwrap().unwrap();
        assert_eq!(stored, StoredCa { state: rotated.clone(), revision });
        assert_eq!(stored.state.phase(), super::super::RotationPhase::Staged);
        assert_eq!(
            stored.state.staged().unwrap().to_pem(),
            rotated.staged().unwrap().to_pem(),
            "keys are kept"
        );
        rotated.activate().unwrap();
        let activated = cas.save(&rotated, revision).await.unwrap();
        assert_eq!(cas.load().await.unwrap().unwrap(), StoredCa { state: rotated, revision: activated });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_starting_at_once_agree_on_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cas = open(&dir);
        let replicas: Vec<_> = (0..4)
            .map(|_| {
                let cas = cas.clone();
                tokio::spawn(async move { cas.load_or_create("shop.local").await.unwrap() })
            })
            .collect();
        let mut roots = Vec::new();
        for replica in replicas {
            roots.push(replica.await.unwrap());
        }
        let stored = cas.load().await.unwrap().unwrap();
        for root in roots {
            assert_eq!(root, stored);
        }
        // Racing from the other side, deterministically: a CA that loses the insert is not used.
        let loser = Ca::generate("shop.local").unwrap();
        assert_eq!(cas.load_or_insert(loser).await.unwrap(), stored);
    }

    #[tokio::test]
    async fn an_unreadable_state_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cas = open(&dir);
        let good = cas.load_or_create("shop.local").await.unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&encode(&good.state)).unwrap();
        let other = Ca::generate("shop.local").unwrap();
        let cases = [
            (b"not json".to_vec(), "not the CA state's JSON"),
            (
                serde_json::to_vec(&{
                    value["format"] = 2.into();
                    value.clone()
                })
                .unwrap(),
                "format 2",
            ),
            (
                serde_json::to_vec(&{
                    value["format"] = 1.into();
                    value["active"]["key"] = other.to_pem().1.into();
                    value.clone()
                })
                .unwrap(),
                "does not belong",
            ),
            (
                serde_json::to_vec(&{
                    value["active"]["key"] = good.state.active().to_pem().1.into();
                    value["bundle"] = serde_json::json!([other.cert_pem()]);
                    value.clone()
                })
                .unwrap(),
                "does not start with the active root",
            ),
        ];
        for (bytes, reason) in cases {
            cas.store.put(CA_KEY, bytes).await.unwrap();
            for result in [cas.load().await.map(|_| ()), cas.load_or_create("shop.local").await.map(|_| ())] {
                match result {
                    Err(e @ Error::Corrupt { .. }) => {
                        assert!(e.to_string().contains(reason), "{reason}: {e}")
                    }
                    other => panic!("{reason}: {other:?}"),
                }
            }
        }
    }
}
