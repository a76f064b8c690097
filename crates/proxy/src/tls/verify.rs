//! Verifying a peer: its chain against the CURRENT trust bundle, then its SPIFFE ID. Host names
//! play no part: sidecars are reached by address, and who they are is their SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::credentials::{Credentials, TrustBundle, Unusable};
use super::identity::{IdentityError, SpiffeId, peer_identity};
use super::provider;

/// Verifies the peer of a handshake (as a client: the server; as a server: the client).
#[derive(Debug)]
pub(super) struct PeerVerifier {
    pub credentials: Arc<Credentials>,
    /// As a client, the one identity the server must have, when the caller knows it.
    pub expected: Option<SpiffeId>,
}

impl PeerVerifier {
    /// The roots of this moment; without any, no peer is trusted.
    fn bundle(&self) -> Result<Arc<TrustBundle>, Error> {
        self.credentials.bundle().ok_or_else(|| refusal(Unusable::NoBundle))
    }

    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let found = peer_identity(end_entity).map_err(refusal)?;
        match &self.expected {
            Some(expected) if *expected != found => {
                Err(refusal(IdentityError::Unexpected { expected: expected.clone(), found }))
            }
            _ => Ok(()),
        }
    }
}

/// A chain whose issuer is named like a root of the bundle but whose signature does not verify
/// comes from another CA of the same name (two tether CAs may well be named alike): for the
/// peer, whose alert would otherwise say `decrypt_error`, and for the metrics, that is an
/// unknown CA.
fn unknown_ca(error: Error) -> Error {
    match error {
        Error::InvalidCertificate(CertificateError::BadSignature) => {
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        }
        error => error,
    }
}

/// An identity problem (or our own lack of a bundle) as rustls carries it, so that the metrics
/// can tell it apart (`metrics::Reason::of_tls`).
fn refusal(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // A placeholder: the server is known by its SPIFFE ID, not by a name.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // `WebPkiServerVerifier` less its host name check: chain, validity and the serverAuth
        // usage, against the roots of this moment.
        let bundle = self.bundle()?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algorithms = provider().signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, bundle.roots(), intermediates, now, algorithms)
            .map_err(unknown_ca)?;
        self.check_identity(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Never reached: the configs allow TLS 1.3 only. Verified properly all the same.
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional, and the bundle may change under this borrow; clients have one
        // identity to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bundle = self.bundle()?;
        bundle.client_verifier().verify_client_cert(end_entity, intermediates, now).map_err(unknown_ca)?;
        self.check_identity(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

// The signature checks both verifiers make, with the one crypto provider.

fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}
