//! Closing HTTP/2 connections that flood the proxy with frames that cost it work but make no
//! progress (reliability A4), where the h2 crate alone does not.
//!
//! h2 already ends a connection with GOAWAY(ENHANCE_YOUR_CALM) for a CONTINUATION flood, for
//! streams reset before they are accepted (a burst of HEADERS + RST_STREAM), for too many
//! streams it had to reset itself and for floods of tiny DATA frames; a PING or SETTINGS flood
//! only stalls there until the answers are flushed. What it lets through, and what
//! [`FloodGuard`] closes, by watching the frame headers the peer sends:
//!
//! - **Paced rapid reset**: each HEADERS + RST_STREAM pair arriving after the stream was
//!   accepted (so its request was already sent to the app). Once the peer has reset
//!   [`RESET_MIN`] streams and at least half of all the streams it opened, it is not a client
//!   that sometimes cancels.
//! - **Control-frame floods**: PING, SETTINGS, WINDOW_UPDATE and PRIORITY frames each take a
//!   token from a bucket of [`CONTROL_BURST`] that refills by [`CONTROL_PER_SECOND`] and by one
//!   per KiB the proxy writes (a client acknowledging data with WINDOW_UPDATE earns its frames).
//!
//! A connection over either limit fails its next read, so hyper drops it and the kernel closes
//! the socket. Connections that do not start with the HTTP/2 preface pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams reset by the peer before the ratio check applies.
pub const RESET_MIN: u64 = 200;
/// Control frames a connection may send at once…
pub const CONTROL_BURST: f64 = 4096.0;
/// …and more per second.
pub const CONTROL_PER_SECOND: f64 = 100.0;
/// Bytes the proxy writes per control frame they earn.
const BYTES_PER_TOKEN: f64 = 1024.0;

const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;

/// A downstream stream that watches the HTTP/2 frames read from it; see the module docs.
pub struct FloodGuard<S> {
    inner: S,
    frames: Frames,
}

impl<S> FloodGuard<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, frames: Frames::new(Instant::now()) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FloodGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let verdict = match read {
            Poll::Ready(Ok(())) if !this.frames.is_passthrough() => {
                this.frames.feed(&buf.filled()[before..], Instant::now)
            }
            _ => Ok(()),
        };
        if let Err(why) = verdict {
            debug!(why, "closing a flooding HTTP/2 connection");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)));
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FloodGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written {
            this.frames.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            this.frames.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Stage {
    /// How many bytes of the preface matched so far.
    Preface(usize),
    Frames,
    /// Not HTTP/2 (HTTP/1.1): nothing to watch.
    Passthrough,
}

/// The frame-header parser and the counters it keeps.
struct Frames {
    stage: Stage,
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// The highest stream the peer opened.
    last_stream: u32,
    streams: u64,
    resets: u64,
    tokens: f64,
    refilled: Instant,
}

impl Frames {
    fn new(now: Instant) -> Self {
        Self {
            stage: Stage::Preface(0),
            head: [0; 9],
            head_len: 0,
            skip: 0,
            last_stream: 0,
            streams: 0,
            resets: 0,
            tokens: CONTROL_BURST,
            refilled: now,
        }
    }

    fn is_passthrough(&self) -> bool {
        matches!(self.stage, Stage::Passthrough)
    }

    fn wrote(&mut self, n: usize) {
        if matches!(self.stage, Stage::Frames) {
            self.tokens = (self.tokens + n as f64 / BYTES_PER_TOKEN).min(CONTROL_BURST);
        }
    }

    /// Reads the frame headers in `data`. `now` is asked only when a control frame needs it.
    fn feed(&mut self, mut data: &[u8], now: impl Fn() -> Instant) -> Result<(), &'static str> {
        while !data.is_empty() {
            match self.stage {
                Stage::Passthrough => return Ok(()),
                Stage::Preface(matched) => {
                    let n = data.len().min(PREFACE.len() - matched);
                    if data[..n] != PREFACE[matched..matched + n] {
                        self.stage = Stage::Passthrough;
                        return Ok(());
                    }
                    data = &data[n..];
                    self.stage = if matched + n == PREFACE.len() {
                        Stage::Frames
                    } else {
                        Stage::Preface(matched + n)
                    };
                }
                Stage::Frames if self.skip > 0 => {
                    let n = data.len().min(self.skip);
                    self.skip -= n;
                    data = &data[n..];
                }
                Stage::Frames => {
                    // The usual case: a whole frame header in this read, decoded in place.
                    if self.head_len == 0
                        && let Some((h, rest)) = data.split_first_chunk::<9>()
                    {
                        data = rest;
                        self.header(h, &now)?;
                        continue;
                    }
                    let n = data.len().min(9 - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                    self.head_len += n;
                    data = &data[n..];
                    if self.head_len == 9 {
                        self.head_len = 0;
                        let h = self.head;
                        self.header(&h, &now)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One 9-byte frame header: length, type, flags, stream.
    fn header(&mut self, h: &[u8; 9], now: &impl Fn() -> Instant) -> Result<(), &'static str> {
        self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.frame(h[3], h[4], stream, now)
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        now: &impl Fn() -> Instant,
    ) -> Result<(), &'static str> {
        match kind {
            HEADERS if stream > self.last_stream => {
                self.last_stream = stream;
                self.streams += 1;
            }
            RST_STREAM => {
                self.resets += 1;
                if self.resets >= RESET_MIN && self.resets * 2 >= self.streams {
                    return Err("the peer reset most of the streams it opened (rapid reset)");
                }
            }
            PING | SETTINGS if flags & ACK != 0 => {}
            PING | SETTINGS | WINDOW_UPDATE | PRIORITY => {
                let now = now();
                let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
                self.refilled = now;
                self.tokens = (self.tokens + elapsed * CONTROL_PER_SECOND).min(CONTROL_BURST);
                if self.tokens < 1.0 {
                    return Err("the peer flooded the connection with control frames");
                }
                self.tokens -= 1.0;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut f = (payload as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0, payload));
        f
    }

    fn connection(now: Instant) -> Frames {
        let mut frames = Frames::new(now);
        frames.feed(PREFACE, || now).unwrap();
        frames.feed(&frame(SETTINGS, 0, 0, 6), || now).unwrap();
        frames
    }

    /// What a connection's frames have told the guard so far.
    fn seen(frames: &Frames) -> (usize, usize, u32, u64, u64, u64) {
        let tokens = frames.tokens as u64;
        (frames.skip, frames.head_len, frames.last_stream, frames.streams, frames.resets, tokens)
    }

    #[test]
    fn frame_headers_split_across_reads_count_the_same() {
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(9113);
        let kinds = [0x0, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, 0x9, 0xff];
        for _ in 0..500 {
            let mut bytes = Vec::new();
            for _ in 0..rng.usize(1..40) {
                let stream = rng.u32(0..20);
                bytes.extend(frame(kinds[rng.usize(..kinds.len())], rng.u8(..2), stream, rng.usize(0..30)));
            }
            let mut whole = connection(now);
            let whole_result = whole.feed(&bytes, || now);
            let mut cut = connection(now);
            let mut cut_result = Ok(());
            let mut rest = bytes.as_slice();
            while !rest.is_empty() && cut_result.is_ok() {
                let (piece, more) = rest.split_at(rng.usize(1..=rest.len().min(12)));
                cut_result = cut.feed(piece, || now);
                rest = more;
            }
            assert_eq!(whole_result.is_ok(), cut_result.is_ok());
            if whole_result.is_ok() {
                assert_eq!(seen(&whole), seen(&cut));
            }
        }
    }

    #[test]
    fn http1_passes_through() {
        let now = Instant::now();
        let mut frames = Frames::new(now);
        frames.feed(b"GET / HTTP/1.1\r\n", || now).unwrap();
        assert!(matches!(frames.stage, Stage::Passthrough));
    }

    #[test]
    fn ping_flood_is_cut_after_the_burst_but_a_paced_ping_is_not() {
        let now = Instant::now();
        let mut frames = connection(now);
        let ping = frame(PING, 0, 0, 8);
        // Fed one byte at a time: frame headers split across reads are still seen.
        for _ in 0..100 {
            for b in &ping {
                frames.feed(std::slice::from_ref(b), || now).unwrap();
            }
        }
        let flood: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * CONTROL_BURST as usize).collect();
        assert!(frames.feed(&flood, || now).is_err());

        let mut frames = connection(now);
        for second in 0..100 {
            let at = now + Duration::from_secs(second);
            frames.feed(&ping.repeat(CONTROL_PER_SECOND as usize), || at).unwrap();
        }
    }

    #[test]
    fn data_written_earns_window_updates() {
        let now = Instant::now();
        let mut frames = connection(now);
        let update = frame(WINDOW_UPDATE, 0, 0, 4);
        for _ in 0..10 * CONTROL_BURST as usize {
            frames.wrote(2 * BYTES_PER_TOKEN as usize);
            frames.feed(&update, || now).unwrap();
        }
    }

    #[test]
    fn resets_of_most_streams_close_but_occasional_cancels_do_not() {
        let now = Instant::now();
        let mut frames = connection(now);
        let mut stream = 1;
        let mut open_and_reset = |frames: &mut Frames, reset: bool| {
            let mut bytes = frame(HEADERS, 0x5, stream, 20);
            if reset {
                bytes.extend(frame(RST_STREAM, 0, stream, 4));
            }
            stream += 2;
            frames.feed(&bytes, || now)
        };
        for i in 0..10_000 {
            open_and_reset(&mut frames, i % 3 == 0).unwrap();
        }
        let mut frames = connection(now);
        let closed = (0..10_000).position(|_| open_and_reset(&mut frames, true).is_err());
        assert_eq!(closed, Some(RESET_MIN as usize - 1));
    }
}
