//! What a running `tether up` leaves in its data directory for the commands that work against
//! it (`down`, `ps`, `logs`, `deploy`): `up.json` (who it is and where its control plane is)
//! and `state.json` (what its runner is doing), both replaced atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tether_runner::Status;

pub const SESSION_FILE: &str = "up.json";
pub const STATE_FILE: &str = "state.json";

/// Where the data directory is: `--data`, else `.tether` beside the spec file (or in the
/// current directory).
#[derive(clap::Args, Clone)]
pub struct DataDir {
    /// The directory `tether up` keeps its state in (the embedded store, the admin token, task
    /// files and logs). Default: .tether beside the spec file, or in the current directory.
    #[arg(long, value_name = "DIR", env = "TETHER_UP_DATA")]
    pub data: Option<PathBuf>,
}

impl DataDir {
    pub fn resolve(&self, spec: Option<&Path>) -> PathBuf {
        if let Some(dir) = &self.data {
            return dir.clone();
        }
        let base =
            spec.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        base.join(".tether")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub pid: u32,
    pub namespace: String,
    /// The control plane's URL and token.
    pub server: String,
    pub token: String,
    /// The spec file `up` started from.
    pub spec: PathBuf,
}

impl Session {
    /// The session of the `tether up` that owns `dir`, if it is still running.
    pub fn find(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SESSION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "nothing is running from {}: start it with `tether up`, or point at its data directory with --data",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let session: Session = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tether session file", path.display()))?;
        if !session.alive() {
            bail!("the `tether up` that wrote {} (pid {}) is no longer running", path.display(), session.pid);
        }
        Ok(session)
    }

    /// Whether the process still runs (an exited one its parent has not yet reaped counts as
    /// gone).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        // `pid (comm) STATE …`; comm may hold spaces and parentheses, the state follows the last `)`.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        write_atomically(&dir.join(SESSION_FILE), &serde_json::to_vec_pretty(self)?)
    }
}

/// What the runner is doing; nothing yet if `tether up` has only just started.
pub fn read_state(dir: &Path) -> anyhow::Result<Status> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&text).with_context(|| format!("{} is not a tether state file", path.display()))
}

pub fn write_state(dir: &Path, status: &Status) -> anyhow::Result<()> {
    write_atomically(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(status)?)
}

/// Readers see the old file or the new one, never half of one. Mode 0600: it may hold the token.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
