//! Bodies too large to hold in a test: uploads made as they are sent, downloads checksummed as
//! they arrive. HTTP/1.1 with keep-alive, like [`Client::http1`](crate::Client::http1).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::backend::pattern_body;
use crate::{Fnv, Reply};

#[derive(Clone)]
pub struct StreamClient {
    inner: Pooled<HttpConnector, BoxBody<Bytes, hyper::Error>>,
    timeout: Duration,
}

/// A response whose body was counted and checksummed, then dropped, as it arrived.
#[derive(Debug)]
pub struct Digest {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub len: u64,
    /// The body's [`Fnv`] checksum.
    pub fnv: u64,
}

impl StreamClient {
    pub fn http1() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Pooled::builder(TokioExecutor::new()).build(connector);
        Self { inner, timeout: Duration::from_secs(120) }
    }

    /// Every exchange fails after `timeout` (default 120 s) so a hung proxy fails the test.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// POSTs `len` bytes of [`pattern`](crate::pattern) with a `content-length`, made 64 KiB at
    /// a time as the connection takes them; the (small) response is read whole.
    pub async fn post_pattern(&self, url: &str, len: u64) -> anyhow::Result<Reply> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_LENGTH, len)
            .body(pattern_body(len))?;
        self.bounded(async {
            let (parts, body) = self.inner.request(req).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
        })
        .await
    }

    /// GETs `url`, keeping of the body only its length and checksum.
    pub async fn get_digest(&self, url: &str) -> anyhow::Result<Digest> {
        let req = Request::get(url).body(BoxBody::default())?;
        self.bounded(async {
            let (parts, mut body) = self.inner.request(req).await?.into_parts();
            let (mut len, mut sum) = (0u64, Fnv::new());
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    len += data.len() as u64;
                    sum.write(data);
                }
            }
            anyhow::Ok(Digest { status: parts.status, headers: parts.headers, len, fnv: sum.finish() })
        })
        .await
    }

    async fn bounded<T>(&self, exchange: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no complete response within {:?}", self.timeout))?
    }
}
