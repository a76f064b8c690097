//! The sidecar's certificate keeper: asks for a certificate on the config stream, puts what it
//! gets into the proxy's credentials, and knows when to ask again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_api::v1::{CertificateRequest, IssuedCertificate, TrustBundle as Bundle, proxy_message};
use tether_model::SpiffeId;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::Settings;
use crate::tls::{Credentials, Identity, KeyPair, TrustBundle};

/// A certificate request unanswered for this long is sent again.
const CSR_PATIENCE: Duration = Duration::from_secs(10);

/// Keeps the sidecar's certificate current and its trust bundle as the control plane sends it.
pub struct Keeper {
    credentials: Arc<Credentials>,
    /// The key of the request in flight, and when it was sent.
    pending: Option<(KeyPair, Instant)>,
    /// When to ask for the next certificate.
    renew_at: Option<Instant>,
    /// The root that signed the current certificate (DER), to notice when another one signs.
    signed_by: Option<Vec<u8>>,
    /// The expiry already reported, so that it is reported once.
    reported: Option<SystemTime>,
}

impl Keeper {
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self { credentials, pending: None, renew_at: None, signed_by: None, reported: None }
    }

    /// A new stream: a request sent on the old one will not be answered.
    pub fn new_stream(&mut self) {
        self.pending = None;
        if self.credentials.identity().is_none() {
            self.renew_at = Some(Instant::now());
        }
    }

    /// When to send the next request: the renewal time, or a request unanswered for too long
    /// sent again.
    pub fn next_request(&self) -> Option<Instant> {
        match &self.pending {
            Some((_, sent)) => Some(*sent + CSR_PATIENCE),
            None => self.renew_at,
        }
    }

    /// A certificate request for a fresh key.
    pub fn request(&mut self, settings: &Settings) -> Option<proxy_message::Kind> {
        let id = if settings.edge {
            SpiffeId::edge(&settings.namespace)
        } else {
            SpiffeId::new(&settings.namespace, &settings.service)
        };
        let made = id.map_err(|e| e.to_string()).and_then(|id| {
            let key = Identity::new_key().map_err(|e| e.to_string())?;
            let csr = Identity::csr(&key, &id).map_err(|e| e.to_string())?;
            Ok((key, csr))
        });
        match made {
            Ok((key, csr_pem)) => {
                debug!("asking for a certificate");
                self.pending = Some((key, Instant::now()));
                Some(proxy_message::Kind::CertificateRequest(CertificateRequest { csr_pem }))
            }
            Err(error) => {
                error!(%error, "cannot make a certificate request");
                self.pending = None;
                self.renew_at = Some(Instant::now() + CSR_PATIENCE);
                None
            }
        }
    }

    /// What an update brought: a trust bundle, an answer to the request in flight.
    pub fn take(&mut self, bundle: Option<Bundle>, certificate: Option<IssuedCertificate>) {
        if let Some(bundle) = bundle {
            match TrustBundle::from_pem(&bundle.roots_pem.concat()) {
                Ok(bundle) => {
                    let signing = bundle.certificates().first().map(|root| root.to_vec());
                    info!(roots = bundle.certificates().len(), "trust bundle updated");
                    self.credentials.update_bundle(bundle);
                    // A CA rotation's new root signs now: move to it at once, so that the
                    // old root can leave every bundle.
                    if self.signed_by.is_some() && signing != self.signed_by && self.pending.is_none() {
                        info!("the signing root changed; asking for a certificate from it");
                        self.renew_at = Some(Instant::now());
                    }
                }
                Err(error) => warn!(%error, "the control plane sent a trust bundle that cannot be used"),
            }
        }
        let Some(certificate) = certificate else { return };
        let Some((key, _)) = self.pending.take() else {
            debug!("a certificate arrived with no request in flight; ignored");
            return;
        };
        if !certificate.error.is_empty() {
            warn!(error = %certificate.error, "the control plane refused the certificate request; asking again later");
            self.renew_at = Some(Instant::now() + CSR_PATIENCE);
            return;
        }
        match Identity::from_issued(key, &certificate.chain_pem) {
            Ok(identity) => {
                let remaining = identity.not_after().duration_since(SystemTime::now()).unwrap_or_default();
                info!(
                    identity = %identity.spiffe_id(),
                    expires_in_s = remaining.as_secs(),
                    "certificate issued"
                );
                self.renew_at = Some(Instant::now() + remaining / 2);
                self.signed_by = identity.chain().get(1).map(|root| root.to_vec());
                self.reported = None;
                self.credentials.update_identity(identity);
            }
            Err(error) => {
                warn!(%error, "the issued certificate cannot be used; asking again later");
                self.renew_at = Some(Instant::now() + CSR_PATIENCE);
            }
        }
    }

    /// Says once, loudly, that the certificate has expired while the control plane is away.
    pub fn report_expiry(&mut self) {
        let Some(identity) = self.credentials.identity() else { return };
        if identity.not_after() <= SystemTime::now() && self.reported != Some(identity.not_after()) {
            self.reported = Some(identity.not_after());
            error!(
                identity = %identity.spiffe_id(),
                "the certificate expired and the control plane cannot be reached to renew it: mesh connections are refused (never sent in plaintext) until it returns"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::tls::TlsMetrics;
    use crate::tls::tests::pki::{Ca, Leaf};

    const LIFETIME: Duration = Duration::from_secs(3600);

    fn settings() -> Settings {
        Settings {
            servers: vec!["http://127.0.0.1:7700".into()],
            token: "token".into(),
            namespace: "shop".into(),
            service: "payment".into(),
            task: "t1".into(),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901),
            state_dir: std::env::temp_dir(),
            outbound_ip: None,
            edge: false,
            drain_wait_seconds: None,
        }
    }

    fn keeper() -> (Keeper, Arc<Credentials>) {
        let credentials = Credentials::empty(TlsMetrics::default());
        (Keeper::new(credentials.clone()), credentials)
    }

    /// Sends the keeper's request, as due.
    fn ask(keeper: &mut Keeper) {
        let request = keeper.request(&settings());
        assert!(matches!(request, Some(proxy_message::Kind::CertificateRequest(_))));
    }

    /// `ca`'s answer to the request in flight, as the control plane sends it: leaf, then root.
    fn answer(keeper: &Keeper, ca: &Ca) -> IssuedCertificate {
        let (key, _) = keeper.pending.as_ref().expect("a request in flight");
        let (_, leaf) = ca.certify(key, Leaf::spiffe("payment").valid_for(LIFETIME));
        IssuedCertificate { chain_pem: format!("{leaf}{}", ca.pem), error: String::new() }
    }

    fn refusal() -> IssuedCertificate {
        IssuedCertificate { chain_pem: String::new(), error: "no".into() }
    }

    /// Sleeps until the keeper's next request is due: how long that was.
    async fn until_due(keeper: &Keeper) -> Duration {
        let start = Instant::now();
        tokio::time::sleep_until(keeper.next_request().expect("a request is due")).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_certificate_it_asks_on_every_stream_and_again_when_unanswered() {
        let (mut keeper, credentials) = keeper();
        assert_eq!(keeper.next_request(), None, "no stream, nobody to ask");
        keeper.new_stream();
        assert_eq!(until_due(&keeper).await, Duration::ZERO);
        ask(&mut keeper);
        assert_eq!(until_due(&keeper).await, CSR_PATIENCE, "unanswered, it is sent again");
        ask(&mut keeper);
        keeper.new_stream();
        assert!(keeper.pending.is_none(), "the old stream will not answer");
        assert_eq!(until_due(&keeper).await, Duration::ZERO);
        assert!(credentials.identity().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn it_renews_at_half_the_remaining_lifetime_and_not_on_a_new_stream() {
        let ca = Ca::new("tether root");
        let (mut keeper, credentials) = keeper();
        keeper.new_stream();
        ask(&mut keeper);
        keeper.take(None, Some(answer(&keeper, &ca)));
        let identity = credentials.identity().expect("the certificate is in the credentials");
        assert_eq!(identity.spiffe_id().to_string(), "spiffe://shop/payment");
        let renew_at = keeper.next_request();
        keeper.new_stream();
        assert_eq!(keeper.next_request(), renew_at, "a certificate in hand is renewed when due");
        // Certificates count whole seconds: the lifetime is up to one short.
        let waited = until_due(&keeper).await;
        assert!(waited <= LIFETIME / 2 && waited >= LIFETIME / 2 - Duration::from_secs(2), "{waited:?}");
        ask(&mut keeper);
        keeper.take(None, Some(answer(&keeper, &ca)));
        assert!(!Arc::ptr_eq(&identity, &credentials.identity().unwrap()), "renewed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_or_unusable_certificate_is_asked_for_again_after_the_patience() {
        let ca = Ca::new("tether root");
        let (mut keeper, credentials) = keeper();
        keeper.new_stream();
        ask(&mut keeper);
        keeper.take(None, Some(refusal()));
        assert_eq!(until_due(&keeper).await, CSR_PATIENCE);
        ask(&mut keeper);
        let for_another_key = ca.issue(Leaf::spiffe("payment")).chain_pem;
        keeper.take(None, Some(IssuedCertificate { chain_pem: for_another_key, error: String::new() }));
        assert_eq!(until_due(&keeper).await, CSR_PATIENCE);
        assert!(credentials.identity().is_none());
        // An answer with no request in flight (sent on a stream since gone) is not taken.
        ask(&mut keeper);
        let late = answer(&keeper, &ca);
        keeper.new_stream();
        keeper.take(None, Some(late));
        assert!(credentials.identity().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bundle_whose_signing_root_changed_makes_it_ask_at_once() {
        let (old, new) = (Ca::new("tether root"), Ca::new("tether root"));
        let (mut keeper, credentials) = keeper();
        keeper.take(Some(Bundle { roots_pem: vec![old.pem.clone()] }), None);
        assert!(credentials.bundle().is_some());
        keeper.new_stream();
        ask(&mut keeper);
        keeper.take(None, Some(answer(&keeper, &old)));
        let renew_at = keeper.next_request();
        // The same root still signing, or a bundle that cannot be used, changes nothing.
        keeper.take(Some(Bundle { roots_pem: vec![old.pem.clone(), new.pem.clone()] }), None);
        keeper.take(Some(Bundle { roots_pem: vec!["not a certificate".into()] }), None);
        assert_eq!(keeper.next_request(), renew_at);
        assert_eq!(credentials.bundle().unwrap().certificates().len(), 2);
        keeper.take(Some(Bundle { roots_pem: vec![new.pem.clone(), old.pem.clone()] }), None);
        assert_eq!(until_due(&keeper).await, Duration::ZERO);
    }
}
