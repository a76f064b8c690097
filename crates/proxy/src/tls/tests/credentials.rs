//! Keys, CSRs, issued identities and trust bundles.

use std::time::{Duration, UNIX_EPOCH};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::pki::{Ca, Leaf, dns, spiffe};
use crate::tls::{CredentialsError, Identity, IdentityError, KeyPair, TrustBundle};

#[test]
fn a_csr_asks_for_the_spiffe_id_with_the_sidecars_own_key() {
    let key = Identity::new_key().unwrap();
    let pem = Identity::csr(&key, &spiffe("payment")).unwrap();
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
    let info = &csr.certification_request_info;
    assert_eq!(info.subject_pki.raw, key.subject_public_key_info().as_slice());
    assert_eq!(info.subject.iter_common_name().next().unwrap().as_str().unwrap(), "payment");
    let uris: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            ParsedExtension::SubjectAlternativeName(san) => Some(&san.general_names),
            _ => None,
        })
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://shop/payment"]);
}

#[test]
fn an_issued_identity_reads_its_certificate() {
    let ca = Ca::new("tether root");
    let identity = ca.issue(Leaf::spiffe("payment").valid_until((2090, 1, 1))).identity();
    assert_eq!(identity.spiffe_id(), &spiffe("payment"));
    // 2024-01-01 and 2090-01-01.
    assert_eq!(identity.not_before(), UNIX_EPOCH + Duration::from_secs(1_704_067_200));
    assert_eq!(identity.not_after(), UNIX_EPOCH + Duration::from_secs(3_786_912_000));
    let half = (3_786_912_000 - 1_704_067_200) / 2;
    assert_eq!(identity.renew_at(), UNIX_EPOCH + Duration::from_secs(1_704_067_200 + half));
    assert_eq!(identity.chain().len(), 1);
    let debug = format!("{identity:?}");
    assert!(debug.contains("spiffe://shop/payment") && !debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn an_issued_chain_must_certify_the_key_and_carry_a_spiffe_id() {
    let ca = Ca::new("tether root");
    let issued = ca.issue(Leaf::spiffe("payment"));
    let other_key = Identity::new_key().unwrap();
    let mismatch = Identity::from_issued(other_key, &issued.chain_pem).unwrap_err();
    assert!(matches!(mismatch, CredentialsError::KeyMismatch(_)), "{mismatch}");

    let key = || KeyPair::from_pem(&issued.key_pem).unwrap();
    assert!(matches!(Identity::from_issued(key(), ""), Err(CredentialsError::NoCertificate)));
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    assert!(Identity::from_issued(key(), garbage).is_err());

    let dns_only = ca.issue(Leaf::with_sans(vec![dns("payment.shop")]));
    let no_id = Identity::from_issued(KeyPair::from_pem(&dns_only.key_pem).unwrap(), &dns_only.chain_pem);
    assert!(matches!(no_id, Err(CredentialsError::Identity(IdentityError::NoSpiffeId))));
}

#[test]
fn a_trust_bundle_holds_one_or_two_roots() {
    let (a, b, c) = (Ca::new("a"), Ca::new("b"), Ca::new("c"));
    assert!(matches!(TrustBundle::new(vec![]), Err(CredentialsError::RootCount { count: 0 })));
    let three = vec![a.der.clone(), b.der.clone(), c.der.clone()];
    assert!(matches!(TrustBundle::new(three), Err(CredentialsError::RootCount { count: 3 })));
    assert_eq!(TrustBundle::from_pem(&format!("{}{}", a.pem, b.pem)).unwrap().certificates().len(), 2);
    assert!(matches!(TrustBundle::from_pem(""), Err(CredentialsError::RootCount { count: 0 })));
    let not_a_certificate = vec![b"not a certificate".to_vec().into()];
    assert!(matches!(TrustBundle::new(not_a_certificate), Err(CredentialsError::BadRoot(_))));
}
