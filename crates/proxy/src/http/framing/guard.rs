//! The stream wrapper that feeds the scanner and hands each request its verdict.

use super::*;

/// The scanner's verdicts on a connection's request heads, for the service to collect in
/// order. The scanner stops at its first violation, so they are always a run of passes,
/// then possibly one failure that every later request shares: two counters and the failure
/// say it all, and no lock or queue is needed to pass them on.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Handoff>);

#[derive(Default)]
struct Handoff {
    /// Request heads the scanner has judged so far (written by the guard only).
    scanned: AtomicU64,
    /// Requests that have collected their verdict (written by the service only).
    handed: AtomicU64,
    /// Where the scanner stopped: the first request refused, and why. Every request from that
    /// one on is refused for the same reason.
    failure: OnceLock<(u64, Violation)>,
}

const UNCHECKED: Violation = malformed("the request's framing could not be checked");

impl Verdicts {
    /// The verdict on the next HTTP/1 request hyper hands to the service. hyper hands requests
    /// over in the order their heads arrived, after the scanner has seen every byte of them.
    pub fn next(&self) -> Result<(), Violation> {
        let h = &*self.0;
        let n = h.handed.load(Ordering::Relaxed);
        h.handed.store(n + 1, Ordering::Relaxed);
        match h.failure.get() {
            Some(&(from, violation)) if n >= from => Err(violation),
            _ if n < h.scanned.load(Ordering::Acquire) => Ok(()),
            // A request the scanner has no verdict on is refused, not waved through.
            _ => Err(UNCHECKED),
        }
    }

    /// Gives an HTTP/1 request the verdict on its head: a refusal travels in the request's
    /// extensions to [`check_request`]; a pass adds nothing (and allocates nothing).
    pub fn attach<B>(&self, req: &mut Request<B>) {
        if req.version() >= Version::HTTP_2 {
            return;
        }
        if let Err(violation) = self.next() {
            req.extensions_mut().insert(Verdict(Err(violation)));
        }
    }

    /// Records what one read told the scanner: `scanned` heads judged in all, and the
    /// violation that stopped it, if any, from the request at that index on.
    pub(super) fn publish(&self, scanned: u64, failure: Option<(u64, Violation)>) {
        if let Some(failure) = failure {
            // Set at most once: the scanner stops at its first violation.
            let _ = self.0.failure.set(failure);
        }
        self.0.scanned.store(scanned, Ordering::Release);
    }

    fn scanned(&self) -> u64 {
        self.0.scanned.load(Ordering::Relaxed)
    }

    fn handed(&self) -> u64 {
        self.0.handed.load(Ordering::Relaxed)
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
        let mut scanned = this.verdicts.scanned();
        let mut failure = None;
        let fed = this.scanner.feed(&buf.filled()[before..], |verdict| {
            if let Err(violation) = verdict {
                failure = Some((scanned, violation));
            }
            scanned += 1;
        });
        let mut result = Ok(());
        if let Err(BrokenBody { at, violation }) = fed {
            // The request this body belongs to (the last one scanned) is refused if hyper has
            // not handed it on yet; otherwise its body fails where the framing broke, and any
            // later request is refused.
            let from = if this.verdicts.handed() < scanned { scanned - 1 } else { scanned };
            failure = Some((from, violation));
            this.broken = Some(violation);
            buf.set_filled(before + at);
            if at == 0 {
                result = Err(io::Error::new(io::ErrorKind::InvalidData, violation));
            }
        }
        this.verdicts.publish(scanned, failure);
        Poll::Ready(result)
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
