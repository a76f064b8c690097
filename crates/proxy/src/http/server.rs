//! Serving one downstream HTTP connection (HTTP/1.1 or h2c, detected from the first bytes)
//! with hardened limits, an idle timeout and graceful shutdown when the proxy drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;
use tracing::debug;

use super::{Route, framing};
use crate::drain::{Phase, Watch};
use crate::flood::FloodGuard;
use crate::io::Io;
use crate::mtls::Caller;

/// Design §5's hardened defaults.
const MAX_HEADER_BYTES: usize = framing::MAX_HEAD_BYTES;
const MAX_HEADERS: usize = framing::MAX_FIELDS;
const MAX_CONCURRENT_STREAMS: u32 = 100;
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other side of a listener.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The local app (outbound listeners): trusted, so an idle keep-alive connection may wait
    /// as long as the idle timeout allows.
    App,
    /// Anyone who can reach the host (inbound listeners): a request's headers must arrive
    /// within 10 s, which also bounds how long an idle HTTP/1 connection stays open.
    Untrusted,
}

pub fn builder(peer: Peer) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let timeout = (peer == Peer::Untrusted).then_some(HEADER_READ_TIMEOUT);
    b.http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .header_read_timeout(timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(1024));
    b
}

/// Serves `stream` until the peer closes it, it stays idle past `idle`, or the proxy closes.
/// On an inbound listener, `caller` is who the peer is, checked on each request.
pub async fn serve(
    stream: Io,
    route: Arc<Route>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle: Option<Duration>,
    mut drain: Watch,
    caller: Option<Arc<Caller>>,
) {
    let activity = Arc::new(Activity::new());
    let requests = activity.clone();
    // HTTP/1 bytes pass through the framing scanner, whose verdict each request carries.
    let io = framing::Guard::new(FloodGuard::new(stream));
    let verdicts = io.verdicts();
    let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
        verdicts.attach(&mut req);
        // Boxed: the request's future is several KiB, and hyper moves what this returns (into
        // its HTTP/1 dispatcher, or into a task per HTTP/2 stream); a pointer moves for free.
        let active = ActiveRequest::start(requests.clone());
        let response = Box::pin(route.clone().handle(req, active, caller.clone()));
        async move { response.await.map(framing::checked_response) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_check = async {
            match idle {
                Some(limit) if !closing => activity.wait_idle(limit).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "downstream connection ended");
                }
                return;
            }
            _ = drain.reached(Phase::Closing), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = idle_check => {
                debug!("closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests in flight on one connection, and since when it has had none.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` at which the last request finished.
    idle_since: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), idle_since: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn wait_idle(&self, limit: Duration) {
        loop {
            let since = self.epoch + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
            tokio::time::sleep_until(since + limit).await;
            let quiet =
                Duration::from_millis(self.now_ms().saturating_sub(self.idle_since.load(Ordering::Acquire)));
            if self.in_flight.load(Ordering::Acquire) == 0 && quiet >= limit {
                return;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again a while later rather than spinning.
                tokio::time::sleep(limit / 4).await;
            }
        }
    }
}

/// Marks a request in flight on its connection until dropped (after its response body ends).
pub struct ActiveRequest(Arc<Activity>);

impl ActiveRequest {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
