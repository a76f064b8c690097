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

/// A bit per name of [`HOP_BY_HOP`], in the same order, then one for `te`.
const CONNECTION_BIT: u8 = 1;
const TE_BIT: u8 = 1 << 6;

/// The bit of `name` among the hop-by-hop names and `te`, or 0. Most names are told apart
/// by their length alone; `same` compares one of the known (lowercase) names with `name`.
fn hop_by_hop_bit_by(name: &str, same: impl Fn(&str, &str) -> bool) -> u8 {
    let is = |known: &str| same(name, known);
    match name.len() {
        2 if is("te") => TE_BIT,
        7 if is("upgrade") => 1 << 4,
        10 if is("connection") => CONNECTION_BIT,
        10 if is("keep-alive") => 1 << 1,
        16 if is("proxy-connection") => 1 << 2,
        17 if is("transfer-encoding") => 1 << 3,
        19 if is("proxy-authorization") => 1 << 5,
        _ => 0,
    }
}

/// The bit of a field name as a [`HeaderName`] holds it: always lowercase.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    hop_by_hop_bit_by(name.as_str(), |a, b| a == b)
}

/// The bit of a name as a `Connection` value gives it, in any case.
fn hop_by_hop_bit_of_token(token: &str) -> u8 {
    hop_by_hop_bit_by(token, str::eq_ignore_ascii_case)
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One walk over the names finds what there is to remove, so a message without hop-by-hop
    // fields costs no lookups at all, and one with only `Connection` (as most HTTP/1.1
    // responses have) one removal.
    let present = headers.keys().fold(0, |mask, name| mask | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    // Headers named by `Connection` are hop-by-hop too. Those of HOP_BY_HOP go anyway, and a
    // name that is not present (`close`) needs no owned copy.
    let mut named = Vec::new();
    if present & CONNECTION_BIT != 0 {
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if hop_by_hop_bit_of_token(token) & !TE_BIT == 0
                && headers.contains_key(token)
                && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // `te` may only say `trailers` past this hop (gRPC relies on it).
    if present & TE_BIT != 0
        && headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
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

    /// The straightforward version: a lookup per hop-by-hop name, and an owned name per
    /// `Connection` token.
    fn strip_by_lookups(headers: &mut HeaderMap) {
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
        if headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
            headers.remove(header::TE);
        }
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
            assert_eq!(hop_by_hop_bit_of_token(&name.as_str().to_uppercase()), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit(&header::TE), TE_BIT);
        assert_eq!(hop_by_hop_bit_of_token("Te"), TE_BIT);
        for other in ["t", "host", "keep-alivf", "connections", "x-upgrade", "user-agent"] {
            assert_eq!(hop_by_hop_bit(&HeaderName::from_static(other)), 0, "{other}");
            assert_eq!(hop_by_hop_bit_of_token(other), 0, "{other}");
        }
    }

    #[test]
    fn one_walk_strips_what_a_lookup_per_name_strips() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "te",
            "host",
            "x-private",
            "close",
            "content-length",
            "x-a",
        ];
        let tokens =
            ["keep-alive", "Close", " x-private ", "TE", "upgrade", "x-a", "", "bad name", "Host", "x-é"];
        let values = ["trailers", "Trailers", "gzip", "keep-alive, x-a", "1"];
        let mut rng = fastrand::Rng::with_seed(7230);
        for _ in 0..5_000 {
            let mut headers = HeaderMap::new();
            for _ in 0..rng.usize(0..8) {
                let name = HeaderName::from_static(names[rng.usize(..names.len())]);
                let value = if name == header::CONNECTION {
                    let n = rng.usize(1..4);
                    (0..n).map(|_| tokens[rng.usize(..tokens.len())]).collect::<Vec<_>>().join(",")
                } else {
                    values[rng.usize(..values.len())].to_string()
                };
                let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) else { continue };
                headers.append(name, value);
            }
            let mut walked = headers.clone();
            let mut looked_up = headers.clone();
            strip_hop_by_hop(&mut walked);
            strip_by_lookups(&mut looked_up);
            assert_eq!(walked, looked_up, "from {headers:?}");
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
