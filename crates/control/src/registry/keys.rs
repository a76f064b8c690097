//! The registry's key layout in the store. Everything one namespace's proxies need sits under
//! one prefix, so a single list gives a consistent snapshot and a single watch follows it:
//!
//! ```text
//! /namespaces/{ns}                 {"name": ns}; rewritten by every service PUT in the namespace
//! /ns/{ns}/svc/{service}           the service's spec, as written (JSON)
//! /ns/{ns}/inst/{service}/{id}     an instance (JSON), attached to its lease if it has one
//! /admin-token                     the admin token every server on this store accepts
//! ```
//!
//! The namespace's own key sits outside `/ns/{ns}/` so that listing namespaces reads one key per
//! namespace, not every instance. Names cannot hold `/` (see `tether_model::registry`), so a
//! prefix never matches a longer name: `/ns/shop/` is not a prefix of `/ns/shop.local/…`.

pub const NAMESPACES: &str = "/namespaces/";

/// Replicas sharing a store must accept the same token, so it is kept there too.
pub const ADMIN_TOKEN: &str = "/admin-token";

pub fn namespace(ns: &str) -> String {
    format!("{NAMESPACES}{ns}")
}

/// Every service and instance of `ns`: what to list for a snapshot and to watch after it.
pub fn watch_prefix(ns: &str) -> String {
    format!("/ns/{ns}/")
}

pub fn services(ns: &str) -> String {
    format!("/ns/{ns}/svc/")
}

pub fn service(ns: &str, name: &str) -> String {
    format!("/ns/{ns}/svc/{name}")
}

pub fn instances(ns: &str, service: &str) -> String {
    format!("/ns/{ns}/inst/{service}/")
}

pub fn instance(ns: &str, service: &str, id: &str) -> String {
    format!("/ns/{ns}/inst/{service}/{id}")
}

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Namespace { ns: &'a str },
    Service { ns: &'a str, name: &'a str },
    Instance { ns: &'a str, service: &'a str, id: &'a str },
}

impl<'a> Key<'a> {
    /// `None` for keys outside the layout above.
    pub fn parse(key: &'a str) -> Option<Self> {
        if let Some(ns) = key.strip_prefix(NAMESPACES) {
            return (!ns.is_empty() && !ns.contains('/')).then_some(Key::Namespace { ns });
        }
        let rest = key.strip_prefix("/ns/")?;
        let mut parts = rest.split('/');
        let key = match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some("svc"), Some(name), None, None) => Key::Service { ns, name },
            (Some(ns), Some("inst"), Some(service), Some(id), None) => Key::Instance { ns, service, id },
            _ => return None,
        };
        let parts_ok = match key {
            Key::Service { ns, name } => !ns.is_empty() && !name.is_empty(),
            Key::Instance { ns, service, id } => !ns.is_empty() && !service.is_empty() && !id.is_empty(),
            Key::Namespace { .. } => true,
        };
        parts_ok.then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        assert_eq!(Key::parse(&namespace("shop.local")), Some(Key::Namespace { ns: "shop.local" }));
        assert_eq!(
            Key::parse(&service("shop.local", "payment")),
            Some(Key::Service { ns: "shop.local", name: "payment" })
        );
        assert_eq!(
            Key::parse(&instance("shop.local", "payment", "t-1")),
            Some(Key::Instance { ns: "shop.local", service: "payment", id: "t-1" })
        );
        for other in
            ["/ns/shop/svc/", "/ns/shop/inst/payment/", "/ns/shop/other/x", "/elsewhere", "/namespaces/"]
        {
            assert_eq!(Key::parse(other), None, "{other}");
        }
        assert!(service("shop.local", "p").starts_with(&watch_prefix("shop.local")));
        assert!(instance("shop.local", "p", "i").starts_with(&instances("shop.local", "p")));
        assert!(!service("shop.local", "p").starts_with(&watch_prefix("shop")));
    }
}
