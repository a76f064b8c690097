//! Raw TCP (no `appProtocol`) through one outbound hop and through two sidecars (outbound →
//! inbound): a large transfer arrives intact, half-closes propagate both ways, and a server
//! that closes or resets its connection is seen as closed by the client.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tether_testkit::{Fnv, Sidecar, metric_value, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Bounds every exchange, so a proxy that stalls fails the test instead of hanging it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP server on loopback running `handle` for each connection; stops when dropped.
struct TcpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpServer {
    async fn start<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a tcp server");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream));
            }
        });
        Self { addr, task }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a client connects to reach a server: through one outbound hop, or two sidecars.
struct Hops {
    what: &'static str,
    entry: SocketAddr,
    /// The server-side sidecar, on the two-sidecar path.
    inbound: Option<Sidecar>,
    _outbound: Sidecar,
}

impl Hops {
    /// Both paths to `server`.
    async fn to(server: SocketAddr) -> [Hops; 2] {
        [Self::one_hop(server).await, Self::two_sidecars(server).await]
    }

    async fn one_hop(server: SocketAddr) -> Self {
        let outbound = outbound(&format!("\"{server}\"")).await;
        Self { what: "one outbound hop", entry: outbound.addr("svc"), inbound: None, _outbound: outbound }
    }

    async fn two_sidecars(server: SocketAddr) -> Self {
        let yaml = format!(
            "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\ninbound:\n  - {{ portName: api, listen: 127.0.0.1:0, target: {server} }}\n"
        );
        let inbound = Sidecar::start(TETHER, &yaml).await.unwrap();
        let outbound = outbound(&format!("{{ address: \"{}\", mesh: true }}", inbound.addr("api"))).await;
        Self {
            what: "two sidecars",
            entry: outbound.addr("svc"),
            inbound: Some(inbound),
            _outbound: outbound,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.entry).await.unwrap_or_else(|e| panic!("{}: connect: {e}", self.what))
    }
}

/// A client-side sidecar with one tcp alias `svc` to `endpoint`.
async fn outbound(endpoint: &str) -> Sidecar {
    let yaml = format!(
        "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n  - {{ dnsName: svc, listen: 127.0.0.1:0, endpoints: [{endpoint}] }}\n"
    );
    Sidecar::start(TETHER, &yaml).await.unwrap()
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(EXCHANGE_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {EXCHANGE_TIMEOUT:?}"))
}

/// Reads `stream` to its end, returning how many bytes came and their checksum.
async fn digest_to_end(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(usize, u64)> {
    let (mut len, mut sum, mut buf) = (0, Fnv::new(), vec![0u8; 64 * 1024]);
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok((len, sum.finish()));
        }
        len += n;
        sum.write(&buf[..n]);
    }
}

#[tokio::test]
async fn a_large_transfer_arrives_intact() {
    const LEN: usize = 32 * 1024 * 1024;
    // Echoes until the client's EOF, then closes.
    let echo = TcpServer::start(|stream| async move {
        let (mut rd, mut wr) = stream.into_split();
        if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    })
    .await;
    // 64 KiB of the pattern is a whole number of its 256-byte periods: chunks join seamlessly.
    let chunk = pattern(64 * 1024);
    let expected = {
        let mut f = Fnv::new();
        (0..LEN / chunk.len()).for_each(|_| f.write(&chunk));
        f.finish()
    };
    for hops in Hops::to(echo.addr).await {
        let (mut rd, mut wr) = hops.connect().await.into_split();
        let chunk = chunk.clone();
        // Writing and reading at once: the echo cannot all fit in socket buffers.
        let writer = tokio::spawn(async move {
            for _ in 0..LEN / chunk.len() {
                wr.write_all(&chunk).await?;
            }
            wr.shutdown().await
        });
        let (len, sum) = within(hops.what, digest_to_end(&mut rd)).await.expect("read the echo");
        within(hops.what, writer).await.unwrap().expect("write the upload");
        assert_eq!(len, LEN, "{}: echoed bytes", hops.what);
        assert_eq!(sum, expected, "{}: the echo differs from what was sent", hops.what);
        if let Some(inbound) = &hops.inbound {
            let bytes = metric_value(&inbound.metrics().await, "tether_processed_bytes_total", &[]);
            assert!(bytes >= 2.0 * LEN as f64, "{}: the inbound carried only {bytes} bytes", hops.what);
        }
    }
}

#[tokio::test]
async fn the_client_half_closing_lets_the_server_still_reply() {
    // Reads until EOF, then answers with what it read and closes.
    let server = TcpServer::start(|mut stream| async move {
        let Ok((len, sum)) = digest_to_end(&mut stream).await else { return };
        let _ = stream.write_all(format!("got {len} bytes {sum:016x}").as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let request = pattern(100_000);
    let mut sum = Fnv::new();
    sum.write(&request);
    let expected = format!("got {} bytes {:016x}", request.len(), sum.finish());
    for hops in Hops::to(server.addr).await {
        let mut stream = hops.connect().await;
        stream.write_all(&request).await.unwrap();
        // Only our write side closes: the reply, sent after the server saw EOF, must still come.
        stream.shutdown().await.unwrap();
        let mut reply = String::new();
        within(hops.what, stream.read_to_string(&mut reply)).await.expect("read the reply");
        assert_eq!(reply, expected, "{}", hops.what);
    }
}

#[tokio::test]
async fn the_server_half_closing_lets_the_client_still_send() {
    // Greets and closes its write side, then reads what the client still sends until EOF.
    let (heard_tx, mut heard) = mpsc::channel(4);
    let server = TcpServer::start(move |mut stream| {
        let heard = heard_tx.clone();
        async move {
            if stream.write_all(b"hello; I am done talking").await.is_err()
                || stream.shutdown().await.is_err()
            {
                return;
            }
            let mut got = Vec::new();
            let _ =
                heard.send(stream.read_to_end(&mut got).await.map(|_| got).map_err(|e| e.to_string())).await;
        }
    })
    .await;
    for hops in Hops::to(server.addr).await {
        let mut stream = hops.connect().await;
        let mut greeting = String::new();
        within(hops.what, stream.read_to_string(&mut greeting)).await.expect("read the greeting");
        assert_eq!(greeting, "hello; I am done talking", "{}", hops.what);
        // We saw the server's EOF; our direction is still open.
        stream.write_all(b"but I still have something to say").await.unwrap();
        stream.shutdown().await.unwrap();
        let got = within(hops.what, heard.recv()).await.expect("the server reports");
        assert_eq!(got.as_deref(), Ok(&b"but I still have something to say"[..]), "{}", hops.what);
    }
}

/// The server reads `hi`, then ends the connection: with a FIN after `bye`, or with a reset.
async fn server_ending_connections(reset: bool) -> TcpServer {
    TcpServer::start(move |mut stream| async move {
        let mut hi = [0u8; 2];
        if stream.read_exact(&mut hi).await.is_err() {
            return;
        }
        if reset {
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = stream.set_zero_linger();
        } else {
            let _ = stream.write_all(b"bye").await;
        }
        drop(stream);
    })
    .await
}

/// Connects through `hops`, says `hi` and reads until the connection ends. Our write side
/// stays open: the end must come from the server's side.
async fn say_hi_and_read_to_end(hops: &Hops) -> (Vec<u8>, std::io::Result<usize>) {
    let mut stream = hops.connect().await;
    stream.write_all(b"hi").await.unwrap();
    let mut got = Vec::new();
    let read = within(hops.what, stream.read_to_end(&mut got)).await;
    (got, read)
}

#[tokio::test]
async fn a_server_closing_is_seen_as_closed() {
    let server = server_ending_connections(false).await;
    for hops in Hops::to(server.addr).await {
        let (got, read) = say_hi_and_read_to_end(&hops).await;
        read.expect("read until closed");
        assert_eq!(got, b"bye", "{}", hops.what);
    }
}

#[tokio::test]
async fn a_server_resetting_is_seen_as_closed() {
    let server = server_ending_connections(true).await;
    for hops in Hops::to(server.addr).await {
        // EOF or a reset: either way the connection is over, and the client learns it.
        match say_hi_and_read_to_end(&hops).await {
            (got, Ok(_)) => assert!(got.is_empty(), "{}: unexpected bytes {got:?}", hops.what),
            (_, Err(e)) => assert!(
                matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
                "{}: {e}",
                hops.what
            ),
        }
    }
}
