//! What can go wrong in the certificate authority. Each variant says whose fault it is: the
//! sidecar's (a CSR or a SPIFFE ID it sent: refuse it, a retry with the same input fails the
//! same way), the operator's (a CA they supplied, a rotation step out of order), or the control
//! plane's (its store, its randomness).

use std::time::SystemTime;

use tether_store::Revision;

use super::rotation::{RotationPhase, RotationStep};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sidecar's CSR cannot be used: not PEM, not DER, or its self-signature does not verify.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// A key of a kind the CA does not handle, in a CSR (the sidecar's fault) or in a CA the
    /// operator supplied.
    #[error("{whose} is {found}; tether's CA handles ECDSA P-256 keys only{hint}")]
    UnsupportedKey { whose: &'static str, found: String, hint: &'static str },
    /// A supplied CA certificate that may not sign certificates.
    #[error(
        "the CA certificate `{subject}` cannot sign certificates: {reason}; pass a CA certificate (basicConstraints CA:true, keyUsage keyCertSign)"
    )]
    NotACa { subject: String, reason: String },
    /// A supplied CA key that is not the one the certificate was made for.
    #[error(
        "the CA key does not belong to the CA certificate `{subject}` (their public keys differ); pass the key the certificate was issued for"
    )]
    KeyMismatch { subject: String },
    /// A supplied CA certificate that is not PEM or not a certificate.
    #[error("the CA certificate cannot be read: {0}; expected one PEM `CERTIFICATE` block")]
    BadCertificate(String),
    /// A supplied CA key that is not PEM or not a private key.
    #[error("the CA key cannot be read: {0}; expected one PEM `PRIVATE KEY` (PKCS #8) block")]
    BadKey(String),
    /// A CA whose certificate is no longer (or not yet) valid cannot sign anything a peer would
    /// accept.
    #[error(
        "the CA certificate `{subject}` is valid from {not_before:?} to {not_after:?}, not now; rotate to a new CA"
    )]
    OutsideValidity { subject: String, not_before: SystemTime, not_after: SystemTime },
    /// A leaf lifetime the CA will not issue.
    #[error("a certificate lifetime of {0:?} is too short; ask for at least one second")]
    Lifetime(std::time::Duration),
    #[error("`{id}` is not a SPIFFE ID tether issues: {reason}; expected `spiffe://<namespace>/<service>`")]
    BadSpiffeId { id: String, reason: String },
    /// A rotation step that does not follow the one before it.
    #[error("cannot {step} while {phase}; {next}")]
    RotationOutOfOrder { step: RotationStep, phase: RotationPhase, next: &'static str },
    /// The CA state changed in the store since it was read (another replica rotated or created
    /// it): nothing was written; load it again and redo the step.
    #[error("the CA state at `{key}` changed since revision {expected}; load it again and retry")]
    Stale { key: String, expected: Revision },
    /// The stored CA state cannot be read by this version (the control plane's or an operator's
    /// hand edit).
    #[error("the CA state stored at `{key}` cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store failed; nothing was written.
    #[error("CA store: {0}")]
    Store(#[from] tether_store::Error),
    /// Key generation, signing or randomness failed inside the control plane.
    #[error("{doing}: {reason}")]
    Crypto { doing: &'static str, reason: String },
}

impl Error {
    /// Whether the party that sent the input is to blame (a sidecar's CSR or SPIFFE ID): the
    /// stream should refuse it and say why rather than log an internal failure.
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            Self::BadCsr(_) | Self::UnsupportedKey { whose: CSR_KEY, .. } | Self::BadSpiffeId { .. }
        )
    }

    pub(super) fn crypto(doing: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |e| Self::Crypto { doing, reason: e.to_string() }
    }
}

/// How [`Error::UnsupportedKey`] names a CSR's key.
pub(super) const CSR_KEY: &str = "the CSR's key";
/// How [`Error::UnsupportedKey`] names a supplied CA's key.
pub(super) const CA_KEY: &str = "the CA key";

pub type Result<T, E = Error> = std::result::Result<T, E>;
