//! `tether ps`, `tether logs SERVICE [-f]` and `tether down`: looking at, and stopping, a
//! running `tether up`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use super::session::{DataDir, Session, read_state};
use crate::validate::Output;

/// List the tasks of a running `tether up`: service, task, revision, state and age, and each
/// service's last deployment. With --server, a fleet's tasks as its control plane placed them:
/// with their host, desired state and why one is pending or stopped.
#[derive(clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    data: DataDir,
    /// text (for people) or json (for scripts).
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// A fleet's control plane (`tether server`), instead of the `tether up` of this folder.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The control plane's admin token (with --server).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true, requires = "server")]
    token: Option<String>,
    /// The namespace (with --server); may be left out when the control plane has only one.
    #[arg(long, short, value_name = "NS", requires = "server")]
    namespace: Option<String>,
}

pub fn ps(args: PsArgs) -> ExitCode {
    if let Some(server) = args.server {
        let output = match args.output {
            Output::Text => crate::inspect::Output::Table,
            Output::Json => crate::inspect::Output::Json,
        };
        let target = crate::api_client::Target::new(server, args.token);
        return crate::fleet::ps(crate::inspect::Common { target, namespace: args.namespace, output });
    }
    report(|| {
        let data = args.data.resolve(None);
        let session = Session::find(&data)?;
        let status = read_state(&data)?;
        if args.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&status)?);
            return Ok(());
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        println!("namespace {} (tether up, pid {})", session.namespace, session.pid);
        println!("{:<16} {:<24} {:>8}  {:<9} {:>6}", "SERVICE", "TASK", "REVISION", "STATE", "AGE");
        for (name, service) in &status.services {
            for task in &service.tasks {
                let state = format!("{:?}", task.state).to_uppercase();
                let age = age(now.saturating_sub(task.started));
                println!("{name:<16} {:<24} {:>8}  {state:<9} {age:>6}", task.id, task.revision);
            }
            if let Some(deployment) = &service.deployment {
                println!("{:<16} deployment: {}", "", deployment.message);
            }
            if let Some(failure) = &service.last_failure {
                println!("{:<16} last failure: {failure}", "");
            }
        }
        Ok(())
    })
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Print a service's logs: every task's output, oldest task first, each line marked with its
/// task. With -f, keep printing what the tasks write, including tasks started later.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// The service.
    service: String,
    /// Follow: keep printing new lines until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    data: DataDir,
}

pub fn logs(args: LogsArgs) -> ExitCode {
    report(|| {
        let data = args.data.resolve(None);
        let dir = data.join("logs").join(&args.service);
        if !dir.is_dir() {
            bail!(
                "no logs for service `{}` in {}: is it a service of the running application? (`tether ps` lists them)",
                args.service,
                data.display()
            );
        }
        let mut followed: Vec<(PathBuf, u64)> = Vec::new();
        let mut out = std::io::stdout().lock();
        loop {
            for path in log_files(&dir)? {
                if !followed.iter().any(|(p, _)| *p == path) {
                    followed.push((path, 0));
                }
            }
            for (path, offset) in &mut followed {
                *offset = print_from(path, *offset, &mut out)?;
            }
            out.flush()?;
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// The app logs of a service's tasks, oldest first (sidecar logs are beside them).
fn log_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log") && !p.to_string_lossy().ends_with(".sidecar.log")
        })
        .map(|p| {
            (
                p.metadata()
                    .and_then(|m| m.created().or_else(|_| m.modified()))
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Prints the whole lines of `path` after `offset`, each marked with the task; returns the new
/// offset.
fn print_from(path: &Path, offset: u64, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let Some(end) = text.iter().rposition(|b| *b == b'\n') else { return Ok(offset) };
    let task = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for line in text[..end].split(|b| *b == b'\n') {
        writeln!(out, "{task} | {}", String::from_utf8_lossy(line))?;
    }
    Ok(offset + end as u64 + 1)
}

/// Stop a running `tether up`: it drains every task, stops them and its control plane, the
/// same as Ctrl-C in its terminal. Waits until it has exited.
#[derive(clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    data: DataDir,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
}

pub fn down(args: DownArgs) -> ExitCode {
    report(|| {
        let data = args.data.resolve(None);
        let session = Session::find(&data)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(session.pid).context("a pid")?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("signalling tether up (pid {})", session.pid))?;
        println!("stopping {} (pid {})…", session.namespace, session.pid);
        let started = Instant::now();
        while session.alive() {
            if started.elapsed() > Duration::from_secs(args.timeout) {
                bail!("pid {} still runs after {} s", session.pid, args.timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("stopped");
        Ok(())
    })
}

fn report(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
