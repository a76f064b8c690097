//! Which etcd member a request goes to, and what happens when that member fails it.
//!
//! Each member gets a client of its own, and requests stick to the last member that answered.
//! A request that fails because of the member (it is down, or has no leader) moves on to the
//! next member and stays there, like etcd's own Go client does. Left to tonic's balancer, a
//! request could go to a member that was known to be down and fail although a quorum is up.
//! All of this happens within one [`REQUEST_TIMEOUT`], so a cluster without quorum still
//! fails fast.

use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Client, ConnectOptions};
use tokio::time::{Instant, timeout, timeout_at};

use super::{CONNECT_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, REQUEST_TIMEOUT};
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

pub(super) struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Members {
    pub(super) async fn connect(endpoints: &[String]) -> Result<Members> {
        if endpoints.is_empty() {
            return Err(Error::Other("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            // Connecting is lazy: this fails only on a malformed endpoint.
            let connecting = Client::connect([endpoint], Some(options.clone()));
            let client = timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| Error::Unavailable(format!("etcd at {endpoint} did not answer")))?
                .map_err(|e| Error::Other(format!("etcd endpoint {endpoint}: {e}")))?;
            clients.push(client);
        }
        Ok(Members { clients, current: AtomicUsize::new(0) })
    }

    /// Runs `request` on the current member, moving on to the next ones as `retry` allows, all
    /// within [`REQUEST_TIMEOUT`].
    pub(super) async fn call<T, F, Fut>(&self, what: &str, retry: Retry, mut request: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..self.clients.len() {
            let member = (first + attempt) % self.clients.len();
            match timeout_at(deadline, request(self.clients[member].clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => {
                    let elsewhere = match retry {
                        Retry::Idempotent => member_failed(&error),
                        Retry::IfUnsent => never_processed(&error),
                    };
                    let error = etcd_error(error);
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
        let next = (failed + 1) % self.clients.len();
        let _ = self.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The member (or the cluster as that member sees it) failed, not the request.
fn member_failed(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => never_processed(error) || is_unavailable(status),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

/// The request cannot have changed anything: it never got to a member, or the member refused it
/// for want of a leader before looking at it.
fn never_processed(error: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = error else { return false };
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

fn is_unavailable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted)
        // tonic's word for a connection that broke under the request, as when its member died.
        || (status.code() == Code::Unknown && status.message().contains("transport error"))
}

/// Sorts etcd's errors into ours by what the caller can do about them.
fn etcd_error(error: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("requested lease not found") {
                // etcd does not name the lease; the caller knows which it meant and puts it in.
                Error::LeaseNotFound(0)
            } else if message.contains("no leader") || message.contains("leader changed") {
                Error::Unavailable(format!("etcd has no quorum: {message}"))
            } else if is_unavailable(&status) {
                Error::Unavailable(format!("etcd has no quorum or cannot be reached: {message}"))
            } else {
                Error::Other(format!("etcd: {message}"))
            }
        }
        E::TransportError(e) => Error::Unavailable(format!("etcd cannot be reached: {e}")),
        E::IoError(e) => Error::Unavailable(format!("etcd cannot be reached: {e}")),
        // The keep-alive stream's own word for a lease etcd answered with a TTL of 0.
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => Error::LeaseNotFound(0),
        other => Error::Other(format!("etcd: {other}")),
    }
}
