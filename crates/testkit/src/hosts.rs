//! Emulated hosts for multi-host end-to-end tests: network namespaces joined by veth pairs to a
//! bridge in the root namespace, with addresses from 198.18.0.0/15 (the benchmarking range, never
//! routed on the internet).
//!
//! ```text
//!   root namespace: bridge tbPPPPP-K 198.18.N.1/24  (Fleet::gateway: a control plane listens here)
//!     ├─ veth tvPPPPP-K-1 ── netns tether-PPPPP-K-host1: eth0 198.18.N.11/24, default via .1
//!     ├─ veth tvPPPPP-K-2 ── netns tether-PPPPP-K-host2: eth0 198.18.N.12/24, default via .1
//!     └─ …
//! ```
//!
//! Hosts on one bridge reach each other at layer 2 and reach the root namespace through the
//! gateway; nothing leaves the machine. A policy rule (`ip rule add iif BRIDGE prohibit`, after
//! the `local` table) refuses to route anything that arrives on the bridge and is not for the
//! root namespace itself, whatever `net.ipv4.ip_forward` says, and there is no NAT, so a host's
//! default route ends at the gateway. `ip_forward` is left as it is.
//!
//! Names carry the process id (mod 100000) and a per-process counter, so tests in one binary and
//! binaries run one after another never share a name; each [`Fleet`] takes a /24 no interface of
//! the machine uses yet (198.18.0.0/24 is left to `scripts/fleet`). Dropping the fleet kills
//! every process in its namespaces and removes the namespaces, links, rule and bridge, also when
//! the test panics. A run that was killed outright leaves them behind; the next [`Fleet::create`]
//! that picks the same names removes them first.
//!
//! With `br_netfilter` loaded and `net.bridge.bridge-nf-call-iptables = 1`, bridged packets pass
//! the root namespace's iptables FORWARD chain: a DROP policy there (Docker sets one) cuts the
//! hosts off from each other. The test in `tests/hosts.rs` catches that.
//!
//! Everything needs root (CAP_NET_ADMIN) and iproute2's `ip`.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Fleets made by this process so far; part of every name.
static FLEETS: AtomicU32 = AtomicU32::new(0);
/// Held while a fleet picks its /24 and puts the gateway address on it, so that two tests of one
/// binary never pick the same one.
static SUBNET_CHOICE: Mutex<()> = Mutex::new(());
/// /24s inside 198.18.0.0/15; index 0 (198.18.0.0/24) is the one `scripts/fleet` uses.
const SUBNETS: u32 = 512;
/// Priority of the rule that keeps a bridge's traffic from being routed anywhere: after `local`
/// (0), so packets for the root namespace are still delivered, and before `main` (32766).
const RULE_PRIORITY: &str = "9000";
/// How long [`Host::kill_all`] waits for the processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// At most this many hosts per fleet, so that interface names stay within 15 characters.
const MAX_HOSTS: usize = 99;

/// A bridge in the root namespace and the hosts attached to it. Dropping it removes everything
/// it made.
pub struct Fleet {
    bridge: String,
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
}

/// One emulated host: a network namespace with one interface, `eth0`, on the fleet's bridge.
pub struct Host {
    /// `host1`, `host2`, …
    pub name: String,
    /// `198.18.N.(10 + i)` for `host{i}`.
    pub address: Ipv4Addr,
    netns: String,
    /// The root namespace's end of the host's veth pair.
    veth: String,
}

impl Fleet {
    /// Makes a bridge and `hosts` hosts (1 to 99). Needs root. On error, whatever was made is
    /// removed again.
    pub fn create(hosts: usize) -> anyhow::Result<Fleet> {
        if !(1..=MAX_HOSTS).contains(&hosts) {
            bail!("a fleet has 1 to {MAX_HOSTS} hosts, not {hosts}");
        }
        require_root()?;
        let id =
            format!("{}-{}", std::process::id() % 100_000, FLEETS.fetch_add(1, Ordering::Relaxed) % 10_000);
        let bridge = format!("tb{id}");
        let names: Vec<(String, String, String)> = (1..=hosts)
            .map(|i| (format!("host{i}"), format!("tether-{id}-host{i}"), format!("tv{id}-{i}")))
            .collect();
        remove_leftovers(&bridge, &names);

        let mut fleet = Fleet { bridge, gateway: Ipv4Addr::UNSPECIFIED, hosts: Vec::new() };
        let bridge = fleet.bridge.as_str();
        // The rule first: no packet from the bridge is ever routed, even for an instant.
        ip(&["rule", "add", "iif", bridge, "priority", RULE_PRIORITY, "prohibit"])?;
        ip(&["link", "add", bridge, "type", "bridge", "forward_delay", "0"])?;
        disable_ipv6(bridge);
        {
            let _choosing = SUBNET_CHOICE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (a, b) = free_subnet(&id)?;
            fleet.gateway = Ipv4Addr::new(198, a, b, 1);
            ip(&["addr", "add", &format!("{}/24", fleet.gateway), "dev", bridge])?;
        }
        ip(&["link", "set", bridge, "up"])?;

        let [_, a, b, _] = fleet.gateway.octets();
        for (i, (name, netns, veth)) in (1u8..).zip(names) {
            let address = Ipv4Addr::new(198, a, b, 10 + i);
            // Pushed before it exists, so that a failure half-way is cleaned up too.
            fleet.hosts.push(Host { name, address, netns, veth });
            let host = fleet.hosts.last().expect("just pushed");
            host.make(&fleet.bridge, fleet.gateway)?;
        }
        Ok(fleet)
    }

    /// The bridge's address in the root namespace, `198.18.N.1`: listen here to be reachable
    /// from every host, and from the root namespace itself.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's name in the root namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for host in &self.hosts {
            host.remove();
        }
        remove_bridge(&self.bridge);
        if link_exists(&self.bridge) {
            eprintln!("tether-testkit: could not remove bridge {}", self.bridge);
        }
    }
}

impl Host {
    /// `program`, to be run inside this host's network namespace (`ip netns exec NETNS
    /// program`); add arguments as usual. `tokio::process::Command::from` turns it into an async
    /// one. Processes started this way are killed when the fleet is dropped.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// Takes the host's link down (its veth end in the root namespace): it reaches nothing, and
    /// nothing reaches it, until [`Host::restore`]. Its processes keep running.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth, "down"]).with_context(|| format!("cutting {} off", self.name))
    }

    /// Brings the host's link up again after [`Host::cut`].
    pub fn restore(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth, "up"]).with_context(|| format!("restoring {}", self.name))
    }

    /// Sends SIGKILL to every process in the host's namespace and to their descendants (task
    /// sandboxes live in namespaces of their own), as a host that loses power would see it, and
    /// waits up to 5 s for the namespace to be empty. Best effort: it never fails.
    pub fn kill_all(&self) {
        kill_netns_processes(&self.netns);
    }

    /// The network namespace's name, as `ip netns list` shows it.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The root namespace's end of the host's veth pair: `ip link set VETH down` cuts the host off.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    fn make(&self, bridge: &str, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let (netns, veth) = (self.netns.as_str(), self.veth.as_str());
        ip(&["netns", "add", netns])?;
        ip(&["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
        disable_ipv6(veth);
        ip(&["link", "set", veth, "master", bridge, "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&["-n", netns, "addr", "add", &format!("{}/24", self.address), "dev", "eth0"])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", netns, "route", "add", "default", "via", &gateway.to_string()])?;
        Ok(())
    }

    /// Best effort, in the order that leaves nothing behind: the processes (a namespace lives on
    /// while one is inside), then the veth pair (deleting it removes both ends at once, where a
    /// namespace's own interfaces go only when the kernel gets round to destroying it), then the
    /// namespace.
    fn remove(&self) {
        remove_host(&self.netns, &self.veth);
        if netns_exists(&self.netns) || link_exists(&self.veth) {
            eprintln!("tether-testkit: could not fully remove {} ({}, {})", self.name, self.netns, self.veth);
        }
    }
}

fn remove_host(netns: &str, veth: &str) {
    if netns_exists(netns) {
        kill_netns_processes(netns);
    }
    if link_exists(veth) {
        let _ = ip(&["link", "del", veth]);
    }
    if netns_exists(netns) {
        let _ = ip(&["netns", "del", netns]);
    }
}

fn remove_bridge(bridge: &str) {
    // One rule per fleet, but a crashed run may have left one of its own: delete until none is left.
    for _ in 0..8 {
        if ip(&["rule", "del", "iif", bridge, "priority", RULE_PRIORITY, "prohibit"]).is_err() {
            break;
        }
    }
    if link_exists(bridge) {
        let _ = ip(&["link", "del", bridge]);
    }
}

/// Removes what an earlier run that died before dropping its fleet left under these names.
fn remove_leftovers(bridge: &str, hosts: &[(String, String, String)]) {
    for (_, netns, veth) in hosts {
        remove_host(netns, veth);
    }
    remove_bridge(bridge);
}

/// Kills the namespace's processes and their descendants: a task sandbox's processes have a
/// network namespace of their own, so `ip netns pids` does not list them. Descendants are found
/// before anything is killed, while they still have their parents.
fn kill_netns_processes(netns: &str) {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids = match Command::new("ip").args(["netns", "pids", netns]).output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            _ => return,
        };
        let pids: Vec<u32> = pids.split_whitespace().filter_map(|pid| pid.parse().ok()).collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let doomed: Vec<String> = with_descendants(pids).iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-KILL").args(&doomed).output();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pids` and every process below them, from the parent ids in /proc.
fn with_descendants(mut pids: Vec<u32>) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // The parent id is the second field after the command, which is in parentheses and may
        // itself contain spaces and parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent: Option<u32> =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(parent) = parent {
            parents.push((pid, parent));
        }
    }
    let mut next = 0;
    while next < pids.len() {
        let parent = pids[next];
        for &(child, _) in parents.iter().filter(|&&(_, p)| p == parent) {
            if !pids.contains(&child) {
                pids.push(child);
            }
        }
        next += 1;
    }
    pids
}

/// The second and third octets of a /24 in 198.18.0.0/15 that no interface has an address in,
/// starting from one derived from `id` so that concurrent processes tend to start apart.
fn free_subnet(id: &str) -> anyhow::Result<(u8, u8)> {
    let out = ip_output(&["-4", "-o", "addr", "show"])?;
    let start = id.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    for step in 0..SUBNETS {
        let index = (start.wrapping_add(step)) % SUBNETS;
        if index == 0 {
            continue;
        }
        let (a, b) = ((18 + index / 256) as u8, (index % 256) as u8);
        let prefix = format!(" 198.{a}.{b}.");
        if !out.contains(&prefix) {
            return Ok((a, b));
        }
    }
    bail!(
        "every /24 in 198.18.0.0/15 is in use on this machine; are stale test bridges left over? (ip -br addr)"
    )
}

fn require_root() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if euid != "0" {
        bail!(
            "emulated hosts need root: they make network namespaces, veth pairs and a bridge \
             (this process runs as uid {euid}); run the test as root"
        );
    }
    Ok(())
}

fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

fn link_exists(link: &str) -> bool {
    Path::new("/sys/class/net").join(link).exists()
}

/// Keeps the root namespace's ends quiet: they carry the hosts' IPv4 only.
fn disable_ipv6(link: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1");
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2); emulated hosts need it installed")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run killed outright leaves its bridge, rule and namespaces (with processes in them);
    /// a later run whose names are the same must not trip over them.
    #[test]
    fn leftovers_under_the_same_names_are_removed() {
        // The names the next fleet of this process takes (no other test here makes fleets).
        let id = format!("{}-{}", std::process::id() % 100_000, FLEETS.load(Ordering::Relaxed) % 10_000);
        let (bridge, netns, veth) = (format!("tb{id}"), format!("tether-{id}-host1"), format!("tv{id}-1"));
        ip(&["rule", "add", "iif", &bridge, "priority", RULE_PRIORITY, "prohibit"]).unwrap();
        ip(&["link", "add", &bridge, "type", "bridge"]).unwrap();
        ip(&["netns", "add", &netns]).unwrap();
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]).unwrap();
        let mut stale = Command::new("ip").args(["netns", "exec", &netns, "sleep", "60"]).spawn().unwrap();

        let fleet = Fleet::create(1).expect("a fleet despite the leftovers");
        assert_eq!(
            (fleet.bridge(), fleet.hosts()[0].netns(), fleet.hosts()[0].veth()),
            (&*bridge, &*netns, &*veth)
        );
        let status = stale.wait().unwrap();
        assert!(!status.success(), "the stale process was not killed");
        let rules = ip_output(&["rule"]).unwrap();
        assert_eq!(rules.matches(&format!("iif {bridge} ")).count(), 1, "{rules}");
        drop(fleet);
        assert!(!link_exists(&bridge) && !link_exists(&veth) && !netns_exists(&netns));
        assert!(!ip_output(&["rule"]).unwrap().contains(&format!("iif {bridge} ")));
    }
}
