//! The sidecars connected to this server, as a CA rotation sees them: which roots each has
//! taken (ACKed), and which root signed the certificate it has taken.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every connected sidecar, by stream.
#[derive(Default)]
pub struct Proxies {
    streams: Mutex<BTreeMap<u64, Proxy>>,
    next: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Proxy {
    namespace: String,
    service: String,
    task: String,
    /// Fingerprints of the roots of the last bundle it ACKed.
    trusts: Vec<String>,
    /// The fingerprint of the root that signed the last certificate it ACKed.
    signed_by: Option<String>,
    /// What was sent and not yet ACKed, by the version that carried it.
    unacked_bundles: Vec<(u64, Vec<String>)>,
    unacked_certificates: Vec<(u64, String)>,
}

/// One sidecar in the status of a rotation.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub namespace: String,
    pub service: String,
    pub task: String,
    /// Fingerprints of the roots it trusts.
    pub trusts: Vec<String>,
    /// The fingerprint of the root that signed its certificate, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// A sidecar a rotation step waits for, and why.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lagging {
    pub namespace: String,
    pub service: String,
    pub task: String,
    pub reason: String,
}

impl Proxies {
    /// Tracks a sidecar until the handle is dropped (its stream ends).
    pub fn connect(self: &Arc<Self>, namespace: &str, service: &str, task: &str) -> ProxyHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let proxy = Proxy {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            task: task.to_owned(),
            ..Proxy::default()
        };
        self.lock().insert(id, proxy);
        ProxyHandle { proxies: self.clone(), id }
    }

    pub fn status(&self) -> Vec<ProxyStatus> {
        self.lock()
            .values()
            .map(|p| ProxyStatus {
                namespace: p.namespace.clone(),
                service: p.service.clone(),
                task: p.task.clone(),
                trusts: p.trusts.clone(),
                signed_by: p.signed_by.clone(),
            })
            .collect()
    }

    /// Sidecars whose bundle lacks the root `fingerprint`.
    pub fn not_trusting(&self, fingerprint: &str) -> Vec<Lagging> {
        self.lagging(|p| !p.trusts.iter().any(|f| f == fingerprint), "it does not trust the next root yet")
    }

    /// Sidecars whose certificate another root than `fingerprint` signed (or that have none).
    pub fn not_signed_by(&self, fingerprint: &str) -> Vec<Lagging> {
        self.lagging(
            |p| p.signed_by.as_deref() != Some(fingerprint),
            "its certificate is not from the new root yet",
        )
    }

    fn lagging(&self, behind: impl Fn(&Proxy) -> bool, reason: &str) -> Vec<Lagging> {
        self.lock()
            .values()
            .filter(|p| behind(p))
            .map(|p| Lagging {
                namespace: p.namespace.clone(),
                service: p.service.clone(),
                task: p.task.clone(),
                reason: reason.to_owned(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Proxy>> {
        self.streams.lock().expect("never poisoned")
    }
}

/// One stream's entry in [`Proxies`].
pub struct ProxyHandle {
    proxies: Arc<Proxies>,
    id: u64,
}

impl ProxyHandle {
    /// The update `version` carries a bundle of these roots.
    pub fn sent_bundle(&self, version: u64, roots: Vec<String>) {
        self.with(|p| p.unacked_bundles.push((version, roots)));
    }

    /// The update `version` carries a certificate signed by the root `signed_by`.
    pub fn sent_certificate(&self, version: u64, signed_by: String) {
        self.with(|p| p.unacked_certificates.push((version, signed_by)));
    }

    /// The sidecar applied every update up to `version`.
    pub fn acked(&self, version: u64) {
        self.with(|p| {
            let taken = p.unacked_bundles.iter().rposition(|(v, _)| *v <= version);
            if let Some(last) = taken {
                p.trusts = p.unacked_bundles[last].1.clone();
                p.unacked_bundles.drain(..=last);
            }
            let taken = p.unacked_certificates.iter().rposition(|(v, _)| *v <= version);
            if let Some(last) = taken {
                p.signed_by = Some(p.unacked_certificates[last].1.clone());
                p.unacked_certificates.drain(..=last);
            }
        });
    }

    fn with(&self, change: impl FnOnce(&mut Proxy)) {
        if let Some(proxy) = self.proxies.lock().get_mut(&self.id) {
            change(proxy);
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.proxies.lock().remove(&self.id);
    }
}

/// How roots are named in statuses: the first 8 bytes of the certificate's SHA-256, in hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_sidecar_trusts_and_holds_counts_once_acked() {
        let proxies = Arc::new(Proxies::default());
        let a = proxies.connect("shop", "payment", "payment-1");
        let b = proxies.connect("shop", "orders", "orders-1");
        a.sent_bundle(1, vec!["old".into()]);
        b.sent_bundle(1, vec!["old".into()]);
        a.acked(1);
        b.acked(1);
        a.sent_bundle(2, vec!["old".into(), "new".into()]);
        b.sent_bundle(2, vec!["old".into(), "new".into()]);
        assert_eq!(proxies.not_trusting("new").len(), 2, "sent is not taken");
        a.acked(2);
        let lagging = proxies.not_trusting("new");
        assert_eq!(lagging.iter().map(|l| l.task.as_str()).collect::<Vec<_>>(), ["orders-1"]);
        b.sent_certificate(3, "new".into());
        b.acked(3);
        assert!(proxies.not_trusting("new").is_empty());
        assert_eq!(proxies.not_signed_by("new").len(), 1, "a has no certificate from `new`");
        drop(a);
        assert!(proxies.not_signed_by("new").is_empty(), "a gone is not waited for");
        assert_eq!(proxies.status().len(), 1);
    }
}
