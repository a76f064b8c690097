//! Keys, CSRs, issued identities, trust bundles, and credentials that are not usable yet.

use std::time::{Duration, UNIX_EPOCH};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::pki::{Ca, Leaf, dns, spiffe};
use crate::tls::{
    Credentials, CredentialsError, Identity, IdentityError, KeyPair, TlsMetrics, TrustBundle, Unusable,
    rfc3339,
};

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

#[tokio::test(start_paused = true)]
async fn credentials_start_empty_and_say_why_they_cannot_be_used() {
    let ca = Ca::new("tether root");
    let credentials = Credentials::empty(TlsMetrics::default());
    assert!(credentials.identity().is_none() && credentials.bundle().is_none());
    assert_eq!(credentials.unusable(), Some(Unusable::NotIssued));
    let second = Duration::from_secs(1);
    assert_eq!(credentials.usable_within(second).await, Err(Unusable::NotIssued));

    credentials.update_identity(ca.issue(Leaf::spiffe("payment")).identity());
    assert_eq!(credentials.unusable(), Some(Unusable::NoBundle));
    assert_eq!(
        credentials.unusable().unwrap().to_string(),
        "no trust bundle yet (the control plane has not answered)"
    );

    // Whoever waits learns of the update at once.
    let waiting = tokio::spawn({
        let credentials = credentials.clone();
        async move { credentials.usable_within(Duration::from_secs(3600)).await }
    });
    tokio::task::yield_now().await;
    credentials.update_bundle(TrustBundle::new(vec![ca.der.clone()]).unwrap());
    assert_eq!(waiting.await.unwrap(), Ok(()));
    assert_eq!(credentials.unusable(), None);
    assert_eq!(credentials.usable_within(Duration::ZERO).await, Ok(()));

    // An expired certificate is unusable again, until it is renewed.
    credentials.update_identity(ca.issue(Leaf::spiffe("payment").expired()).identity());
    let expired = credentials.unusable().unwrap();
    assert_eq!(expired.to_string(), "the certificate expired at 2021-01-02T00:00:00Z");
    assert_eq!(credentials.usable_within(second).await, Err(expired));
    credentials.update_identity(ca.issue(Leaf::spiffe("payment")).identity());
    assert_eq!(credentials.unusable(), None);
}

#[test]
fn times_read_as_rfc_3339() {
    let at = |seconds: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(seconds));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
    assert_eq!(at(1_704_067_199), "2023-12-31T23:59:59Z");
    assert_eq!(at(3_786_912_000), "2090-01-01T00:00:00Z");
    assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31T23:59:59Z");
}
