use std::collections::BTreeMap;

use super::*;

/// A host as a test writes it: name, attributes, capacity, used, and tasks of the service.
struct Host {
    name: &'static str,
    attributes: BTreeMap<String, String>,
    capacity: Resources,
    used: Resources,
    service_tasks: usize,
}

fn host(name: &'static str, attributes: &[(&str, &str)]) -> Host {
    Host {
        name,
        attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        capacity: Resources { cpu: 4096, memory_mib: 8192 },
        used: Resources::default(),
        service_tasks: 0,
    }
}

impl Host {
    fn free(mut self, cpu: u32, memory_mib: u64) -> Self {
        self.used =
            Resources { cpu: self.capacity.cpu - cpu, memory_mib: self.capacity.memory_mib - memory_mib };
        self
    }

    fn tasks(mut self, service_tasks: usize) -> Self {
        self.service_tasks = service_tasks;
        self
    }
}

fn views(hosts: &[Host]) -> Vec<HostView<'_>> {
    hosts
        .iter()
        .map(|h| HostView {
            name: h.name,
            attributes: &h.attributes,
            capacity: h.capacity,
            used: h.used,
            service_tasks: h.service_tasks,
        })
        .collect()
}

/// The host `place` picks, by name.
#[track_caller]
fn pick(hosts: &[Host], need: Resources, placement: &Placement) -> &'static str {
    match place(&views(hosts), need, placement) {
        Ok(i) => hosts[i].name,
        Err(e) => panic!("unplaceable: {e}"),
    }
}

/// Places `count` tasks one after the other, as the scheduler would, and returns their hosts.
fn place_all(hosts: &mut [Host], need: Resources, placement: &Placement, count: usize) -> Vec<&'static str> {
    (0..count)
        .map(|_| {
            let i = place(&views(hosts), need, placement).unwrap_or_else(|e| panic!("unplaceable: {e}"));
            hosts[i].service_tasks += 1;
            hosts[i].used = hosts[i].used.saturating_add(need);
            hosts[i].name
        })
        .collect()
}

#[track_caller]
fn reason(hosts: &[Host], need: Resources, placement: &Placement) -> String {
    match place(&views(hosts), need, placement) {
        Ok(i) => panic!("placed on {}", hosts[i].name),
        Err(e) => e.to_string(),
    }
}

fn with(strategies: Vec<Strategy>, constraints: Vec<Constraint>) -> Placement {
    Placement { strategies, constraints }
}

fn member_of(text: &str) -> Constraint {
    Constraint::MemberOf(text.parse().unwrap())
}

fn zone(name: &str) -> Strategy {
    Strategy::Spread(SpreadField::Attribute(name.into()))
}

const NOTHING: Resources = Resources { cpu: 0, memory_mib: 0 };
const MEMORY: Strategy = Strategy::Binpack(BinpackField::Memory);
const HOST: Strategy = Strategy::Spread(SpreadField::Host);

#[test]
fn the_default_spreads_by_host() {
    assert_eq!(Placement::default(), with(vec![HOST], vec![]));
    let mut hosts = [host("h1", &[]), host("h2", &[]), host("h3", &[])];
    let placed = place_all(&mut hosts, NOTHING, &Placement::default(), 2);
    assert_eq!(placed, ["h1", "h2"], "two tasks on two distinct hosts, ties by name");
    let placed = place_all(&mut hosts, NOTHING, &Placement::default(), 4);
    assert_eq!(placed, ["h3", "h1", "h2", "h3"]);
}

#[test]
fn spread_by_host_prefers_the_host_with_the_fewest_tasks_of_the_service() {
    let hosts = [host("h1", &[]).tasks(2), host("h2", &[]).tasks(1), host("h3", &[]).tasks(3)];
    assert_eq!(pick(&hosts, NOTHING, &Placement::default()), "h2");
}

#[test]
fn spread_by_zone_alternates_zones() {
    let mut hosts =
        [host("a1", &[("zone", "a")]), host("a2", &[("zone", "a")]), host("b1", &[("zone", "b")])];
    let placement = with(vec![zone("zone"), HOST], vec![]);
    let placed = place_all(&mut hosts, NOTHING, &placement, 4);
    assert_eq!(placed, ["a1", "b1", "a2", "b1"], "a, b, a, b; within a zone, spread by host");
}

#[test]
fn spread_by_zone_counts_every_task_of_the_zone_even_on_hosts_that_cannot_take_more() {
    // Zone a holds two tasks on a full host: its empty host a2 is not preferred over zone b.
    let hosts = [
        host("a1", &[("zone", "a")]).tasks(2).free(0, 0),
        host("a2", &[("zone", "a")]),
        host("b1", &[("zone", "b")]).tasks(1),
    ];
    let need = Resources { cpu: 256, memory_mib: 512 };
    assert_eq!(pick(&hosts, need, &with(vec![zone("zone")], vec![])), "b1");
}

#[test]
fn hosts_without_the_attribute_spread_as_one_value() {
    let hosts = [host("h1", &[]).tasks(1), host("h2", &[]), host("z1", &[("zone", "a")]).tasks(1)];
    // Value "" holds one task, as does `a`: tied, so the first by name.
    assert_eq!(pick(&hosts, NOTHING, &with(vec![zone("zone")], vec![])), "h1");
    let hosts = [host("h1", &[]).tasks(1), host("h2", &[]).tasks(1), host("z1", &[("zone", "a")]).tasks(1)];
    assert_eq!(pick(&hosts, NOTHING, &with(vec![zone("zone")], vec![])), "z1");
}

#[test]
fn binpack_fills_one_host_first() {
    let need = Resources { cpu: 0, memory_mib: 2048 };
    let mut hosts = [host("h1", &[]), host("h2", &[]).free(4096, 6144), host("h3", &[])];
    let placement = with(vec![MEMORY], vec![]);
    let placed = place_all(&mut hosts, need, &placement, 6);
    assert_eq!(placed, ["h2", "h2", "h2", "h1", "h1", "h1"], "the fullest host first, until it is full");
}

#[test]
fn binpack_by_cpu_takes_the_host_with_the_least_cpu_free() {
    let hosts = [host("h1", &[]).free(1024, 8192), host("h2", &[]).free(512, 100), host("h3", &[])];
    let need = Resources { cpu: 512, memory_mib: 0 };
    assert_eq!(pick(&hosts, need, &with(vec![Strategy::Binpack(BinpackField::Cpu)], vec![])), "h2");
}

#[test]
fn strategies_combine_in_order() {
    // Spread over zones first, then binpack within the zone.
    let hosts = [
        host("a1", &[("zone", "a")]).tasks(1),
        host("b1", &[("zone", "b")]).free(4096, 1024),
        host("b2", &[("zone", "b")]).free(4096, 512),
        host("b3", &[("zone", "b")]),
    ];
    let need = Resources { cpu: 0, memory_mib: 256 };
    assert_eq!(pick(&hosts, need, &with(vec![zone("zone"), MEMORY], vec![])), "b2");
    // The other way round: binpack first keeps only the fullest host, whatever its zone.
    let hosts = [host("a1", &[("zone", "a")]).tasks(1).free(4096, 300), host("b1", &[("zone", "b")])];
    assert_eq!(pick(&hosts, need, &with(vec![MEMORY, zone("zone")], vec![])), "a1");
}

#[test]
fn with_no_strategy_the_first_host_by_name_wins() {
    let hosts = [host("h2", &[]), host("h10", &[]), host("h1", &[])];
    assert_eq!(pick(&hosts, NOTHING, &with(vec![], vec![])), "h1");
}

#[test]
fn random_is_deterministic_and_moves_as_tasks_are_placed() {
    let placement = with(vec![Strategy::Random], vec![]);
    let mut hosts: Vec<Host> = ["h1", "h2", "h3", "h4"].into_iter().map(|n| host(n, &[])).collect();
    let first = pick(&hosts, NOTHING, &placement);
    assert_eq!(pick(&hosts, NOTHING, &placement), first, "one view, one host");
    hosts.reverse();
    assert_eq!(pick(&hosts, NOTHING, &placement), first, "the order of the view does not matter");
    let placed = place_all(&mut hosts, NOTHING, &placement, 40);
    let mut used: Vec<&str> = placed.clone();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, ["h1", "h2", "h3", "h4"], "every host gets tasks: {placed:?}");
    // Random after a spread picks among the hosts the spread kept.
    let hosts = [host("h1", &[]).tasks(1), host("h2", &[]), host("h3", &[]).tasks(1)];
    assert_eq!(pick(&hosts, NOTHING, &with(vec![HOST, Strategy::Random], vec![])), "h2");
}

#[test]
fn member_of_keeps_the_hosts_the_expression_selects() {
    let hosts = [host("h1", &[("zone", "a")]), host("h2", &[("zone", "b")]), host("h3", &[("zone", "c")])];
    let placement = with(vec![HOST], vec![member_of("attribute:zone in [b, c]")]);
    assert_eq!(pick(&hosts, NOTHING, &placement), "h2");
    let placement = with(vec![HOST], vec![member_of("attribute:zone == c")]);
    assert_eq!(pick(&hosts, NOTHING, &placement), "h3");
}

#[test]
fn member_of_with_no_match_lists_the_hosts_and_their_attributes() {
    let hosts = [host("h2", &[("zone", "b")]), host("h1", &[("zone", "a")]), host("h3", &[])];
    let placement = with(vec![HOST], vec![member_of("attribute:zone == c")]);
    assert_eq!(
        reason(&hosts, NOTHING, &placement),
        "memberOf(attribute:zone == c): no live host matches (hosts: h1 zone=a, h2 zone=b, h3 (no zone))"
    );
    let placement =
        with(vec![HOST], vec![member_of("attribute:zone == a"), member_of("attribute:gpu exists")]);
    assert_eq!(
        reason(&hosts, NOTHING, &placement),
        "memberOf(attribute:zone == a) and memberOf(attribute:gpu exists): no live host matches them all (hosts: h1 zone=a (no gpu), h2 zone=b (no gpu), h3 (no gpu, no zone))"
    );
    let many: Vec<Host> = (0..12).map(|i| host(format!("h{i:02}").leak(), &[])).collect();
    let text = reason(&many, NOTHING, &with(vec![HOST], vec![member_of("attribute:zone exists")]));
    assert!(text.ends_with("h09 (no zone) and 2 more)"), "{text}");
}

#[test]
fn distinct_instance_keeps_hosts_without_a_task_of_the_service() {
    let hosts = [host("h1", &[]).tasks(1), host("h2", &[]).tasks(1), host("h3", &[])];
    let placement = with(vec![MEMORY], vec![Constraint::DistinctInstance]);
    assert_eq!(pick(&hosts, NOTHING, &placement), "h3");
    let hosts = [host("h1", &[]).tasks(1), host("h2", &[]).tasks(2)];
    assert_eq!(
        reason(&hosts, NOTHING, &placement),
        "distinctInstance: every matching host already runs a task of this service (2 hosts)"
    );
    // Only the hosts memberOf selects count.
    let hosts = [host("h1", &[("zone", "a")]).tasks(1), host("h2", &[("zone", "b")])];
    let placement = with(vec![HOST], vec![Constraint::DistinctInstance, member_of("attribute:zone == a")]);
    assert_eq!(
        reason(&hosts, NOTHING, &placement),
        "distinctInstance: every matching host already runs a task of this service (1 host)"
    );
}

#[test]
fn no_host_is_unplaceable() {
    assert_eq!(place(&[], NOTHING, &Placement::default()), Err(Unplaceable::NoHosts));
    assert_eq!(Unplaceable::NoHosts.to_string(), "no host has joined");
}

#[test]
fn a_need_of_nothing_fits_even_a_host_that_reports_no_capacity() {
    let mut bare = host("h1", &[]);
    bare.capacity = Resources::default();
    assert_eq!(pick(&[bare], NOTHING, &Placement::default()), "h1");
}

#[test]
fn a_task_goes_only_where_its_resources_are_free() {
    let need = Resources { cpu: 1024, memory_mib: 512 };
    let hosts = [host("h1", &[]).free(4096, 256), host("h2", &[]).free(512, 4096), host("h3", &[]).tasks(5)];
    assert_eq!(pick(&hosts, need, &Placement::default()), "h3", "the only host with both free");
}

#[test]
fn memory_that_does_not_fit_gives_the_reason() {
    let hosts =
        [host("h1", &[]).free(4096, 128), host("h2", &[]).free(4096, 256), host("h3", &[]).free(0, 256)];
    let need = Resources { cpu: 0, memory_mib: 512 };
    assert_eq!(
        reason(&hosts, need, &Placement::default()),
        "no host has 512 MiB of memory free (most free: 256 MiB on h2)"
    );
    // A host over-committed (its capacity shrank under its tasks) has nothing free.
    let mut shrunk = host("h1", &[]);
    shrunk.used = Resources { cpu: 8000, memory_mib: 9000 };
    assert_eq!(
        reason(&[shrunk], need, &Placement::default()),
        "no host has 512 MiB of memory free (most free: 0 MiB on h1)"
    );
}

#[test]
fn cpu_that_does_not_fit_gives_the_reason() {
    let hosts = [host("h1", &[]).free(256, 8192), host("h2", &[]).free(512, 8192)];
    let need = Resources { cpu: 1024, memory_mib: 512 };
    assert_eq!(
        reason(&hosts, need, &Placement::default()),
        "no host has 1024 CPU units free (most free: 512 units on h2)"
    );
}

#[test]
fn memory_and_cpu_free_on_different_hosts_gives_both() {
    let hosts = [host("h2", &[]).free(2048, 128), host("h1", &[]).free(256, 1024)];
    let need = Resources { cpu: 1024, memory_mib: 512 };
    assert_eq!(
        reason(&hosts, need, &Placement::default()),
        "no host has both 512 MiB of memory and 1024 CPU units free (free: h1 1024 MiB/256 units, h2 128 MiB/2048 units)"
    );
}

#[test]
fn the_reason_is_the_first_filter_that_left_no_host() {
    // memberOf leaves h1, which lacks memory: the reason is memory, and counts only h1.
    let hosts = [host("h1", &[("zone", "a")]).free(4096, 100), host("h2", &[("zone", "b")])];
    let need = Resources { cpu: 0, memory_mib: 512 };
    let placement = with(vec![HOST], vec![member_of("attribute:zone == a")]);
    assert_eq!(
        reason(&hosts, need, &placement),
        "no host has 512 MiB of memory free (most free: 100 MiB on h1)"
    );
    // distinctInstance eliminates before resources are looked at.
    let hosts = [host("h1", &[]).tasks(1).free(0, 0)];
    let placement = with(vec![HOST], vec![Constraint::DistinctInstance]);
    assert!(reason(&hosts, need, &placement).starts_with("distinctInstance:"));
}

#[test]
fn placement_serializes_in_ecs_shape() {
    let placement = with(
        vec![zone("zone"), MEMORY, HOST, Strategy::Random],
        vec![Constraint::DistinctInstance, member_of("attribute:gpu exists")],
    );
    assert_eq!(
        serde_json::to_value(&placement).unwrap(),
        serde_json::json!({
            "strategies": [
                { "type": "spread", "field": "attribute:zone" },
                { "type": "binpack", "field": "memory" },
                { "type": "spread", "field": "host" },
                { "type": "random" }
            ],
            "constraints": [
                { "type": "distinctInstance" },
                { "type": "memberOf", "expression": "attribute:gpu exists" }
            ]
        })
    );
    let resources: Resources =
        serde_json::from_value(serde_json::json!({ "cpu": 512, "memoryMib": 1024 })).unwrap();
    assert_eq!(resources, Resources { cpu: 512, memory_mib: 1024 });
}

#[test]
fn strategy_fields_parse_with_errors_that_say_what_would_be_right() {
    assert_eq!("host".parse(), Ok(SpreadField::Host));
    assert_eq!("instanceId".parse(), Ok(SpreadField::Host));
    assert_eq!(
        "attribute:ecs.availability-zone".parse(),
        Ok(SpreadField::Attribute("ecs.availability-zone".into()))
    );
    let e = "memory".parse::<SpreadField>().unwrap_err();
    assert!(e.contains("expected `host`") && e.contains("`memory` is a field of `binpack`"), "{e}");
    let e = "attribute:".parse::<SpreadField>().unwrap_err();
    assert!(e.contains("names no attribute") && e.contains("`attribute:zone`"), "{e}");
    assert_eq!("cpu".parse(), Ok(BinpackField::Cpu));
    let e = "host".parse::<BinpackField>().unwrap_err();
    assert!(e.contains("expected `memory` or `cpu`"), "{e}");
}
