//! A task's resource limits (design §7), enforced by the kernel: the app and its health checks
//! run in a cgroup of their own, with the spec's `memory` as a hard limit and `cpu` as a quota.
//!
//! cgroup v2 is used when a v2 hierarchy offers the `memory` controller (pure v2 hosts mount it
//! at `/sys/fs/cgroup`); otherwise the v1 `memory` (and `cpu`) hierarchies of a hybrid host.
//! Every task's cgroup sits under a `tether` parent:
//! - v2: `<own cgroup>/tether/<task>` when the runner's own cgroup may hand `memory` to children
//!   (the kernel allows that only to the root, or to a cgroup without processes of its own),
//!   else `<v2 root>/tether/<task>`;
//! - v1: `<memory root>/tether/<task>` and, with a CPU limit, `<cpu root>/tether/<task>`.
//!
//! A child is placed from between fork and exec through [`ProcsFiles::enter`], so that it is
//! limited from its first instruction.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::warn;

/// The parent of every task's cgroup.
const PARENT: &str = "tether";
/// The CFS period both hierarchies are given; quotas are µs of it.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long removing a cgroup waits for its killed processes to be gone, per step.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// What a task may use; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// A hard limit in MiB, swap included: past it the kernel's OOM killer picks a process.
    pub memory_mib: Option<u64>,
    /// ECS CPU units (1024 = one vCPU), enforced as a CFS quota; 0 is unlimited, as in ECS.
    pub cpu_units: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// This host offers no cgroup hierarchy the runner may use, and will not while it runs:
    /// run tasks without limits and say so once.
    #[error("no usable cgroup hierarchy: {0}")]
    Unsupported(String),
    /// A cgroup file refused what the runner wrote: the host's fault, retrying may work.
    #[error("cgroup {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A task id that is not a plain directory name: the caller's bug.
    #[error("`{task_id}` cannot name a cgroup")]
    InvalidTaskId { task_id: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

/// A task's cgroup. Dropping it kills what is left in it and removes its directories.
#[derive(Debug)]
pub struct TaskCgroup {
    version: Version,
    /// The task's directories, the memory controller's first: one for v2, one per v1 hierarchy.
    dirs: Vec<PathBuf>,
}

impl TaskCgroup {
    /// A new cgroup for `task_id` with `limits`: [`CgroupError::Unsupported`], with why, when the
    /// host offers no usable hierarchy (not root, no memory controller…).
    pub fn create(task_id: &str, limits: &Limits) -> Result<TaskCgroup, CgroupError> {
        if task_id.is_empty()
            || task_id == "."
            || task_id.contains(['/', '\0', '\n'])
            || task_id.contains("..")
        {
            return Err(CgroupError::InvalidTaskId { task_id: task_id.to_owned() });
        }
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
        let own = read("/proc/self/cgroup")?;
        let v2 = match create_v2(&mounts, &own, task_id, limits) {
            Err(CgroupError::Unsupported(why)) => why,
            done => return done,
        };
        let v1 = match create_v1(&mounts, task_id, limits) {
            Err(CgroupError::Unsupported(why)) => why,
            done => return done,
        };
        Err(CgroupError::Unsupported(format!("v2: {v2}; v1: {v1}")))
    }

    /// "v2" or "v1".
    pub fn kind(&self) -> &'static str {
        match self.version {
            Version::V2 => "v2",
            Version::V1 => "v1",
        }
    }

    /// The task's cgroup directory (the memory controller's, on v1).
    pub fn path(&self) -> &Path {
        &self.dirs[0]
    }

    /// Every `cgroup.procs` a process's pid is written to: one for v2, one per v1 hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// [`Self::procs_files`] opened, for a child to write itself into between fork and exec.
    pub fn open_procs(&self) -> Result<ProcsFiles, CgroupError> {
        let files = self
            .procs_files()
            .into_iter()
            .map(|path| match OpenOptions::new().write(true).open(&path) {
                Ok(file) => Ok(OwnedFd::from(file)),
                Err(source) => Err(CgroupError::Io { path, source }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProcsFiles(files.into()))
    }

    /// Moves process `pid` (all its threads) into the cgroup; its future children follow it.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        self.procs_files().iter().try_for_each(|path| write_file(path, &pid.to_string()))
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup. On v1 kernels older than
    /// 4.13, which do not count kills, whether the limit was ever hit: trust it only together
    /// with a process that died of SIGKILL.
    pub fn oom_killed(&self) -> bool {
        let dir = self.path();
        let counted = match self.version {
            Version::V2 => counter(&dir.join("memory.events"), "oom_kill"),
            Version::V1 => counter(&dir.join("memory.oom_control"), "oom_kill")
                .or_else(|| fs::read_to_string(dir.join("memory.failcnt")).ok()?.trim().parse().ok()),
        };
        counted.is_some_and(|n| n > 0)
    }
}

impl Drop for TaskCgroup {
    /// Best effort, and it may block for a few seconds when processes do not die at once.
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            if let Err(e) = remove(dir) {
                warn!("cannot remove the cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// A task's `cgroup.procs` files, opened before fork (close-on-exec, so the app never sees
/// them): a child calls [`ProcsFiles::enter`] from its `pre_exec` hook.
#[derive(Clone, Debug)]
pub struct ProcsFiles(Arc<[OwnedFd]>);

impl ProcsFiles {
    /// Moves the calling process into the task's cgroup. Async-signal-safe: getpid(2), digits
    /// into a stack buffer and write(2) on the pre-opened descriptors; no allocation, no lock.
    pub fn enter(&self) -> io::Result<()> {
        let mut digits = [0; 10];
        let pid = decimal(nix::unistd::getpid().as_raw().unsigned_abs(), &mut digits);
        for fd in self.0.iter() {
            if nix::unistd::write(fd, pid)? != pid.len() {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

fn create_v2(
    mounts: &[Mount],
    proc_cgroup: &str,
    task_id: &str,
    limits: &Limits,
) -> Result<TaskCgroup, CgroupError> {
    let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        return Err(CgroupError::Unsupported("no cgroup2 hierarchy is mounted".into()));
    };
    let own =
        own_v2_path(proc_cgroup).and_then(|path| below(&mount.root, path)).map(|rel| mount.point.join(rel));
    let mut bases: Vec<PathBuf> = own.into_iter().collect();
    if !bases.contains(&mount.point) {
        bases.push(mount.point.clone());
    }
    let quota = cpu_quota_us(limits);
    let mut refusals = Vec::new();
    for base in bases {
        let cpu = match delegate(&base, quota.is_some()) {
            Ok(cpu) => cpu,
            Err(why) => {
                refusals.push(why);
                continue;
            }
        };
        let parent = base.join(PARENT);
        make_parent(&parent)?;
        enable(&parent, "memory").map_err(at(&parent.join("cgroup.subtree_control")))?;
        let cpu = cpu && enable(&parent, "cpu").is_ok();
        let cgroup = TaskCgroup { version: Version::V2, dirs: vec![fresh_dir(parent.join(task_id))?] };
        let dir = cgroup.path();
        if let Some(bytes) = memory_bytes(limits) {
            write_at(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_at(&swap, "0")?;
            }
        }
        match quota {
            Some(quota) if cpu => write_at(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?,
            Some(_) => cpu_unlimited(&format!("{} does not offer the cpu controller", base.display())),
            None => {}
        }
        return Ok(cgroup);
    }
    Err(CgroupError::Unsupported(refusals.join("; ")))
}

/// Makes `base` hand `memory` (and `cpu` when `want_cpu`, if it can) to its children: whether
/// it hands `cpu`, or why it cannot hand `memory`.
fn delegate(base: &Path, want_cpu: bool) -> Result<bool, String> {
    let available = fs::read_to_string(base.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", base.join("cgroup.controllers").display()))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    if !available.contains(&"memory") {
        let offered = if available.is_empty() { "none".to_owned() } else { available.join(" ") };
        return Err(format!(
            "{} does not offer the memory controller (it offers: {offered}); it is bound to a v1 hierarchy or not delegated",
            base.display()
        ));
    }
    enable(base, "memory").map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => {
            format!("{} holds processes of its own, so it may not hand memory to children", base.display())
        }
        _ => format!("cannot enable memory in {}/cgroup.subtree_control: {e}", base.display()),
    })?;
    Ok(want_cpu && available.contains(&"cpu") && enable(base, "cpu").is_ok())
}

/// Adds `controller` to `dir`'s `cgroup.subtree_control` unless it is there.
fn enable(dir: &Path, controller: &str) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    if fs::read_to_string(&path)?.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write_file(&path, &format!("+{controller}"))
}

fn create_v1(mounts: &[Mount], task_id: &str, limits: &Limits) -> Result<TaskCgroup, CgroupError> {
    let hierarchy = |controller: &str| {
        mounts.iter().find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
    };
    let Some(memory) = hierarchy("memory") else {
        return Err(CgroupError::Unsupported("no v1 memory hierarchy is mounted".into()));
    };
    let parent = memory.point.join(PARENT);
    make_parent(&parent)?;
    let mut cgroup = TaskCgroup { version: Version::V1, dirs: vec![fresh_dir(parent.join(task_id))?] };
    if let Some(bytes) = memory_bytes(limits) {
        let dir = cgroup.path();
        write_at(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        // Swap counts too, so the task cannot page out past its limit.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write_at(&memsw, &bytes.to_string())?;
        }
    }
    if let Some(quota) = cpu_quota_us(limits) {
        let Some(cpu) = hierarchy("cpu") else {
            cpu_unlimited("no v1 cpu hierarchy is mounted");
            return Ok(cgroup);
        };
        if cpu.point != memory.point {
            let parent = cpu.point.join(PARENT);
            make_parent(&parent)?;
            cgroup.dirs.push(fresh_dir(parent.join(task_id))?);
        }
        let dir = cgroup.dirs.last().expect("the memory directory");
        write_at(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write_at(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    Ok(cgroup)
}

fn memory_bytes(limits: &Limits) -> Option<u64> {
    limits.memory_mib.map(|mib| mib.saturating_mul(1 << 20))
}

fn cpu_quota_us(limits: &Limits) -> Option<u64> {
    let units = limits.cpu_units.filter(|&units| units > 0)?;
    Some((u64::from(units) * CPU_PERIOD_US / 1024).max(MIN_CPU_QUOTA_US))
}

/// Memory is the limit that matters; a host without the cpu controller is told once.
fn cpu_unlimited(why: &str) {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| warn!("CPU limits are not enforced: {why}"));
}

/// Creates a `tether` parent if missing; a refusal means the host is not ours to divide.
fn make_parent(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) => {
            Err(CgroupError::Unsupported(format!("cannot create {}: {e}", dir.display())))
        }
        Err(source) => Err(CgroupError::Io { path: dir.to_owned(), source }),
    }
}

/// Creates a task's directory; one left behind by a runner that died is emptied and made anew.
fn fresh_dir(dir: PathBuf) -> Result<PathBuf, CgroupError> {
    match fs::create_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove(&dir).map_err(at(&dir))?;
            fs::create_dir(&dir).map_err(at(&dir))?;
        }
        done => done.map_err(at(&dir))?,
    }
    Ok(dir)
}

/// Kills every process left in `dir`, then removes it.
fn remove(dir: &Path) -> io::Result<()> {
    kill_all(dir);
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            done => return done,
        }
    }
}

fn kill_all(dir: &Path) {
    // v2 since Linux 5.14: one write kills everything, including what forks meanwhile.
    if write_file(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // Otherwise by pid, again until none is left: a process may have forked before its kill.
    let deadline = Instant::now() + REMOVE_WAIT;
    while Instant::now() < deadline {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else { return };
        let pids: Vec<i32> = procs.lines().filter_map(|line| line.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number after `key` in a flat-keyed file such as `memory.events`.
fn counter(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn read(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(at(Path::new(path)))
}

fn write_at(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_file(path, value).map_err(at(path))
}

/// One write(2), as cgroup files want; never creates the file.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { path, source }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq)]
struct Mount {
    /// The mounted directory of the filesystem (of the hierarchy, for cgroups).
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    /// The superblock's options: a v1 hierarchy's controllers are among them.
    options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // Optional fields come before a lone `-`; paths escape spaces, so ` - ` is unique.
            let (mount, fs) = line.split_once(" - ")?;
            let mut mount = mount.split(' ').skip(3);
            let (root, point) = (mount.next()?, mount.next()?);
            let mut fs = fs.split(' ');
            let fstype = fs.next()?.to_owned();
            let options = fs.nth(1)?.split(',').map(str::to_owned).collect();
            Some(Mount { root: unescape(root), point: unescape(point), fstype, options })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The runner's cgroup in the v2 hierarchy, from `/proc/self/cgroup`.
fn own_v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// `path` relative to the mount's `root`; `None` when outside it (shown as `/..` from another
/// cgroup namespace).
fn below(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path).strip_prefix(root).ok()?;
    rel.components().all(|c| matches!(c, Component::Normal(_))).then(|| rel.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, ExitStatus, Stdio};

    use super::*;

    /// A cgroup for `test`, or `None` with the reason printed where the host has none to give.
    fn cgroup_or_skip(test: &str, limits: Limits) -> Option<TaskCgroup> {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: {test} needs root");
            return None;
        }
        match TaskCgroup::create(&format!("test-{test}-{}", std::process::id()), &limits) {
            Ok(cgroup) => Some(cgroup),
            Err(CgroupError::Unsupported(why)) => {
                println!("skipped: {test}: {why}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Python that waits for a line on stdin (the test places it first), then fills `mib` MiB.
    fn allocator(mib: u32) -> Child {
        let script = format!("import sys\nsys.stdin.readline()\nb = b'x' * ({mib} << 20)\nprint('survived')");
        Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3")
    }

    fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(child: &mut Child) -> String {
        let mut text = String::new();
        io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        text
    }

    #[test]
    fn the_kernel_kills_a_task_past_its_memory() {
        let limits = Limits { memory_mib: Some(32), cpu_units: None };
        let Some(cgroup) = cgroup_or_skip("oom", limits) else { return };
        let mut child = allocator(200);
        cgroup.add(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{} cgroup: {status:?}", cgroup.kind());
        assert!(cgroup.oom_killed());
    }

    #[test]
    fn a_task_without_a_limit_survives() {
        let Some(cgroup) = cgroup_or_skip("unlimited", Limits::default()) else { return };
        let mut child = allocator(50);
        cgroup.add(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(30));
        assert!(status.success(), "{status:?}");
        assert_eq!(output(&mut child).trim(), "survived");
        assert!(!cgroup.oom_killed());
    }

    #[test]
    #[allow(unsafe_code)] // pre_exec is unsafe to call; this runs exactly what the runner's hook runs.
    fn a_child_is_inside_from_its_first_instruction() {
        let Some(cgroup) = cgroup_or_skip("enter", Limits::default()) else { return };
        let files = cgroup.open_procs().unwrap();
        let mut command = Command::new("cat");
        command.arg("/proc/self/cgroup").stdout(Stdio::piped());
        // SAFETY: `enter` only calls getpid and write on descriptors opened before the fork.
        unsafe {
            command.pre_exec(move || files.enter());
        }
        let mut child = command.spawn().unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{status:?}");
        let name = format!("/{PARENT}/test-enter-{}", std::process::id());
        let text = output(&mut child);
        assert!(text.lines().any(|line| line.ends_with(&name)), "{text}");
    }

    #[test]
    fn limits_are_written_and_drop_kills_and_removes() {
        let limits = Limits { memory_mib: Some(64), cpu_units: Some(512) };
        let Some(cgroup) = cgroup_or_skip("drop", limits) else { return };
        let dir = cgroup.path().to_owned();
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
        match cgroup.kind() {
            "v2" => assert_eq!(read("memory.max"), (64 << 20).to_string()),
            _ => assert_eq!(read("memory.limit_in_bytes"), (64 << 20).to_string()),
        }
        let cpu = cgroup.dirs.last().unwrap();
        let quota = match cgroup.kind() {
            "v2" => fs::read_to_string(cpu.join("cpu.max")).ok(),
            _ => fs::read_to_string(cpu.join("cpu.cfs_quota_us")).ok(),
        };
        println!("{} cgroup {}, cpu quota: {quota:?}", cgroup.kind(), dir.display());
        if let Some(quota) = quota {
            assert!(quota.starts_with("50000"), "{quota}");
        }
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        cgroup.add(child.id()).unwrap();
        let dirs = cgroup.dirs.clone();
        drop(cgroup);
        assert!(dirs.iter().all(|dir| !dir.exists()), "{dirs:?}");
        assert_eq!(wait_bounded(&mut child, Duration::from_secs(10)).signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn task_ids_stay_one_directory() {
        for id in ["", ".", "..", "a/b", "../etc", "a..b"] {
            let e = TaskCgroup::create(id, &Limits::default()).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidTaskId { .. }), "{id}: {e}");
        }
    }

    #[test]
    fn cpu_units_become_a_quota() {
        let quota = |units| cpu_quota_us(&Limits { memory_mib: None, cpu_units: units });
        assert_eq!(quota(Some(1024)), Some(100_000));
        assert_eq!(quota(Some(256)), Some(25_000));
        assert_eq!(quota(Some(4096)), Some(400_000));
        assert_eq!(quota(Some(1)), Some(MIN_CPU_QUOTA_US));
        assert_eq!(quota(Some(0)), None);
        assert_eq!(quota(None), None);
    }

    #[test]
    fn pids_are_written_in_decimal() {
        let mut buf = [0; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn mounts_and_own_cgroup_are_read() {
        let hybrid = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            41 31 0:38 /sub /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        let mounts = parse_mountinfo(hybrid);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mounts[1].options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(mounts[2].fstype, "cgroup2");
        assert_eq!(mounts[2].root, Path::new("/sub"));
        assert_eq!(mounts[2].point, Path::new("/sys/fs/cgroup/my unified"));

        let own = "4:memory:/process_api/3b74\n0::/system.slice/tether.service\n";
        assert_eq!(own_v2_path(own), Some("/system.slice/tether.service"));
        let root = Path::new("/");
        assert_eq!(below(root, "/system.slice/tether.service"), Some("system.slice/tether.service".into()));
        assert_eq!(below(root, "/"), Some(PathBuf::new()));
        assert_eq!(below(Path::new("/sub"), "/sub/a"), Some("a".into()));
        assert_eq!(below(Path::new("/sub"), "/other"), None);
        assert_eq!(below(root, "/../../x"), None);
    }
}
