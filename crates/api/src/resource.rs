//! Resource names: `inbound/<portName>`, `outbound/<dnsName>` and
//! `outbound/publish:<service>.<portName>`. On the wire a name is a string; both sides read it
//! as a [`ResourceName`] and build it only through one.

use std::fmt;

/// What a resource configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One of a task's inbound listeners, named by its port.
    Inbound,
    /// An outbound listener for a client alias, named by its DNS name.
    Outbound,
    /// A service's port published on the host: an outbound listener like any other, sent only
    /// to edge proxies (and only those to them).
    Publish,
}

impl Kind {
    /// Every kind, the longer prefix before the shorter one it starts with.
    const ALL: [Kind; 3] = [Kind::Inbound, Kind::Publish, Kind::Outbound];

    fn prefix(self) -> &'static str {
        match self {
            Kind::Inbound => "inbound/",
            Kind::Outbound => "outbound/",
            Kind::Publish => "outbound/publish:",
        }
    }

    /// Whether resources of this kind are entries of the config's `outbound` list (the other
    /// kind of entry being `inbound`).
    pub fn is_outbound(self) -> bool {
        matches!(self, Kind::Outbound | Kind::Publish)
    }
}

/// A resource's name: its kind and the name within the kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName {
    /// The whole name as it travels (kind prefix, then name); `kind` is read from it.
    wire: String,
    kind: Kind,
}

impl ResourceName {
    pub fn inbound(port_name: &str) -> Self {
        Self::new(Kind::Inbound, port_name)
    }

    pub fn outbound(dns_name: &str) -> Self {
        Self::new(Kind::Outbound, dns_name)
    }

    /// The published port `port_name` of `service`.
    pub fn publish(service: &str, port_name: &str) -> Self {
        Self::new(Kind::Publish, &format!("{service}.{port_name}"))
    }

    fn new(kind: Kind, name: &str) -> Self {
        Self { wire: format!("{}{name}", kind.prefix()), kind }
    }

    /// Reads a name as it travels. What follows the kind's prefix is not checked: the listener
    /// the resource's body describes is validated with the rest of the config.
    pub fn parse(wire: &str) -> Result<Self, UnknownResource> {
        Kind::ALL
            .into_iter()
            .find(|kind| wire.starts_with(kind.prefix()))
            .map(|kind| Self { wire: wire.to_owned(), kind })
            .ok_or_else(|| UnknownResource { name: wire.to_owned() })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The name within its kind: the port name, DNS name, or `<service>.<portName>`.
    pub fn name(&self) -> &str {
        &self.wire[self.kind.prefix().len()..]
    }

    /// The name as it travels.
    pub fn as_str(&self) -> &str {
        &self.wire
    }
}

/// Names order as they travel, so that a map of them iterates as a map of their strings would.
impl Ord for ResourceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.wire.cmp(&other.wire)
    }
}

impl PartialOrd for ResourceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.wire)
    }
}

impl From<ResourceName> for String {
    fn from(name: ResourceName) -> Self {
        name.wire
    }
}

/// A name of no kind this build knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownResource {
    pub name: String,
}

impl fmt::Display for UnknownResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown resource `{}`", self.name)
    }
}

impl std::error::Error for UnknownResource {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_they_were_made() {
        for (name, kind, within, wire) in [
            (ResourceName::inbound("api"), Kind::Inbound, "api", "inbound/api"),
            (ResourceName::outbound("payment"), Kind::Outbound, "payment", "outbound/payment"),
            (
                ResourceName::publish("payment", "api"),
                Kind::Publish,
                "payment.api",
                "outbound/publish:payment.api",
            ),
        ] {
            assert_eq!(name.to_string(), wire);
            assert_eq!((name.kind(), name.name(), name.as_str()), (kind, within, wire));
            assert_eq!(ResourceName::parse(wire), Ok(name));
        }
    }

    #[test]
    fn a_published_port_is_an_outbound_listener_of_its_own_kind() {
        let name = ResourceName::parse("outbound/publish:shop.web").unwrap();
        assert_eq!(name.kind(), Kind::Publish);
        assert!(name.kind().is_outbound() && Kind::Outbound.is_outbound() && !Kind::Inbound.is_outbound());
        assert_eq!(ResourceName::parse("outbound/publisher").unwrap().kind(), Kind::Outbound);
    }

    #[test]
    fn names_of_no_known_kind_are_refused_by_name() {
        for wire in ["", "inbound", "listener/api", "Inbound/api", "outbound"] {
            let error = ResourceName::parse(wire).unwrap_err();
            assert_eq!(error.to_string(), format!("unknown resource `{wire}`"));
        }
        // Only the prefix is the kind's: the rest is the listener's to validate.
        assert_eq!(ResourceName::parse("inbound/").unwrap().name(), "");
    }

    #[test]
    fn names_order_as_they_travel() {
        let mut names: Vec<ResourceName> =
            ["outbound/zeta", "outbound/publish:a.b", "inbound/z", "outbound/alpha"]
                .into_iter()
                .map(|n| ResourceName::parse(n).unwrap())
                .collect();
        names.sort();
        let wire: Vec<&str> = names.iter().map(ResourceName::as_str).collect();
        assert_eq!(wire, ["inbound/z", "outbound/alpha", "outbound/publish:a.b", "outbound/zeta"]);
    }
}
