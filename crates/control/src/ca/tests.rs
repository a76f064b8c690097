//! The CA against an independent reader (x509-parser) and verifier (rustls-webpki, what the
//! sidecars' TLS stack uses).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
    SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn payment() -> SpiffeId {
    SpiffeId::parse("spiffe://shop.local/payment").unwrap()
}

/// A CSR as a greedy sidecar would make it: its own key, and names it has no right to.
fn greedy_csr(alg: &'static SignatureAlgorithm) -> (KeyPair, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI("spiffe://shop.local/admin".try_into().unwrap()));
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    params.custom_extensions =
        vec![CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0])];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Verifies `leaf_pem` as a sidecar would, against the roots of `bundle`, for both directions of
/// mutual TLS.
fn verify(leaf_pem: &str, bundle: &TrustBundle) -> Result<(), webpki::Error> {
    let roots: Vec<CertificateDer<'static>> = bundle.roots().map(|pem| der_of(pem).into()).collect();
    let anchors: Vec<_> = roots.iter().map(|root| webpki::anchor_from_trusted_cert(root).unwrap()).collect();
    let leaf = CertificateDer::from(der_of(leaf_pem));
    let leaf = webpki::EndEntityCert::try_from(&leaf)?;
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        leaf.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &anchors,
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn a_ca_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Ca>();
    shareable::<CaState>();
    shareable::<CaStore<tether_store::Embedded>>();
}

#[test]
fn a_new_root_is_a_p256_ca_for_ten_years() {
    let ca = Ca::generate("shop.local").unwrap();
    let der = der_of(ca.cert_pem());
    let root = parse(&der);
    let subject = root.subject().to_string();
    let id = subject.strip_prefix("CN=tether root CA shop.local ").unwrap();
    assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{subject}");
    let key_id = root.iter_extensions().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    });
    let key_id: String = key_id.unwrap()[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, key_id, "the name ends with the key identifier's start");
    assert_eq!(ca.subject(), subject);
    assert_eq!(root.issuer(), root.subject());
    root.verify_signature(None).unwrap();
    let constraints = root.basic_constraints().unwrap().unwrap();
    assert!(constraints.critical);
    assert!(constraints.value.ca);
    assert_eq!(constraints.value.path_len_constraint, Some(0));
    let usage = root.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    let now = unix(SystemTime::now());
    let validity = root.validity();
    assert!((validity.not_before.timestamp() - (now - 60)).abs() <= 2);
    let ten_years = 3653 * 24 * 60 * 60;
    assert!((validity.not_after.timestamp() - (now + ten_years)).abs() <= 2);
    assert_eq!(unix(ca.not_after()), validity.not_after.timestamp());
    assert_eq!(root.public_key().algorithm.algorithm, x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert!(root.raw_serial().len() >= 16, "random serial");
    assert_ne!(Ca::generate("shop.local").unwrap(), ca, "each root has a key of its own");
    let long = Ca::generate(&"n".repeat(200)).unwrap();
    assert_eq!(long.subject().len(), "CN=".len() + 64, "the common name is cut to RFC 5280's bound");
    assert!(!format!("{ca:?}").contains("PRIVATE"), "Debug never shows the key");
}

#[test]
fn a_leaf_names_the_spiffe_id_and_nothing_the_csr_asked_for() {
    let ca = Ca::generate("shop.local").unwrap();
    let (sidecar_key, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let before = unix(SystemTime::now());
    let issued = ca.sign(&csr, &payment(), DAY).unwrap();
    let after = unix(SystemTime::now());
    let der = der_of(&issued.cert_pem);
    let leaf = parse(&der);

    let names = &leaf.subject_alternative_name().unwrap().expect("a SAN extension").value.general_names;
    assert_eq!(names, &vec![GeneralName::URI("spiffe://shop.local/payment")], "exactly one URI SAN");
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical, "critical, the subject being empty");
    assert_eq!(leaf.subject().iter().count(), 0, "no subject, so no CN-based identity");
    let usage = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(usage.server_auth && usage.client_auth);
    assert!(!usage.code_signing && !usage.any && usage.other.is_empty());
    let key_usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(key_usage.digital_signature() && !key_usage.key_cert_sign());
    assert!(!leaf.basic_constraints().unwrap().expect("basicConstraints present").value.ca);
    assert!(!leaf.is_ca());
    let unknown = leaf.iter_extensions().filter(|e| e.oid.to_id_string().starts_with("1.3.6.1.4.1.99999"));
    assert_eq!(unknown.count(), 0, "requested extensions are not copied");

    let validity = leaf.validity();
    assert!(validity.not_before.timestamp() >= before - 60 && validity.not_before.timestamp() <= after - 60);
    assert!(validity.not_after.timestamp() >= before + DAY.as_secs() as i64);
    assert!(validity.not_after.timestamp() <= after + DAY.as_secs() as i64);
    assert_eq!(validity.not_after.timestamp(), unix(issued.not_after));

    let root_der = der_of(ca.cert_pem());
    let root = parse(&root_der);
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), sidecar_key.public_key_raw());
    verify(&issued.cert_pem, &TrustBundle::new(&ca)).unwrap();

    let chain = pem::parse_many(&issued.chain_pem).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].contents(), der.as_slice());
    assert_eq!(chain[1].contents(), root_der.as_slice());

    let again = ca.sign(&csr, &payment(), DAY).unwrap();
    assert_ne!(parse(&der_of(&again.cert_pem)).raw_serial(), leaf.raw_serial(), "serials are random");
}

#[test]
fn a_leaf_never_outlives_its_ca_and_a_zero_lifetime_is_refused() {
    let ca = Ca::generate("shop.local").unwrap();
    let (_, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let issued = ca.sign(&csr, &payment(), ROOT_VALIDITY * 2).unwrap();
    assert_eq!(issued.not_after, ca.not_after());
    assert!(matches!(ca.sign(&csr, &payment(), Duration::ZERO), Err(Error::Lifetime(_))));
}

#[test]
fn a_tampered_csr_is_refused() {
    let ca = Ca::generate("shop.local").unwrap();
    let (_, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let der = der_of(&csr);
    // The last byte is the signature's; the one found by the CN changes what was signed.
    let in_signature = der.len() - 1;
    let in_subject = der.windows(5).position(|w| w == b"admin").unwrap();
    for at in [in_signature, in_subject] {
        let mut tampered = der.clone();
        tampered[at] ^= 0x01;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
        match ca.sign(&tampered, &payment(), DAY) {
            Err(e @ Error::BadCsr(_)) => {
                assert!(e.to_string().contains("signature does not verify"), "{e}");
                assert!(e.is_callers_fault());
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
}

#[test]
fn csrs_for_other_keys_are_refused_by_name() {
    let ca = Ca::generate("shop.local").unwrap();
    let rsa = include_str!("testdata/rsa2048.csr").to_owned();
    let p384 = greedy_csr(&PKCS_ECDSA_P384_SHA384).1;
    let ed25519 = greedy_csr(&PKCS_ED25519).1;
    for (csr, found) in
        [(rsa, "an RSA key of 2048 bits"), (p384, "an ECDSA P-384 key"), (ed25519, "an Ed25519 key")]
    {
        match ca.sign(&csr, &payment(), DAY) {
            Err(e @ Error::UnsupportedKey { .. }) => {
                let message = e.to_string();
                assert!(message.contains(found), "{message}");
                assert!(message.contains("ECDSA P-256 keys only"), "{message}");
                assert!(e.is_callers_fault());
            }
            other => panic!("{found}: {other:?}"),
        }
    }
}

#[test]
fn what_is_not_one_csr_is_refused() {
    let ca = Ca::generate("shop.local").unwrap();
    let (_, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let cases = [
        (String::new(), "no PEM"),
        ("hello".to_owned(), "no PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n".to_owned(),
            "not PEM",
        ),
        (ca.cert_pem().to_owned(), "`CERTIFICATE` block, not `CERTIFICATE REQUEST`"),
        (format!("{csr}{csr}"), "2 PEM blocks"),
        (pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![0x30, 0x03, 1, 2, 3])), "not a PKCS #10"),
        (pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", [der_of(&csr), vec![0]].concat())), "stray bytes"),
        ("x".repeat(17 * 1024), "bytes long"),
    ];
    for (text, reason) in cases {
        match ca.sign(&text, &payment(), DAY) {
            Err(e @ Error::BadCsr(_)) => assert!(e.to_string().contains(reason), "{reason}: {e}"),
            other => panic!("{reason}: {other:?}"),
        }
    }
}

/// A certificate and key made outside tether, as an operator would supply them.
fn supplied(
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
    alg: &'static SignatureAlgorithm,
) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "corp CA");
    params.is_ca = is_ca;
    params.key_usages = key_usages;
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn a_supplied_ca_is_checked_and_signs() {
    let (cert, key) = supplied(IsCa::Ca(BasicConstraints::Unconstrained), vec![], &PKCS_ECDSA_P256_SHA256);
    // Text around the blocks (as `openssl x509 -text` leaves) is dropped.
    let ca = Ca::from_pem(&format!("subject=corp CA\n{cert}"), &key).unwrap();
    assert_eq!(ca.cert_der(), der_of(&cert).as_slice());
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let issued = ca.sign(&greedy_csr(&PKCS_ECDSA_P256_SHA256).1, &payment(), DAY).unwrap();
    verify(&issued.cert_pem, &TrustBundle::new(&ca)).unwrap();
    // What to_pem gives back, from_pem reads.
    let (cert_again, key_again) = ca.to_pem();
    assert_eq!(Ca::from_pem(&cert_again, &key_again).unwrap(), ca);
}

#[test]
fn a_supplied_certificate_that_is_not_a_ca_is_refused() {
    let cases = [
        (IsCa::ExplicitNoCa, vec![], "CA:false"),
        (IsCa::NoCa, vec![], "no basicConstraints"),
        (IsCa::Ca(BasicConstraints::Unconstrained), vec![KeyUsagePurpose::DigitalSignature], "keyCertSign"),
    ];
    for (is_ca, usages, reason) in cases {
        let (cert, key) = supplied(is_ca, usages, &PKCS_ECDSA_P256_SHA256);
        match Ca::from_pem(&cert, &key) {
            Err(e @ Error::NotACa { .. }) => {
                let message = e.to_string();
                assert!(message.contains(reason) && message.contains("corp CA"), "{message}");
            }
            other => panic!("{reason}: {other:?}"),
        }
    }
}

#[test]
fn a_supplied_key_must_be_the_certificates_and_p256_pkcs8() {
    let ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (cert, _) = supplied(ca, vec![], &PKCS_ECDSA_P256_SHA256);
    let (_, other_key) = supplied(ca, vec![], &PKCS_ECDSA_P256_SHA256);
    let message = Ca::from_pem(&cert, &other_key).unwrap_err().to_string();
    assert!(message.contains("does not belong to the CA certificate `CN=corp CA`"), "{message}");

    let (p384_cert, p384_key) = supplied(ca, vec![], &PKCS_ECDSA_P384_SHA384);
    let message = Ca::from_pem(&p384_cert, &p384_key).unwrap_err().to_string();
    assert!(message.contains("the CA certificate's key is an ECDSA P-384 key"), "{message}");
    let message = Ca::from_pem(&cert, &p384_key).unwrap_err().to_string();
    assert!(message.contains("the CA key is an ECDSA P-384 key"), "{message}");

    let (_, key) = supplied(IsCa::Ca(BasicConstraints::Unconstrained), vec![], &PKCS_ECDSA_P256_SHA256);
    let sec1 = pem::encode(&pem::Pem::new("EC PRIVATE KEY", der_of(&key)));
    let message = Ca::from_pem(&cert, &sec1).unwrap_err().to_string();
    assert!(message.contains("openssl pkcs8 -topk8"), "{message}");
    for (text, reason) in [("", "0 PEM blocks"), (cert.as_str(), "`CERTIFICATE` block")] {
        match Ca::from_pem(&cert, text) {
            Err(e @ Error::BadKey(_)) => assert!(e.to_string().contains(reason), "{e}"),
            other => panic!("{reason}: {other:?}"),
        }
    }
    assert!(matches!(Ca::from_pem("", &key), Err(Error::BadCertificate(_))));
}

#[test]
fn an_expired_supplied_ca_is_refused() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "old CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap().pem();
    let message = Ca::from_pem(&cert, &key.serialize_pem()).unwrap_err().to_string();
    assert!(message.contains("`CN=old CA` is valid from"), "{message}");
    // Read back from the store, it still loads so that it can be rotated out, but signs nothing.
    let ca = Ca::read_pem(&cert, &key.serialize_pem()).unwrap();
    let csr = greedy_csr(&PKCS_ECDSA_P256_SHA256).1;
    assert!(matches!(ca.sign(&csr, &payment(), DAY), Err(Error::OutsideValidity { .. })));
}

#[test]
fn a_rotation_trusts_the_new_root_before_it_signs_and_the_old_until_the_end() {
    let csr = greedy_csr(&PKCS_ECDSA_P256_SHA256).1;
    let mut state = CaState::new(Ca::generate("shop.local").unwrap());
    let old = state.active().clone();
    let old_leaf = state.active().sign(&csr, &payment(), DAY).unwrap().cert_pem;
    assert_eq!(state.phase(), RotationPhase::Idle);
    assert_eq!(state.bundle().roots().collect::<Vec<_>>(), [old.cert_pem()]);
    assert!(state.bundle().contains(old.cert_pem()));
    for wrong in [CaState::activate, CaState::finish] {
        let message = wrong(&mut state.clone()).unwrap_err().to_string();
        assert!(message.contains("no rotation is under way; begin a rotation first"), "{message}");
    }

    state.begin_rotation("shop.local").unwrap();
    let new = state.staged().unwrap().clone();
    assert_eq!(state.phase(), RotationPhase::Staged);
    assert_eq!(state.active(), &old, "the new root does not sign yet");
    assert_eq!(state.bundle().roots().collect::<Vec<_>>(), [old.cert_pem(), new.cert_pem()]);
    assert_eq!(state.bundle().pem(), format!("{}{}", old.cert_pem(), new.cert_pem()));
    verify(&old_leaf, state.bundle()).unwrap();
    assert!(state.begin_rotation("shop.local").is_err());
    assert!(matches!(
        state.clone().finish(),
        Err(Error::RotationOutOfOrder { step: RotationStep::Finish, .. })
    ));

    state.activate().unwrap();
    assert_eq!(state.phase(), RotationPhase::Activated);
    assert_eq!(state.active(), &new);
    assert_eq!(state.staged(), None);
    assert_eq!(state.bundle().roots().collect::<Vec<_>>(), [new.cert_pem(), old.cert_pem()]);
    let new_leaf = state.active().sign(&csr, &payment(), DAY).unwrap();
    assert!(new_leaf.chain_pem.ends_with(new.cert_pem()));
    let new_der = der_of(&new_leaf.cert_pem);
    let (new_root, old_root) = (der_of(new.cert_pem()), der_of(old.cert_pem()));
    parse(&new_der).verify_signature(Some(parse(&new_root).public_key())).unwrap();
    assert!(parse(&new_der).verify_signature(Some(parse(&old_root).public_key())).is_err());
    verify(&new_leaf.cert_pem, state.bundle()).unwrap();
    verify(&old_leaf, state.bundle()).unwrap();
    let message = state.clone().begin_rotation("shop.local").unwrap_err().to_string();
    assert!(message.contains("finish the rotation once"), "{message}");

    state.finish().unwrap();
    assert_eq!(state.phase(), RotationPhase::Idle);
    assert_eq!(state.bundle().roots().collect::<Vec<_>>(), [new.cert_pem()]);
    assert!(!state.bundle().contains(old.cert_pem()));
    verify(&new_leaf.cert_pem, state.bundle()).unwrap();
    assert_eq!(
        verify(&old_leaf, state.bundle()),
        Err(webpki::Error::UnknownIssuer),
        "the old root's leaves are no longer trusted"
    );
}

#[test]
fn bundle_membership_is_by_certificate() {
    let ca = Ca::generate("shop.local").unwrap();
    let bundle = TrustBundle::new(&ca);
    assert!(bundle.contains(&ca.cert_pem().replace('\n', "\r\n")));
    assert!(bundle.contains(&format!("comment\n{}", ca.cert_pem())));
    assert!(!bundle.contains(Ca::generate("shop.local").unwrap().cert_pem()));
    assert!(!bundle.contains(""));
    assert!(!bundle.contains(&bundle.pem().repeat(2)));
    assert_eq!(bundle.len(), 1);
    assert!(!bundle.is_empty());
}
