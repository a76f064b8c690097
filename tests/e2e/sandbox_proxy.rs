//! One sidecar, in the host's network namespace, serving a task that lives in a namespace of
//! its own (design §7): `tether proxy --netns PATH --hosts-file PATH`.
//!
//! The test makes the task's namespace itself (`ip netns add`, loopback only) and runs the
//! app in it, as a runner would: with its own mount namespace where the hosts file the
//! sidecar keeps is bind-mounted over `/etc/hosts`. It needs root and iproute2's `ip`.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tether_testkit::{Backend, Client, assert_eventually, free_port, python};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// What the runner would have put in the hosts file: the host's own entries.
const HOST_ENTRIES: &str =
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# the host's entries end here\n";

/// A network namespace with only loopback, up; deleted when dropped.
struct TaskNetns {
    name: String,
}

impl TaskNetns {
    fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("tether-t-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        ip(&["netns", "exec", &netns.name, "ip", "link", "set", "lo", "up"]);
        netns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `program args…` inside the namespace, in a mount namespace of its own where `hosts` is
    /// `/etc/hosts`: how a runner starts a task's app.
    fn sandboxed(&self, hosts: &Path, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, "unshare", "--mount", "sh", "-c"]);
        command.arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#).arg(hosts).arg(program).args(args);
        command
    }
}

impl Drop for TaskNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("this test needs iproute2's `ip` (e.g. apt-get install iproute2), and root: {e}")
    });
    assert!(
        output.status.success(),
        "`ip {}` failed (this test needs root): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tether proxy` with arguments of the test's choosing, its stderr in a file.
struct SandboxSidecar {
    process: Killed,
    log: PathBuf,
    admin: SocketAddr,
}

impl SandboxSidecar {
    async fn start(dir: &Path, args: &[&str]) -> Self {
        let log = dir.join("tether.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(TETHER)
            .arg("proxy")
            .args(args)
            .env("TETHER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut sidecar = Self { process: Killed(child), log, admin: ([0, 0, 0, 0], 0).into() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = sidecar.process.0.try_wait().unwrap() {
                panic!("tether exited with {status} before it was ready:\n{}", sidecar.log());
            }
            if let Some(admin) = sidecar.try_addr("admin") {
                sidecar.admin = admin;
                let ready = Client::http1().get(&format!("http://{admin}/ready")).await;
                if ready.is_ok_and(|r| r.status == 200) {
                    return sidecar;
                }
            }
            assert!(Instant::now() < deadline, "tether not ready within 10 s:\n{}", sidecar.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the listener `name` listens, from its `listening` log line.
    fn try_addr(&self, name: &str) -> Option<SocketAddr> {
        self.log().lines().filter(|l| l.contains("listening")).find_map(|l| {
            let field = |key: &str| l.split_whitespace().find_map(|w| w.strip_prefix(key));
            (field("name=")? == name).then(|| field("addr=")?.parse().ok())?
        })
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.try_addr(name).unwrap_or_else(|| panic!("no listener `{name}` in:\n{}", self.log()))
    }
}

/// GETs each URL from inside the task's sandbox (its namespace, its `/etc/hosts`) and says
/// what came back: the body, or why nothing did.
async fn get_from_the_task(netns: &TaskNetns, hosts: &Path, urls: &[String]) -> Vec<String> {
    const SCRIPT: &str = r#"
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(url):
    try:
        with opener.open(url, timeout=5) as r:
            return r.read().decode()
    except Exception as e:
        return "failed: %r" % (getattr(e, "reason", e),)
print(json.dumps([get(u) for u in sys.argv[1:]]))
"#;
    let mut args = vec!["-c", SCRIPT];
    args.extend(urls.iter().map(String::as_str));
    let command = netns.sandboxed(hosts, &python(), &args);
    let output = tokio::process::Command::from(command).output().await.unwrap();
    assert!(output.status.success(), "the client failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_a_task_in_its_own_network_namespace() {
    let netns = TaskNetns::create();
    let dir = tempfile::tempdir().unwrap();

    // Outside the sandbox: a service the app calls, and a server on the very port the app
    // will listen on inside (two namespaces, one port each).
    let outside = Backend::start("outside").await;
    let twin = Backend::start("host-twin").await;
    let app_port = twin.addr.port();

    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, HOST_ENTRIES).unwrap();
    let inode = std::fs::metadata(&hosts).unwrap().ino();

    // The app: serves a file, and the /etc/hosts it sees.
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("hello"), "hello from the app in the sandbox\n").unwrap();
    std::os::unix::fs::symlink("/etc/hosts", site.join("etc-hosts")).unwrap();
    let port = app_port.to_string();
    let app = netns
        .sandboxed(&hosts, &python(), &["-m", "http.server", &port, "--bind", "127.0.0.1"])
        .current_dir(&site)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _app = Killed(app);

    let alias_port = free_port();
    let config = format!(
        "admin: 127.0.0.1:0
drainWaitSeconds: 0
inbound:
  - {{ portName: app, listen: 127.0.0.1:0, target: 127.0.0.1:{app_port}, appProtocol: http }}
outbound:
  - {{ dnsName: outside-service, listen: 127.255.0.1:{alias_port}, appProtocol: http, endpoints: [\"{outside}\"] }}
  - {{ dnsName: another-service, listen: 127.255.0.2:{alias_port}, appProtocol: tcp, endpoints: [\"{outside}\"] }}
",
        outside = outside.addr
    );
    let config_path = dir.path().join("proxy.yaml");
    std::fs::write(&config_path, config).unwrap();
    let (config_arg, hosts_arg, netns_arg) =
        (config_path.to_str().unwrap(), hosts.to_str().unwrap(), netns.path());
    let sidecar = SandboxSidecar::start(
        dir.path(),
        &["--config", config_arg, "--netns", &netns_arg, "--hosts-file", hosts_arg],
    )
    .await;
    // Its admin endpoint answered in the host's namespace; so does its inbound listener.
    let inbound = sidecar.addr("app");
    assert_eq!(sidecar.addr("outside-service"), SocketAddr::from(([127, 255, 0, 1], alias_port)));

    // 4. The hosts file lists the aliases under the host's entries, rewritten in place.
    let expected_hosts = format!(
        "{HOST_ENTRIES}# tether: client aliases\n127.255.0.2\tanother-service\n127.255.0.1\toutside-service\n"
    );
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), expected_hosts);
    assert_eq!(std::fs::metadata(&hosts).unwrap().ino(), inode, "the hosts file was replaced, not rewritten");

    // 3. The inbound listener reaches the app inside, while the host's 127.0.0.1 on the same
    // port is another server.
    let client = Client::http1();
    let through_sidecar = format!("http://{inbound}/hello");
    assert_eventually!(
        Duration::from_secs(10),
        client.get(&through_sidecar).await.is_ok_and(|r| r.status == 200),
        "the app never answered through the inbound listener:\n{}",
        sidecar.log()
    );
    let r = client.get(&through_sidecar).await.unwrap();
    assert_eq!(r.text(), "hello from the app in the sandbox\n");
    let r = client.get(&format!("http://127.0.0.1:{app_port}/hello")).await.unwrap();
    assert_eq!(r.text(), "hello from host-twin");
    // The app sees the sidecar's aliases in its /etc/hosts: the bind mount made before the
    // sidecar started still shows the file, because the file stayed the same.
    let r = client.get(&format!("http://{inbound}/etc-hosts")).await.unwrap();
    assert_eq!(r.text(), expected_hosts);

    // 1. Inside, the app reaches the outside service by name through the outbound listeners
    // (http and tcp), and not at all directly.
    let replies = get_from_the_task(
        &netns,
        &hosts,
        &[
            format!("http://outside-service:{alias_port}/hello"),
            format!("http://another-service:{alias_port}/hello"),
            format!("http://{}/hello", outside.addr),
        ],
    )
    .await;
    assert_eq!(replies[0], "hello from outside", "{replies:?}\n{}", sidecar.log());
    assert_eq!(replies[1], "hello from outside", "{replies:?}\n{}", sidecar.log());
    assert!(replies[2].starts_with("failed: ConnectionRefusedError"), "{replies:?}");
    assert_eq!(outside.requests(), 2);

    // 2. The outbound listeners' addresses are free in the host's namespace.
    let alias: SocketAddr = ([127, 255, 0, 1], alias_port).into();
    let refused = std::net::TcpStream::connect_timeout(&alias, Duration::from_secs(1)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    std::net::TcpListener::bind(alias).expect("the alias's address is free on the host");
}

/// Paths that cannot be used stop the proxy at once with status 64 and say which flag is wrong.
#[test]
fn unusable_sandbox_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    let outbound =
        "outbound: [{ dnsName: a, listen: 127.0.0.1:0, appProtocol: tcp, endpoints: [\"127.0.0.1:1\"] }]";
    std::fs::write(&config, format!("admin: 127.0.0.1:0\n{outbound}\n")).unwrap();
    let config = config.to_str().unwrap();
    let static_config = ["proxy", "--check", "--config", config];
    let fed = [
        "proxy",
        "--server",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "--namespace",
        "n",
        "--service",
        "s",
        "--task",
        "t",
    ];
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&static_config, &["--netns", "/nonexistent/netns"], &["--netns", "/nonexistent/netns"]),
        (&static_config, &["--netns", config], &["--netns", "is not a network namespace"]),
        (&static_config, &["--hosts-file", "/nonexistent/hosts"], &["--hosts-file", "/nonexistent/hosts"]),
        (&fed, &["--netns", "/nonexistent/netns"], &["--netns", "/nonexistent/netns"]),
    ];
    for (base, extra, fragments) in cases {
        let output = Command::new(TETHER).args(base).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{extra:?}: {stderr}");
        for fragment in fragments {
            assert!(stderr.contains(fragment), "{extra:?}: `{fragment}` missing from:\n{stderr}");
        }
    }
}
