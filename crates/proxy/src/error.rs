//! Why a request failed, who is to blame, and what the caller is told.
//!
//! Every failure the proxy answers itself goes through [`ProxyError::response`]: one place maps
//! errors to a status code and the `x-tether-error` header.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::tls::{HandshakeError, SpiffeId, Unusable};

pub const ERROR_HEADER: &str = "x-tether-error";

/// Which side of the proxy caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The caller sent something the proxy will not forward.
    Downstream,
    /// The endpoint could not be reached or failed to answer.
    Upstream,
    /// The proxy cannot do it now, whatever the endpoint: it has no usable certificate.
    Proxy,
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
    /// The endpoint is not the sidecar it should be, or refused ours: a failure to connect.
    #[error("mutual TLS with {endpoint} failed: {source}")]
    TlsHandshake { endpoint: SocketAddr, source: HandshakeError },
    /// Mutual TLS is required and this sidecar has no usable certificate (fail closed).
    #[error("cannot call {endpoint} over mutual TLS: {why}")]
    NoCertificate { endpoint: SocketAddr, why: Unusable },
    /// An inbound listener with mutual TLS, on a connection opened while this sidecar's
    /// certificate was still valid: it no longer is, so nothing more is served (fail closed).
    #[error("this sidecar cannot serve over mutual TLS: {why}")]
    CannotServe { why: Unusable },
    /// The caller may not call this listener (its `allowFrom`).
    #[error("forbidden: {0}")]
    Forbidden(Box<Denied>),
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
            Self::BadRequest { .. } | Self::RequestBodyTimeout { .. } | Self::Forbidden(_) => {
                Blame::Downstream
            }
            Self::NoCertificate { .. } | Self::CannotServe { .. } => Blame::Proxy,
            Self::Framing(v) if v.kind != crate::http::framing::Kind::UpstreamHead => Blame::Downstream,
            _ => Blame::Upstream,
        }
    }

    /// Whether the request provably never reached the app, so another endpoint may take it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::ConnectFailed { .. }
                | Self::Handshake { .. }
                | Self::TlsHandshake { .. }
                | Self::NoCertificate { .. }
                | Self::CannotServe { .. }
        )
    }

    /// Whether the failure says the endpoint is unreachable or failing (outlier detection).
    pub fn is_gateway_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::ConnectFailed { .. }
                | Self::Handshake { .. }
                | Self::TlsHandshake { .. }
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
            Self::TlsHandshake { .. } => (StatusCode::BAD_GATEWAY, "tls-handshake-failed"),
            Self::NoCertificate { .. } | Self::CannotServe { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no-certificate")
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
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

/// A caller refused by an inbound listener's `allowFrom`, as the caller is told.
#[derive(Debug)]
pub struct Denied {
    /// The identity in the caller's verified certificate; `None` on a plaintext connection
    /// (opened before the listener turned mutual TLS on).
    pub caller: Option<SpiffeId>,
    pub listener: String,
    /// `None`: any identity the trust bundle vouches for.
    pub allowed: Option<Vec<SpiffeId>>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.caller {
            Some(caller) => write!(f, "`{caller}` may not call `{}`", self.listener)?,
            None => write!(f, "a caller without mutual TLS may not call `{}`", self.listener)?,
        }
        match &self.allowed {
            Some(allowed) if allowed.is_empty() => write!(f, "; allowFrom is empty: no caller is allowed"),
            Some(allowed) => {
                f.write_str("; allowFrom: ")?;
                for (i, id) in allowed.iter().enumerate() {
                    write!(f, "{}{id}", if i == 0 { "" } else { ", " })?;
                }
                Ok(())
            }
            None => f.write_str("; any service of the namespace is allowed"),
        }
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

    #[test]
    fn mutual_tls_failures_say_whose_they_are() {
        let endpoint: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let source = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let refused =
            HandshakeError { side: crate::tls::Side::Outbound, reason: crate::tls::Reason::Other, source };
        let e = ProxyError::TlsHandshake { endpoint, source: refused };
        assert_eq!(e.response().headers()[ERROR_HEADER], "tls-handshake-failed");
        assert!(e.never_sent() && e.is_gateway_failure());

        // Our own missing certificate is no endpoint's fault.
        let e = ProxyError::NoCertificate { endpoint, why: Unusable::NotIssued };
        assert_eq!((e.response().status(), e.blame()), (StatusCode::SERVICE_UNAVAILABLE, Blame::Proxy));
        assert_eq!(e.response().headers()[ERROR_HEADER], "no-certificate");
        assert!(e.never_sent() && !e.is_gateway_failure());

        let id = |service| SpiffeId::new("shop", service).unwrap();
        let denied = |caller, allowed| {
            ProxyError::Forbidden(Box::new(Denied { caller, listener: "api".into(), allowed }))
        };
        let e = denied(Some(id("admin")), Some(vec![id("checkout"), id("cart")]));
        assert_eq!((e.response().status(), e.blame()), (StatusCode::FORBIDDEN, Blame::Downstream));
        assert_eq!(e.response().headers()[ERROR_HEADER], "forbidden");
        assert_eq!(
            e.to_string(),
            "forbidden: `spiffe://shop/admin` may not call `api`; allowFrom: spiffe://shop/checkout, spiffe://shop/cart"
        );
        assert_eq!(
            denied(None, None).to_string(),
            "forbidden: a caller without mutual TLS may not call `api`; any service of the namespace is allowed"
        );
        assert!(
            denied(Some(id("admin")), Some(vec![]))
                .to_string()
                .ends_with("allowFrom is empty: no caller is allowed")
        );
    }
}
