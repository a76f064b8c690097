//! The one body type that flows through the proxy, in both directions.
//!
//! It forwards frames from a peer (`Incoming`) or serves bytes the proxy made itself, counts the
//! bytes it passes, enforces the per-request deadline while a response streams, and on its end
//! releases what the request held: the endpoint's outstanding count, the connection's activity
//! and, for HTTP/1, the pooled upstream connection.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

pub struct ProxyBody {
    inner: Inner,
    bytes: Option<Counter>,
    deadline: Option<Deadline>,
    /// Released when the body ends (or is dropped): guards and pooled connections.
    on_end: Option<Box<dyn OnEnd>>,
}

enum Inner {
    Incoming(Incoming),
    Full(Option<Bytes>),
}

struct Deadline {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Work to do once a body has been read to its end; dropped unrun if it was not.
pub trait OnEnd: Send {
    fn ended(self: Box<Self>);
}

/// The error a body yields: the peer's, or the per-request deadline passing mid-stream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Peer(#[from] hyper::Error),
    #[error("the per-request timeout passed while the body was streaming")]
    Deadline,
}

impl ProxyBody {
    pub fn incoming(body: Incoming) -> Self {
        Self { inner: Inner::Incoming(body), bytes: None, deadline: None, on_end: None }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = Some(bytes.into()).filter(|b| !b.is_empty());
        Self { inner: Inner::Full(bytes), bytes: None, deadline: None, on_end: None }
    }

    pub fn empty() -> Self {
        Self { inner: Inner::Full(None), bytes: None, deadline: None, on_end: None }
    }

    pub fn count_bytes(mut self, counter: Counter) -> Self {
        self.bytes = Some(counter);
        self
    }

    pub fn deadline(mut self, at: Option<Instant>) -> Self {
        self.deadline = at.map(|at| Deadline { at, sleep: None });
        self
    }

    pub fn on_end(mut self, hook: Box<dyn OnEnd>) -> Self {
        if self.is_end_stream() {
            hook.ended();
        } else {
            self.on_end = Some(hook);
        }
        self
    }

    fn finish(&mut self) {
        if let Some(hook) = self.on_end.take() {
            hook.ended();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
        };
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline {
                    let at = deadline.at;
                    let sleep = deadline.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    ready!(sleep.as_mut().poll(cx));
                    this.on_end = None; // an unfinished body must not return its connection
                    return Poll::Ready(Some(Err(BodyError::Deadline)));
                }
                return Poll::Pending;
            }
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(counter), Some(data)) = (&this.bytes, f.data_ref()) {
                    counter.inc_by(data.len() as u64);
                }
                if this.is_end_stream() {
                    this.finish();
                }
            }
            None => this.finish(),
            Some(Err(_)) => this.on_end = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Incoming(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Incoming(body) => body.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    struct CountEnds(Arc<AtomicUsize>);
    impl OnEnd for CountEnds {
        fn ended(self: Box<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn counts_bytes_and_runs_the_end_hook_once() {
        let ends = Arc::new(AtomicUsize::new(0));
        let counter = Counter::default();
        let body =
            ProxyBody::full("hello").count_bytes(counter.clone()).on_end(Box::new(CountEnds(ends.clone())));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(counter.get(), 5);
        assert_eq!(ends.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let ends = Arc::new(AtomicUsize::new(0));
        let _body = ProxyBody::empty().on_end(Box::new(CountEnds(ends.clone())));
        let _body = ProxyBody::full("").on_end(Box::new(CountEnds(ends.clone())));
        assert_eq!(ends.load(Ordering::SeqCst), 2);
    }
}
