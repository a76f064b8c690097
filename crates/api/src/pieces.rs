//! A large update travels in pieces: the control plane splits it ([`split`]), every piece but
//! the last marked `more`, and the proxy joins them back ([`Joiner`]) before applying it.

use crate::v1::ConfigUpdate;

/// Resource bytes in one message, at most (unless one resource is larger): the gRPC encoder
/// keeps a buffer as large as the largest message it sent, for as long as the stream lives.
pub const PIECE_BYTES: usize = 64 * 1024;

/// `update` as messages of at most [`PIECE_BYTES`] of resources each, all but the last marked
/// `more`. The first carries everything else the update holds.
pub fn split(update: ConfigUpdate) -> Vec<ConfigUpdate> {
    let ConfigUpdate { version, full, resources, removed, trust_bundle, certificate, more: _ } = update;
    let mut pieces =
        vec![ConfigUpdate { version, full, removed, trust_bundle, certificate, ..ConfigUpdate::default() }];
    let mut size = 0;
    for resource in resources {
        let len = resource.json.len() + resource.name.len();
        let current = pieces.last_mut().expect("there is always a piece");
        if size + len > PIECE_BYTES && !current.resources.is_empty() {
            current.more = true;
            pieces.push(ConfigUpdate { version, full, ..ConfigUpdate::default() });
            size = 0;
        }
        size += len;
        pieces.last_mut().expect("there is always a piece").resources.push(resource);
    }
    pieces
}

/// Joins the pieces of an update as they arrive.
#[derive(Debug, Default)]
pub struct Joiner {
    /// The pieces of the update under way, joined so far.
    pending: Option<ConfigUpdate>,
}

impl Joiner {
    /// Takes the next piece: the whole update once this was its last piece. A piece of another
    /// version than the update under way starts a new update, and the unfinished one is dropped.
    pub fn push(&mut self, piece: ConfigUpdate) -> Option<ConfigUpdate> {
        let update = match self.pending.take() {
            Some(mut update) if update.version == piece.version => {
                update.resources.extend(piece.resources);
                update.removed.extend(piece.removed);
                update.trust_bundle = update.trust_bundle.or(piece.trust_bundle);
                update.certificate = update.certificate.or(piece.certificate);
                update.more = piece.more;
                update
            }
            _ => piece,
        };
        if update.more {
            self.pending = Some(update);
            return None;
        }
        Some(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{IssuedCertificate, Resource, TrustBundle};

    fn resource(name: &str, len: usize) -> Resource {
        Resource { name: name.into(), json: vec![b' '; len].into() }
    }

    fn large_update() -> ConfigUpdate {
        ConfigUpdate {
            version: 7,
            full: true,
            resources: (0..10).map(|i| resource(&format!("outbound/s{i}"), 20_000)).collect(),
            removed: vec!["gone".into()],
            trust_bundle: Some(TrustBundle { roots_pem: vec!["root".into()] }),
            more: false,
            ..ConfigUpdate::default()
        }
    }

    #[test]
    fn a_large_update_travels_in_bounded_pieces_and_only_the_last_says_done() {
        let pieces = split(large_update());
        assert_eq!(pieces.len(), 4, "three resources of 20 kB fit in 64 KiB");
        assert!(pieces.iter().all(|p| p.version == 7 && p.full));
        assert!(pieces[..3].iter().all(|p| p.more) && !pieces[3].more);
        assert_eq!(pieces.iter().map(|p| p.resources.len()).sum::<usize>(), 10);
        assert_eq!(pieces[0].removed, vec!["gone".to_owned()]);
        let small = pieces_of_one(resource("outbound/x", 10));
        assert_eq!(small.len(), 1);
        assert!(!small[0].more);
        let huge = pieces_of_one(resource("outbound/x", 1 << 20));
        assert_eq!(huge.len(), 1, "a resource larger than a piece still goes, alone");
    }

    fn pieces_of_one(r: Resource) -> Vec<ConfigUpdate> {
        split(ConfigUpdate { version: 1, resources: vec![r], ..ConfigUpdate::default() })
    }

    #[test]
    fn the_pieces_join_back_into_the_update_once_the_last_arrives() {
        let mut joiner = Joiner::default();
        let mut pieces = split(large_update());
        let last = pieces.pop().unwrap();
        for piece in pieces {
            assert_eq!(joiner.push(piece), None, "not whole yet");
        }
        assert_eq!(joiner.push(last), Some(large_update()));
        let small =
            ConfigUpdate { version: 8, resources: vec![resource("inbound/a", 1)], ..ConfigUpdate::default() };
        assert_eq!(joiner.push(small.clone()), Some(small), "an update of one piece is whole at once");
    }

    #[test]
    fn what_a_later_piece_carries_is_added_and_the_first_bundle_and_certificate_win() {
        let mut joiner = Joiner::default();
        let certificate =
            |chain: &str| Some(IssuedCertificate { chain_pem: chain.into(), error: String::new() });
        let first = ConfigUpdate {
            version: 3,
            more: true,
            certificate: certificate("first"),
            ..ConfigUpdate::default()
        };
        let second = ConfigUpdate {
            version: 3,
            resources: vec![resource("inbound/a", 1)],
            removed: vec!["outbound/b".into()],
            trust_bundle: Some(TrustBundle { roots_pem: vec!["root".into()] }),
            certificate: certificate("second"),
            ..ConfigUpdate::default()
        };
        let update = joiner.push(first).into_iter().chain(joiner.push(second)).next().unwrap();
        assert_eq!(update.certificate, certificate("first"));
        assert_eq!(update.trust_bundle.unwrap().roots_pem, ["root"]);
        assert_eq!((update.resources.len(), update.removed.len(), update.more), (1, 1, false));
    }

    #[test]
    fn a_piece_of_another_version_drops_the_unfinished_update() {
        let mut joiner = Joiner::default();
        let unfinished = ConfigUpdate {
            version: 4,
            more: true,
            resources: vec![resource("inbound/old", 1)],
            ..ConfigUpdate::default()
        };
        assert_eq!(joiner.push(unfinished), None);
        let next = ConfigUpdate {
            version: 5,
            resources: vec![resource("inbound/new", 1)],
            ..ConfigUpdate::default()
        };
        assert_eq!(joiner.push(next.clone()), Some(next));
        // Nothing of version 4 is left to join later pieces to.
        let late = ConfigUpdate {
            version: 4,
            resources: vec![resource("inbound/late", 1)],
            ..ConfigUpdate::default()
        };
        assert_eq!(joiner.push(late.clone()), Some(late));
    }
}
