//! What a proxy is sent: only what differs from what it was sent before ([`Sent`]), either
//! against its whole view (the snapshot, a resync) or for a run of namespace changes.

use std::collections::{BTreeMap, BTreeSet};

use tether_api::ResourceName;
use tether_api::resource::Kind;
use tether_api::v1::{ConfigUpdate, Resource};

use super::follower::Change;
use super::resources::{Body, Resources};

/// What one proxy was sent, by resource name.
pub type Sent = BTreeMap<ResourceName, Body>;

/// Who is at the other end of a stream.
pub struct Me {
    pub service: String,
    pub task: String,
    /// An edge proxy: published ports only, no task listeners.
    pub edge: bool,
    /// Outbound resources this proxy does not get (see [`State::reserved`]); worked out again
    /// whenever its service's spec changes.
    ///
    /// [`State::reserved`]: super::follower::State::reserved
    pub reserved: BTreeSet<ResourceName>,
}

impl Me {
    /// Whether this proxy gets the outbound resource `name`: edge proxies get the published
    /// ports, every other proxy the client aliases.
    pub fn wants(&self, name: &ResourceName) -> bool {
        (name.kind() == Kind::Publish) == self.edge && !self.reserved.contains(name)
    }

    fn owns(&self, (service, task): &(String, String)) -> bool {
        !self.edge && *service == self.service && *task == self.task
    }
}

/// The update that takes a proxy from what it was sent to `view`.
pub fn delta(sent: &mut Sent, view: Resources) -> ConfigUpdate {
    let removed: Vec<ResourceName> = sent.keys().filter(|k| !view.contains_key(*k)).cloned().collect();
    for name in &removed {
        sent.remove(name);
    }
    let mut resources = Vec::new();
    for (name, body) in view {
        if sent.get(&name) != Some(&body) {
            resources.push(Resource { name: name.to_string(), json: body.clone() });
            sent.insert(name, body);
        }
    }
    let removed = removed.into_iter().map(String::from).collect();
    ConfigUpdate { resources, removed, ..ConfigUpdate::default() }
}

/// The update for a run of namespace changes, as far as they concern this proxy.
pub fn apply_changes(sent: &mut Sent, me: &Me, changes: &[&Change]) -> ConfigUpdate {
    let mut latest: BTreeMap<ResourceName, Option<Body>> = BTreeMap::new();
    for change in changes {
        for (name, body) in change.outbound.iter().filter(|(name, _)| me.wants(name)) {
            latest.insert(name.clone(), body.clone());
        }
        for (owner, inbound) in &change.inbound {
            if !me.owns(owner) {
                continue;
            }
            for name in sent.keys().filter(|k| k.kind() == Kind::Inbound && !inbound.contains_key(*k)) {
                latest.insert(name.clone(), None);
            }
            for (name, body) in inbound {
                latest.insert(name.clone(), Some(body.clone()));
            }
        }
    }
    let mut update = ConfigUpdate::default();
    for (name, body) in latest {
        match body {
            Some(body) if sent.get(&name) != Some(&body) => {
                update.resources.push(Resource { name: name.to_string(), json: body.clone() });
                sent.insert(name, body);
            }
            None if sent.remove(&name).is_some() => update.removed.push(name.into()),
            _ => {}
        }
    }
    update
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(wire: &str) -> ResourceName {
        ResourceName::parse(wire).unwrap()
    }

    fn body(text: &str) -> Body {
        Body::copy_from_slice(text.as_bytes())
    }

    fn resources(entries: &[(&str, &str)]) -> Resources {
        entries.iter().map(|(n, b)| (name(n), body(b))).collect()
    }

    /// The names an update sends, and those it removes.
    fn names(update: &ConfigUpdate) -> (Vec<&str>, Vec<&str>) {
        let sent = update.resources.iter().map(|r| r.name.as_str()).collect();
        (sent, update.removed.iter().map(String::as_str).collect())
    }

    fn sidecar() -> Me {
        Me { service: "payment".into(), task: "t1".into(), edge: false, reserved: BTreeSet::new() }
    }

    fn edge() -> Me {
        Me { edge: true, ..sidecar() }
    }

    fn outbound(changes: &[(&str, Option<&str>)]) -> Change {
        let outbound = changes.iter().map(|(n, b)| (name(n), b.map(body))).collect();
        Change { outbound, ..Change::default() }
    }

    fn inbound(service: &str, task: &str, now: &[(&str, &str)]) -> Change {
        Change { inbound: vec![((service.into(), task.into()), resources(now))], ..Change::default() }
    }

    #[test]
    fn a_view_is_sent_as_what_differs_from_what_was_sent() {
        let mut sent = Sent::new();
        let first = delta(&mut sent, resources(&[("outbound/a", "1"), ("inbound/api", "2")]));
        assert_eq!(names(&first), (vec!["inbound/api", "outbound/a"], vec![]));
        assert_eq!(first.resources[1].json, body("1"));
        assert_eq!(
            names(&delta(&mut sent, resources(&[("outbound/a", "1"), ("inbound/api", "2")]))),
            (vec![], vec![])
        );
        let next = delta(&mut sent, resources(&[("outbound/a", "1b"), ("outbound/c", "3")]));
        assert_eq!(names(&next), (vec!["outbound/a", "outbound/c"], vec!["inbound/api"]));
        assert_eq!(sent, resources(&[("outbound/a", "1b"), ("outbound/c", "3")]));
    }

    #[test]
    fn outbound_changes_are_sent_when_they_change_what_the_proxy_has() {
        let mut sent = resources(&[("outbound/a", "1"), ("outbound/b", "2")]);
        let change =
            outbound(&[("outbound/a", Some("1")), ("outbound/b", None), ("outbound/new", Some("3"))]);
        let update = apply_changes(&mut sent, &sidecar(), &[&change]);
        assert_eq!(names(&update), (vec!["outbound/new"], vec!["outbound/b"]));
        // Removing what was never sent says nothing.
        let update = apply_changes(&mut sent, &sidecar(), &[&outbound(&[("outbound/never", None)])]);
        assert_eq!(names(&update), (vec![], vec![]));
    }

    #[test]
    fn in_a_run_of_changes_the_last_word_on_a_resource_counts() {
        let mut sent = resources(&[("outbound/a", "1")]);
        let changes = [
            outbound(&[("outbound/a", None), ("outbound/b", Some("2"))]),
            outbound(&[("outbound/a", Some("1")), ("outbound/b", None)]),
        ];
        let update = apply_changes(&mut sent, &sidecar(), &changes.iter().collect::<Vec<_>>());
        assert_eq!(names(&update), (vec![], vec![]), "back where it was: nothing to send");
        assert_eq!(sent, resources(&[("outbound/a", "1")]));
    }

    #[test]
    fn published_ports_go_to_edge_proxies_and_aliases_to_the_others_but_not_reserved_ones() {
        let change = outbound(&[
            ("outbound/a", Some("1")),
            ("outbound/mine", Some("2")),
            ("outbound/publish:s.web", Some("3")),
        ]);
        let mut me = sidecar();
        me.reserved.insert(name("outbound/mine"));
        assert_eq!(names(&apply_changes(&mut Sent::new(), &me, &[&change])).0, ["outbound/a"]);
        assert_eq!(
            names(&apply_changes(&mut Sent::new(), &edge(), &[&change])).0,
            ["outbound/publish:s.web"]
        );
    }

    #[test]
    fn the_inbound_of_this_task_is_replaced_whole_and_other_tasks_are_ignored() {
        let mut sent = resources(&[("inbound/api", "1"), ("inbound/admin", "2"), ("outbound/a", "3")]);
        let others = [inbound("payment", "t2", &[]), inbound("orders", "t1", &[])];
        let update = apply_changes(&mut sent, &sidecar(), &others.iter().collect::<Vec<_>>());
        assert_eq!(names(&update), (vec![], vec![]));
        let mine = inbound("payment", "t1", &[("inbound/api", "1b")]);
        let update = apply_changes(&mut sent, &sidecar(), &[&mine]);
        assert_eq!(names(&update), (vec!["inbound/api"], vec!["inbound/admin"]));
        assert_eq!(sent, resources(&[("inbound/api", "1b"), ("outbound/a", "3")]), "outbound untouched");
        // An edge proxy has no task listeners, even under the task's name.
        assert_eq!(names(&apply_changes(&mut Sent::new(), &edge(), &[&mine])), (vec![], vec![]));
    }
}
