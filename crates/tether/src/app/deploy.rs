//! `tether deploy [FILE]`: apply a changed spec to a running `tether up`, and follow the
//! rolling deployments it starts until they complete or roll back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tether_runner::status::DeploymentState;
use tether_runner::{ControlClient, Status};

use super::load_spec;
use super::session::{DataDir, Session};

/// Apply a changed spec file to a running application: new task versions roll out within each
/// service's minimumHealthyPercent / maximumPercent, new tasks healthy before old ones drain; a
/// version whose tasks keep failing is rolled back. Waits and reports each service's outcome:
/// exit 0 when every deployment completed, 1 when one was rolled back or failed.
///
/// Changes that need no new tasks (desiredCount, client aliases, timeouts, retries, services
/// added or removed) apply at once.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The spec file.
    #[arg(value_name = "FILE", default_value = "tether.yaml")]
    file: PathBuf,
    #[command(flatten)]
    data: DataDir,
    /// Give up waiting after this many seconds (the deployment goes on).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// Deploy to a fleet's control plane (`tether server`) instead of the `tether up` of this
    /// folder: its scheduler rolls the new tasks out across the hosts, and the deployment goes
    /// on if this command stops. Tasks run in the spec file's folder (or workingDirectory in
    /// it) as an absolute path, which must exist on every host.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The control plane's admin token (with --server).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true, requires = "server")]
    token: Option<String>,
}

pub fn main(args: Args) -> ExitCode {
    let app = match load_spec(&args.file) {
        Ok(app) => app,
        Err(code) => return code,
    };
    if let Some(server) = args.server.clone() {
        let app = with_absolute_directories(app, &args.file);
        return super::run_async(async move {
            let token = args.token.clone().context("--server needs --token (or TETHER_TOKEN)")?;
            let client = ControlClient::new(&server, &token);
            let changed = super::apply(&client, &app, false).await?;
            if changed.is_empty() {
                println!("nothing changed");
                return Ok(ExitCode::SUCCESS);
            }
            follow(&client, &app.namespace, changed, Duration::from_secs(args.timeout)).await
        });
    }
    super::run_async(async move {
        let data = args.data.resolve(Some(&args.file));
        let session = Session::find(&data)?;
        if session.namespace != app.namespace {
            anyhow::bail!(
                "{} runs namespace {}, and the file describes {}: deploy to the `tether up` that runs it (--data)",
                data.display(),
                session.namespace,
                app.namespace
            );
        }
        let client = ControlClient::new(&session.server, &session.token);
        let changed = super::apply(&client, &app, false).await?;
        if changed.is_empty() {
            println!("nothing changed");
            return Ok(ExitCode::SUCCESS);
        }
        follow(&client, &app.namespace, changed, Duration::from_secs(args.timeout)).await
    })
}

/// Until every changed service runs its new revision, or its deployment ended otherwise: its
/// progress as it changes, then its outcome. Exit 0 when every one completed.
async fn follow(
    client: &ControlClient,
    ns: &str,
    mut waiting: BTreeMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut failed = false;
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    while !waiting.is_empty() {
        if started.elapsed() > timeout {
            let names: Vec<&str> = waiting.keys().map(String::as_str).collect();
            println!(
                "still rolling out after {timeout:?}: {} (it goes on; see `tether deployments`)",
                names.join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
        let services = client.services(ns).await?;
        let tasks = client.tasks(ns).await?;
        let deployments = client.deployments(ns, None).await?;
        let status = Status::from_records(ns, &services, &tasks, &deployments);
        waiting.retain(|name, revision| {
            let Some(service) = status.services.get(name) else {
                // No tasks to run (an external service, or no command): nothing to roll.
                return false;
            };
            // This revision's own deployment; none when it changed nothing a task runs (only
            // desiredCount, say), or when a newer revision came before the scheduler saw it.
            let deployment = deployments.iter().find(|d| d.service == *name && d.to_revision == *revision);
            let message = deployment.map(|d| d.message.clone()).unwrap_or_default();
            if !message.is_empty() && said.get(name) != Some(&message) {
                println!("{name}: {message}");
                said.insert(name.clone(), message);
            }
            match deployment.map(|d| d.state) {
                Some(DeploymentState::RolledBack | DeploymentState::Failed | DeploymentState::Superseded) => {
                    failed = true;
                    false
                }
                _ if service.revision >= *revision && service.settled() => {
                    println!(
                        "{name}: revision {revision} running, {}/{} healthy",
                        service.healthy(),
                        service.desired
                    );
                    false
                }
                _ => true,
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// For a fleet: every service's working directory as an absolute path (the spec file's folder,
/// or `workingDirectory` within it), since agents run tasks on other machines, where a relative
/// path would mean nothing. That path must exist on every host.
fn with_absolute_directories(mut app: tether_model::App, file: &std::path::Path) -> tether_model::App {
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let folder = file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    for (spec, _) in &mut app.services {
        if spec.command.is_empty() {
            continue;
        }
        let dir = match &spec.working_directory {
            Some(dir) => folder.join(dir),
            None => folder.clone(),
        };
        spec.working_directory = Some(dir.to_string_lossy().into_owned());
    }
    app
}
