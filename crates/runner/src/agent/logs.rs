//! The agent's log endpoint: the control plane reads the app output of this host's tasks
//! here, and relays it to `tether logs --server` (the contract is in
//! `tether_model::fleet::logs`).
//!
//! Only the control plane may read: each request carries an HMAC keyed by this agent's join
//! token and an expiry, checked in constant time. Only files below `logs/` are served, and only
//! app logs (`{service}/{task}.log`) of tasks that ran here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tether_model::fleet::logs::{self, EXPIRES_HEADER, MAX_SIGNATURE_LIFE_SECONDS, SIGNATURE_HEADER};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How often a followed log is read again for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How much of a log is read at once.
const CHUNK: usize = 64 * 1024;

pub struct LogServer {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    data_dir: PathBuf,
    key: ring::hmac::Key,
}

impl LogServer {
    /// Binds `addr` (port 0: one the kernel picks) to serve the logs below `data_dir`; requests
    /// must be signed with `join_token`.
    pub async fn bind(addr: SocketAddr, data_dir: PathBuf, join_token: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, join_token.as_bytes());
        Ok(Self { listener, state: Arc::new(State { data_dir, key }) })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("the log endpoint cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(&req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, "log connection: {e}");
                }
            });
        }
    }
}

impl State {
    fn answer(&self, req: &Request<Incoming>) -> Response<LogBody> {
        let parts: Vec<&str> = req.uri().path().trim_start_matches('/').split('/').collect();
        let ["tasks", namespace, service, task, "logs"] = parts.as_slice() else {
            return refuse(
                StatusCode::NOT_FOUND,
                "no such route; logs are at /tasks/{namespace}/{service}/{task}/logs",
            );
        };
        if req.method() != Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET reads logs");
        }
        if ![namespace, service, task].iter().all(|p| logs::valid_part(p)) {
            return refuse(StatusCode::BAD_REQUEST, "a namespace, service or task that is not a valid name");
        }
        if let Err(why) = self.verify(req.headers(), namespace, service, task, now()) {
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
        let pairs: Vec<(String, String)> = query_pairs(req.uri().query().unwrap_or_default());
        let (tail, follow) = match logs::parse_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(query) => query,
            Err((field, why)) => return refuse(StatusCode::BAD_REQUEST, &format!("{field}: {why}")),
        };
        let path = self.data_dir.join("logs").join(service).join(format!("{task}.log"));
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    &format!("no log of task `{task}` of service `{service}` on this host"),
                );
            }
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("{}: {e}", path.display())),
        };
        // The task's folder is there while it runs: following ends once it is gone.
        let running = self.data_dir.join("tasks").join(task);
        let (lines, body) = mpsc::channel(16);
        tokio::spawn(stream(tokio::fs::File::from_std(file), tail, follow.then_some(running), lines));
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(LogBody(body))
            .expect("a valid response")
    }

    /// A signature this agent's join token made, for this read, not yet expired.
    fn verify(
        &self,
        headers: &HeaderMap,
        namespace: &str,
        service: &str,
        task: &str,
        now: u64,
    ) -> Result<(), &'static str> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(expires), Some(signature)) = (header(EXPIRES_HEADER), header(SIGNATURE_HEADER)) else {
            return Err("the request is not signed by the control plane");
        };
        let expires: u64 = expires.parse().map_err(|_| "the signature's expiry is not a number")?;
        if expires < now {
            return Err("the signature has expired");
        }
        if expires > now + MAX_SIGNATURE_LIFE_SECONDS {
            return Err("the signature is valid for too long");
        }
        let tag = decode_hex(signature).ok_or("the signature is not 64 hex digits")?;
        let text = logs::signed_text(namespace, service, task, expires);
        ring::hmac::verify(&self.key, text.as_bytes(), &tag).map_err(|_| "the signature is wrong")
    }
}

/// Sends the log's whole lines from the last `tail` (all without), then, while `running`
/// exists, what the task writes next; ends when the reader has gone.
async fn stream(
    mut file: tokio::fs::File,
    tail: Option<u64>,
    running: Option<PathBuf>,
    lines: mpsc::Sender<Bytes>,
) {
    let mut offset = match tail {
        Some(n) => tail_offset(&mut file, n).await.unwrap_or(0),
        None => 0,
    };
    let mut pending = Vec::new();
    loop {
        let mut chunk = vec![0; CHUNK];
        let read = match file.seek(std::io::SeekFrom::Start(offset)).await {
            Ok(_) => file.read(&mut chunk).await.unwrap_or(0),
            Err(_) => 0,
        };
        offset += read as u64;
        pending.extend_from_slice(&chunk[..read]);
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
            let whole: Vec<u8> = pending.drain(..=end).collect();
            if lines.send(Bytes::from(whole)).await.is_err() {
                return;
            }
        }
        if read > 0 {
            continue;
        }
        let Some(running) = &running else { break };
        if !running.exists() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = lines.closed() => return,
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        let _ = lines.send(Bytes::from(pending)).await;
    }
}

/// Where the last `n` lines of `file` begin.
async fn tail_offset(file: &mut tokio::fs::File, n: u64) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut end = len;
    // The newline that ends the last line is not the start of another.
    let mut newlines = 0;
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let mut chunk = vec![0; (end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.read_exact(&mut chunk).await?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b != b'\n' {
                continue;
            }
            if skip_last && start + i as u64 + 1 == len {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn refuse(status: StatusCode, why: &str) -> Response<LogBody> {
    let (lines, body) = mpsc::channel(1);
    let text = serde_json::json!({ "error": why }).to_string();
    let _ = lines.try_send(Bytes::from(text));
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(LogBody(body))
        .expect("a valid response")
}

/// A response body fed line by line; the sender sees it closed when hyper drops it.
pub struct LogBody(mpsc::Receiver<Bytes>);

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: &str) -> State {
        State {
            data_dir: PathBuf::new(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes()),
        }
    }

    fn signed(token: &str, text: &str, expires: u64) -> HeaderMap {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
        let tag = ring::hmac::sign(&key, text.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = HeaderMap::new();
        headers.insert(EXPIRES_HEADER, expires.to_string().parse().unwrap());
        headers.insert(SIGNATURE_HEADER, hex.parse().unwrap());
        headers
    }

    #[test]
    fn only_a_fresh_signature_of_this_read_by_this_token_passes() {
        let state = state("jt1:host1:aa");
        let now = 1_000_000;
        let text = |task: &str, expires| logs::signed_text("shop", "web", task, expires);
        let good = signed("jt1:host1:aa", &text("web-1", now + 60), now + 60);
        assert_eq!(state.verify(&good, "shop", "web", "web-1", now), Ok(()));
        // Another task, another token, expired, too long-lived, or not signed at all.
        assert!(state.verify(&good, "shop", "web", "web-2", now).is_err());
        let other = signed("jt1:host2:bb", &text("web-1", now + 60), now + 60);
        assert!(state.verify(&other, "shop", "web", "web-1", now).is_err());
        let expired = signed("jt1:host1:aa", &text("web-1", now - 1), now - 1);
        assert_eq!(state.verify(&expired, "shop", "web", "web-1", now), Err("the signature has expired"));
        let long = now + MAX_SIGNATURE_LIFE_SECONDS + 1;
        let forever = signed("jt1:host1:aa", &text("web-1", long), long);
        assert!(state.verify(&forever, "shop", "web", "web-1", now).is_err());
        assert!(state.verify(&HeaderMap::new(), "shop", "web", "web-1", now).is_err());
    }

    #[tokio::test]
    async fn tail_starts_at_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        assert_eq!(tail_offset(&mut file, 1).await.unwrap(), 8);
        assert_eq!(tail_offset(&mut file, 2).await.unwrap(), 4);
        assert_eq!(tail_offset(&mut file, 3).await.unwrap(), 0);
        assert_eq!(tail_offset(&mut file, 9).await.unwrap(), 0);
        assert_eq!(tail_offset(&mut file, 0).await.unwrap(), 14);
        let (lines, mut body) = mpsc::channel(4);
        stream(file, Some(2), None, lines).await;
        assert_eq!(body.recv().await.unwrap(), Bytes::from("two\nthree\n"));
        assert_eq!(body.recv().await, None);
    }
}
