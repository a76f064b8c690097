//! `tether run --server URL --service NAME -- CMD …`: one standalone task.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tether_runner::{HostConfig, Runner, RunnerConfig};

/// Run one task of an existing service with the given command, in a sandbox beside its own
/// sidecar, registered with the control plane once healthy, outside the service's
/// desiredCount. It calls other services by name like any task. Ctrl-C drains and stops it;
/// when the command exits, so does `tether run` (exit 1 if it failed).
///
///   tether run --server http://127.0.0.1:7700 --namespace shop.local --service orders -- python3 orders.py
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The control plane.
    #[arg(long, value_name = "URL", env = "TETHER_SERVER")]
    server: String,
    /// Its admin token.
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: String,
    /// The service's namespace.
    #[arg(long)]
    namespace: String,
    /// The service the task belongs to.
    #[arg(long)]
    service: String,
    /// Where the task keeps its files and logs. Default: .tether-run in the current directory.
    #[arg(long, value_name = "DIR", default_value = ".tether-run")]
    data: PathBuf,
    /// Seconds the sidecar keeps serving while the task's removal reaches the callers.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    drain_wait: f64,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn main(args: Args) -> ExitCode {
    // Rootless: a user namespace must be entered before any thread starts. When the kernel
    // refuses, a sandboxed task fails with that reason; a `networkMode: host` one runs anyway.
    let _ = tether_runner::sandbox::become_root_in_user_namespace();
    super::run_async(async move {
        tether_control::ensure_data_dir(&args.data)?;
        let data = args.data.canonicalize()?;
        let runner = Runner::new(RunnerConfig {
            namespace: args.namespace.clone(),
            server: args.server.clone(),
            token: args.token.clone(),
            host: HostConfig {
                data_dir: data.clone(),
                base_dir: std::env::current_dir()?,
                tether_exe: std::env::current_exe().context("finding the tether binary")?,
                advertise: std::net::Ipv4Addr::LOCALHOST.into(),
                drain_wait: Duration::from_secs_f64(args.drain_wait.clamp(0.0, 110.0)),
            },
        })
        .await?;
        let mut logs = runner.logs();
        tokio::spawn(async move {
            while let Ok(line) = logs.recv().await {
                println!("{}", line.line);
            }
        });
        let outcome = runner
            .run_one(&args.service, args.command, |id| eprintln!("{id}: healthy"), crate::signal::shutdown())
            .await?;
        Ok(match outcome {
            None => ExitCode::SUCCESS,
            Some(why) => {
                eprintln!("the task failed: {why}");
                ExitCode::FAILURE
            }
        })
    })
}
