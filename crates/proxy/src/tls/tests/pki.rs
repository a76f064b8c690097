//! A CA and leaves made with rcgen, as the control plane would issue them (and as it never
//! would: expired, foreign, without a SPIFFE ID), and TLS ends over an in-memory pipe.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::DuplexStream;

use crate::tls::verify::PeerVerifier;
use crate::tls::{
    ALPN_H2, ALPN_TCP, Credentials, HandshakeError, Identity, SpiffeId, TlsMetrics, TrustBundle, accept,
    connect, provider,
};

pub const ALPN: &[&[u8]] = &[ALPN_H2, ALPN_TCP];

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

impl Ca {
    /// A root CA called `name`; two CAs of one name differ in their keys only.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { der: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    pub fn issue(&self, leaf: Leaf) -> Issued {
        let key = Identity::new_key().unwrap();
        let (der, chain_pem) = self.certify(&key, leaf);
        Issued { key_pem: key.serialize_pem(), der, chain_pem }
    }

    /// A certificate for `key` (the sidecar's, as a CSR would carry it): its DER and PEM.
    pub fn certify(&self, key: &KeyPair, leaf: Leaf) -> (CertificateDer<'static>, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = leaf.sans;
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = leaf.usages;
        let cert = params.signed_by(key, &self.issuer).unwrap();
        (cert.der().clone(), cert.pem())
    }
}

/// What a leaf certificate says.
pub struct Leaf {
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

impl Leaf {
    /// A sidecar's certificate as the CA issues it: `spiffe://shop/<service>`, both usages.
    pub fn spiffe(service: &str) -> Self {
        Self::with_sans(vec![uri(&format!("spiffe://shop/{service}"))])
    }

    /// The same, of another namespace.
    pub fn spiffe_in(namespace: &str, service: &str) -> Self {
        Self::with_sans(vec![uri(&format!("spiffe://{namespace}/{service}"))])
    }

    pub fn with_sans(sans: Vec<SanType>) -> Self {
        Self {
            sans,
            not_before: date((2024, 1, 1)),
            not_after: date((2089, 1, 1)),
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        }
    }

    pub fn expired(mut self) -> Self {
        self.not_before = date((2021, 1, 1));
        self.not_after = date((2021, 1, 2));
        self
    }

    /// Valid until `not_after`: year, month, day.
    pub fn valid_until(mut self, not_after: (i32, u8, u8)) -> Self {
        self.not_after = date(not_after);
        self
    }

    /// Valid from now for `lifetime` (to the second, as certificates say).
    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        self.not_before = SystemTime::now();
        self.not_after = self.not_before + lifetime;
        self
    }

    pub fn usages(mut self, usages: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.usages = usages;
        self
    }
}

/// Midnight UTC of a year, month and day.
fn date((year, month, day): (i32, u8, u8)) -> SystemTime {
    date_time_ymd(year, month, day).into()
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

pub struct Issued {
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub chain_pem: String,
}

impl Issued {
    pub fn identity(&self) -> Identity {
        Identity::from_issued(KeyPair::from_pem(&self.key_pem).unwrap(), &self.chain_pem).unwrap()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            KeyPair::from_pem(&self.key_pem).unwrap().serialize_der(),
        ))
    }
}

pub fn bundle(roots: &[&Ca]) -> TrustBundle {
    TrustBundle::new(roots.iter().map(|ca| ca.der.clone()).collect()).unwrap()
}

/// A sidecar's credentials: `issued` as its identity, `roots` trusted.
pub fn credentials(issued: &Issued, roots: &[&Ca]) -> Arc<Credentials> {
    Credentials::new(issued.identity(), bundle(roots), TlsMetrics::default())
}

pub fn spiffe(service: &str) -> SpiffeId {
    SpiffeId::new("shop", service).unwrap()
}

/// A client that presents `issued` whatever it holds (identities refuse some certificates
/// that a peer could still present) and verifies servers as a sidecar does.
pub fn client_presenting(issued: &Issued, verifying: &Arc<Credentials>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            credentials: verifying.clone(),
            expected: None,
        }))
        .with_client_auth_cert(vec![issued.der.clone()], issued.key())
        .unwrap();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that presents no certificate at all.
pub fn anonymous_client(verifying: &Arc<Credentials>) -> Arc<ClientConfig> {
    let verifier = PeerVerifier { credentials: verifying.clone(), expected: None };
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that speaks TLS 1.2 only, presenting `issued`.
pub fn tls12_client(issued: &Issued, verifying: &Arc<Credentials>) -> Arc<ClientConfig> {
    let verifier = PeerVerifier { credentials: verifying.clone(), expected: None };
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![issued.der.clone()], issued.key())
        .unwrap();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// The same for a server.
pub fn server_presenting(issued: &Issued, verifying: &Arc<Credentials>) -> Arc<ServerConfig> {
    let verifier = PeerVerifier { credentials: verifying.clone(), expected: None };
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![issued.der.clone()], issued.key())
        .unwrap();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub type ServerEnd = tokio_rustls::server::TlsStream<DuplexStream>;
pub type ClientEnd = tokio_rustls::client::TlsStream<DuplexStream>;

/// Both ends of one handshake over an in-memory pipe, each counting its failures in its own
/// metrics.
pub async fn handshake(
    server: Arc<ServerConfig>,
    server_metrics: &TlsMetrics,
    client: Arc<ClientConfig>,
    client_metrics: &TlsMetrics,
) -> (Result<(ServerEnd, SpiffeId), HandshakeError>, Result<(ClientEnd, SpiffeId), HandshakeError>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::join!(accept(server, a, server_metrics), connect(client, b, client_metrics))
}
