//! A task's network namespace, as the sidecar uses it from the host's (design §7): the
//! outbound listeners and the connections to the app live inside it, everything else outside.
//!
//! A socket belongs to the namespace it was created in, whichever thread uses it later, and
//! only a thread can enter a namespace (`setns` changes the calling thread alone). So one
//! dedicated thread enters the task's namespace once and creates sockets there on request;
//! binding, listening and connecting then happen on the runtime as for any other socket. No
//! tokio worker ever changes namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// The listen backlog, as `tokio::net::TcpListener::bind` has it.
const BACKLOG: u32 = 1024;

/// Where a socket is created: the host's network namespace (the proxy's own), or a task's.
#[derive(Clone, Default)]
pub enum Network {
    #[default]
    Host,
    Task(Arc<Netns>),
}

impl Network {
    /// A listener on `addr`, with `SO_REUSEADDR` like `tokio::net::TcpListener::bind`.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        match self {
            Self::Host => TcpListener::bind(addr).await,
            Self::Task(netns) => {
                let socket = netns.socket(addr).await?;
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(BACKLOG)
            }
        }
    }

    /// A connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match self {
            Self::Host => TcpStream::connect(addr).await,
            Self::Task(netns) => netns.socket(addr).await?.connect(addr).await,
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::Task(netns) => write!(f, "{}", netns.path.display()),
        }
    }
}

/// A network namespace other than the proxy's own, and the thread that creates sockets in it.
/// Dropping the last handle ends the thread.
pub struct Netns {
    path: PathBuf,
    requests: mpsc::Sender<SocketRequest>,
}

/// Failing to enter a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net)", path.display())]
    NotANetns { path: PathBuf },
    #[error("cannot enter the network namespace {}: {errno}", path.display())]
    Enter { path: PathBuf, errno: Errno },
    #[error("cannot start a thread for the network namespace {}: {source}", path.display())]
    Thread { path: PathBuf, source: io::Error },
}

/// A request for a new TCP socket of `addr`'s family.
struct SocketRequest {
    addr: SocketAddr,
    reply: oneshot::Sender<io::Result<TcpSocket>>,
}

impl Netns {
    /// Opens the namespace file at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, …) and starts
    /// the thread that enters it. Blocks until the thread is in the namespace, or has failed to
    /// enter it: call it before serving.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open { path: path.to_owned(), source })?;
        let (entered, outcome) = mpsc::sync_channel(1);
        let (requests, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("tether-netns".into())
            // It creates sockets and nothing else.
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = setns(&file, CloneFlags::CLONE_NEWNET);
                drop(file);
                let ok = result.is_ok();
                let _ = entered.send(result);
                if ok {
                    create_sockets(&incoming);
                }
            })
            .map_err(|source| NetnsError::Thread { path: path.to_owned(), source })?;
        match outcome.recv() {
            Ok(Ok(())) => Ok(Self { path: path.to_owned(), requests }),
            Ok(Err(Errno::EINVAL)) => Err(NetnsError::NotANetns { path: path.to_owned() }),
            Ok(Err(errno)) => Err(NetnsError::Enter { path: path.to_owned(), errno }),
            Err(_) => Err(NetnsError::Thread {
                path: path.to_owned(),
                source: io::Error::other("the thread ended before entering the namespace"),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, unbound TCP socket in the namespace, for `addr`'s family.
    async fn socket(&self, addr: SocketAddr) -> io::Result<TcpSocket> {
        let (reply, created) = oneshot::channel();
        let gone =
            || io::Error::other(format!("no thread makes sockets in {} any more", self.path.display()));
        self.requests.send(SocketRequest { addr, reply }).map_err(|_| gone())?;
        created.await.map_err(|_| gone())?
    }
}

/// The namespace thread's work: a socket for each request, until every handle is gone.
fn create_sockets(incoming: &mpsc::Receiver<SocketRequest>) {
    while let Ok(SocketRequest { addr, reply }) = incoming.recv() {
        // Creating a socket needs no runtime: it is registered with one when it is used.
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let _ = reply.send(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_refused() {
        let error = Netns::open(Path::new("/nonexistent/netns")).err().expect("no such file");
        assert!(matches!(error, NetnsError::Open { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/netns"), "{error}");
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let error = Netns::open(Path::new("/proc/self/status")).err().expect("not a namespace");
        assert!(matches!(error, NetnsError::NotANetns { .. }), "{error}");
    }

    /// Entering the proxy's own namespace, which needs CAP_SYS_ADMIN like any other: sockets
    /// made by the thread listen and connect like the runtime's own. (The end-to-end test
    /// `sandbox_proxy` uses a namespace of its own.)
    #[tokio::test]
    async fn sockets_made_in_a_namespace_listen_and_connect() {
        let netns = match Netns::open(Path::new("/proc/self/ns/net")) {
            Ok(netns) => Network::Task(Arc::new(netns)),
            Err(NetnsError::Enter { errno: Errno::EPERM, .. }) => {
                eprintln!("skipped: entering a network namespace needs CAP_SYS_ADMIN");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let listener = netns.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(netns.connect(addr), listener.accept());
        let (connected, accepted) = (connected.unwrap(), accepted.unwrap().0);
        assert_eq!(connected.local_addr().unwrap(), accepted.peer_addr().unwrap());
        // The address stays taken while the listener lives, for sockets of either origin.
        assert!(Network::Host.bind(addr).await.is_err());
    }
}
