//! A stream's part in identity: the trust bundle its proxy is sent, and the certificates it
//! asks for, within a budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tether_api::v1::{CertificateRequest, IssuedCertificate, TrustBundle};
use tether_model::SpiffeId;
use tether_store::Store;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::ca::CaState;
use crate::identity::{Issuer, ProxyHandle, fingerprint};

/// Certificate requests a stream may make per [`CSR_WINDOW`]: a sidecar asks once per half
/// lifetime, so more is a sidecar gone wrong (or hostile) making the CA sign in a loop.
const CSR_BURST: usize = 10;
const CSR_WINDOW: Duration = Duration::from_secs(60);

/// A stream's part in identity: what it may be issued, and what it has taken.
pub struct Issuing<S> {
    issuer: Arc<Issuer<S>>,
    identity: SpiffeId,
    handle: ProxyHandle,
    /// When the last requests were answered, for [`CSR_BURST`].
    recent: VecDeque<Instant>,
    /// The trust bundle last sent.
    bundle_sent: Option<TrustBundle>,
}

impl<S: Store> Issuing<S> {
    pub fn new(issuer: Arc<Issuer<S>>, identity: SpiffeId, handle: ProxyHandle) -> Self {
        Self { issuer, identity, handle, recent: VecDeque::new(), bundle_sent: None }
    }

    pub fn issuer(&self) -> &Issuer<S> {
        &self.issuer
    }

    /// What the proxy has taken, as it answers updates.
    pub fn handle(&self) -> &ProxyHandle {
        &self.handle
    }

    /// The bundle to send in update `version`, if it differs from the one sent before.
    pub fn bundle(&mut self, state: &CaState, version: u64) -> Option<TrustBundle> {
        let bundle = TrustBundle { roots_pem: state.bundle().roots().map(str::to_owned).collect() };
        if self.bundle_sent.as_ref() == Some(&bundle) {
            return None;
        }
        let fingerprints = state.bundle().ders().map(fingerprint).collect();
        self.handle.sent_bundle(version, fingerprints);
        self.bundle_sent = Some(bundle.clone());
        Some(bundle)
    }

    /// The answer to a certificate request, to send in update `version`.
    pub fn certificate(&mut self, request: &CertificateRequest, version: u64) -> IssuedCertificate {
        let now = Instant::now();
        self.recent.retain(|at| now.duration_since(*at) < CSR_WINDOW);
        if self.recent.len() >= CSR_BURST {
            warn!(identity = %self.identity, "too many certificate requests; refusing");
            let error =
                format!("more than {CSR_BURST} certificate requests within {CSR_WINDOW:?}; ask again later");
            return IssuedCertificate { chain_pem: String::new(), error };
        }
        self.recent.push_back(now);
        match self.issuer.issue(&request.csr_pem, &self.identity) {
            Ok((issued, signed_by)) => {
                debug!(identity = %self.identity, not_after = ?issued.not_after, "certificate issued");
                self.handle.sent_certificate(version, signed_by);
                IssuedCertificate { chain_pem: issued.chain_pem, error: String::new() }
            }
            Err(error) => {
                if !error.is_callers_fault() {
                    warn!(identity = %self.identity, %error, "cannot issue a certificate");
                }
                IssuedCertificate { chain_pem: String::new(), error: error.to_string() }
            }
        }
    }
}
