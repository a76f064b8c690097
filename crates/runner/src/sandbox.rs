//! A task's sandbox (design §7): a network namespace with loopback only, and for each process
//! started in it a private mount namespace whose `/etc/hosts` is the task's hosts file.
//!
//! The runner holds the namespace open through a file descriptor; the sidecar joins it through
//! `/proc/<runner>/fd/<fd>`. Nothing is mounted in the host's mount namespace, so nothing can be
//! left behind: the namespace goes away with the last process in it and the descriptor.

// Starting a process inside the sandbox means calling setns/unshare/mount between fork and exec
// (`pre_exec`), and bringing loopback up takes one ioctl: both need `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{MsFlags, mount};

use crate::cgroup::ProcsFiles;
use nix::sched::{CloneFlags, setns, unshare};

/// Where a task's processes run.
#[derive(Clone)]
pub struct Sandbox(Arc<Inner>);

struct Inner {
    /// The task's network namespace; `None` with `networkMode: host`.
    netns: Option<OwnedFd>,
    /// The file bind-mounted over `/etc/hosts` in every process of the task.
    hosts: PathBuf,
    /// The task's cgroup (its memory and cpu limits), entered by every process of the task
    /// before it runs anything.
    cgroup: Option<ProcsFiles>,
}

impl Sandbox {
    /// A new network namespace with loopback up, and a hosts file in `dir` that starts as a copy
    /// of the host's (the sidecar appends the aliases).
    pub fn create(dir: &Path, cgroup: Option<ProcsFiles>) -> io::Result<Self> {
        let hosts = dir.join("hosts");
        let host_hosts = std::fs::read("/etc/hosts").unwrap_or_default();
        std::fs::write(&hosts, host_hosts)?;
        let netns = std::thread::spawn(|| -> io::Result<OwnedFd> {
            // Only this short-lived thread moves; the rest of the process stays where it is.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "cannot create a network namespace ({e}); task sandboxes need root (or CAP_SYS_ADMIN): run as root or use `networkMode: host`"
                    ),
                )
            })?;
            loopback_up()?;
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        Ok(Self(Arc::new(Inner { netns: Some(netns), hosts, cgroup })))
    }

    /// No sandbox: processes share the host's network and files (and still enter `cgroup`).
    pub fn host(dir: &Path, cgroup: Option<ProcsFiles>) -> Self {
        Self(Arc::new(Inner { netns: None, hosts: dir.join("hosts"), cgroup }))
    }

    pub fn is_isolated(&self) -> bool {
        self.0.netns.is_some()
    }

    /// A path any process of this host can open to join the network namespace (as root).
    pub fn netns_path(&self) -> Option<PathBuf> {
        let fd = self.0.netns.as_ref()?.as_raw_fd();
        Some(PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id())))
    }

    pub fn hosts_file(&self) -> Option<&Path> {
        self.0.netns.as_ref().map(|_| self.0.hosts.as_path())
    }

    /// A command that runs inside the sandbox, in a process group of its own (so that stopping
    /// it reaches whatever it started), killed if the runner dies.
    pub fn command(&self, program: &str) -> io::Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(program);
        command.process_group(0);
        let enter = self.enter()?;
        // SAFETY: the closure runs in the child between fork and exec; it only makes system
        // calls on values prepared before the fork (no allocation, no locks).
        unsafe {
            command.pre_exec(move || enter.run());
        }
        Ok(command)
    }

    fn enter(&self) -> io::Result<Enter> {
        let hosts = match &self.0.netns {
            Some(_) => Some(CString::new(self.0.hosts.as_os_str().as_bytes())?),
            None => None,
        };
        let netns = self.0.netns.as_ref().map(|fd| fd.as_fd().try_clone_to_owned()).transpose()?;
        Ok(Enter { netns: netns.map(Arc::new), hosts, cgroup: self.0.cgroup.clone() })
    }

    /// Whether something accepts TCP connections on `127.0.0.1:port` inside the sandbox.
    pub async fn accepts(&self, port: u16, timeout: Duration) -> bool {
        let netns = match &self.0.netns {
            Some(fd) => match fd.try_clone() {
                Ok(fd) => Some(fd),
                Err(_) => return false,
            },
            None => None,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (done, result) = tokio::sync::oneshot::channel();
        // A thread of its own: it enters the sandbox's namespace and is not reused after.
        std::thread::spawn(move || {
            let accepted = match netns.map(|fd| setns(fd, CloneFlags::CLONE_NEWNET)) {
                Some(Err(_)) => false,
                _ => TcpStream::connect_timeout(&addr, timeout).is_ok(),
            };
            let _ = done.send(accepted);
        });
        result.await.unwrap_or(false)
    }
}

/// Rootless sandboxes: when this process is not root, moves it into a new user namespace in
/// which it is root (its own uid and gid mapped to 0), so that it may create the network and
/// mount namespaces of task sandboxes. Everything it starts inherits that. Must be called before
/// any thread is started. `Ok(false)` when already root.
pub fn become_root_in_user_namespace() -> io::Result<bool> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if uid.is_root() {
        return Ok(false);
    }
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "task sandboxes need root, or a kernel that lets users create user namespaces, and this one refuses ({e}): run as root, allow unprivileged user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone), or give every service `networkMode: host`"
            ),
        )
    })?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(true)
}

/// A command that runs on the host, in a process group of its own, killed if the runner dies.
pub fn host_command(program: &str) -> io::Result<tokio::process::Command> {
    Sandbox(Arc::new(Inner { netns: None, hosts: PathBuf::new(), cgroup: None })).command(program)
}

/// What a child does before exec to enter the sandbox.
#[derive(Clone)]
struct Enter {
    netns: Option<Arc<OwnedFd>>,
    hosts: Option<CString>,
    cgroup: Option<ProcsFiles>,
}

impl Enter {
    fn run(&self) -> io::Result<()> {
        if let Some(cgroup) = &self.cgroup {
            cgroup.enter()?;
        }
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        if let Some(netns) = &self.netns {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        }
        if let Some(hosts) = &self.hosts {
            unshare(CloneFlags::CLONE_NEWNS)?;
            // Keep this process's mounts to itself, then show it the task's hosts file.
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
            mount(Some(hosts.as_c_str()), "/etc/hosts", None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        }
        Ok(())
    }
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket and two ioctls on a zeroed, correctly sized `ifreq`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (as CI runs): a sandbox has its own loopback, and its processes see its
    /// hosts file.
    #[tokio::test]
    async fn processes_see_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::create(dir.path(), None).expect("creating a sandbox (run as root)");
        std::fs::write(sandbox.hosts_file().unwrap(), "127.255.0.9\tpayment-service\n").unwrap();
        let out = sandbox
            .command("sh")
            .unwrap()
            .args(["-c", "cat /etc/hosts; cat /proc/net/dev | grep -c :"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains("127.255.0.9\tpayment-service"), "{text}");
        // Only loopback inside.
        assert_eq!(text.lines().last(), Some("1"), "{text}");
        // The host's own /etc/hosts is untouched.
        assert!(!std::fs::read_to_string("/etc/hosts").unwrap().contains("payment-service"));
    }

    #[tokio::test]
    async fn probes_reach_inside_only() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::create(dir.path(), None).unwrap();
        let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = outside.local_addr().unwrap().port();
        assert!(!sandbox.accepts(port, Duration::from_millis(500)).await);
        let mut inside = sandbox
            .command("python3")
            .unwrap()
            .args(["-c", &format!("import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('up',flush=True)\ntime.sleep(30)")])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(inside.stdout.take().unwrap()).read_line(&mut line).await.unwrap();
        assert_eq!(line.trim(), "up");
        assert!(sandbox.accepts(port, Duration::from_millis(500)).await);
    }
}
