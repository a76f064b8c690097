use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::debug;

use super::{Connections, Sent, connect};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Idle connections kept per endpoint at the most.
const MAX_IDLE: usize = 512;

/// Idle HTTP/1 connections to one endpoint.
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

struct PoolInner {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

/// A connection lent to one request; given back with [`Pooled::release`] once the response has
/// been read to its end, otherwise dropped (and so closed).
pub struct Pooled {
    tx: SendRequest<ProxyBody>,
    pool: Pool,
}

impl Pool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Option<Duration>) -> Self {
        Self(Arc::new(PoolInner { addr, connect_timeout, idle_timeout, idle: Mutex::new(Vec::new()) }))
    }

    fn checkin(&self, tx: SendRequest<ProxyBody>) {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { tx, since: Instant::now() });
        }
    }
}

impl Connections for Pool {
    type Conn = SendRequest<ProxyBody>;

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn reuse(&self) -> Option<Self::Conn> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some(entry) = idle.pop() {
            let expired = self.0.idle_timeout.is_some_and(|t| now - entry.since >= t);
            if !expired && entry.tx.is_ready() {
                return Some(entry.tx);
            }
        }
        None
    }

    async fn open(&self) -> Result<Self::Conn, ProxyError> {
        let addr = self.0.addr;
        let io = TokioIo::new(connect(addr, self.0.connect_timeout).await?);
        let (tx, conn) = Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake { endpoint: addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(endpoint = %addr, %error, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    fn try_send(
        conn: &mut Self::Conn,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>> + Send {
        conn.try_send_request(req)
    }

    fn sent(&self, response: Response<Incoming>, tx: Self::Conn) -> Sent {
        Sent { response, pooled: Some(Pooled { tx, pool: self.clone() }) }
    }
}

impl Pooled {
    /// The response body has been read to its end: the connection may serve another request
    /// as soon as it says it is ready.
    pub fn release(mut self) {
        if self.tx.is_ready() {
            return self.pool.checkin(self.tx);
        }
        if self.tx.is_closed() {
            return;
        }
        // The connection task has not caught up with the end of the response yet.
        tokio::spawn(async move {
            let ready = tokio::time::timeout(Duration::from_secs(1), self.tx.ready()).await;
            if let Ok(Ok(())) = ready {
                self.pool.checkin(self.tx);
            }
        });
    }
}
