//! Loopback addresses that misbehave at the TCP level: one whose handshake never completes and
//! one where connecting is refused.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::bail;
use socket2::{Domain, Socket, Type};

/// How many connections [`Unanswered::start`] may queue before it gives up on the kernel
/// dropping SYNs (Linux queues `backlog + 1`, so one or two are expected).
const MAX_FILLERS: usize = 16;
/// How long a probe connect waits before it counts as unanswered.
const PROBE: Duration = Duration::from_millis(300);

/// A loopback address whose TCP handshake never completes.
///
/// A listener with a backlog of 0 that never accepts: once its accept queue holds a connection,
/// Linux drops every further SYN (no RST, no SYN-ACK), so connecting hangs until the caller's
/// timeout. [`Unanswered::start`] fills the queue itself and checks that a connect really hangs.
pub struct Unanswered {
    pub addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<TcpStream>,
}

impl Unanswered {
    /// Blocks for up to a few hundred milliseconds while it fills and probes the queue.
    pub fn start() -> anyhow::Result<Self> {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        listener.listen(0)?;
        let addr = listener.local_addr()?.as_socket().expect("an IPv4 address");
        let mut queued = Vec::new();
        while queued.len() < MAX_FILLERS {
            match TcpStream::connect_timeout(&addr, PROBE) {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Ok(Self { addr, _listener: listener, _queued: queued });
                }
                Err(e) => bail!("probing the full accept queue of {addr}: {e}"),
            }
        }
        bail!(
            "{addr} accepted {MAX_FILLERS} handshakes with a backlog of 0; the kernel does not drop SYNs here"
        )
    }
}

/// A loopback address nobody listens on, so connecting is refused. (The port was free a moment
/// ago; on loopback nothing else takes it that fast in practice.)
pub fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound socket has an address")
}

/// A loopback port free a moment ago, for servers that cannot be told to use port 0.
pub fn free_port() -> u16 {
    refused_addr().port()
}
