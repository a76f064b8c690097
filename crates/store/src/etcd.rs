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
mod proto;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::{Compare, Error, KeyValue, LeaseId, Listing, Op, Result, Revision, Store, Txn, Watch};
use members::{Member, Members, Retry};
use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::request_op::Request;
use proto::etcdserverpb::{
    CompactionRequest, Compare as EtcdCompare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader,
    TxnRequest,
};
use proto::mvccpb;

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
        let members = Arc::new(Members::connect(endpoints)?);
        let etcd = Etcd { members, prefix: prefix.into(), endpoints: endpoints.into() };
        etcd.get("").await?;
        Ok(etcd)
    }

    /// Discards the history before `revision`, as etcd's auto-compaction would, and answers once
    /// etcd has removed it. A watch from before `revision` then fails with
    /// [`Error::Compacted`].
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let request = CompactionRequest { revision, physical: true };
        let compact = |member: Member| async move { member.kv().compact(request).await };
        self.members.call("compact", Retry::IfUnsent, compact).await?;
        Ok(())
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    fn key_value(&self, kv: &mvccpb::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(&kv.key)?,
            value: kv.value.clone(),
            revision: kv.mod_revision,
            lease: (kv.lease != 0).then_some(kv.lease),
        })
    }

    fn compare(&self, compare: &Compare) -> EtcdCompare {
        // A key that does not exist has a create revision of 0.
        let (key, result, target, value) = match compare {
            Compare::Absent(key) => {
                (key, CompareResult::Equal, CompareTarget::Create, TargetUnion::CreateRevision(0))
            }
            Compare::Present(key) => {
                (key, CompareResult::Greater, CompareTarget::Create, TargetUnion::CreateRevision(0))
            }
            Compare::RevisionIs(key, revision) => {
                (key, CompareResult::Equal, CompareTarget::Mod, TargetUnion::ModRevision(*revision))
            }
        };
        EtcdCompare {
            result: result.into(),
            target: target.into(),
            key: self.full_key(key),
            target_union: Some(value),
            range_end: vec![],
        }
    }

    fn request_op(&self, op: &Op) -> RequestOp {
        let request = match op {
            Op::Put { key, value, lease } => Request::RequestPut(PutRequest {
                key: self.full_key(key),
                value: value.clone(),
                lease: lease.unwrap_or(0),
                ..PutRequest::default()
            }),
            Op::Delete { key } => Request::RequestDeleteRange(DeleteRangeRequest {
                key: self.full_key(key),
                ..DeleteRangeRequest::default()
            }),
            Op::DeletePrefix { prefix } => {
                let key = self.full_key(prefix);
                Request::RequestDeleteRange(DeleteRangeRequest {
                    range_end: prefix_end(&key),
                    key,
                    ..DeleteRangeRequest::default()
                })
            }
        };
        RequestOp { request: Some(request) }
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
        let request = RangeRequest { key: self.full_key(key), ..RangeRequest::default() };
        let response = self
            .members
            .call("get", Retry::Idempotent, |member| {
                let request = request.clone();
                async move { member.kv().range(request).await }
            })
            .await?
            .into_inner();
        response.kvs.first().map(|kv| self.key_value(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let key = self.full_key(prefix);
        let request = RangeRequest { range_end: prefix_end(&key), key, ..RangeRequest::default() };
        let response = self
            .members
            .call("list", Retry::Idempotent, |member| {
                let request = request.clone();
                async move { member.kv().range(request).await }
            })
            .await?
            .into_inner();
        let items = response.kvs.iter().map(|kv| self.key_value(kv)).collect::<Result<_>>()?;
        Ok(Listing { items, revision: header_revision(response.header.as_ref())? })
    }

    async fn commit(&self, txn: Txn) -> Result<Revision> {
        let compare = txn.when.iter().map(|compare| self.compare(compare)).collect();
        let success = txn.ops.iter().map(|op| self.request_op(op)).collect();
        let request = TxnRequest { compare, success, failure: vec![] };
        // Not retried once sent: a transaction that committed and then lost its answer would
        // come back as a conflict with itself.
        let response = self
            .members
            .call("commit", Retry::IfUnsent, |member| {
                let request = request.clone();
                async move { member.kv().txn(request).await }
            })
            .await
            .map_err(|e| match e {
                // etcd does not say which lease; the first one is right whenever there is one.
                Error::LeaseNotFound(_) => Error::LeaseNotFound(first_lease(&txn).unwrap_or(0)),
                other => other,
            })?
            .into_inner();
        if !response.succeeded {
            let compares: Vec<String> = txn.when.iter().map(|c| format!("{c:?}")).collect();
            return Err(Error::Conflict(format!("not all of [{}] held", compares.join(", "))));
        }
        header_revision(response.header.as_ref())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        watch::start(self.clone(), self.full_key(prefix), after).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        // etcd counts in whole seconds; rounding up never cuts a lease short.
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let request = LeaseGrantRequest { ttl: seconds, id: 0 };
        let grant = |member: Member| async move { member.lease().lease_grant(request).await };
        let response = self.members.call("grant", Retry::Idempotent, grant).await?;
        Ok(response.into_inner().id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        match self.members.call("keep_alive", Retry::Idempotent, |member| renew(member, lease)).await {
            Ok(answer) if answer.ttl > 0 => Ok(()),
            // etcd's answer for a lease it does not have: a TTL of 0 rather than an error.
            Ok(_) | Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(other) => Err(other),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let request = LeaseRevokeRequest { id: lease };
        let revoke = |member: Member| async move { member.lease().lease_revoke(request).await };
        match self.members.call("revoke", Retry::IfUnsent, revoke).await {
            Ok(_) => Ok(()),
            Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(other) => Err(other),
        }
    }
}

/// Renews `lease` once, on a keep-alive stream of one request: etcd answers it before it reads
/// the end of the stream.
async fn renew(member: Member, lease: LeaseId) -> Result<LeaseKeepAliveResponse, Status> {
    let request = LeaseKeepAliveRequest { id: lease };
    let mut answers = member.lease().lease_keep_alive(tokio_stream::once(request)).await?.into_inner();
    answers
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("etcd ended the keep-alive stream without an answer"))
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

fn header_revision(header: Option<&ResponseHeader>) -> Result<Revision> {
    header.map(|h| h.revision).ok_or_else(|| Error::Other("etcd answered without a response header".into()))
}

/// The end of the range of keys that start with `prefix`: the first key after all of them.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // No such key (an empty prefix, or one of 0xff bytes only): etcd's "\0" means every key
    // from `prefix` on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/tether/"), b"/tether0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
