//! The stream wrapper that feeds the scanner and hands each request its verdict.

use super::*;

/// The verdicts a connection's [`Scanner`] has reached on request heads that hyper has not yet
/// handed to the service, in order.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Mutex<Queue>>);

#[derive(Default)]
pub(super) struct Queue {
    pub(super) pending: VecDeque<Result<(), Violation>>,
    /// The scanner stopped at this violation: every later request is refused too.
    failed: Option<Violation>,
}

impl Verdicts {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives an HTTP/1 request the verdict on its head. hyper hands requests to the service in
    /// the order their heads arrived, after the scanner has seen every byte of them.
    pub fn attach<B>(&self, req: &mut Request<B>) {
        if req.version() >= Version::HTTP_2 {
            return;
        }
        const UNCHECKED: Violation = malformed("the request's framing could not be checked");
        let mut queue = self.lock();
        let verdict = match queue.pending.pop_front() {
            Some(verdict) => verdict,
            None => Err(queue.failed.unwrap_or(UNCHECKED)),
        };
        req.extensions_mut().insert(Verdict(verdict));
    }
}

/// A downstream connection whose HTTP/1 bytes pass through a [`Scanner`] on their way to hyper.
pub struct Guard<S> {
    io: S,
    scanner: Scanner,
    verdicts: Verdicts,
    /// A body broke its framing: reading fails from here on.
    broken: Option<Violation>,
}

impl<S> Guard<S> {
    pub fn new(io: S) -> Self {
        Self { io, scanner: Scanner::new(), verdicts: Verdicts::default(), broken: None }
    }

    /// Where the verdicts on this connection's requests arrive.
    pub fn verdicts(&self) -> Verdicts {
        self.verdicts.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(violation) = this.broken {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.scanner.is_passthrough() || this.scanner.has_failed() {
            return Poll::Ready(Ok(()));
        }
        let verdicts = &this.verdicts;
        let fed =
            this.scanner.feed(&buf.filled()[before..], |verdict| verdicts.lock().pending.push_back(verdict));
        let mut queue = None;
        if let Err(BrokenBody { at, violation }) = fed {
            // The request this body belongs to is refused if hyper has not handed it on yet;
            // otherwise its body fails where the framing broke.
            let queue = queue.get_or_insert_with(|| this.verdicts.lock());
            if let Some(last) = queue.pending.back_mut() {
                *last = Err(violation);
            }
            this.broken = Some(violation);
            buf.set_filled(before + at);
            if at == 0 {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
            }
        }
        if this.scanner.has_failed() {
            let queue = queue.get_or_insert_with(|| this.verdicts.lock());
            let failure = queue.pending.back().and_then(|v| v.err());
            queue.failed = queue.failed.or(failure).or(this.broken);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
