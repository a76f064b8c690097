//! A task's processes: started in their own process group, their output kept per task, stopped
//! with SIGTERM and then SIGKILL.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;

/// One line a task's app wrote.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub service: String,
    pub task: String,
    pub line: String,
}

/// Sends `signal` to every process of the group `pid` leads.
pub fn kill_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

pub struct TaskProcess {
    child: Child,
    pid: u32,
}

impl TaskProcess {
    /// Starts `command` with its output appended to `log`; with `lines`, each line is also
    /// sent there.
    pub async fn spawn(
        mut command: Command,
        log: &Path,
        lines: Option<(broadcast::Sender<LogLine>, String, String)>,
    ) -> std::io::Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or_default();
        for output in [child.stdout.take().map(boxed), child.stderr.take().map(boxed)].into_iter().flatten() {
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(log).await?;
            tokio::spawn(pump(output, file, lines.clone()));
        }
        Ok(Self { child, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process exits.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGTERM to the whole group; SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            kill_group(self.pid, Signal::SIGKILL);
            return Some(status);
        }
        kill_group(self.pid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                kill_group(self.pid, Signal::SIGKILL);
                self.child.wait().await.ok()
            }
        };
        // Whatever the leader left behind in its group goes with it.
        kill_group(self.pid, Signal::SIGKILL);
        status
    }
}

fn boxed(r: impl AsyncRead + Send + Unpin + 'static) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(r)
}

async fn pump(
    output: Box<dyn AsyncRead + Send + Unpin>,
    mut file: tokio::fs::File,
    lines: Option<(broadcast::Sender<LogLine>, String, String)>,
) {
    let mut reader = BufReader::new(output);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Lines are capped so that an app printing without newlines cannot grow memory.
        match (&mut reader).take(64 * 1024).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !buf.ends_with(b"\n") {
            buf.push(b'\n');
        }
        let _ = file.write_all(&buf).await;
        if let Some((sender, service, task)) = &lines {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            let _ = sender.send(LogLine { service: service.clone(), task: task.clone(), line });
        }
    }
    let _ = file.flush().await;
}

use tokio::io::AsyncReadExt as _;
