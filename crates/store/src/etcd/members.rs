//! Which etcd member a request goes to, and what happens when that member fails it.
//!
//! Each member gets a connection of its own, and requests stick to the last member that
//! answered. A request that fails because of the member (it is down, or has no leader) moves on
//! to the next member and stays there, like etcd's own Go client does. Left to tonic's balancer,
//! a request could go to a member that was known to be down and fail although a quorum is up.
//! All of this happens within one [`REQUEST_TIMEOUT`], so a cluster without quorum still
//! fails fast.

use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::{Instant, timeout_at};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::etcdserverpb::kv_client::KvClient;
use super::proto::etcdserverpb::lease_client::LeaseClient;
use super::proto::etcdserverpb::watch_client::WatchClient;
use super::{CONNECT_TIMEOUT, MAX_MESSAGE, PING_INTERVAL, PING_TIMEOUT, REQUEST_TIMEOUT};
use crate::{Error, Result};

/// Whether a failed request may be sent to another member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Sending it twice does no harm: reads, renewals, opening a watch, granting a lease (a
    /// spare lease expires unused).
    Idempotent,
    /// Sent again only when it provably never reached etcd, or etcd turned it away unread.
    IfUnsent,
}

/// The connection to one member, shared by all of its clients.
type Connection = InterceptedService<Channel, RequireLeader>;

#[derive(Clone)]
pub(super) struct Member {
    connection: Connection,
}

impl Member {
    pub(super) fn kv(&self) -> KvClient<Connection> {
        KvClient::new(self.connection.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn watch(&self) -> WatchClient<Connection> {
        WatchClient::new(self.connection.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn lease(&self) -> LeaseClient<Connection> {
        LeaseClient::new(self.connection.clone())
    }
}

/// Marks every request with etcd's "require leader" flag: a member that has lost its leader
/// refuses such a request at once ("no leader") and ends such a stream, instead of keeping it
/// waiting for an election that may never come.
#[derive(Clone, Copy, Debug)]
pub(super) struct RequireLeader;

impl Interceptor for RequireLeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        Ok(request)
    }
}

pub(super) struct Members {
    members: Vec<Member>,
    current: AtomicUsize,
}

impl Members {
    /// Connecting is lazy: this fails only on a malformed endpoint.
    pub(super) fn connect(endpoints: &[String]) -> Result<Members> {
        if endpoints.is_empty() {
            return Err(Error::Other("no etcd endpoints given".into()));
        }
        let members = endpoints
            .iter()
            .map(|endpoint| {
                let channel = endpoint_of(endpoint)?.connect_lazy();
                Ok(Member { connection: InterceptedService::new(channel, RequireLeader) })
            })
            .collect::<Result<_>>()?;
        Ok(Members { members, current: AtomicUsize::new(0) })
    }

    /// Runs `request` on the current member, moving on to the next ones as `retry` allows, all
    /// within [`REQUEST_TIMEOUT`].
    pub(super) async fn call<T, F, Fut>(&self, what: &str, retry: Retry, mut request: F) -> Result<T>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..self.members.len() {
            let member = (first + attempt) % self.members.len();
            match timeout_at(deadline, request(self.members[member].clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => {
                    let elsewhere = match retry {
                        Retry::Idempotent => member_failed(&status),
                        Retry::IfUnsent => never_processed(&status),
                    };
                    let error = etcd_error(&status);
                    if !elsewhere {
                        return Err(error);
                    }
                    self.move_past(member);
                    last_error = Some(error);
                }
                Err(_) => {
                    // The member may be cut off rather than down; the next request tries another.
                    self.move_past(member);
                    return Err(Error::Unavailable(format!(
                        "etcd has no quorum or cannot be reached: {what} got no answer within {REQUEST_TIMEOUT:?}"
                    )));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Unavailable("no etcd member answered".into())))
    }

    /// Makes the member after `failed` current, unless another request already moved on.
    fn move_past(&self, failed: usize) {
        let next = (failed + 1) % self.members.len();
        let _ = self.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// How to reach the member at `address`: a URL, or `host:port` as etcd's own tools accept.
fn endpoint_of(address: &str) -> Result<Endpoint> {
    let url = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    if !url.starts_with("http://") {
        return Err(Error::Other(format!("etcd endpoint {address}: only plain http:// is supported")));
    }
    let endpoint =
        Endpoint::from_shared(url).map_err(|e| Error::Other(format!("etcd endpoint {address}: {e}")))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The member (or the cluster as that member sees it) failed, not the request.
fn member_failed(status: &Status) -> bool {
    never_processed(status) || is_unavailable(status)
}

/// The request cannot have changed anything: it never got to a member, or the member refused it
/// for want of a leader before looking at it.
fn never_processed(status: &Status) -> bool {
    if status.message().contains("no leader") {
        return true;
    }
    let mut source = status.source();
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn is_unavailable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted)
        // tonic's word for a connection that broke under the request, as when its member died.
        || (status.code() == Code::Unknown && status.message().contains("transport error"))
}

/// Sorts etcd's errors into ours by what the caller can do about them.
fn etcd_error(status: &Status) -> Error {
    let message = status.message();
    if message.contains("requested lease not found") {
        // etcd does not name the lease; the caller knows which it meant and puts it in.
        Error::LeaseNotFound(0)
    } else if message.contains("no leader") || message.contains("leader changed") {
        Error::Unavailable(format!("etcd has no quorum: {message}"))
    } else if is_unavailable(status) {
        Error::Unavailable(format!("etcd has no quorum or cannot be reached: {message}"))
    } else {
        Error::Other(format!("etcd: {message}"))
    }
}
