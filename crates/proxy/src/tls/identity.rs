//! SPIFFE IDs (`spiffe://<namespace>/<service>`, design §8) and reading one from a peer's
//! certificate. Both parse untrusted input: a peer controls every byte of its certificate.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

const SCHEME: &str = "spiffe://";
/// The SPIFFE standard's limit for a whole ID.
const MAX_LEN: usize = 2048;
/// How much of an untrusted ID an error message repeats.
const SHOWN: usize = 80;

/// A workload's identity: the service `service` of namespace `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    namespace: String,
    service: String,
}

/// Why a SPIFFE ID or a certificate carrying one was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {reason}")]
    BadCertificate { reason: String },
    #[error("the certificate has no URI SAN: it carries no SPIFFE ID")]
    NoSpiffeId,
    #[error("the certificate has {count} URI SANs: a SPIFFE identity has exactly one")]
    SeveralUris { count: usize },
    #[error("malformed SPIFFE ID `{shown}`: {problem}")]
    Malformed { shown: String, problem: &'static str },
    #[error("the peer is `{found}`, not the expected `{expected}`")]
    Unexpected { expected: SpiffeId, found: SpiffeId },
}

impl SpiffeId {
    /// The ID of `service` in `namespace`; each must be a valid path segment (`[a-z0-9._-]+`,
    /// neither `.` nor `..`).
    pub fn new(namespace: &str, service: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("{SCHEME}{namespace}/{service}"))
    }

    /// Parses `spiffe://<namespace>/<service>`, strictly: lowercase scheme, exactly two
    /// non-empty segments of `[a-z0-9._-]`, and so no port, user info, query, fragment,
    /// percent-encoding or trailing slash.
    pub fn parse(id: &str) -> Result<Self, IdentityError> {
        let malformed = |problem| IdentityError::Malformed { shown: shown(id), problem };
        if id.len() > MAX_LEN {
            return Err(malformed("longer than 2048 bytes"));
        }
        let path = id.strip_prefix(SCHEME).ok_or_else(|| malformed("it does not start with `spiffe://`"))?;
        let mut segments = path.split('/');
        let (Some(namespace), Some(service), None) = (segments.next(), segments.next(), segments.next())
        else {
            return Err(malformed("it must have exactly two segments: spiffe://<namespace>/<service>"));
        };
        for segment in [namespace, service] {
            if segment.is_empty() {
                return Err(malformed("a segment is empty"));
            }
            if segment == "." || segment == ".." {
                return Err(malformed("a segment is `.` or `..`"));
            }
            if !segment.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')) {
                return Err(malformed("segments may hold only a-z, 0-9, `.`, `_` and `-`"));
            }
        }
        Ok(Self { namespace: namespace.to_owned(), service: service.to_owned() })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.namespace, self.service)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The SPIFFE ID of a certificate (DER): its one URI SAN, which must be a SPIFFE ID. The
/// certificate is only parsed here, not verified; callers verify the chain first.
pub fn peer_identity(cert_der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let bad = |reason: String| IdentityError::BadCertificate { reason };
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let san = cert.subject_alternative_name().map_err(|e| bad(format!("subject alternative names: {e}")))?;
    let names = san.map(|san| san.value.general_names.as_slice()).unwrap_or_default();
    let mut uris = names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (None, _) => Err(IdentityError::NoSpiffeId),
        (Some(uri), None) => SpiffeId::parse(uri),
        (Some(_), Some(_)) => Err(IdentityError::SeveralUris { count: 2 + uris.count() }),
    }
}

/// An untrusted string as an error message may show it: escaped and cut short.
fn shown(s: &str) -> String {
    let mut shown: String = s.chars().take(SHOWN).flat_map(char::escape_debug).collect();
    if s.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    #[test]
    fn a_well_formed_id_parses_and_prints_as_it_was() {
        let id = SpiffeId::parse("spiffe://shop/payment-service").unwrap();
        assert_eq!((id.namespace(), id.service()), ("shop", "payment-service"));
        assert_eq!(id.to_string(), "spiffe://shop/payment-service");
        assert_eq!(
            "spiffe://a.b_c-1/x.y".parse::<SpiffeId>().unwrap(),
            SpiffeId::new("a.b_c-1", "x.y").unwrap()
        );
    }

    #[test]
    fn malformed_ids_are_refused_with_the_problem() {
        let cases = [
            ("", "it does not start with `spiffe://`"),
            ("https://shop/payment", "it does not start with `spiffe://`"),
            ("SPIFFE://shop/payment", "it does not start with `spiffe://`"),
            ("spiffe:shop/payment", "it does not start with `spiffe://`"),
            ("spiffe://", "it must have exactly two segments: spiffe://<namespace>/<service>"),
            ("spiffe://shop", "it must have exactly two segments: spiffe://<namespace>/<service>"),
            ("spiffe://shop/a/b", "it must have exactly two segments: spiffe://<namespace>/<service>"),
            ("spiffe://shop/payment/", "it must have exactly two segments: spiffe://<namespace>/<service>"),
            ("spiffe:///payment", "a segment is empty"),
            ("spiffe://shop/", "a segment is empty"),
            ("spiffe://shop/..", "a segment is `.` or `..`"),
            ("spiffe://./payment", "a segment is `.` or `..`"),
            ("spiffe://Shop/payment", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop:443/payment", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://user@shop/payment", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/payment?x=1", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/payment#frag", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/pay%6dent", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/pay ment", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/paymént", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            ("spiffe://shop/pay\0ment", "segments may hold only a-z, 0-9, `.`, `_` and `-`"),
            (" spiffe://shop/payment", "it does not start with `spiffe://`"),
        ];
        for (id, expected) in cases {
            match SpiffeId::parse(id) {
                Err(IdentityError::Malformed { problem, .. }) => assert_eq!(problem, expected, "{id:?}"),
                other => panic!("{id:?}: {other:?}"),
            }
        }
        assert!(SpiffeId::new("shop", "a/b").is_err());
    }

    #[test]
    fn the_length_limit_counts_bytes_and_errors_do_not_repeat_huge_input() {
        let at_limit = format!("spiffe://shop/{}", "a".repeat(MAX_LEN - "spiffe://shop/".len()));
        assert!(SpiffeId::parse(&at_limit).is_ok());
        let error = SpiffeId::parse(&format!("{at_limit}a")).unwrap_err();
        assert!(matches!(error, IdentityError::Malformed { problem: "longer than 2048 bytes", .. }));
        assert!(error.to_string().len() < 200, "{error}");
        // Control characters are escaped, not written into logs as they are.
        let error = SpiffeId::parse("spiffe://shop/\x1b[31mred").unwrap_err().to_string();
        assert!(!error.contains('\x1b'), "{error}");
    }

    fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_certificate_has_exactly_one_uri_san_and_it_is_a_spiffe_id() {
        let dns = SanType::DnsName("payment.shop".try_into().unwrap());
        let id = peer_identity(&cert(vec![dns.clone(), uri("spiffe://shop/payment")])).unwrap();
        assert_eq!(id, SpiffeId::new("shop", "payment").unwrap());

        assert_eq!(peer_identity(&cert(vec![])), Err(IdentityError::NoSpiffeId));
        assert_eq!(peer_identity(&cert(vec![dns])), Err(IdentityError::NoSpiffeId));
        let two = cert(vec![uri("spiffe://shop/payment"), uri("spiffe://shop/admin")]);
        assert_eq!(peer_identity(&two), Err(IdentityError::SeveralUris { count: 2 }));
        let other = cert(vec![uri("spiffe://shop/payment"), uri("https://shop.example/")]);
        assert_eq!(peer_identity(&other), Err(IdentityError::SeveralUris { count: 2 }));
        let malformed = peer_identity(&cert(vec![uri("spiffe://shop/payment/extra")]));
        assert!(matches!(malformed, Err(IdentityError::Malformed { .. })), "{malformed:?}");
        let https = peer_identity(&cert(vec![uri("https://shop/payment")]));
        assert!(matches!(https, Err(IdentityError::Malformed { .. })), "{https:?}");
    }

    #[test]
    fn bytes_that_are_not_one_certificate_are_refused() {
        let good = cert(vec![uri("spiffe://shop/payment")]);
        for bad in [&[][..], b"not a certificate", &good[..good.len() - 1], &[0x30, 0x82, 0xff, 0xff]] {
            assert!(matches!(peer_identity(bad), Err(IdentityError::BadCertificate { .. })));
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(peer_identity(&trailing), Err(IdentityError::BadCertificate { .. })));
        // Every truncation and single-byte corruption is refused or parsed, never a panic.
        for i in 0..good.len() {
            let _ = peer_identity(&good[..i]);
            let mut flipped = good.clone();
            flipped[i] ^= 0x41;
            let _ = peer_identity(&flipped);
        }
    }
}
