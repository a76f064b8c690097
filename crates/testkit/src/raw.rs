//! HTTP at the byte level, for tests about malformed messages: a backend that counts every
//! connection and byte it receives (so a test can prove the proxy forwarded nothing), and a
//! client that sends exactly the bytes it is given and reads back whatever comes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How much of what it received a [`CountingBackend`] keeps, to show in failure messages.
const KEEP: usize = 4096;

type Responder = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A raw TCP backend that counts every connection and every byte it gets, and answers each
/// request, once it has arrived whole, with bytes chosen from its request line. It parses just
/// enough to find where requests end (Content-Length or chunked bodies): it is meant for
/// proving that nothing arrives, and for answering the few well-formed requests that should.
pub struct CountingBackend {
    pub addr: SocketAddr,
    state: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    bytes: AtomicU64,
    /// The first [`KEEP`] bytes received, over all connections.
    received: Mutex<Vec<u8>>,
}

impl CountingBackend {
    /// `200 OK` with the body `ok`, kept alive: what [`CountingBackend::start`] answers.
    pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Answers every request with [`CountingBackend::OK`].
    pub async fn start() -> Self {
        Self::answering(|_| Self::OK.to_vec()).await
    }

    /// Answers every request head with `respond(request line)`.
    pub async fn answering(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Counts::default());
        let respond: Arc<Responder> = Arc::new(respond);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, shared.clone(), respond.clone()));
            }
        });
        Self { addr, state, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Bytes received so far, over all connections.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    /// The first few KiB received, lossily as text, for failure messages.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.state.received.lock().unwrap()).into_owned()
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, counts: Arc<Counts>, respond: Arc<Responder>) {
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        counts.bytes.fetch_add(n as u64, Ordering::SeqCst);
        {
            let mut kept = counts.received.lock().unwrap();
            let room = KEEP.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&chunk[..room]);
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(len) = request_len(&pending) {
            let request: Vec<u8> = pending.drain(..len).collect();
            let line = String::from_utf8_lossy(&request);
            let line = line.lines().next().unwrap_or_default();
            if stream.write_all(&respond(line)).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the first whole request in `buf` (its head, and a body framed by
/// Content-Length or chunked), once it has all arrived.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
    };
    if field("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        let mut at = head;
        loop {
            let line = find(&buf[at..], b"\r\n")?;
            let size = String::from_utf8_lossy(&buf[at..at + line]);
            let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16).ok()?;
            at += line + 2;
            if size == 0 {
                // The last chunk, then trailer lines (if any) up to an empty line.
                let rest = &buf[at..];
                if rest.len() < 2 {
                    return None;
                }
                return if rest.starts_with(b"\r\n") {
                    Some(at + 2)
                } else {
                    Some(at + find(rest, b"\r\n\r\n")? + 4)
                };
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let body: usize = field("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    (buf.len() >= head + body).then_some(head + body)
}

/// Whether `bytes` hold a whole response (its body framed by Content-Length) whose head does
/// not say `Connection: close`.
fn kept_alive(bytes: &[u8]) -> bool {
    let Some(end) = find(bytes, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
    let length = field("content-length:").and_then(|v| v.parse::<usize>().ok());
    field("connection:").is_none_or(|v| v != "close") && length.is_some_and(|n| bytes.len() >= end + 4 + n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What came back for bytes sent with [`raw_exchange`].
#[derive(Debug)]
pub struct RawReply {
    /// The status of the first response, if a status line arrived.
    pub status: Option<u16>,
    /// The first response's head (status line and headers), as text.
    pub head: String,
    /// Whether the peer closed (or reset) the connection before the timeout.
    pub closed: bool,
    /// Everything received.
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// The value of the first header `name` (case-insensitive) of the first response.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Connects to `addr`, writes `request` in one write and reads until the peer closes the
/// connection or `timeout` passes, whichever is first; or, once a whole response has arrived
/// that does not announce `Connection: close`, until then (the peer keeps the connection).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> anyhow::Result<RawReply> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
        if kept_alive(&bytes) {
            break false;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status =
        head.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)).and_then(|code| code.parse().ok());
    Ok(RawReply { status, head, closed, bytes })
}
