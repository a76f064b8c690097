//! Reading the SPIFFE ID (`spiffe://<namespace>/<service>`, design §8) out of a peer's
//! certificate; the ID type itself is `tether_model::identity::SpiffeId`. A peer controls
//! every byte of its certificate: this is untrusted input.

use x509_parser::extensions::GeneralName;

pub use tether_model::identity::{SpiffeId, SpiffeIdError};

/// Why a SPIFFE ID or a certificate carrying one was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {reason}")]
    BadCertificate { reason: String },
    #[error("the certificate has no URI SAN: it carries no SPIFFE ID")]
    NoSpiffeId,
    #[error("the certificate has {count} URI SANs: a SPIFFE identity has exactly one")]
    SeveralUris { count: usize },
    #[error(transparent)]
    Malformed(#[from] SpiffeIdError),
    #[error("the peer is `{found}`, not the expected `{expected}`")]
    Unexpected { expected: SpiffeId, found: SpiffeId },
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
        (Some(uri), None) => Ok(SpiffeId::parse(uri)?),
        (Some(_), Some(_)) => Err(IdentityError::SeveralUris { count: 2 + uris.count() }),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

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
        assert!(matches!(malformed, Err(IdentityError::Malformed(_))), "{malformed:?}");
        let https = peer_identity(&cert(vec![uri("https://shop/payment")]));
        assert!(matches!(https, Err(IdentityError::Malformed(_))), "{https:?}");
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
