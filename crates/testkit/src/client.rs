//! A small HTTP client for tests: HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Client {
    inner: Pooled<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn http1() -> Self {
        Self::build(false)
    }

    pub fn http2() -> Self {
        Self::build(true)
    }

    fn build(http2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Pooled::builder(TokioExecutor::new()).http2_only(http2).build(connector);
        Self { inner, timeout: Duration::from_secs(30) }
    }

    /// Every request fails after `timeout` (default 30 s) so a hung proxy fails the test.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.send(Method::POST, url, body.into()).await
    }

    pub async fn send(&self, method: Method, url: &str, body: Bytes) -> anyhow::Result<Reply> {
        let req = Request::builder().method(method).uri(url).body(Full::new(body))?;
        self.request(req).await
    }

    pub async fn request(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let exchange = async {
            let res = self.inner.request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no response within {:?}", self.timeout))?
    }
}
