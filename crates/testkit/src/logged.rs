//! A child process whose stderr is collected into a log that tests read (addresses it bound,
//! what it refused) and print when something goes wrong. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct LoggedChild {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl LoggedChild {
    /// Starts `command` with stdin and stdout closed and stderr collected.
    pub fn spawn(command: Command) -> anyhow::Result<Self> {
        Self::start(command, false)
    }

    /// Starts `command` with stdin closed and both stdout and stderr collected, in one log.
    pub fn spawn_with_stdout(command: Command) -> anyhow::Result<Self> {
        Self::start(command, true)
    }

    fn start(mut command: Command, stdout: bool) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr is piped")?;
        let collect = |output: Box<dyn std::io::Read + Send>| {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let reader = collect(Box::new(stderr));
        if let Some(out) = child.stdout.take() {
            // Joined implicitly: it ends with the process, like the stderr reader.
            collect(Box::new(out));
        }
        Ok(Self { child, log, reader: Some(reader) })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited; the log is then complete.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some()
            && let Some(reader) = self.reader.take()
        {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill();
    }
}
