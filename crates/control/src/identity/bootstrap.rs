//! Bootstrap tokens: what a sidecar shows on the proxy stream to be given an identity.
//!
//! A runner (which holds the admin token) asks for one per task and hands it to the task's
//! sidecar. The token names the namespace, the service (or the edge) and the task, and is
//! authenticated with an HMAC-SHA256 keyed by the admin token, so that every control-plane
//! replica (they share the admin token through the store) verifies it without storing
//! anything. It is good for that one task's stream and nothing else: not for the REST API,
//! not for another service's identity.
//!
//! ```text
//! bt1:<namespace>:<service | _edge>:<task>:<64 hex digits>
//! ```

use tether_model::identity::{EDGE, SpiffeId};

use crate::AdminToken;
use crate::token::Signer;

const PREFIX: &str = "bt1";
/// Mixed into the key so that an HMAC made here can mean nothing else.
const CONTEXT: &[u8] = b"tether bootstrap token v1";

/// Whom a bootstrap token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub namespace: String,
    /// The service, or [`EDGE`] for the namespace's edge proxy.
    pub service: String,
    pub task: String,
}

impl Scope {
    /// The identity a sidecar with this token is issued.
    pub fn spiffe_id(&self) -> Result<SpiffeId, tether_model::identity::SpiffeIdError> {
        if self.service == EDGE {
            SpiffeId::edge(&self.namespace)
        } else {
            SpiffeId::new(&self.namespace, &self.service)
        }
    }
}

/// Makes and checks bootstrap tokens.
#[derive(Clone)]
pub struct BootstrapTokens {
    signer: Signer,
}

impl BootstrapTokens {
    pub fn new(admin: &AdminToken) -> Self {
        Self { signer: Signer::new(admin, CONTEXT) }
    }

    /// The token for `scope`, whose names the caller has checked (none holds a `:`).
    pub fn mint(&self, scope: &Scope) -> String {
        self.signer.sign(&format!("{PREFIX}:{}:{}:{}", scope.namespace, scope.service, scope.task))
    }

    /// The scope of a token this control plane made, if `token` is one.
    pub fn verify(&self, token: &str) -> Option<Scope> {
        let signed = self.signer.verify(token)?;
        let mut parts = signed.split(':');
        let (prefix, namespace, service, task) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if prefix != PREFIX || parts.next().is_some() {
            return None;
        }
        Some(Scope { namespace: namespace.to_owned(), service: service.to_owned(), task: task.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(service: &str) -> Scope {
        Scope { namespace: "shop.local".into(), service: service.into(), task: "payment-3f2a".into() }
    }

    #[test]
    fn a_token_verifies_to_its_scope_and_nothing_else_does() {
        let tokens = BootstrapTokens::new(&AdminToken::new("admin-secret"));
        let token = tokens.mint(&scope("payment"));
        assert!(token.starts_with("bt1:shop.local:payment:payment-3f2a:"), "{token}");
        assert_eq!(tokens.verify(&token), Some(scope("payment")));
        assert_eq!(scope("payment").spiffe_id().unwrap().to_string(), "spiffe://shop.local/payment");
        assert_eq!(scope(EDGE).spiffe_id().unwrap().to_string(), "spiffe://shop.local/_edge");

        // Another service's name on this token's tag, a changed tag, another admin token's
        // key, and things that are not tokens at all: all refused.
        let forged = token.replacen(":payment:", ":orders:", 1);
        assert_eq!(tokens.verify(&forged), None);
        let mut flipped = token.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(tokens.verify(&flipped), None);
        let other = BootstrapTokens::new(&AdminToken::new("another-secret"));
        assert_eq!(other.verify(&token), None);
        for junk in
            ["", "bt1", "admin-secret", "bt1:a:b:c:zz", &format!("{token}:x"), &token[..token.len() - 2]]
        {
            assert_eq!(tokens.verify(junk), None, "{junk}");
        }
    }
}
