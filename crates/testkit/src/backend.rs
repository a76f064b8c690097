//! A backend whose behaviour the test controls, serving HTTP/1.1 and h2c on one port.
//!
//! Every response carries `x-backend: <name>`. Paths:
//! - `/delay/<ms>`: answer after `ms` milliseconds;
//! - `/status/<code>`: answer with that status;
//! - `/echo`: stream the request body back;
//! - `/sink`: read the whole body and answer `<length> <fnv64 checksum>`;
//! - `/bytes/<n>`: stream `n` bytes of [`pattern`] in 64 KiB chunks;
//! - anything else: `hello from <name>`.
//!
//! [`Backend::set_status`] overrides every path: the backend then reads the whole request body
//! and answers that status, as an app that is up but failing does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Clone, Default)]
pub struct BackendOptions {
    pub name: String,
    /// Added before every response.
    pub delay: Duration,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    name: String,
    requests: AtomicUsize,
    connections: AtomicUsize,
    delay_ms: AtomicU64,
    /// Every request answers this status when it is one (0 is not).
    status: AtomicU16,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::with(BackendOptions { name: name.into(), ..Default::default() }).await
    }

    pub async fn with(options: BackendOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: options.name.clone(),
            delay_ms: AtomicU64::new(options.delay.as_millis() as u64),
            ..Default::default()
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let (state, builder) = (shared.clone(), builder.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| respond(state.clone(), req));
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, name: options.name, state, task }
    }

    /// A raw HTTP/1.1 server that answers the first request of each connection with keep-alive
    /// and closes the connection, without answering, when a second request arrives on it.
    pub async fn closing_on_reuse(name: &str) -> Self {
        Self::closing_after(name, 1).await
    }

    /// A raw HTTP/1.1 server that closes every connection, without a byte of response, as soon
    /// as a request's head has arrived: an app that crashes on each request.
    pub async fn closing_before_answering(name: &str) -> Self {
        Self::closing_after(name, 0).await
    }

    /// Answers `answered` requests of each connection, then closes it when the next arrives.
    async fn closing_after(name: &str, answered: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { name: name.into(), ..Default::default() });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut served = 0;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            state.requests.fetch_add(1, Ordering::Relaxed);
                            if served == answered {
                                return; // drop the connection without a byte of response
                            }
                            served += 1;
                            let body = format!("hello from {}", state.name);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {}\r\n\r\n",
                                body.len(),
                                state.name
                            );
                            if stream.write_all((head + &body).as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, name: name.into(), state, task }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answers every request, whatever its path, with `status` once its body has been read;
    /// `None` returns to normal.
    pub fn set_status(&self, status: Option<u16>) {
        self.state.status.store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Stops accepting; open connections end with the test.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = state.status.load(Ordering::Relaxed);
    if let Ok(status) = StatusCode::from_u16(forced) {
        let _ = req.into_body().collect().await;
        let mut res = text(status, format!("{forced} from {}", state.name));
        res.headers_mut().insert("x-backend", state.name.parse().unwrap());
        return Ok(res);
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut res = match head {
        "delay" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            text(StatusCode::OK, format!("hello from {}", state.name))
        }
        "status" => {
            text(StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap_or(StatusCode::OK), "status")
        }
        "echo" => Response::new(req.into_body().boxed()),
        "sink" => {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0u64, Fnv::new());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "body failed"));
                };
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    sum.write(data);
                }
            }
            text(StatusCode::OK, format!("{len} {:016x}", sum.finish()))
        }
        "bytes" => Response::new(pattern_body(arg.parse().unwrap_or(0))),
        _ => {
            let mut res = text(StatusCode::OK, format!("hello from {}", state.name));
            let seen = req.headers().get(http::header::HOST).cloned();
            let authority = req.uri().authority().map(|a| a.to_string());
            let host =
                seen.and_then(|h| h.to_str().ok().map(str::to_owned)).or(authority).unwrap_or_default();
            res.headers_mut().insert("x-seen-host", host.parse().unwrap());
            res.headers_mut().insert("x-seen-version", format!("{:?}", req.version()).parse().unwrap());
            res
        }
    };
    res.headers_mut().insert("x-backend", state.name.parse().unwrap());
    Ok(res)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res =
        Response::new(http_body_util::Full::new(body.into()).map_err(|never| match never {}).boxed());
    *res.status_mut() = status;
    res
}

/// `len` bytes of [`pattern`], streamed in 64 KiB chunks: never more than one chunk is held,
/// however long the body (the backend's `/bytes/<n>`, and uploads of any size).
pub fn pattern_body(len: u64) -> BoxBody<Bytes, hyper::Error> {
    PatternBody { remaining: len, chunk: Bytes::from(pattern(PatternBody::CHUNK)) }.boxed()
}

struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    const CHUNK: usize = 64 * 1024;
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        // The chunk size is a multiple of the pattern's period, so chunks join seamlessly.
        let n = (Self::CHUNK as u64).min(self.remaining) as usize;
        self.remaining -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// The bytes of [`Backend`]'s `/bytes/<n>`: 0, 1, …, 255, 0, 1, …
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// The [`Fnv`] checksum of `len` bytes of [`pattern`], as `/sink` would answer it.
pub fn pattern_checksum(len: u64) -> u64 {
    let chunk = pattern(PatternBody::CHUNK);
    let mut sum = Fnv::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        sum.write(&chunk[..n as usize]);
        left -= n;
    }
    sum.finish()
}

/// FNV-1a, 64 bit: enough to tell two byte streams apart in a test.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf29ce484222325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}
