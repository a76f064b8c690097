//! The emulated hosts themselves: hosts reach each other and the root namespace, a cut host
//! reaches nothing until restored, and a dropped fleet leaves nothing behind. Needs root.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tether_testkit::LoggedChild;
use tether_testkit::hosts::{Fleet, Host};
use tether_testkit::python;

/// The port every host's echo server listens on (each host has its own port space).
const PORT: u16 = 7000;
/// How long one connection attempt may take; a cut host fails within it.
const CONNECT: Duration = Duration::from_secs(1);

/// Listens on 0.0.0.0:PORT and answers every connection with its host's name.
const NAME_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    with c:
        c.sendall(sys.argv[1].encode() + b"\n")
"#;

/// Connects to ADDRESS:PORT and prints the line it is sent; exits 1 if it cannot.
const LINE_CLIENT: &str = r#"
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        print(s.makefile().readline().strip())
except OSError as e:
    sys.exit(f"{sys.argv[1]}:{sys.argv[2]}: {e}")
"#;

#[test]
fn hosts_reach_each_other_and_the_gateway_until_cut() {
    let fleet = Fleet::create(3).expect("making three emulated hosts");
    let hosts = fleet.hosts();
    assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["host1", "host2", "host3"]);
    let [a, b, c, _] = fleet.gateway().octets();
    assert_eq!((a, b & 0xfe), (198, 18), "gateway {} is outside 198.18.0.0/15", fleet.gateway());
    for (i, host) in (11u8..).zip(hosts) {
        assert_eq!(host.address, Ipv4Addr::new(a, b, c, i));
    }
    let _servers: Vec<LoggedChild> = hosts.iter().map(start_name_server).collect();
    let gateway = GatewayListener::start(fleet.gateway());

    let (host1, host2, host3) = (&hosts[0], &hosts[1], &hosts[2]);
    assert_eq!(
        fetch_from(host1, host2.address, PORT).expect(BRIDGE_HINT),
        "host2",
        "host1 reached someone else at host2's address"
    );
    for host in hosts {
        assert_eq!(fetch_from_root(host.address).expect("the root namespace reaches every host"), host.name);
        assert_eq!(
            fetch_from(host, fleet.gateway(), gateway.port).expect("every host reaches the gateway"),
            "gateway"
        );
    }

    host2.cut().unwrap();
    assert!(fetch_from(host1, host2.address, PORT).is_err(), "host1 still reaches host2 after cut()");
    assert!(fetch_from_root(host2.address).is_err(), "the root namespace still reaches host2 after cut()");
    assert!(fetch_from(host2, fleet.gateway(), gateway.port).is_err(), "host2 still reaches the gateway");
    assert_eq!(fetch_from(host1, host3.address, PORT).unwrap(), "host3", "cutting host2 cut host3 off too");

    host2.restore().unwrap();
    eventually(
        || fetch_from(host1, host2.address, PORT).map(|name| name == "host2"),
        "host1 reaches host2 again",
    );
    eventually(
        || fetch_from_root(host2.address).map(|name| name == "host2"),
        "the root namespace reaches host2",
    );

    // Like a task's sandbox: a child in a network namespace of its own.
    let mut shell = host3.command("sh");
    shell.args(["-c", "unshare --net sleep 60 & echo $!; wait"]).stdout(Stdio::piped());
    let mut shell = shell.spawn().unwrap();
    let mut sandboxed = String::new();
    BufReader::new(shell.stdout.take().unwrap()).read_line(&mut sandboxed).unwrap();
    let sandboxed = format!("/proc/{}/stat", sandboxed.trim());
    let running = |stat: &str| std::fs::read_to_string(stat).is_ok_and(|s| !s.contains(") Z "));
    assert!(running(&sandboxed), "the sandboxed sleep did not start ({sandboxed})");
    host3.kill_all();
    let _ = shell.wait();
    eventually(|| Ok(!running(&sandboxed)), "kill_all kills what runs in a namespace of its own");
    let after_kill = Command::new("ip").args(["netns", "pids", host3.netns()]).output().unwrap();
    assert!(after_kill.stdout.trim_ascii().is_empty(), "processes left in host3 after kill_all");
    assert!(fetch_from_root(host3.address).is_err(), "host3's server still answers after kill_all");
    assert_eq!(fetch_from_root(host1.address).unwrap(), "host1", "kill_all on host3 killed host1's server");

    let names = names_of(&fleet);
    let gateway_address = fleet.gateway();
    drop(fleet);
    assert_nothing_left(&names, gateway_address);
}

#[test]
fn fleets_in_one_process_get_their_own_names_and_subnets() {
    let first = Fleet::create(1).expect("making a fleet");
    let second = Fleet::create(2).expect("making a second fleet next to it");
    assert_ne!(first.gateway(), second.gateway());
    let (first_names, second_names) = (names_of(&first), names_of(&second));
    assert!(
        first_names.iter().all(|name| !second_names.contains(name)),
        "{first_names:?} / {second_names:?}"
    );
    for name in first_names.iter().chain(&second_names).filter(|name| !name.starts_with("tether-")) {
        assert!(name.len() <= 15, "interface name {name} is longer than Linux allows");
    }

    // Each fleet's bridge is its own: the second fleet's hosts cannot reach the first's.
    let _server = start_name_server(&first.hosts()[0]);
    assert!(fetch_from(&second.hosts()[0], first.hosts()[0].address, PORT).is_err());

    let gateways = [first.gateway(), second.gateway()];
    drop((first, second));
    assert_nothing_left(&first_names, gateways[0]);
    assert_nothing_left(&second_names, gateways[1]);
}

/// What the root namespace's iptables may be doing when hosts on one bridge cannot talk.
const BRIDGE_HINT: &str = "host1 cannot reach host2 across the bridge; with br_netfilter loaded and \
    net.bridge.bridge-nf-call-iptables=1, a DROP policy in iptables' FORWARD chain blocks bridged traffic";

fn start_name_server(host: &Host) -> LoggedChild {
    let mut command = host.command(python());
    command.args(["-c", NAME_SERVER, &host.name, &PORT.to_string()]);
    let mut server = LoggedChild::spawn_with_stdout(command).expect("starting a Python server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("listening") {
        if Instant::now() >= deadline || server.exited().ok().flatten().is_some() {
            panic!("{}'s server did not start listening:\n{}", host.name, server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// The line `address:port` sends, fetched from inside `host`.
fn fetch_from(host: &Host, address: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    let mut command = host.command(python());
    command.args([
        "-c",
        LINE_CLIENT,
        &address.to_string(),
        &port.to_string(),
        &CONNECT.as_secs_f32().to_string(),
    ]);
    let out = run_bounded(command, CONNECT + Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("{} → {address}:{port}: {}", host.name, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The line a host's name server sends, fetched from the root namespace.
fn fetch_from_root(address: Ipv4Addr) -> anyhow::Result<String> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((address, PORT)), CONNECT)?;
    stream.set_read_timeout(Some(CONNECT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn run_bounded(mut command: Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// Retries `check` for up to 10 s until it returns `Ok(true)`.
fn eventually(mut check: impl FnMut() -> anyhow::Result<bool>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(true) => return,
            outcome if Instant::now() >= deadline => panic!("not so within 10 s: {what} ({outcome:?})"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The bridge's, the namespaces' and the veths' names.
fn names_of(fleet: &Fleet) -> Vec<String> {
    let mut names = vec![fleet.bridge().to_owned()];
    for host in fleet.hosts() {
        names.push(host.netns().to_owned());
        names.push(host.veth().to_owned());
    }
    names
}

fn assert_nothing_left(names: &[String], gateway: Ipv4Addr) {
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (netns, links, rules, addresses) =
        (show(&["netns", "list"]), show(&["-o", "link"]), show(&["rule"]), show(&["-4", "-o", "addr"]));
    for name in names {
        for (what, listing) in [("ip netns list", &netns), ("ip link", &links), ("ip rule", &rules)] {
            // Whole words only: tb123-1 must not match tb123-10.
            let found = listing
                .split(|c: char| c.is_whitespace() || c == ':' || c == '@')
                .any(|word| word == name.as_str());
            assert!(!found, "{name} is still in `{what}` after the fleet was dropped:\n{listing}");
        }
    }
    assert!(!addresses.contains(&format!(" {gateway}/")), "{gateway} is still assigned:\n{addresses}");
}

/// A listener on the gateway that answers every connection with `gateway`, until dropped.
struct GatewayListener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GatewayListener {
    fn start(gateway: Ipv4Addr) -> Self {
        let listener = TcpListener::bind((gateway, 0)).expect("binding the gateway address");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(b"gateway\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, stop, thread: Some(thread) }
    }
}

impl Drop for GatewayListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    let (mut left, mut forgotten) = (None, None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fleet = Fleet::create(2).expect("making two emulated hosts");
        left = Some((names_of(&fleet), fleet.gateway()));
        // A process the test does not stop itself: the fleet kills it.
        forgotten = Some(fleet.hosts()[0].command("sleep").arg("60").spawn().unwrap());
        panic!("the test fails here");
    }));
    assert!(outcome.is_err());
    let (names, gateway) = left.expect("the fleet was made");
    assert_nothing_left(&names, gateway);
    let status = forgotten.expect("the process was started").try_wait().unwrap();
    assert!(status.is_some_and(|status| !status.success()), "the fleet did not kill `sleep 60`");
}
