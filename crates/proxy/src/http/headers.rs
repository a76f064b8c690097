//! Turning a request or response received in one HTTP version into one fit to send in another.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};

use crate::error::ProxyError;

/// Headers that describe one connection, never the message: never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `te` may only say `trailers` past this hop (gRPC relies on it).
    if headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

/// The authority a request is for: the URI's (HTTP/2, absolute-form) or the Host header's.
pub fn authority<B>(req: &Request<B>) -> Option<Authority> {
    req.uri().authority().cloned().or_else(|| {
        let host = req.headers().get(header::HOST)?;
        Authority::try_from(host.as_bytes()).ok()
    })
}

/// Rewrites `req` to be sent over `version`, to `authority`. Fails, changing nothing but the
/// hop-by-hop headers, when the request target cannot be expressed in that form.
pub fn for_upstream<B>(
    req: &mut Request<B>,
    version: Version,
    authority: Authority,
) -> Result<(), ProxyError> {
    strip_hop_by_hop(req.headers_mut());
    let path = req.uri().path_and_query().cloned();
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
    if version == Version::HTTP_2 {
        parts.scheme = Some(req.uri().scheme().cloned().unwrap_or(Scheme::HTTP));
        parts.authority = Some(authority);
        req.headers_mut().remove(header::HOST);
    } else if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let uri = Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest { reason: "the request target cannot be forwarded" })?;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    Ok(())
}

/// Rewrites an upstream response to be sent back over `version`.
pub fn for_downstream<B>(res: &mut Response<B>, version: Version) {
    strip_hop_by_hop(res.headers_mut());
    *res.version_mut() = version;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_to_http2_moves_host_into_the_uri() {
        let mut req = Request::get("/pay?x=1")
            .header("host", "payment-service")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let authority = authority(&req).unwrap();
        for_upstream(&mut req, Version::HTTP_2, authority).unwrap();
        assert_eq!(req.uri(), "http://payment-service/pay?x=1");
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("x-private").is_none());
        assert!(req.headers().get("connection").is_none());
        assert_eq!(req.headers()["te"], "trailers");
    }

    #[test]
    fn http2_to_http1_sets_host_and_origin_form() {
        let mut req = Request::get("http://orders:8080/api").version(Version::HTTP_2).body(()).unwrap();
        let authority = authority(&req).unwrap();
        for_upstream(&mut req, Version::HTTP_11, authority).unwrap();
        assert_eq!(req.uri(), "/api");
        assert_eq!(req.headers()["host"], "orders:8080");
    }

    #[test]
    fn odd_request_targets_never_panic() {
        for (method, target) in [("OPTIONS", "*"), ("CONNECT", "example.com:443"), ("GET", "/a?b")] {
            for version in [Version::HTTP_11, Version::HTTP_2] {
                let mut req = Request::builder().method(method).uri(target).body(()).unwrap();
                let authority = Authority::from_static("svc:80");
                // Either form is fine; what matters is an answer instead of a panic.
                let _ = for_upstream(&mut req, version, authority);
            }
        }
    }

    #[test]
    fn te_other_than_trailers_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }
}
