//! Where a task runs (design §9): what it reserves on a host, ECS's placement strategies and
//! constraints, and [`place`], the pure function the scheduler asks for a host.
//!
//! The rules are ECS's. Constraints and free resources decide which hosts may take a task; the
//! strategies, in order, narrow those down (each keeps the hosts it likes best, the next one
//! chooses among them); what is still tied goes to the first host by name, so the same view of
//! the fleet always gives the same answer.

mod expression;
#[cfg(test)]
mod expression_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

pub use expression::{Expression, ExpressionError};

/// What a task reserves on its host, or what a host offers. Zero means nothing: a task that
/// reserves no memory fits anywhere, and runs without a memory limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// ECS CPU units: 1024 is one vCPU.
    pub cpu: u32,
    /// MiB. For a task also its hard limit.
    pub memory_mib: u64,
}

impl Resources {
    /// Both dimensions added, stopping at the largest value rather than wrapping.
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_add(other.cpu),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }

    /// Both dimensions taken away, stopping at zero (a host may be over-committed when its
    /// capacity shrinks under tasks already placed).
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(other.cpu),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    /// Whether a task reserving `self` fits in `free`, dimension by dimension.
    pub fn fits_in(self, free: Self) -> bool {
        self.cpu <= free.cpu && self.memory_mib <= free.memory_mib
    }
}

/// How a service's tasks are placed: the effective `placementStrategy` and
/// `placementConstraints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Applied in order, each among the hosts the previous one kept. Default: spread by host.
    pub strategies: Vec<Strategy>,
    /// Every one must hold. Default: none.
    pub constraints: Vec<Constraint>,
}

impl Default for Placement {
    fn default() -> Self {
        Self { strategies: vec![Strategy::Spread(SpreadField::Host)], constraints: Vec::new() }
    }
}

/// One placement strategy, serialized in ECS's shape (`{ type: spread, field: host }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "field", rename_all = "camelCase")]
pub enum Strategy {
    /// Keep the hosts where the service has the fewest tasks (by host, or by an attribute's value).
    Spread(SpreadField),
    /// Keep the hosts with the least of a resource free: fill one host before the next.
    Binpack(BinpackField),
    /// Pick one host (deterministically: see [`place`]).
    Random,
}

/// What `spread` evens out tasks across.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpreadField {
    /// Hosts (`host`, or ECS's `instanceId`).
    Host,
    /// The values of a host attribute (`attribute:zone`); a host without it has the value "".
    Attribute(String),
}

/// The resource `binpack` fills hosts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BinpackField {
    Memory,
    Cpu,
}

/// One placement constraint, serialized in ECS's shape (`{ type: memberOf, expression: … }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "expression", rename_all = "camelCase")]
pub enum Constraint {
    /// Only hosts that run no task of the service yet.
    DistinctInstance,
    /// Only hosts whose attributes match the expression.
    MemberOf(Expression),
}

impl fmt::Display for SpreadField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::Attribute(name) => write!(f, "attribute:{name}"),
        }
    }
}

impl Serialize for SpreadField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for SpreadField {
    type Err = String;

    /// `placementStrategy[].field` of a `spread`; the error says what would be right.
    fn from_str(field: &str) -> Result<Self, String> {
        match (field, field.strip_prefix("attribute:")) {
            ("host" | "instanceId", _) => Ok(Self::Host),
            (_, Some(name)) if expression::is_name(name) => Ok(Self::Attribute(name.to_owned())),
            (_, Some(_)) => Err(format!(
                "`{field}` names no attribute; expected `attribute:NAME` with a name of A-Z, a-z, 0-9, `_`, `.`, `:` and `-`, e.g. `attribute:zone`"
            )),
            (_, None) => {
                let hint = if field.parse::<BinpackField>().is_ok() {
                    format!(
                        " (`{field}` is a field of `binpack`, which fills the host with the least {field} free)"
                    )
                } else {
                    String::new()
                };
                Err(format!(
                    "`{field}` is not a field of `spread`; expected `host` (or ECS's `instanceId`) for the same number of tasks on every host, or `attribute:NAME`, e.g. `attribute:zone`, for the same number in every zone{hint}"
                ))
            }
        }
    }
}

impl fmt::Display for BinpackField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
        })
    }
}

impl FromStr for BinpackField {
    type Err = String;

    /// `placementStrategy[].field` of a `binpack`; the error says what would be right.
    fn from_str(field: &str) -> Result<Self, String> {
        match field {
            "memory" => Ok(Self::Memory),
            "cpu" => Ok(Self::Cpu),
            _ => Err(format!(
                "`{field}` is not a field of `binpack`; expected `memory` or `cpu`, the resource whose least free host is filled first"
            )),
        }
    }
}

// ---- placing a task --------------------------------------------------------------------------

/// A live host as the scheduler sees it.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    pub name: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
    pub capacity: Resources,
    /// Reserved by the tasks already placed there (any service).
    pub used: Resources,
    /// Tasks of the service being placed already there.
    pub service_tasks: usize,
}

impl HostView<'_> {
    /// What is left for another task.
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(self.used)
    }
}

/// Why no host can take a task: shown to people as is (`tether ps`, the API), so every variant
/// names the rule and what the hosts have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaceable {
    /// No host has joined, or none is live.
    NoHosts,
    /// No live host matches every `memberOf` expression.
    NoMatchingHost {
        expressions: Vec<Expression>,
        /// Every live host, by name, with the attributes the expressions read.
        hosts: Vec<HostAttributes>,
    },
    /// `distinctInstance`, and each of the `hosts` hosts the other constraints allow already
    /// runs a task of the service.
    DistinctInstance { hosts: usize },
    /// No host left has `need_mib` of memory free; `host` has the most, `most_free_mib`.
    Memory { need_mib: u64, most_free_mib: u64, host: String },
    /// No host left has `need` CPU units free; `host` has the most, `most_free`.
    Cpu { need: u32, most_free: u32, host: String },
    /// Some host has the memory free and some the CPU, but none both: what each host left has
    /// free, by name.
    MemoryAndCpu { need: Resources, free: Vec<(String, Resources)> },
}

/// A host as [`Unplaceable::NoMatchingHost`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAttributes {
    pub host: String,
    /// Each attribute an expression reads, by name, with the host's value if it has one.
    pub attributes: Vec<(String, Option<String>)>,
}

/// Hosts listed in a reason before the rest are counted instead.
const LISTED_HOSTS: usize = 10;

/// The host for one more task of a service: an index into `hosts`, or why none can take it.
///
/// First the constraints: every `memberOf` expression must match the host's attributes, and
/// with `distinctInstance` the host must run no task of the service yet. Then the task must
/// fit: each resource it needs (a need of 0 always fits) must be free on the host. The reason
/// given is the first of these steps that left no host. Then the strategies, in order:
/// spread by host keeps the hosts with the fewest tasks of the service; spread by an
/// attribute keeps the hosts whose value of it has the fewest tasks of the service on all of
/// `hosts`; binpack keeps the hosts with the least of the resource free; random keeps one.
/// Hosts still tied go to the first by name.
///
/// `Random` is not random: it hashes the names and task counts of the hosts it chooses among
/// (FNV-1a), so one view of the fleet always gives one host, and tests need no seed. The pick
/// moves as tasks are placed, since the counts change.
pub fn place(hosts: &[HostView<'_>], need: Resources, placement: &Placement) -> Result<usize, Unplaceable> {
    if hosts.is_empty() {
        return Err(Unplaceable::NoHosts);
    }
    let mut candidates: Vec<usize> = (0..hosts.len()).collect();
    let expressions: Vec<&Expression> = placement
        .constraints
        .iter()
        .filter_map(|c| match c {
            Constraint::MemberOf(e) => Some(e),
            Constraint::DistinctInstance => None,
        })
        .collect();
    candidates.retain(|&i| expressions.iter().all(|e| e.matches(hosts[i].attributes)));
    if candidates.is_empty() {
        return Err(no_matching_host(hosts, &expressions));
    }
    if placement.constraints.contains(&Constraint::DistinctInstance) {
        let matching = candidates.len();
        candidates.retain(|&i| hosts[i].service_tasks == 0);
        if candidates.is_empty() {
            return Err(Unplaceable::DistinctInstance { hosts: matching });
        }
    }
    let fitting: Vec<usize> = candidates.iter().copied().filter(|&i| need.fits_in(hosts[i].free())).collect();
    if fitting.is_empty() {
        return Err(short_of_resources(hosts, &candidates, need));
    }
    candidates = fitting;
    for strategy in &placement.strategies {
        if candidates.len() == 1 {
            break;
        }
        narrow(hosts, &mut candidates, strategy);
    }
    Ok(first_by_name(hosts, &candidates))
}

/// Keeps the candidates `strategy` likes best.
fn narrow<'h>(hosts: &[HostView<'h>], candidates: &mut Vec<usize>, strategy: &Strategy) {
    match strategy {
        Strategy::Spread(SpreadField::Host) => keep_least(candidates, |i| hosts[i].service_tasks),
        Strategy::Spread(SpreadField::Attribute(name)) => {
            let value =
                |host: &HostView<'h>| -> &'h str { host.attributes.get(name).map_or("", String::as_str) };
            let mut tasks_per_value: BTreeMap<&str, usize> = BTreeMap::new();
            for host in hosts {
                *tasks_per_value.entry(value(host)).or_default() += host.service_tasks;
            }
            keep_least(candidates, |i| tasks_per_value[value(&hosts[i])]);
        }
        Strategy::Binpack(BinpackField::Memory) => keep_least(candidates, |i| hosts[i].free().memory_mib),
        Strategy::Binpack(BinpackField::Cpu) => keep_least(candidates, |i| hosts[i].free().cpu),
        Strategy::Random => {
            candidates.sort_by_key(|&i| (hosts[i].name, i));
            let hash = candidates.iter().fold(FNV_OFFSET, |hash, &i| {
                let host = &hosts[i];
                let hash = fnv1a(hash, host.name.as_bytes());
                fnv1a(fnv1a(hash, &[0xff]), &(host.service_tasks as u64).to_le_bytes())
            });
            *candidates = vec![candidates[(hash % candidates.len() as u64) as usize]];
        }
    }
}

fn keep_least<K: Ord>(candidates: &mut Vec<usize>, key: impl Fn(usize) -> K) {
    if let Some(least) = candidates.iter().map(|&i| key(i)).min() {
        candidates.retain(|&i| key(i) == least);
    }
}

fn first_by_name(hosts: &[HostView<'_>], candidates: &[usize]) -> usize {
    *candidates.iter().min_by_key(|&&i| (hosts[i].name, i)).expect("a candidate is left")
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn no_matching_host(hosts: &[HostView<'_>], expressions: &[&Expression]) -> Unplaceable {
    let mut names: Vec<&str> = expressions.iter().flat_map(|e| e.attributes()).collect();
    names.sort_unstable();
    names.dedup();
    let mut listed: Vec<HostAttributes> = hosts
        .iter()
        .map(|h| HostAttributes {
            host: h.name.to_owned(),
            attributes: names.iter().map(|&n| (n.to_owned(), h.attributes.get(n).cloned())).collect(),
        })
        .collect();
    listed.sort_by(|a, b| a.host.cmp(&b.host));
    Unplaceable::NoMatchingHost {
        expressions: expressions.iter().map(|&e| e.clone()).collect(),
        hosts: listed,
    }
}

/// Which resource `candidates` (none of which fits `need`) are short of.
fn short_of_resources(hosts: &[HostView<'_>], candidates: &[usize], need: Resources) -> Unplaceable {
    let (memory, memory_host) = most_free(hosts, candidates, |r| r.memory_mib);
    let (cpu, cpu_host) = most_free(hosts, candidates, |r| r.cpu);
    if need.memory_mib > memory {
        Unplaceable::Memory { need_mib: need.memory_mib, most_free_mib: memory, host: memory_host.to_owned() }
    } else if need.cpu > cpu {
        Unplaceable::Cpu { need: need.cpu, most_free: cpu, host: cpu_host.to_owned() }
    } else {
        let mut free: Vec<(String, Resources)> =
            candidates.iter().map(|&i| (hosts[i].name.to_owned(), hosts[i].free())).collect();
        free.sort_by(|a, b| a.0.cmp(&b.0));
        Unplaceable::MemoryAndCpu { need, free }
    }
}

/// The most of one resource free among `candidates`, and the first host by name that has it.
fn most_free<'h, K: Ord + Copy>(
    hosts: &[HostView<'h>],
    candidates: &[usize],
    resource: impl Fn(Resources) -> K,
) -> (K, &'h str) {
    let host = candidates
        .iter()
        .map(|&i| &hosts[i])
        .max_by_key(|h| (resource(h.free()), std::cmp::Reverse(h.name)))
        .expect("a candidate is left");
    (resource(host.free()), host.name)
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHosts => f.write_str("no host has joined"),
            Self::NoMatchingHost { expressions, hosts } => {
                for (i, e) in expressions.iter().enumerate() {
                    let and = if i > 0 { " and " } else { "" };
                    write!(f, "{and}memberOf({e})")?;
                }
                let all = if expressions.len() > 1 { " them all" } else { "" };
                write!(f, ": no live host matches{all} (hosts: ")?;
                list(f, hosts, |f, h| write!(f, "{h}"))?;
                f.write_str(")")
            }
            Self::DistinctInstance { hosts } => {
                let s = if *hosts == 1 { "" } else { "s" };
                write!(
                    f,
                    "distinctInstance: every matching host already runs a task of this service ({hosts} host{s})"
                )
            }
            Self::Memory { need_mib, most_free_mib, host } => {
                write!(
                    f,
                    "no host has {need_mib} MiB of memory free (most free: {most_free_mib} MiB on {host})"
                )
            }
            Self::Cpu { need, most_free, host } => {
                write!(f, "no host has {need} CPU units free (most free: {most_free} units on {host})")
            }
            Self::MemoryAndCpu { need, free } => {
                write!(
                    f,
                    "no host has both {} MiB of memory and {} CPU units free (",
                    need.memory_mib, need.cpu
                )?;
                f.write_str("free: ")?;
                list(f, free, |f, (host, r)| write!(f, "{host} {} MiB/{} units", r.memory_mib, r.cpu))?;
                f.write_str(")")
            }
        }
    }
}

impl std::error::Error for Unplaceable {}

impl fmt::Display for HostAttributes {
    /// `h1 zone=a`, `h2 zone=b (no gpu)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        for (name, value) in &self.attributes {
            if let Some(value) = value {
                write!(f, " {name}={value}")?;
            }
        }
        let missing: Vec<&str> =
            self.attributes.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| n.as_str()).collect();
        if !missing.is_empty() {
            write!(f, " (no {})", missing.join(", no "))?;
        }
        Ok(())
    }
}

/// The first [`LISTED_HOSTS`] items, comma-separated, then how many more there are.
fn list<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    item: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    for (i, t) in items.iter().take(LISTED_HOSTS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item(f, t)?;
    }
    if items.len() > LISTED_HOSTS {
        write!(f, " and {} more", items.len() - LISTED_HOSTS)?;
    }
    Ok(())
}
