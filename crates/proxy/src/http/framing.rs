//! Refusing ambiguous or malformed requests before anything is forwarded (design §5, reliability
//! A1–A3), where hyper and h2 let them through.
//!
//! hyper and h2 already refuse most malformed messages themselves: obs-fold, NUL and bare CR,
//! whitespace before a colon, invalid or conflicting Content-Length values, Transfer-Encoding
//! whose last coding is not chunked, too many or too large headers; h2 refuses
//! connection-specific fields, uppercase names, CR/LF/NUL in values, pseudo-header misuse and
//! content-length mismatches. What they let through is checked here, in two places:
//!
//! - [`Scanner`] reads the raw bytes of an HTTP/1 connection as they arrive ([`Guard`] wraps the
//!   socket), because hyper hides what matters: it drops a Content-Length that comes with
//!   Transfer-Encoding, merges duplicate Content-Lengths, accepts bare LF line endings, and
//!   learns that a chunk size is invalid only after the request head has been forwarded. The
//!   scanner's verdict on each head reaches the request as an extension ([`Verdicts::attach`]);
//!   a broken chunked body seen in the same read as its head fails the request before it is
//!   forwarded, and a broken body seen later ends the connection.
//! - [`check_request`] looks at the parsed request, whatever its version: one Host agreeing with
//!   the target's authority, no userinfo, an HTTP/2 `:path`, at most one well-formed
//!   Content-Length that the body can still match, a known transfer coding, at most 100 fields.
//!
//! [`check_response_head`] bounds what an upstream's response head may be (64 KiB, 100 fields).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::ListenerMetrics;

/// The most bytes a request head, a trailer section or a response head may take (design §5).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most fields a request head, a trailer section or a response head may have (design §5).
pub const MAX_FIELDS: usize = 100;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What is wrong with a message, which decides the status the caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ambiguous or malformed framing: 400.
    Malformed,
    /// Too many or too large header fields: 431.
    TooLarge,
    /// A transfer coding tether does not implement: 501.
    UnsupportedCoding,
    /// An upstream's response head is too large or has too many fields: 502.
    UpstreamHead,
}

/// Why a message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    pub kind: Kind,
    pub reason: &'static str,
}

impl Violation {
    const fn new(kind: Kind, reason: &'static str) -> Self {
        Self { kind, reason }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::Malformed => StatusCode::BAD_REQUEST,
            Kind::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            Kind::UpstreamHead => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `x-tether-error` cause.
    pub fn cause(&self) -> &'static str {
        match self.kind {
            Kind::Malformed => "bad-request",
            Kind::TooLarge => "headers-too-large",
            Kind::UnsupportedCoding => "unsupported-transfer-coding",
            Kind::UpstreamHead => "upstream-headers-too-large",
        }
    }
}

const fn malformed(reason: &'static str) -> Violation {
    Violation::new(Kind::Malformed, reason)
}

const BARE_LF: Violation = malformed("a line ends in LF without CR");
const BARE_CR: Violation = malformed("CR not followed by LF");
const HEAD_TOO_LARGE: Violation = Violation::new(Kind::TooLarge, "the request head is larger than 64 KiB");
const TRAILERS_TOO_LARGE: Violation =
    Violation::new(Kind::TooLarge, "the trailer section is larger than 64 KiB");
const TOO_MANY_FIELDS: Violation = Violation::new(Kind::TooLarge, "more than 100 header fields");
const CL_AND_TE: Violation = malformed("Content-Length with Transfer-Encoding");
const TWO_CL: Violation = malformed("more than one Content-Length");
const BAD_CL: Violation = malformed("Content-Length is not a decimal length");
const TWO_HOSTS: Violation = malformed("more than one Host");

// ===== The parsed request =====

/// The scanner's verdict on an HTTP/1 request head, carried in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Verdict(pub Result<(), Violation>);

/// Checks a request hyper has parsed (HTTP/1 or HTTP/2) and, for HTTP/1, the raw scanner's
/// verdict on it. Called before anything is forwarded.
pub fn check_request<B: Body>(req: &Request<B>) -> Result<(), Violation> {
    if let Some(Verdict(verdict)) = req.extensions().get::<Verdict>() {
        verdict.as_ref().map_err(|v| *v)?;
    }
    let headers = req.headers();
    if headers.len() > MAX_FIELDS {
        return Err(TOO_MANY_FIELDS);
    }
    let fields = Fields::of(headers);
    check_authority(req, fields.host)?;
    if req.version() == Version::HTTP_2 {
        // RFC 9113 §8.3.1: `:path` must not be empty; a missing one leaves the URI's path
        // empty (and `path_and_query()` says "/").
        let path = req.uri().path();
        let asterisk = path == "*" && req.method() == Method::OPTIONS;
        if req.method() != Method::CONNECT && !path.starts_with('/') && !asterisk {
            return Err(malformed("missing or invalid :path"));
        }
    }
    let length = match fields.content_length {
        Seen::None => None,
        Seen::One(value) => Some(parse_length(value.as_bytes().trim_ascii()).ok_or(BAD_CL)?),
        Seen::More => return Err(TWO_CL),
    };
    if !matches!(fields.transfer_encoding, Seen::None) {
        if req.version() != Version::HTTP_11 {
            return Err(malformed("Transfer-Encoding outside HTTP/1.1"));
        }
        if length.is_some() {
            return Err(CL_AND_TE);
        }
        let Seen::One(te) = fields.transfer_encoding else {
            return Err(malformed("more than one Transfer-Encoding"));
        };
        transfer_coding(te.as_bytes())?;
    }
    // A body that has already ended short of its declared length. h2 refuses this itself when
    // END_STREAM comes with the HEADERS; a mismatch it finds in later DATA frames resets the
    // stream, which the forwarded body then reports as an error (not as an end).
    if length.is_some_and(|n| n > 0) && req.body().is_end_stream() {
        return Err(malformed("the body does not match Content-Length"));
    }
    Ok(())
}

/// Whether a field occurs once (and its value), or more often.
#[derive(Clone, Copy)]
enum Seen<'a> {
    None,
    One(&'a HeaderValue),
    More,
}

impl<'a> Seen<'a> {
    fn add(self, value: &'a HeaderValue) -> Self {
        match self {
            Seen::None => Seen::One(value),
            Seen::One(_) | Seen::More => Seen::More,
        }
    }
}

/// The fields [`check_request`] looks at, found in one walk over the headers (a request has a
/// handful, so that is cheaper than a hashed lookup per name).
struct Fields<'a> {
    host: Seen<'a>,
    content_length: Seen<'a>,
    transfer_encoding: Seen<'a>,
}

impl<'a> Fields<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut fields =
            Fields { host: Seen::None, content_length: Seen::None, transfer_encoding: Seen::None };
        for (name, value) in headers {
            let seen = if name == header::HOST {
                &mut fields.host
            } else if name == header::CONTENT_LENGTH {
                &mut fields.content_length
            } else if name == header::TRANSFER_ENCODING {
                &mut fields.transfer_encoding
            } else {
                continue;
            };
            *seen = seen.add(value);
        }
        fields
    }
}

/// One Host at most, agreeing with the target's authority (HTTP/2 `:authority`, or an HTTP/1
/// absolute-form target), and no userinfo.
fn check_authority<B>(req: &Request<B>, host: Seen<'_>) -> Result<(), Violation> {
    let host = match host {
        Seen::None => None,
        Seen::One(host) => Some(host),
        Seen::More => return Err(TWO_HOSTS),
    };
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(malformed("userinfo in the authority"));
        }
        if host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())) {
            return Err(malformed("Host differs from the target's authority"));
        }
    }
    if host.is_some_and(|h| h.as_bytes().contains(&b'@')) {
        return Err(malformed("userinfo in Host"));
    }
    Ok(())
}

/// `1*DIGIT` as a u64, or `None`.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A Transfer-Encoding value: only `chunked` alone is forwarded (RFC 9112 §6.1, §6.3).
pub fn transfer_coding(value: &[u8]) -> Result<(), Violation> {
    let mut codings = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
    let Some(last) = codings.next_back() else { return Err(malformed("empty Transfer-Encoding")) };
    let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    if !chunked(last) {
        return Err(malformed("chunked is not the final transfer coding"));
    }
    let mut others = false;
    for coding in codings {
        if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
            return Err(malformed("malformed Transfer-Encoding"));
        }
        if chunked(coding) {
            return Err(malformed("chunked applied more than once"));
        }
        others = true;
    }
    if others {
        return Err(Violation::new(Kind::UnsupportedCoding, "a transfer coding other than chunked"));
    }
    Ok(())
}

/// Checks an upstream's response head against the limits requests have (design §5): 100
/// fields and 64 KiB (counting each field as it would be written in HTTP/1).
pub fn check_response_head(headers: &HeaderMap) -> Result<(), Violation> {
    const TOO_MANY: Violation =
        Violation::new(Kind::UpstreamHead, "the response has more than 100 header fields");
    const TOO_LARGE: Violation =
        Violation::new(Kind::UpstreamHead, "the response head is larger than 64 KiB");
    if headers.len() > MAX_FIELDS {
        return Err(TOO_MANY);
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if bytes > MAX_HEAD_BYTES {
        return Err(TOO_LARGE);
    }
    Ok(())
}

/// The response to a refused request: the violation's status and cause, and for HTTP/1
/// `Connection: close`, since the rest of the connection's bytes cannot be trusted.
pub fn refuse(violation: Violation, version: Version, metrics: &ListenerMetrics) -> Response<ProxyBody> {
    tracing::debug!(%violation, "request refused");
    let mut response = ProxyError::Framing(violation).response();
    if version < Version::HTTP_2 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    metrics.response(response.status());
    response
}

/// `response`, unless its head is beyond the limits: then a 502 naming the cause.
pub fn checked_response(response: Response<ProxyBody>) -> Response<ProxyBody> {
    match check_response_head(response.headers()) {
        Ok(()) => response,
        Err(violation) => {
            tracing::debug!(%violation, "upstream response refused");
            ProxyError::Framing(violation).response()
        }
    }
}

mod guard;
mod scanner;

pub use guard::{Guard, Verdicts};
use scanner::is_tchar;
pub use scanner::{BrokenBody, Scanner};

#[cfg(test)]
mod tests;
