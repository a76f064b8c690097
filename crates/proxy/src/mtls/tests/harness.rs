//! Real proxies on loopback, with credentials from a test CA, in front of backends that count
//! what reaches them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_model::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::netns::Network;
pub use crate::tls::tests::pki::Leaf;
use crate::tls::tests::pki::{Ca, bundle};
use crate::tls::{Credentials, TlsMetrics};
use crate::{Proxy, Update};

pub use crate::tls::tests::pki::spiffe;

/// Resolves once `check` holds, looking again every 20 ms; fails the test after 10 s.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The mesh's CA, issuing sidecar credentials.
pub struct Mesh {
    pub ca: Ca,
}

impl Mesh {
    pub fn new() -> Self {
        Self { ca: Ca::new("tether root") }
    }

    /// The credentials of a sidecar of `service`, as the control plane would fill them in.
    pub fn credentials(&self, service: &str) -> Arc<Credentials> {
        self.credentials_of(Leaf::spiffe(service))
    }

    pub fn credentials_of(&self, leaf: Leaf) -> Arc<Credentials> {
        let credentials = Credentials::empty(TlsMetrics::new());
        credentials.update_identity(self.ca.issue(leaf).identity());
        credentials.update_bundle(bundle(&[&self.ca]));
        credentials
    }
}

/// A proxy serving in the background until dropped.
pub struct Sidecar {
    pub admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    updates: mpsc::Sender<Update>,
    _stop: oneshot::Sender<()>,
}

impl Sidecar {
    pub async fn start(yaml: &str, credentials: &Arc<Credentials>) -> Self {
        let config = ProxyConfig::parse("test.yaml", yaml).unwrap();
        let proxy = Proxy::bind_with(config, Network::Host, credentials.clone()).await.unwrap();
        let admin = proxy.admin_socket.local_addr().unwrap();
        let listeners = proxy.listeners.iter().map(|l| (l.name.clone(), l.local_addr())).collect();
        let (updates, incoming) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        tokio::spawn(proxy.run_with_updates(shutdown, incoming));
        Self { admin, listeners, updates, _stop: stop }
    }

    /// Where the listener `name` (a portName or dnsName) listens.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// Applies a new config; its listeners must stay where they are.
    pub async fn apply(&self, yaml: &str) {
        let config = ProxyConfig::parse("test.yaml", yaml).unwrap();
        let (done, applied) = oneshot::channel();
        self.updates.send(Update { config, done }).await.unwrap();
        applied.await.unwrap().unwrap();
    }

    pub async fn admin(&self, path: &str) -> Reply {
        get(self.admin, path, &[]).await
    }

    /// The value of one series in `/metrics`, e.g. `tether_tls_handshake_errors_total{…}`.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let text = self.admin("/metrics").await.body;
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// How many handshakes the inbound side refused for `reason`.
    pub async fn refused(&self, reason: &str) -> u64 {
        let series = format!("tether_tls_handshake_errors_total{{side=\"inbound\",reason=\"{reason}\"}}");
        self.metric(&series).await.unwrap_or_else(|| panic!("no {series}"))
    }
}

/// An HTTP/1.1 app: answers `hello <path>`; `/stream` answers with the chunks the test sends.
pub struct HttpBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    streams: mpsc::Receiver<mpsc::Sender<Bytes>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl HttpBackend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (streams_tx, streams) = mpsc::channel(8);
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (requests, streams) = (r.clone(), streams_tx.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let streams = streams.clone();
                    async move { Ok::<_, Infallible>(answer(req, streams).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Self { addr, connections, requests, streams }
    }

    /// Connections the app accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The sender of the next `/stream` response's body; dropping it ends the body.
    pub async fn next_stream(&mut self) -> mpsc::Sender<Bytes> {
        self.streams.recv().await.unwrap()
    }
}

async fn answer(req: Request<Incoming>, streams: mpsc::Sender<mpsc::Sender<Bytes>>) -> Response<Body> {
    if req.uri().path() == "/stream" {
        let (chunks, body) = mpsc::channel::<Bytes>(1);
        streams.send(chunks).await.unwrap();
        let frames = ReceiverStream::new(body).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
        return Response::new(BoxBody::new(StreamBody::new(frames)));
    }
    Response::new(Full::new(Bytes::from(format!("hello {}", req.uri().path()))).boxed())
}

/// A tcp app that echoes what it reads until the peer's FIN, then closes.
pub struct EchoBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl EchoBackend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        Self { addr, connections }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Sends `message` over tcp to `addr`, half-closes, and reads what comes back until the end.
pub async fn echo(addr: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(message).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    // A reset is an answer too: nothing came back.
    let _ = stream.read_to_end(&mut answer).await;
    answer
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn error(&self) -> Option<&str> {
        self.headers.get(crate::ERROR_HEADER).map(|v| v.to_str().unwrap())
    }
}

/// `GET path` over HTTP/1.1 on a new connection to `addr`, with `headers`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let response = request(addr, path, headers).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8(body.to_vec()).unwrap() }
}

/// The same, with the body left to stream.
pub async fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap()
}

/// `GET /` over HTTP/2 on `io`, an established connection (to an inbound listener).
pub async fn get_h2<IO>(io: IO) -> Result<StatusCode, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get("http://payment/").body(Empty::<Bytes>::new()).unwrap();
    Ok(sender.send_request(req).await?.status())
}

/// Whether a TLS client with `config` is refused by `addr`: in the handshake or, as a TLS 1.3
/// client finishes first, on its first read.
pub async fn refused(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("sidecar.tether.invalid").unwrap();
    match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut stream) => {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut [0; 1])).await;
            matches!(read, Ok(Err(_) | Ok(0)))
        }
    }
}
