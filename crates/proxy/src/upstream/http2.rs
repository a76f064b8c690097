use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::{Connections, Dialer, Sent};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::netns::Network;

/// One multiplexed HTTP/2 connection to an endpoint, opened on first use and replaced when it
/// closes.
pub struct Shared {
    dialer: Dialer,
    conn: Mutex<Option<SendRequest<ProxyBody>>>,
}

impl Shared {
    pub fn new(dialer: Dialer) -> Self {
        Self { dialer, conn: Mutex::new(None) }
    }
}

impl Connections for Shared {
    type Conn = SendRequest<ProxyBody>;

    fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    fn reuse(&self) -> Option<Self::Conn> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref().filter(|tx| !tx.is_closed()).cloned()
    }

    fn discard(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.as_ref().is_some_and(|tx| tx.is_closed()) {
            *conn = None;
        }
    }

    async fn open(&self, network: &Network) -> Result<Self::Conn, ProxyError> {
        let addr = self.dialer.addr();
        let io = TokioIo::new(self.dialer.dial(network).await?);
        let (tx, conn) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            // Design §5's 64 KiB of headers, as for HTTP/1 (hyper's default here is 16 KiB).
            .max_header_list_size(64 * 1024)
            // A peer on a host that vanished answers nothing: PINGs while requests are open
            // find it within about 4 s, so they end and may be sent elsewhere.
            .keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake { endpoint: addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(endpoint = %addr, %error, "upstream HTTP/2 connection ended");
            }
        });
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match conn.as_ref().filter(|tx| !tx.is_closed()) {
            // Another request opened one meanwhile: share that one; ours closes when dropped.
            Some(existing) => Ok(existing.clone()),
            None => {
                *conn = Some(tx.clone());
                Ok(tx)
            }
        }
    }

    fn try_send(
        conn: &mut Self::Conn,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>> + Send {
        conn.try_send_request(req)
    }

    fn sent(&self, response: Response<Incoming>, _conn: Self::Conn) -> Sent {
        Sent { response, pooled: None }
    }
}
