//! SPIFFE IDs as tether issues them (design §8): `spiffe://<namespace>/<service>`, nothing more.
//! One type for both ends: the control plane's CA writes them into certificates, the sidecars
//! read them out of their peers'.
//!
//! The parser reads untrusted input (a peer's certificate, an API request), so it accepts only
//! that one shape: the namespace is the trust domain and must pass the registry's namespace rule,
//! the path is exactly one segment that must pass the service-name rule. Both rules are stricter
//! than SPIFFE's own (lowercase trust domain; letters, digits, `.`, `-`, `_` in paths), so every
//! ID accepted here is a valid SPIFFE ID.

use std::fmt;
use std::str::FromStr;

use crate::registry::{check_namespace_name, check_service_name};

const SCHEME: &str = "spiffe://";
/// The service part of an edge proxy's identity, `spiffe://<namespace>/_edge`: the edge serves
/// a namespace's published ports and calls its services on behalf of clients outside the mesh.
/// No service can be named so (service names start with a letter or digit).
pub const EDGE: &str = "_edge";
/// The SPIFFE specification's limit on a whole ID.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// How much of a rejected ID an error repeats: enough to recognise it, never a flood in the logs.
const SHOWN: usize = 80;

/// Why a string is not a SPIFFE ID tether issues.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{id}` is not a SPIFFE ID tether issues: {reason}; expected `spiffe://<namespace>/<service>`")]
pub struct SpiffeIdError {
    /// The rejected ID, escaped and shortened: it may be anything a peer sent.
    pub id: String,
    pub reason: String,
}

type Result<T> = std::result::Result<T, SpiffeIdError>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    namespace: String,
    service: String,
}

impl SpiffeId {
    /// The ID of `service` in `namespace`, if both names follow the registry's rules.
    pub fn new(namespace: &str, service: &str) -> Result<Self> {
        let id = || format!("{SCHEME}{namespace}/{service}");
        check_namespace_name(namespace).map_err(|reason| bad(&id(), reason))?;
        check_service_name(service).map_err(|reason| bad(&id(), reason))?;
        Ok(Self { namespace: namespace.to_owned(), service: service.to_owned() })
    }

    /// The identity of `namespace`'s edge proxy ([`EDGE`]).
    pub fn edge(namespace: &str) -> Result<Self> {
        let id = || format!("{SCHEME}{namespace}/{EDGE}");
        check_namespace_name(namespace).map_err(|reason| bad(&id(), reason))?;
        Ok(Self { namespace: namespace.to_owned(), service: EDGE.to_owned() })
    }

    /// Whether this is an edge proxy's identity rather than a service's.
    pub fn is_edge(&self) -> bool {
        self.service == EDGE
    }

    /// Parses `spiffe://<namespace>/<service>` (or an edge's `spiffe://<namespace>/_edge`). Refuses any other scheme (also `SPIFFE://`),
    /// an empty or invalid namespace or service, user info, ports, percent-encoding, further path
    /// segments, a trailing `/`, a query or fragment, and anything over 2048 bytes.
    pub fn parse(id: &str) -> Result<Self> {
        if id.len() > MAX_SPIFFE_ID_BYTES {
            return Err(bad(
                id,
                format!("it is {} bytes long, over the limit of {MAX_SPIFFE_ID_BYTES}", id.len()),
            ));
        }
        let Some(rest) = id.strip_prefix(SCHEME) else {
            return Err(bad(id, "it does not start with `spiffe://`".to_owned()));
        };
        // Named before the character checks so that the common mistakes get a precise reason.
        for (c, what) in
            [('?', "a query"), ('#', "a fragment"), ('%', "percent-encoding"), ('@', "user info")]
        {
            if rest.contains(c) {
                return Err(bad(id, format!("it holds {what} (`{c}`)")));
            }
        }
        let (namespace, service) = match rest.split_once('/') {
            None => return Err(bad(id, "it has no service after the namespace".to_owned())),
            Some((_, service)) if service.contains('/') => {
                return Err(bad(id, "its path has more than one segment".to_owned()));
            }
            Some(parts) => parts,
        };
        if namespace.is_empty() {
            return Err(bad(id, "the namespace (trust domain) is empty".to_owned()));
        }
        if service.is_empty() {
            return Err(bad(id, "the service is empty".to_owned()));
        }
        if namespace.contains(':') {
            return Err(bad(id, "the trust domain holds a port".to_owned()));
        }
        check_namespace_name(namespace)
            .map_err(|reason| bad(id, reason.replacen(namespace, &shown(namespace), 1)))?;
        if service != EDGE {
            check_service_name(service)
                .map_err(|reason| bad(id, reason.replacen(service, &shown(service), 1)))?;
        }
        Ok(Self { namespace: namespace.to_owned(), service: service.to_owned() })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.namespace, self.service)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Written and read as the ID's text.
impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The error for `id`, which is repeated [`shown`]: it may be anything a peer sent.
fn bad(id: &str, reason: String) -> SpiffeIdError {
    SpiffeIdError { id: shown(id), reason }
}

/// `text` escaped (no control characters reach a log or terminal) and shortened.
fn shown(text: &str) -> String {
    let mut shown: String = text.chars().take(SHOWN).flat_map(char::escape_debug).collect();
    if text.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_id_parses_and_prints_back() {
        for text in
            ["spiffe://shop.local/payment", "spiffe://ns/Svc_1-a", "spiffe://a/b", "spiffe://x_y.z-1/0svc"]
        {
            let id = SpiffeId::parse(text).unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(text.parse::<SpiffeId>().unwrap(), id);
        }
        let id = SpiffeId::parse("spiffe://shop.local/payment").unwrap();
        assert_eq!((id.namespace(), id.service()), ("shop.local", "payment"));
        assert_eq!(SpiffeId::new("shop.local", "payment").unwrap(), id);
        assert!(!id.is_edge());
    }

    #[test]
    fn the_edge_has_an_identity_no_service_can_have() {
        let edge = SpiffeId::edge("shop.local").unwrap();
        assert_eq!(edge.to_string(), "spiffe://shop.local/_edge");
        assert!(edge.is_edge());
        assert_eq!(SpiffeId::parse("spiffe://shop.local/_edge").unwrap(), edge);
        assert!(SpiffeId::new("shop.local", EDGE).is_err(), "no service is named `_edge`");
        assert!(SpiffeId::parse("spiffe://shop.local/_edges").is_err());
    }

    #[test]
    fn ids_travel_as_their_text() {
        let id = SpiffeId::new("shop", "payment").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://shop/payment\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        let refused = serde_json::from_str::<SpiffeId>("\"spiffe://shop/a/b\"").unwrap_err();
        assert!(refused.to_string().contains("more than one segment"), "{refused}");
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "does not start with `spiffe://`"),
            ("shop.local/payment", "does not start with"),
            ("SPIFFE://shop.local/payment", "does not start with"),
            ("Spiffe://shop.local/payment", "does not start with"),
            ("https://shop.local/payment", "does not start with"),
            ("spiffe:/shop.local/payment", "does not start with"),
            (" spiffe://shop.local/payment", "does not start with"),
            ("spiffe://", "no service"),
            ("spiffe://shop.local", "no service"),
            ("spiffe://shop.local/", "service is empty"),
            ("spiffe:///payment", "namespace (trust domain) is empty"),
            ("spiffe:////", "more than one segment"),
            ("spiffe://shop.local/payment/", "more than one segment"),
            ("spiffe://shop.local/payment/extra", "more than one segment"),
            ("spiffe://shop.local//payment", "more than one segment"),
            ("spiffe://shop.local/payment?x=1", "a query"),
            ("spiffe://shop.local/payment#frag", "a fragment"),
            ("spiffe://shop.local/pay%6dent", "percent-encoding"),
            ("spiffe://admin@shop.local/payment", "user info"),
            ("spiffe://shop.local:443/payment", "port"),
            ("spiffe://Shop.local/payment", "not a valid namespace"),
            ("spiffe://shop..local/payment", "not a valid namespace"),
            ("spiffe://.shop/payment", "not a valid namespace"),
            ("spiffe://-shop/payment", "not a valid namespace"),
            ("spiffe://shop local/payment", "not a valid namespace"),
            ("spiffe://shöp/payment", "not a valid namespace"),
            ("spiffe://shop.local/.", "not a valid service name"),
            ("spiffe://shop.local/..", "not a valid service name"),
            ("spiffe://shop.local/-payment", "not a valid service name"),
            ("spiffe://shop.local/pay.ment", "not a valid service name"),
            ("spiffe://shop.local/pay ment", "not a valid service name"),
            ("spiffe://shop.local/payment\n", "not a valid service name"),
            ("spiffe://shop.local/pay\0ment", "not a valid service name"),
            ("spiffe://shop.local/päyment", "not a valid service name"),
            ("spiffe://shop.local/pay\\ment", "not a valid service name"),
        ];
        for (text, reason) in cases {
            match SpiffeId::parse(text) {
                Err(e @ SpiffeIdError { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(reason), "{text:?}: {message}");
                    assert!(message.contains("expected `spiffe://<namespace>/<service>`"), "{message}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn long_ids_are_refused_and_not_repeated_in_full() {
        let long = format!("spiffe://shop.local/{}", "a".repeat(MAX_SPIFFE_ID_BYTES));
        let message = SpiffeId::parse(&long).unwrap_err().to_string();
        assert!(message.contains("over the limit of 2048"), "{message}");
        assert!(message.len() < 400, "{message}");
        // Within 2048 bytes but over the service-name limit of 255.
        let long_service = format!("spiffe://shop.local/{}", "a".repeat(256));
        assert!(SpiffeId::parse(&long_service).is_err());
        let control = SpiffeId::parse("spiffe://shop.local/a\u{1b}[31m").unwrap_err().to_string();
        assert!(!control.contains('\u{1b}'), "control characters are escaped: {control:?}");
        let message = SpiffeId::parse(&long_service).unwrap_err().to_string();
        assert!(message.len() < 600, "{message}");
    }

    #[test]
    fn new_checks_the_names_too() {
        assert!(SpiffeId::new("shop.local", "pay/ment").is_err());
        assert!(SpiffeId::new("", "payment").is_err());
        assert!(SpiffeId::new("shop.local", "").is_err());
    }
}
