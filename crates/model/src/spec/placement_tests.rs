//! `cpu`, `memory`, `placementStrategy` and `placementConstraints` as written, and checked.

use serde_json::{Value, json};

use super::tests::{errors, payment, rejects, spec, valid};
use super::*;
use crate::placement::{BinpackField, Constraint, Placement, Resources, SpreadField, Strategy};

fn with(field: &str, value: Value) -> impl FnOnce(&mut Value) {
    let field = field.to_owned();
    move |v: &mut Value| v[field] = value
}

fn changed(field: &str, value: Value) -> Value {
    let mut v = payment();
    with(field, value)(&mut v);
    v
}

#[test]
fn the_defaults_reserve_nothing_and_spread_by_host() {
    let service = valid(payment());
    assert_eq!(service.placement, Placement::default());
    assert_eq!(service.placement.strategies, [Strategy::Spread(SpreadField::Host)]);
    assert_eq!(service.task.unwrap().resources, Resources::default());
}

#[test]
fn cpu_and_memory_are_the_task_s_resources() {
    let mut v = payment();
    v["cpu"] = json!(256);
    v["memory"] = json!(512);
    let task = valid(v.clone()).task.unwrap();
    assert_eq!(task.resources, Resources { cpu: 256, memory_mib: 512 });
    assert_eq!(serde_json::to_value(&task).unwrap()["resources"], json!({ "cpu": 256, "memoryMib": 512 }));
    assert_eq!(serde_json::to_value(spec(v.clone())).unwrap(), v, "serializes back as written");
    for (cpu, memory) in [(128, 6), (196_608, 4_194_304)] {
        let task = valid(changed("cpu", json!(cpu))).task.unwrap();
        assert_eq!(task.resources.cpu, cpu);
        let task = valid(changed("memory", json!(memory))).task.unwrap();
        assert_eq!(task.resources.memory_mib, memory);
    }
}

#[test]
fn cpu_and_memory_bounds_are_ecs_s() {
    rejects(with("cpu", json!(64)), "cpu", &["64 is out of range; expected 128 to 196608", "1024 to a vCPU"]);
    rejects(with("cpu", json!(200_000)), "cpu", &["expected 128 to 196608"]);
    rejects(with("memory", json!(4)), "memory", &["4 is out of range; expected 6 to 4194304", "MiB"]);
    rejects(with("memory", json!(5_000_000)), "memory", &["expected 6 to 4194304"]);
}

#[test]
fn strategies_and_constraints_are_carried_in_order() {
    let mut v = payment();
    v["placementStrategy"] = json!([
        { "type": "spread", "field": "attribute:zone" },
        { "type": "spread", "field": "instanceId" },
        { "type": "binpack", "field": "cpu" },
        { "type": "random" }
    ]);
    v["placementConstraints"] = json!([
        { "type": "distinctInstance" },
        { "type": "memberOf", "expression": "attribute:zone in [a, b]" }
    ]);
    let placement = valid(v.clone()).placement;
    assert_eq!(
        placement.strategies,
        [
            Strategy::Spread(SpreadField::Attribute("zone".into())),
            Strategy::Spread(SpreadField::Host),
            Strategy::Binpack(BinpackField::Cpu),
            Strategy::Random
        ]
    );
    let [Constraint::DistinctInstance, Constraint::MemberOf(e)] = placement.constraints.as_slice() else {
        panic!("{:?}", placement.constraints)
    };
    assert_eq!(e.to_string(), "attribute:zone in [a, b]");
    assert_eq!(serde_json::to_value(spec(v.clone())).unwrap(), v, "serializes back as written");
}

#[test]
fn unknown_strategy_types_and_fields_name_the_valid_ones() {
    let strategy = |s: Value| with("placementStrategy", json!([s]));
    rejects(
        strategy(json!({ "type": "pack", "field": "memory" })),
        "placementStrategy[0].type",
        &["`pack` is not a placement strategy", "`spread`", "`binpack`", "`random`"],
    );
    rejects(
        strategy(json!({ "type": "spread", "field": "memory" })),
        "placementStrategy[0].field",
        &[
            "`memory` is not a field of `spread`",
            "`host`",
            "`instanceId`",
            "`attribute:NAME`",
            "a field of `binpack`",
        ],
    );
    rejects(
        strategy(json!({ "type": "spread", "field": "attribute:" })),
        "placementStrategy[0].field",
        &["names no attribute", "e.g. `attribute:zone`"],
    );
    rejects(
        strategy(json!({ "type": "binpack", "field": "host" })),
        "placementStrategy[0].field",
        &["`host` is not a field of `binpack`; expected `memory` or `cpu`"],
    );
    rejects(
        strategy(json!({ "type": "spread" })),
        "placementStrategy[0].field",
        &["`spread` needs a field", "`host`"],
    );
    rejects(strategy(json!({ "type": "binpack" })), "placementStrategy[0].field", &["`memory` or `cpu`"]);
    rejects(
        strategy(json!({ "type": "random", "field": "host" })),
        "placementStrategy[0].field",
        &["`random` takes no field", "remove `field: host`"],
    );
}

#[test]
fn constraint_rules() {
    let constraint = |c: Value| with("placementConstraints", json!([c]));
    rejects(
        constraint(json!({ "type": "distinctHost" })),
        "placementConstraints[0].type",
        &["`distinctHost` is not a placement constraint", "`distinctInstance`", "`memberOf`"],
    );
    rejects(
        constraint(json!({ "type": "distinctInstance", "expression": "attribute:zone == a" })),
        "placementConstraints[0].expression",
        &["`distinctInstance` takes no expression", "remove `expression`", "`type: memberOf`"],
    );
    rejects(
        constraint(json!({ "type": "memberOf" })),
        "placementConstraints[0].expression",
        &["`memberOf` needs an expression", "`attribute:zone in [a, b]`"],
    );
    rejects(
        constraint(json!({ "type": "memberOf", "expression": "attribute:zone = a" })),
        "placementConstraints[0].expression",
        &[
            "expected `==`, `!=`, `in`, `not_in`, `exists` or `!exists` after `attribute:zone`, found `=` at column 16",
        ],
    );
}

#[test]
fn at_most_5_strategies_and_10_constraints() {
    let strategies = vec![json!({ "type": "spread", "field": "host" }); 6];
    rejects(
        with("placementStrategy", json!(strategies)),
        "placementStrategy",
        &["has 6 entries; ECS allows at most 5"],
    );
    let constraints = vec![json!({ "type": "distinctInstance" }); 11];
    rejects(
        with("placementConstraints", json!(constraints)),
        "placementConstraints",
        &["has 11 entries; ECS allows at most 10"],
    );
    let mut v = payment();
    v["placementStrategy"] = json!(vec![json!({ "type": "binpack", "field": "memory" }); 5]);
    v["placementConstraints"] = json!(vec![json!({ "type": "distinctInstance" }); 10]);
    assert_eq!(valid(v).placement.strategies.len(), 5);
}

#[test]
fn every_placement_error_is_reported_at_once() {
    let errors = errors(|v| {
        v["cpu"] = json!(1);
        v["placementStrategy"] = json!([{ "type": "spread", "field": "zone" }, { "type": "binpack" }]);
        v["placementConstraints"] = json!([{ "type": "memberOf", "expression": "zone == a" }]);
    });
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "cpu",
            "placementStrategy[0].field",
            "placementStrategy[1].field",
            "placementConstraints[0].expression"
        ]
    );
}

#[test]
fn unknown_fields_in_placement_entries_are_errors() {
    let mut v = payment();
    v["placementStrategy"] = json!([{ "type": "spread", "field": "host", "weight": 1 }]);
    assert!(serde_json::from_value::<ServiceSpec>(v).is_err());
    let mut v = payment();
    v["placementConstraints"] = json!([{ "kind": "distinctInstance" }]);
    assert!(serde_json::from_value::<ServiceSpec>(v).is_err());
}

#[test]
fn an_external_service_reserves_nothing_and_is_placed_nowhere() {
    let errors = errors(|v| {
        *v = json!({
            "endpoints": ["10.0.0.5:5432"],
            "cpu": 256,
            "memory": 512,
            "placementStrategy": [{ "type": "random" }],
            "placementConstraints": [{ "type": "distinctInstance" }]
        });
    });
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["cpu", "memory", "placementStrategy", "placementConstraints"]);
    assert!(errors[0].message.contains("runs no tasks, so `cpu` has no meaning"), "{}", errors[0].message);
}
