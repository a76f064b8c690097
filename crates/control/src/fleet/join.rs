//! Join tokens: what an agent shows to join the fleet and to act for its host afterwards.
//!
//! `tether token create --agent NAME` (an admin) gets one; it names the host and is
//! authenticated like a bootstrap token, with an HMAC keyed by the admin token, so that every
//! replica verifies it without storing anything. It lets its bearer act for that host only: join
//! as it, read what is placed on it, report on those tasks, register their instances and get
//! their sidecars' bootstrap tokens. A new admin token invalidates every join token.
//!
//! ```text
//! jt1:<agent name>:<64 hex digits>
//! ```

use crate::AdminToken;
use crate::token::Signer;

const PREFIX: &str = "jt1";
/// Mixed into the key so that a tag made here can mean nothing else.
const CONTEXT: &[u8] = b"tether join token v1";

#[derive(Clone)]
pub struct JoinTokens {
    signer: Signer,
}

impl JoinTokens {
    pub fn new(admin: &AdminToken) -> Self {
        Self { signer: Signer::new(admin, CONTEXT) }
    }

    /// The token for agent `name`, a name the caller has checked (no `:`).
    pub fn mint(&self, name: &str) -> String {
        self.signer.sign(&format!("{PREFIX}:{name}"))
    }

    /// The agent a token this control plane made is for, if `token` is one.
    pub fn verify(&self, token: &str) -> Option<String> {
        let signed = self.signer.verify(token)?;
        let name = signed.strip_prefix(PREFIX)?.strip_prefix(':')?;
        (!name.is_empty() && !name.contains(':')).then(|| name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{BootstrapTokens, Scope};

    #[test]
    fn a_join_token_names_its_agent_and_nothing_else_verifies() {
        let tokens = JoinTokens::new(&AdminToken::new("admin-secret"));
        let token = tokens.mint("host1");
        assert!(token.starts_with("jt1:host1:"), "{token}");
        assert_eq!(tokens.verify(&token).as_deref(), Some("host1"));

        let forged = token.replacen("host1", "host2", 1);
        assert_eq!(tokens.verify(&forged), None);
        assert_eq!(JoinTokens::new(&AdminToken::new("other")).verify(&token), None);
        // A bootstrap token is no join token, and a join token no bootstrap token.
        let bootstrap = BootstrapTokens::new(&AdminToken::new("admin-secret"));
        let scope = Scope { namespace: "shop".into(), service: "payment".into(), task: "t1".into() };
        assert_eq!(tokens.verify(&bootstrap.mint(&scope)), None);
        assert_eq!(bootstrap.verify(&token), None);
        for junk in ["", "jt1", "admin-secret", "jt1::00", &token[..token.len() - 1]] {
            assert_eq!(tokens.verify(junk), None, "{junk}");
        }
    }
}
