//! A `tether up` run by a test: the spec and its apps written into a folder of their own, the
//! process's output collected, and the commands that work against it (`ps`, `deploy`, …).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::logged::LoggedChild;

pub struct RunningApp {
    /// The folder holding the spec file and the apps.
    pub dir: PathBuf,
    /// `tether up`'s data directory.
    pub data: PathBuf,
    spec: PathBuf,
    bin: PathBuf,
    up: LoggedChild,
    _owned: Option<tempfile::TempDir>,
}

impl RunningApp {
    /// Writes `files` (name, content) into a new folder and runs `tether up` on its
    /// `tether.yaml`.
    pub fn start(bin: &str, files: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(bin, files, &["--listen", "127.0.0.1:0"])
    }

    /// As [`start`](Self::start), with `tether up`'s arguments besides the file and `--data`
    /// (such as `--server URL --token T`).
    pub fn start_with(bin: &str, files: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let owned = tempfile::tempdir()?;
        let dir = owned.path().to_path_buf();
        for (name, content) in files {
            std::fs::write(dir.join(name), content)?;
        }
        let data = dir.join(".tether");
        Self::spawn(bin, &dir.join("tether.yaml"), &data, args, Some(owned))
    }

    /// Runs `tether up` on a spec file that exists already, with its state in `data`.
    pub fn start_spec(bin: &str, spec: &Path, data: &Path) -> anyhow::Result<Self> {
        Self::spawn(bin, spec, data, &["--listen", "127.0.0.1:0"], None)
    }

    fn spawn(
        bin: &str,
        spec: &Path,
        data: &Path,
        args: &[&str],
        owned: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command.arg("up").arg(spec).arg("--data").arg(data).args(args).args(["--drain-wait", "1"]);
        let up = LoggedChild::spawn_with_stdout(command)?;
        let dir = spec.parent().context("a spec file in a folder")?.to_path_buf();
        let (data, spec, bin) = (data.to_path_buf(), spec.to_path_buf(), PathBuf::from(bin));
        Ok(Self { dir, data, spec, bin, up, _owned: owned })
    }

    /// Waits until every task is healthy (`tether up` says so).
    pub async fn wait_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_output(" is up: ", timeout).await
    }

    /// Waits until `needle` appears in `tether up`'s output.
    pub async fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.up.exited()? {
                bail!("tether up exited ({status}) before `{needle}`:\n{}", self.output());
            }
            if Instant::now() > deadline {
                bail!("no `{needle}` within {timeout:?}:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything `tether up` printed so far.
    pub fn output(&self) -> String {
        self.up.log()
    }

    pub fn pid(&self) -> u32 {
        self.up.pid()
    }

    /// Runs `tether ARGS… --data DATA` and returns its output.
    pub fn tether(&self, args: &[&str]) -> Output {
        Command::new(&self.bin).args(args).arg("--data").arg(&self.data).output().expect("running tether")
    }

    /// `tether deploy` of `spec` (written over the spec file first).
    pub fn deploy(&self, spec: &str) -> Output {
        std::fs::write(&self.spec, spec).expect("writing the spec");
        Command::new(&self.bin)
            .arg("deploy")
            .arg(&self.spec)
            .arg("--data")
            .arg(&self.data)
            .args(["--timeout", "120"])
            .output()
            .expect("running tether deploy")
    }

    /// `tether ps --output json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.tether(&["ps", "--output", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The ids of the service's tasks in a state (`HEALTHY`, `STARTING`, `STOPPING`).
    pub fn tasks(&self, service: &str, state: &str) -> Vec<String> {
        let status = self.status();
        let tasks = status["services"][service]["tasks"].as_array().cloned().unwrap_or_default();
        tasks
            .iter()
            .filter(|t| t["state"] == state)
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// What the service's apps wrote, all tasks together.
    pub fn app_logs(&self, service: &str) -> String {
        let dir = self.data.join("logs").join(service);
        let mut all = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(".sidecar.log") {
                all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        all
    }

    /// The pid of the task's app: the process started with its id whose command line contains
    /// `command`.
    pub fn app_pid(&self, task: &str, command: &str) -> Option<u32> {
        processes_with_env(&format!("TETHER_TASK={task}"))
            .into_iter()
            .find(|(_, cmdline)| cmdline.contains(command))
            .map(|(pid, _)| pid)
    }

    /// Every process this run started that is still there: apps (they carry their task's id),
    /// sidecars and the edge (their command lines name the data directory).
    pub fn leftovers(&self) -> Vec<(u32, String)> {
        let data = self.data.to_string_lossy().into_owned();
        // Every task of this run left its log: `logs/SERVICE/TASK.log`.
        let tasks: Vec<String> = std::fs::read_dir(self.data.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|service| std::fs::read_dir(service.path()).into_iter().flatten().flatten())
            .filter_map(|f| f.file_name().to_str()?.strip_suffix(".log").map(|t| format!("TETHER_TASK={t}")))
            .collect();
        all_processes()
            .into_iter()
            .filter(|(pid, cmdline)| {
                *pid != self.pid()
                    && (cmdline.contains(&data) || env_of(*pid).lines().any(|l| tasks.iter().any(|t| t == l)))
            })
            .collect()
    }

    /// The control plane's URL and admin token, as `tether up` keeps them in `up.json`.
    pub fn control_plane(&self) -> anyhow::Result<(String, String)> {
        let path = self.data.join("up.json");
        let session: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| {
            session[name].as_str().map(str::to_owned).with_context(|| format!("no `{name}` in {session}"))
        };
        Ok((field("server")?, field("token")?))
    }

    /// The task sidecars and the edge proxy of this run that are running, found by their
    /// command lines, which name the data directory.
    pub fn proxies(&self) -> Vec<RunningProxy> {
        let data = self.data.to_string_lossy().into_owned();
        all_processes()
            .into_iter()
            .filter_map(|(pid, _)| {
                let args = command_line(pid);
                if args.get(1).map(String::as_str) != Some("proxy")
                    || !args.iter().any(|a| a.starts_with(&data))
                {
                    return None;
                }
                let after = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
                Some(RunningProxy { pid, task: after("--task")?, admin: after("--admin")?.parse().ok()? })
            })
            .collect()
    }

    /// Ctrl-C, and waits for `tether up` to exit.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.up.signal("INT");
        self.up
            .wait_exit(timeout)
            .await
            .with_context(|| format!("tether up still runs {timeout:?} after SIGINT:\n{}", self.output()))
    }
}

/// A proxy that `tether up` started: a task's sidecar or the edge.
#[derive(Debug, Clone)]
pub struct RunningProxy {
    pub pid: u32,
    /// The task it serves (`web-1a2b3c`), or `edge-PID` for the edge.
    pub task: String,
    /// Its admin endpoint: `/config` (with its identity), `/metrics`.
    pub admin: SocketAddr,
}

/// A process's arguments, as it was started.
fn command_line(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn all_processes() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            continue; // a kernel thread, or a zombie
        }
        let cmdline: String = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((pid, cmdline));
    }
    found
}

fn env_of(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .replace('\0', "\n")
}

/// Processes whose environment holds a line that starts with `entry` (`TETHER_TASK=api-`).
pub fn processes_with_env(entry: &str) -> Vec<(u32, String)> {
    all_processes()
        .into_iter()
        .filter(|(pid, _)| env_of(*pid).lines().any(|l| l.starts_with(entry)))
        .collect()
}
