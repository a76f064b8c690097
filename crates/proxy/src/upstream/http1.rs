use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use super::{ClientConfig, Connections, Dialer, Pending, Sent};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::netns::Network;

/// Idle connections kept per endpoint at the most.
const MAX_IDLE: usize = 512;
/// The largest response head read from an endpoint (design §5: 64 KiB of headers); a larger
/// one fails the request with 502.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Idle HTTP/1 connections to one endpoint.
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

struct PoolInner {
    dialer: Dialer,
    idle_timeout: Option<Duration>,
    idle: Mutex<Vec<Idle>>,
    /// One per open connection, held by its task: `maxConnections`.
    permits: Arc<Semaphore>,
    /// Woken when a connection goes back to the pool, for requests waiting for one.
    returned: Notify,
    pending: Arc<Pending>,
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
    pub fn new(dialer: Dialer, config: ClientConfig) -> Self {
        Self(Arc::new(PoolInner {
            dialer,
            idle_timeout: config.idle_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.max_connections as usize)),
            returned: Notify::new(),
            pending: config.pending,
        }))
    }

    fn checkin(&self, tx: SendRequest<ProxyBody>) {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { tx, since: Instant::now() });
            drop(idle);
            self.0.returned.notify_one();
        }
    }

    /// Every connection is busy and no more may be opened: waits, as one of at most
    /// `maxPendingRequests`, for one to come back or to close.
    async fn wait_for_connection(&self, network: &Network) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let _waiting = self.0.pending.enter()?;
        loop {
            let returned = self.0.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(tx) = self.reuse() {
                return Ok(tx);
            }
            tokio::select! {
                () = returned => {}
                permit = self.0.permits.clone().acquire_owned() => {
                    return self.connect(permit.expect("the semaphore is never closed"), network).await;
                }
            }
        }
    }

    async fn connect(
        &self,
        permit: OwnedSemaphorePermit,
        network: &Network,
    ) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let addr = self.0.dialer.addr();
        let io = TokioIo::new(self.0.dialer.dial(network).await?);
        let (tx, conn) = Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake { endpoint: addr, source })?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = conn.await {
                debug!(endpoint = %addr, %error, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

impl Connections for Pool {
    type Conn = SendRequest<ProxyBody>;

    fn dialer(&self) -> &Dialer {
        &self.0.dialer
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

    async fn open(&self, network: &Network) -> Result<Self::Conn, ProxyError> {
        match self.0.permits.clone().try_acquire_owned() {
            Ok(permit) => self.connect(permit, network).await,
            Err(_) => self.wait_for_connection(network).await,
        }
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
