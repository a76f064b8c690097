//! One CA: an ECDSA P-256 key and its certificate, which sign the certificates sidecars ask for.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::error::{CA_KEY, CSR_KEY};
use super::{Error, Result, SpiffeId};

/// How long a root made by [`Ca::generate`] is valid: ten years.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60);
/// How far back `notBefore` is set, so that a peer whose clock is a little behind ours does not
/// see a certificate that is not valid yet.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// A CSR for one P-256 key is well under 1 KiB; anything much larger is not one.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// RFC 5280's upper bound for a common name.
const MAX_COMMON_NAME: usize = 64;

/// A certificate authority. Cheap to clone (the key is shared, never copied); `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct Ca(Arc<Inner>);

struct Inner {
    cert_pem: String,
    cert_der: Vec<u8>,
    subject: String,
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The leaf certificate alone.
    pub cert_pem: String,
    /// The leaf, then the root that signed it: what a sidecar presents in its handshakes.
    pub chain_pem: String,
    /// When the leaf expires (whole seconds, as written in the certificate). A sidecar renews at
    /// half its lifetime.
    pub not_after: SystemTime,
}

impl Ca {
    /// A new self-signed root: ECDSA P-256, `CN=tether root CA <name> <key id>` (the first 4
    /// bytes of its key identifier in hex, so that no two roots share a name; at most 64
    /// characters, the name cut to fit), valid for ten years from a minute ago,
    /// basicConstraints CA:true with pathlen 0 (it signs leaves only), keyUsage keyCertSign and
    /// cRLSign.
    pub fn generate(name: &str) -> Result<Ca> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::crypto("making the root key"))?;
        let now = now_in_seconds();
        let mut params = CertificateParams::default();
        params.distinguished_name = root_name(name, &params.key_identifier(&key));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_asn1_time(now - CLOCK_SKEW);
        params.not_after = to_asn1_time(now + ROOT_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(Error::crypto("signing the root certificate"))?;
        Self::from_parts(cert.der(), key)
    }

    /// A CA the operator supplies (`--ca-cert`/`--ca-key`): one PEM certificate that is a CA
    /// (basicConstraints CA:true; keyUsage, if present, allows keyCertSign) and is valid now, and
    /// the PKCS #8 PEM private key it was issued for, both ECDSA P-256. It need not be
    /// self-signed: an intermediate works as long as sidecars are given it as their trust root.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let ca = Self::read_pem(cert_pem, key_pem)?;
        ca.check_validity()?;
        Ok(ca)
    }

    /// [`from_pem`](Self::from_pem) without the validity check: a stored CA that has expired
    /// still loads, so that it can be rotated out.
    pub(super) fn read_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let der = single_pem(cert_pem, "CERTIFICATE").map_err(Error::BadCertificate)?;
        let cert = parse_certificate(&der).map_err(Error::BadCertificate)?;
        let subject = cert.subject().to_string();
        let not_a_ca = |reason: &str| Error::NotACa { subject: subject.clone(), reason: reason.to_owned() };
        match cert.basic_constraints() {
            Ok(Some(constraints)) if constraints.value.ca => {}
            Ok(Some(_)) => return Err(not_a_ca("its basicConstraints say CA:false")),
            Ok(None) => return Err(not_a_ca("it has no basicConstraints extension")),
            Err(e) => return Err(Error::BadCertificate(format!("its basicConstraints cannot be read: {e}"))),
        }
        match cert.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(not_a_ca("its keyUsage does not allow keyCertSign"));
            }
            Ok(_) => {}
            Err(e) => return Err(Error::BadCertificate(format!("its keyUsage cannot be read: {e}"))),
        }
        if let Some(found) = unsupported(cert.public_key()) {
            return Err(Error::UnsupportedKey { whose: "the CA certificate's key", found, hint: "" });
        }
        let key = parse_private_key(key_pem)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(Error::KeyMismatch { subject });
        }
        Self::from_parts(&der, key)
    }

    /// Remembers what [`sign`](Self::sign) needs, and keeps the certificate as tidy PEM (no
    /// text around it).
    fn from_parts(der: &[u8], key: KeyPair) -> Result<Ca> {
        let cert = parse_certificate(der).map_err(Error::BadCertificate)?;
        let subject = cert.subject().to_string();
        let validity = cert.validity();
        let not_before = UNIX_EPOCH + Duration::from_secs(validity.not_before.timestamp().max(0) as u64);
        let not_after = UNIX_EPOCH + Duration::from_secs(validity.not_after.timestamp().max(0) as u64);
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(Error::crypto("reading the CA certificate"))?;
        let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der));
        Ok(Ca(Arc::new(Inner { cert_pem, cert_der: der.to_vec(), subject, not_before, not_after, issuer })))
    }

    /// Issues a leaf for `spiffe_id` to the key in `csr_pem`, valid from a minute ago for
    /// `lifetime` (but never beyond the CA's own expiry).
    ///
    /// The CSR proves that the sidecar holds the key (its self-signature must verify) and
    /// nothing else: its subject, SANs and extensions are ignored. The leaf has an empty subject,
    /// exactly one URI SAN (the SPIFFE ID; the bootstrap token decides it, not the CSR),
    /// keyUsage digitalSignature, extendedKeyUsage serverAuth and clientAuth, basicConstraints
    /// CA:false and a random serial.
    pub fn sign(&self, csr_pem: &str, spiffe_id: &SpiffeId, lifetime: Duration) -> Result<Issued> {
        if lifetime < Duration::from_secs(1) {
            return Err(Error::Lifetime(lifetime));
        }
        self.check_validity()?;
        let public_key = verified_csr_key(csr_pem)?;
        let now = now_in_seconds();
        let not_after = (now + lifetime).min(self.0.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(spiffe_id.to_string()).map_err(|e| Error::BadSpiffeId {
            id: spiffe_id.to_string(),
            reason: format!("not ASCII: {e}"),
        })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_asn1_time(now - CLOCK_SKEW);
        params.not_after = to_asn1_time(not_after);
        params.serial_number = Some(random_serial()?);
        let leaf = params
            .signed_by(&public_key, &self.0.issuer)
            .map_err(Error::crypto("signing the certificate"))?;
        let cert_pem = leaf.pem();
        let chain_pem = format!("{cert_pem}{}", self.0.cert_pem);
        Ok(Issued { cert_pem, chain_pem, not_after })
    }

    /// A CA outside its validity signs nothing: no peer would accept what it signed. The skew
    /// allowance works both ways, so a root made by a replica whose clock is a little ahead is
    /// usable here.
    fn check_validity(&self) -> Result<()> {
        let now = SystemTime::now();
        if now + CLOCK_SKEW < self.0.not_before || now >= self.0.not_after {
            return Err(Error::OutsideValidity {
                subject: self.0.subject.clone(),
                not_before: self.0.not_before,
                not_after: self.0.not_after,
            });
        }
        Ok(())
    }

    /// The CA certificate, for the trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.0.cert_der
    }

    /// The certificate and the private key (PKCS #8), as PEM: what [`from_pem`](Self::from_pem)
    /// reads back.
    pub fn to_pem(&self) -> (String, String) {
        (self.0.cert_pem.clone(), self.0.issuer.key().serialize_pem())
    }

    /// The certificate's subject, such as `CN=tether root CA shop.local 3fa2c1d0`.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// When the CA certificate expires: a new CA must be rotated in well before.
    pub fn not_after(&self) -> SystemTime {
        self.0.not_after
    }
}

impl PartialEq for Ca {
    /// Two CAs are the same when their certificates are (a certificate names one key).
    fn eq(&self, other: &Self) -> bool {
        self.0.cert_der == other.0.cert_der
    }
}

impl Eq for Ca {}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.0.subject)
            .field("not_after", &self.0.not_after)
            .finish_non_exhaustive()
    }
}

/// `CN=tether root CA <name> <first 4 bytes of the key identifier, in hex>`, at most 64
/// characters (RFC 5280's bound; the name is cut to fit). Each root's name is its own, so that
/// during a rotation a certificate from the wrong root reads as "unknown issuer" rather than as
/// a bad signature, and people can tell the roots apart.
fn root_name(name: &str, key_id: &[u8]) -> DistinguishedName {
    let id: String = key_id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let room = MAX_COMMON_NAME - "tether root CA ".len() - 1 - id.len();
    let name: String = name.chars().take(room).collect();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("tether root CA {name} {id}"));
    subject
}

/// The public key of the CSR in `csr_pem`, once its self-signature has verified and the key is
/// known to be P-256.
fn verified_csr_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(Error::BadCsr(format!(
            "it is {} bytes long; a CSR for one P-256 key is under 1 KiB (at most {MAX_CSR_BYTES} bytes accepted)",
            csr_pem.len()
        )));
    }
    let der = single_pem(csr_pem, "CERTIFICATE REQUEST").map_err(Error::BadCsr)?;
    let csr = match X509CertificationRequest::from_der(&der) {
        Ok((rest, _)) if !rest.is_empty() => {
            return Err(Error::BadCsr(format!("{} stray bytes follow the request", rest.len())));
        }
        Ok((_, csr)) => csr,
        Err(e) => return Err(Error::BadCsr(format!("it is not a PKCS #10 request: {e}"))),
    };
    let spki = &csr.certification_request_info.subject_pki;
    // The key's kind first, so that an RSA or P-384 request hears that rather than "bad signature".
    if let Some(found) = unsupported(spki) {
        return Err(Error::UnsupportedKey {
            whose: CSR_KEY,
            found,
            hint: "; make the sidecar's key with ECDSA P-256",
        });
    }
    csr.verify_signature().map_err(|e| {
        Error::BadCsr(format!(
            "its signature does not verify ({e}): it was altered, or not signed by the key it carries"
        ))
    })?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| Error::BadCsr(format!("its public key cannot be used: {e}")))
}

/// `None` for an ECDSA P-256 key (an uncompressed point); otherwise what the key is, in words.
fn unsupported(spki: &SubjectPublicKeyInfo<'_>) -> Option<String> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 => {
                let point = &spki.subject_public_key.data;
                (point.len() != 65 || point[0] != 4)
                    .then(|| "an ECDSA P-256 key that is not an uncompressed point".to_owned())
            }
            Some(curve) if curve == OID_NIST_EC_P384 => Some("an ECDSA P-384 key".to_owned()),
            Some(curve) => Some(format!("an ECDSA key on curve {curve}")),
            None => Some("an ECDSA key without a named curve".to_owned()),
        };
    }
    Some(if *algorithm == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("an RSA key of {} bits", rsa.key_size()),
            _ => "an RSA key".to_owned(),
        }
    } else if *algorithm == OID_SIG_ED25519 {
        "an Ed25519 key".to_owned()
    } else {
        format!("a key of algorithm {algorithm}")
    })
}

/// The contents of the one PEM block in `text`, which must be labelled `label`.
fn single_pem(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("it is not PEM: {e}"))?;
    match blocks.as_slice() {
        [] => Err(format!("it holds no PEM `{label}` block")),
        [one] if one.tag() == label => Ok(one.contents().to_vec()),
        [one] => Err(format!("it holds a PEM `{}` block, not `{label}`", one.tag())),
        more => Err(format!("it holds {} PEM blocks; expected one `{label}`", more.len())),
    }
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => {
            Err(format!("{} stray bytes follow the certificate", rest.len()))
        }
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(format!("it is not an X.509 certificate: {e}")),
    }
}

/// The CA key in `key_pem`: PKCS #8, ECDSA P-256. Other encodings get the conversion to try.
fn parse_private_key(key_pem: &str) -> Result<KeyPair> {
    let blocks = pem::parse_many(key_pem).map_err(|e| Error::BadKey(format!("it is not PEM: {e}")))?;
    let [block] = blocks.as_slice() else {
        return Err(Error::BadKey(format!("it holds {} PEM blocks", blocks.len())));
    };
    let unsupported =
        |found: &str, hint| Error::UnsupportedKey { whose: CA_KEY, found: found.to_owned(), hint };
    match block.tag() {
        "PRIVATE KEY" => {}
        "EC PRIVATE KEY" => {
            return Err(unsupported(
                "in SEC1 form (`EC PRIVATE KEY`)",
                "; convert it to PKCS #8 with `openssl pkcs8 -topk8 -nocrypt -in KEY`",
            ));
        }
        "RSA PRIVATE KEY" => return Err(unsupported("an RSA key", "")),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(Error::BadKey(
                "it is encrypted; decrypt it with `openssl pkcs8 -in KEY -nocrypt`".to_owned(),
            ));
        }
        other => return Err(Error::BadKey(format!("it holds a PEM `{other}` block"))),
    }
    let key =
        KeyPair::try_from(block.contents()).map_err(|e| Error::BadKey(format!("not a PKCS #8 key: {e}")))?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        let found = if key.algorithm() == &rcgen::PKCS_ECDSA_P384_SHA384 {
            "an ECDSA P-384 key"
        } else if key.algorithm() == &rcgen::PKCS_ED25519 {
            "an Ed25519 key"
        } else {
            "an RSA key"
        };
        return Err(unsupported(found, ""));
    }
    Ok(key)
}

/// A positive serial of 127 random bits: unpredictable, so no two certificates share one.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Crypto { doing: "drawing a serial number", reason: e.to_string() })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Now, cut to whole seconds: certificates hold no finer times, and [`Issued::not_after`] must
/// equal what the certificate says.
fn now_in_seconds() -> SystemTime {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

fn to_asn1_time(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}
