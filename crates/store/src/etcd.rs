//! The store on an etcd cluster, for several control-plane replicas.
//!
//! Every key lives under one prefix, so a cluster can be shared; the prefix is added on the way
//! in and stripped on the way out. Revisions are etcd's own.
//!
//! A cluster without quorum makes requests fail fast rather than hang. Every request carries
//! etcd's "require leader" flag, so a member without a leader refuses at once ("no leader")
//! rather than queueing the request; requests stick to one member and move on to the next when
//! that one fails them (`members.rs`); and every request, moving on included, has a deadline
//! of [`REQUEST_TIMEOUT`], which covers a leader's last second before it notices it lost its
//! quorum. Watches resume on their own from the last revision they delivered (`watch.rs`).

mod members;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp,
};

use crate::{Compare, Error, KeyValue, LeaseId, Listing, Op, Result, Revision, Store, Txn, Watch};
use members::{Members, Retry};

/// How long any one request may take, failing over between members included, before it fails
/// with [`Error::Unavailable`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings find a member that stopped answering without closing its connections (a
/// partition, a frozen process), so a watch on it moves to another member.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole registry in one listing can outgrow tonic's default 4 MiB message limit.
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Clone)]
pub struct Etcd {
    members: Arc<Members>,
    prefix: Arc<str>,
    endpoints: Arc<[String]>,
}

impl Etcd {
    /// Connects to the cluster at `endpoints` (`http://host:port`, one per member) and checks
    /// that it answers, so a wrong address or a cluster without quorum fails at start.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Etcd> {
        let members = Arc::new(Members::connect(endpoints).await?);
        let etcd = Etcd { members, prefix: prefix.into(), endpoints: endpoints.into() };
        etcd.get("").await?;
        Ok(etcd)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    fn strip(&self, key: &[u8]) -> Result<String> {
        let key = std::str::from_utf8(key)
            .map_err(|_| Error::Other("etcd returned a key that is not UTF-8".into()))?;
        match key.strip_prefix(&*self.prefix) {
            Some(key) => Ok(key.to_owned()),
            None => Err(Error::Other(format!("etcd returned {key:?}, outside the prefix {:?}", self.prefix))),
        }
    }
}

impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = self.full_key(key);
        let response = self
            .members
            .call("get", Retry::Idempotent, |client| {
                let key = key.clone();
                async move { client.kv_client().get(key, None).await }
            })
            .await?;
        response.kvs().first().map(|kv| self.key_value(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let key = self.full_key(prefix);
        let response = self
            .members
            .call("list", Retry::Idempotent, |client| {
                let key = key.clone();
                async move {
                    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
                    kv.get(key, Some(GetOptions::new().with_prefix())).await
                }
            })
            .await?;
        let items = response.kvs().iter().map(|kv| self.key_value(kv)).collect::<Result<_>>()?;
        Ok(Listing { items, revision: header_revision(response.header())? })
    }

    async fn commit(&self, txn: Txn) -> Result<Revision> {
        let compares: Vec<EtcdCompare> = txn
            .when
            .iter()
            .map(|compare| match compare {
                Compare::Absent(key) => EtcdCompare::create_revision(self.full_key(key), CompareOp::Equal, 0),
                Compare::Present(key) => {
                    EtcdCompare::create_revision(self.full_key(key), CompareOp::Greater, 0)
                }
                Compare::RevisionIs(key, revision) => {
                    EtcdCompare::mod_revision(self.full_key(key), CompareOp::Equal, *revision)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    self.full_key(key),
                    value.clone(),
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete { key } => TxnOp::delete(self.full_key(key), None),
                Op::DeletePrefix { prefix } => {
                    TxnOp::delete(self.full_key(prefix), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let request = EtcdTxn::new().when(compares).and_then(ops);
        // Not retried once sent: a transaction that committed and then lost its answer would
        // come back as a conflict with itself.
        let response = self
            .members
            .call("commit", Retry::IfUnsent, |client| {
                let request = request.clone();
                async move { client.kv_client().txn(request).await }
            })
            .await
            .map_err(|e| match e {
                // etcd does not say which lease; the first one is right whenever there is one.
                Error::LeaseNotFound(_) => Error::LeaseNotFound(first_lease(&txn).unwrap_or(0)),
                other => other,
            })?;
        if !response.succeeded() {
            let compares: Vec<String> = txn.when.iter().map(|c| format!("{c:?}")).collect();
            return Err(Error::Conflict(format!("not all of [{}] held", compares.join(", "))));
        }
        header_revision(response.header())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        watch::start(self.clone(), self.full_key(prefix), after).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        // etcd counts in whole seconds; rounding up never cuts a lease short.
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let response = self
            .members
            .call("grant", Retry::Idempotent, |client| async move {
                client.lease_client().grant(seconds, None).await
            })
            .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let renewed = self
            .members
            .call("keep_alive", Retry::Idempotent, |client| async move {
                client.lease_client().keep_alive(lease).await
            })
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(other) => Err(other),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let revoked = self
            .members
            .call(
                "revoke",
                Retry::IfUnsent,
                |client| async move { client.lease_client().revoke(lease).await },
            )
            .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(other) => Err(other),
        }
    }
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

fn first_lease(txn: &Txn) -> Option<LeaseId> {
    txn.ops.iter().find_map(|op| match op {
        Op::Put { lease, .. } => *lease,
        _ => None,
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header.map(|h| h.revision()).ok_or_else(|| Error::Other("etcd answered without a response header".into()))
}
