//! Connections to endpoints: a pool of HTTP/1 connections or one shared HTTP/2 connection per
//! endpoint, opened with a connect timeout (over mutual TLS to a sidecar with an identity,
//! [`Dialer`]) and reused until idle for too long.
//!
//! A request sent on a reused connection that the peer closes before any byte of a response
//! (the classic keep-alive race) is sent once more on a fresh connection when that is safe: the
//! request never left the proxy, or it has no body and so can be sent again as it was.

mod dial;
mod http1;
mod http2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use tracing::debug;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::netns::Network;
pub use dial::Dialer;
pub use http1::Pooled;

/// How to reach one endpoint over HTTP.
pub enum HttpClient {
    Http1(http1::Pool),
    Http2(http2::Shared),
}

/// A response, and for HTTP/1 the connection to give back once its body has been read.
pub struct Sent {
    pub response: Response<Incoming>,
    pub pooled: Option<Pooled>,
}

/// A failed send; `request` is handed back when it never left, so it may go elsewhere.
pub struct SendError {
    pub error: ProxyError,
    pub request: Option<Request<ProxyBody>>,
}

/// Requests of one route waiting for an HTTP/1 connection, bounded by `maxPendingRequests`.
pub struct Pending {
    target: String,
    waiting: AtomicU32,
    max: u32,
}

/// Counts one waiting request until dropped.
pub struct Waiting<'a>(&'a Pending);

impl Pending {
    pub fn new(target: &str, max: u32) -> Self {
        Self { target: target.to_owned(), waiting: AtomicU32::new(0), max }
    }

    fn enter(&self) -> Result<Waiting<'_>, ProxyError> {
        let entered = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        match entered {
            Ok(_) => Ok(Waiting(self)),
            Err(_) => Err(ProxyError::Overflow {
                target: self.target.clone(),
                limit: "maxPendingRequests",
                max: self.max,
            }),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Makes a request anew, from a copy its caller keeps.
pub type Again<'a> = dyn Fn() -> Request<ProxyBody> + Sync + 'a;

/// How one endpoint is reached.
pub struct ClientConfig {
    pub http2: bool,
    pub idle_timeout: Option<Duration>,
    /// HTTP/1 connections at the most (HTTP/2 uses one).
    pub max_connections: u32,
    pub pending: Arc<Pending>,
}

impl HttpClient {
    pub fn new(dialer: Dialer, config: ClientConfig) -> Self {
        if config.http2 {
            Self::Http2(http2::Shared::new(dialer))
        } else {
            Self::Http1(http1::Pool::new(dialer, config))
        }
    }

    /// Sends `req`, on a new connection from `network` if one is needed. `again` makes the same
    /// request anew when the caller keeps a copy; without it a body-less idempotent request is
    /// copied here, in case a reused connection fails.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        again: Option<&Again<'_>>,
        network: &Network,
    ) -> Result<Sent, SendError> {
        match self {
            Self::Http1(pool) => send(pool, req, again, network).await,
            Self::Http2(shared) => send(shared, req, again, network).await,
        }
    }
}

/// What the two kinds of upstream connection have in common.
trait Connections: Sync {
    type Conn: Send;
    fn dialer(&self) -> &Dialer;
    /// An open connection to reuse, if there is one.
    fn reuse(&self) -> Option<Self::Conn>;
    fn open(&self, network: &Network) -> impl Future<Output = Result<Self::Conn, ProxyError>> + Send;
    fn try_send(
        conn: &mut Self::Conn,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>> + Send;
    fn sent(&self, response: Response<Incoming>, conn: Self::Conn) -> Sent;
    /// A reused connection failed: stop handing it out.
    fn discard(&self) {}
}

/// Sends `req`, once more on a fresh connection if a reused one was closed before answering.
async fn send<C: Connections>(
    c: &C,
    req: Request<ProxyBody>,
    again: Option<&Again<'_>>,
    network: &Network,
) -> Result<Sent, SendError> {
    // Checked for every request, not only for new connections: once its certificate has
    // expired the sidecar sends nothing more over mutual TLS, on connections made before either.
    if let Err(error) = c.dialer().ready().await {
        return Err(SendError { error, request: Some(req) });
    }
    let (mut conn, reused) = match c.reuse() {
        Some(conn) => (conn, true),
        None => match c.open(network).await {
            Ok(conn) => (conn, false),
            Err(error) => return Err(SendError { error, request: Some(req) }),
        },
    };
    // Copy only when the caller cannot make the request again itself: the common case (a
    // reused connection that answers) then costs no copy at all.
    let copy = if reused && again.is_none() { replay_copy(&req) } else { None };
    let (error, unsent) = match C::try_send(&mut conn, req).await {
        Ok(response) => return Ok(c.sent(response, conn)),
        Err(mut e) => {
            let unsent = e.take_message();
            (e.into_error(), unsent)
        }
    };
    let closed = closed_before_response(&error);
    let again = unsent.or(if closed { copy.or_else(|| again.map(|make| make())) } else { None });
    match again {
        Some(again) if reused => {
            debug!(endpoint = %c.dialer().addr(), %error, "reused connection closed; sending again on a fresh one");
            c.discard();
            let mut conn = match c.open(network).await {
                Ok(conn) => conn,
                Err(error) => return Err(SendError { error, request: Some(again) }),
            };
            match C::try_send(&mut conn, again).await {
                Ok(response) => Ok(c.sent(response, conn)),
                Err(mut e) => {
                    let request = e.take_message();
                    Err(SendError { error: upstream(c.dialer().addr(), e.into_error()), request })
                }
            }
        }
        request => Err(SendError { error: upstream(c.dialer().addr(), error), request }),
    }
}

fn upstream(endpoint: SocketAddr, source: hyper::Error) -> ProxyError {
    ProxyError::Upstream { endpoint, source }
}

/// Whether sending `req` twice has the effect of sending it once: an idempotent method
/// (RFC 9110 §9.2.2) or an `Idempotency-Key` header.
pub fn is_idempotent<B>(req: &Request<B>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key")
}

/// A copy of a request that may be sent twice: idempotent and without a body, so the copy is
/// the whole request.
fn replay_copy(req: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    use http_body::Body;
    if !is_idempotent(req) || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(ProxyBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether a failure on a reused connection means the peer closed it, or refused the stream,
/// before processing the request.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // RFC 9113 §8.7: a refused stream, or one above a GOAWAY's last stream id, was
            // not processed.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe);
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: http::Method, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        req
    }

    #[test]
    fn only_idempotent_body_less_requests_are_replayable() {
        use http::Method;
        assert!(replay_copy(&request(Method::GET, ProxyBody::empty())).is_some());
        assert!(replay_copy(&request(Method::DELETE, ProxyBody::empty())).is_some());
        assert!(replay_copy(&request(Method::POST, ProxyBody::empty())).is_none());
        assert!(replay_copy(&request(Method::PUT, ProxyBody::full("x"))).is_none());
        let mut keyed = request(Method::POST, ProxyBody::empty());
        keyed.headers_mut().insert("idempotency-key", "k1".parse().unwrap());
        assert!(replay_copy(&keyed).is_some());
    }
}
