//! Why a request failed, who is to blame, and what the caller is told.
//!
//! Every failure the proxy answers itself goes through [`ProxyError::response`]: one place maps
//! errors to a status code and the `x-tether-error` header.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

pub const ERROR_HEADER: &str = "x-tether-error";

/// Which side of the proxy caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The caller sent something the proxy will not forward.
    Downstream,
    /// The endpoint could not be reached or failed to answer.
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no endpoints for `{target}`")]
    NoEndpoints { target: String },
    #[error("connecting to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout { endpoint: SocketAddr, timeout: Duration },
    #[error("connecting to {endpoint} failed: {source}")]
    ConnectFailed { endpoint: SocketAddr, source: std::io::Error },
    #[error("HTTP handshake with {endpoint} failed: {source}")]
    Handshake { endpoint: SocketAddr, source: hyper::Error },
    #[error("no response from {endpoint} within the per-request timeout of {timeout:?}")]
    RequestTimeout { endpoint: SocketAddr, timeout: Duration },
    #[error("the request body did not arrive within the per-request timeout of {timeout:?}")]
    RequestBodyTimeout { timeout: Duration },
    #[error("{endpoint} failed the request: {source}")]
    Upstream { endpoint: SocketAddr, source: hyper::Error },
    #[error("refused: the limit {limit} ({max}) of `{target}` is reached")]
    Overflow { target: String, limit: &'static str, max: u32 },
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    /// Ambiguous or malformed framing, or headers beyond the limits, either way (design §5).
    #[error("refused: {0}")]
    Framing(#[from] crate::http::framing::Violation),
}

impl ProxyError {
    pub fn blame(&self) -> Blame {
        match self {
            Self::BadRequest { .. } | Self::RequestBodyTimeout { .. } => Blame::Downstream,
            Self::Framing(v) if v.kind != crate::http::framing::Kind::UpstreamHead => Blame::Downstream,
            _ => Blame::Upstream,
        }
    }

    /// Whether the request provably never reached the app, so another endpoint may take it.
    pub fn never_sent(&self) -> bool {
        matches!(self, Self::ConnectTimeout { .. } | Self::ConnectFailed { .. } | Self::Handshake { .. })
    }

    /// Whether the failure says the endpoint is unreachable or failing (outlier detection).
    pub fn is_gateway_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::ConnectFailed { .. }
                | Self::Handshake { .. }
                | Self::RequestTimeout { .. }
                | Self::Upstream { .. }
        )
    }

    fn status_and_cause(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoEndpoints { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints"),
            Self::ConnectTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "connect-timeout"),
            Self::ConnectFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "connect-failed"),
            Self::Handshake { .. } => (StatusCode::BAD_GATEWAY, "handshake-failed"),
            Self::RequestTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            Self::RequestBodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request-body-timeout"),
            Self::Upstream { source, .. } if source.is_parse_too_large() => {
                (StatusCode::BAD_GATEWAY, "upstream-headers-too-large")
            }
            Self::Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream-failed"),
            Self::Overflow { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overflow"),
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::Framing(v) => (v.status(), v.cause()),
        }
    }

    /// The response the caller gets: the status, `x-tether-error: <cause>` and a one-line body.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, cause) = self.status_and_cause();
        let mut res = Response::new(ProxyBody::full(format!("{self}\n")));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(cause));
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_cause() {
        let endpoint: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let res = ProxyError::RequestTimeout { endpoint, timeout: Duration::from_secs(1) }.response();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(res.headers()[ERROR_HEADER], "request-timeout");
        let e = ProxyError::NoEndpoints { target: "a".into() };
        assert_eq!(e.response().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.blame(), Blame::Upstream);
        assert!(!e.never_sent());
    }
}
