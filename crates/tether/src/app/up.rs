//! `tether up [FILE]`: the whole application on this machine, in the foreground.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tether_control::identity::IdentityOptions;
use tether_control::{SchedulerOptions, Server, ServerConfig, ensure_data_dir};
use tether_model::{App, AppProtocol};
use tether_runner::agent::{Agent, AgentConfig};
use tether_runner::status::{ServiceStatus, TaskState};
use tether_runner::{ControlClient, HostConfig, LogLine, Status};
use tether_store::Embedded;
use tokio::sync::{broadcast, watch};

use super::session::{DataDir, Session, write_state};
use super::{EX_DATAERR, load_spec};

/// The local agent's lease: when `tether up` dies, its instances expire after this.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the progress and `state.json` are brought up to date from the control plane.
const STATUS_POLL: Duration = Duration::from_millis(250);

/// Run an application: start an embedded control plane and this machine as the one host of
/// its fleet (the same agent as `tether agent`), which runs every service's tasks, each in a
/// sandbox of its own beside its sidecar; wait until all are healthy. Then stream the apps'
/// output until Ctrl-C (or `tether down`), which drains and stops everything.
///
///   tether up examples/shop/tether.yaml
///
/// The state (embedded store, admin token, task files, logs) is kept in .tether beside the spec
/// file. `tether ps`, `tether logs SERVICE`, `tether deploy`, `tether hosts` and `tether down`
/// work against it from the same folder. Sandboxes need root, or a kernel that lets users
/// create user namespaces (then tether up makes one of its own); `networkMode: host` runs a
/// service without.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The spec file (YAML or JSON).
    #[arg(value_name = "FILE", default_value = "tether.yaml")]
    file: PathBuf,
    #[command(flatten)]
    data: DataDir,
    /// Where the embedded control plane's API listens; port 0 lets the system pick.
    #[arg(long, value_name = "ADDR", default_value_t = tether_control::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Use this control plane instead of starting one (with its admin token): the spec is
    /// applied there and this machine joins its fleet as a host.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The control plane's admin token (with --server).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true, requires = "server")]
    token: Option<String>,
    /// Seconds a stopping task's sidecar keeps serving while its removal reaches the callers.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    drain_wait: f64,
    /// How long the sidecars' certificates live (embedded control plane), e.g. 24h, 30m, 90s;
    /// renewed at half-life.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::server::parse_lifetime, conflicts_with = "server")]
    certificate_lifetime: Duration,
    /// Show progress only, not the apps' output.
    #[arg(long, short)]
    quiet: bool,
}

pub fn main(args: Args) -> ExitCode {
    let app = match load_spec(&args.file) {
        Ok(app) => app,
        Err(code) => return code,
    };
    if !(0.0..=110.0).contains(&args.drain_wait) {
        eprintln!("--drain-wait: expected seconds from 0 to 110");
        return ExitCode::from(EX_DATAERR);
    }
    if let Err(code) = super::prepare_sandboxes(&app) {
        return code;
    }
    super::run_async(run(args, app))
}

async fn run(args: Args, app: App) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let data = args.data.resolve(Some(&args.file));
    ensure_data_dir(&data)?;
    let data = data.canonicalize()?;
    if let Ok(session) = Session::find(&data) {
        bail!(
            "{} is already running from {} (pid {}); stop it with `tether down` first",
            session.namespace,
            data.display(),
            session.pid
        );
    }
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        crate::signal::shutdown().await;
        let _ = stop.send(true);
    });
    let until_stopped = || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };

    // The control plane outlives the agent, which needs it to deregister its tasks; its
    // scheduler stops first, so that nothing is placed again while the agent drains.
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let (server, token, control) = match args.server.clone() {
        Some(server) => {
            let token = args.token.clone().context("--server needs --token (or TETHER_TOKEN)")?;
            (server, token, None)
        }
        None => {
            let stopped = async move {
                let _ = control_stopped.await;
            };
            let identity = IdentityOptions { lifetime: args.certificate_lifetime, supplied: None };
            let (url, token, join) =
                embedded_control_plane(&data, args.listen, identity, until_stopped(), stopped).await?;
            (url, token, Some(join))
        }
    };
    let client = ControlClient::new(&server, &token);
    super::apply(&client, &app, false).await?;
    let spec = args.file.canonicalize().unwrap_or_else(|_| args.file.clone());
    let base_dir = spec.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    Session {
        pid: std::process::id(),
        namespace: app.namespace.clone(),
        server: server.clone(),
        token: token.clone(),
        spec,
    }
    .write(&data)?;

    // This machine as the one host of the control plane's fleet: the same agent as `tether
    // agent`, on a join token the admin token makes.
    let name = host_name();
    let agent = Agent::join(AgentConfig {
        name: name.clone(),
        server: server.clone(),
        token: client.join_token(&name).await.context("making this host's join token")?,
        address: Ipv4Addr::LOCALHOST.into(),
        attributes: Default::default(),
        capacity: crate::fleet::detected_capacity(),
        lease_ttl: LEASE_TTL,
        host: HostConfig {
            data_dir: data.clone(),
            base_dir,
            tether_exe: std::env::current_exe().context("finding the tether binary")?,
            advertise: Ipv4Addr::LOCALHOST.into(),
            drain_wait: Duration::from_secs_f64(args.drain_wait),
        },
    })
    .await
    .with_context(|| format!("joining {server} as host {name}"))?;
    let tasks: u32 =
        app.services.iter().filter(|(_, s)| s.task.is_some()).map(|(_, s)| s.desired_count).sum();
    println!(
        "{}: starting {tasks} tasks of {} services (control plane {server})",
        app.namespace,
        app.services.len()
    );
    let mut logs = agent.logs();
    let agent = tokio::spawn(agent.run(until_stopped()));

    let mut progress = Progress { started, shown: Status::default(), announced: false };
    let mut stopping = stopping;
    let mut unreachable = false;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            () = tokio::time::sleep(STATUS_POLL) => match Status::read(&client, &app.namespace).await {
                Ok(now) => {
                    unreachable = false;
                    if now == progress.shown {
                        continue;
                    }
                    let _ = write_state(&data, &now);
                    progress.show(&now);
                    if now.settled() && !progress.announced && !now.services.is_empty() {
                        progress.announced = true;
                        summary(&app, &now, &server, &data, &name, started).await;
                    }
                }
                Err(e) if !unreachable => {
                    unreachable = true;
                    println!("[{:6.1}s] {e}; tasks keep running", started.elapsed().as_secs_f64());
                }
                Err(_) => {}
            },
            line = logs.recv(), if !args.quiet => match line {
                Ok(line) => print_line(&line),
                Err(broadcast::error::RecvError::Lagged(n)) => println!("… {n} lines skipped"),
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    }
    println!("stopping: draining every task…");
    let _ = agent.await;
    let _ = std::fs::remove_file(data.join(super::session::SESSION_FILE));
    let _ = std::fs::remove_file(data.join(super::session::STATE_FILE));
    let _ = stop_control.send(());
    if let Some(control) = control {
        let _ = tokio::time::timeout(Duration::from_secs(10), control).await;
    }
    println!("stopped after {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// This machine's name as a host of the fleet: its hostname, or `local` when that is not a
/// usable name.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_ascii_lowercase();
    match tether_model::registry::check_instance_id(&name) {
        Ok(()) if !name.is_empty() => name,
        _ => "local".to_owned(),
    }
}

/// The control plane inside `up`: the embedded store in the data directory, the API and the
/// proxy stream on `listen`.
async fn embedded_control_plane(
    data: &Path,
    listen: SocketAddr,
    identity: IdentityOptions,
    stop_scheduler: impl Future<Output = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(String, String, tokio::task::JoinHandle<()>)> {
    let dir = data.to_path_buf();
    let store = tokio::task::spawn_blocking(move || Embedded::open(&dir))
        .await?
        .with_context(|| format!("opening the embedded store in {}", data.display()))?;
    let scheduler = Some(SchedulerOptions { lost_grace: LEASE_TTL + Duration::from_secs(5) });
    let config = ServerConfig { listen, data_dir: data.to_path_buf(), identity, scheduler };
    let server = Server::bind(&config, store).await.with_context(|| {
        format!("starting the control plane on {listen} (is another `tether up` or `tether server` using it? pass --listen 127.0.0.1:0)")
    })?;
    let token = server.admin_token().as_str().to_owned();
    let url = format!("http://{}", server.local_addr());
    let join = tokio::spawn(async move {
        if let Err(e) = server.run_until(stop_scheduler, stop).await {
            eprintln!("the control plane stopped: {e:#}");
        }
    });
    Ok((url, token, join))
}

struct Progress {
    started: Instant,
    shown: Status,
    announced: bool,
}

impl Progress {
    /// One line per change worth telling: a task started, became healthy, stopped; a failure;
    /// a deployment's news.
    fn show(&mut self, now: &Status) {
        let at = self.started.elapsed().as_secs_f64();
        for (name, service) in &now.services {
            let before = self.shown.services.get(name);
            for task in &service.tasks {
                let was = before.and_then(|b| b.tasks.iter().find(|t| t.id == task.id)).map(|t| t.state);
                if was != Some(task.state) {
                    let what = match task.state {
                        TaskState::Starting => "starting",
                        TaskState::Healthy => "healthy",
                        TaskState::Stopping => "stopping",
                    };
                    println!("[{at:6.1}s] {:<28} {what} {}", task.id, counts(service));
                }
            }
            if let Some(failure) = &service.last_failure
                && before.and_then(|b| b.last_failure.as_ref()) != Some(failure)
            {
                println!("[{at:6.1}s] {failure}");
            }
            if let Some(deployment) = &service.deployment
                && before.and_then(|b| b.deployment.as_ref()) != Some(deployment)
            {
                println!("[{at:6.1}s] {name}: {}", deployment.message);
            }
        }
        self.shown = now.clone();
    }
}

fn counts(service: &ServiceStatus) -> String {
    format!("({}/{} healthy)", service.healthy(), service.desired)
}

async fn summary(app: &App, status: &Status, server: &str, data: &Path, host: &str, started: Instant) {
    let tasks: usize = status.services.values().map(|s| s.tasks.len()).sum();
    println!("\n{} is up: {tasks} tasks healthy in {:.1} s", app.namespace, started.elapsed().as_secs_f64());
    for (_, service) in &app.services {
        let Some(running) = status.services.get(&service.name) else { continue };
        let mut line = format!("  {:<20} {}/{}", service.name, running.healthy(), running.desired);
        for publish in &service.publish {
            let addr = SocketAddr::from(([127, 0, 0, 1], publish.host_port));
            let listening = wait_for(addr, Duration::from_secs(5)).await;
            line.push_str(&match publish.app_protocol {
                AppProtocol::Http | AppProtocol::Http2 => format!("   http://{addr}/"),
                AppProtocol::Grpc => format!("   {addr} (gRPC)"),
                AppProtocol::Tcp => format!("   {addr} (tcp)"),
            });
            if !listening {
                line.push_str(&format!(
                    " (not answering yet: see {})",
                    data.join(format!("logs/edge.{}.log", app.namespace)).display()
                ));
            }
        }
        let aliases: Vec<String> = service
            .discovery
            .iter()
            .flat_map(|d| &d.client_aliases)
            .map(|a| format!("{}:{}", a.dns_name, a.port))
            .collect();
        if !aliases.is_empty() {
            line.push_str(&format!("   called as {}", aliases.join(", ")));
        }
        println!("{line}");
    }
    println!(
        "  control plane: {server} (token in {}), with this machine as its one host, {host} (tether hosts)",
        data.join("admin.token").display()
    );
    println!(
        "  identity: each sidecar holds spiffe://{}/SERVICE; sidecars talk mutual TLS (tether ca status --server {server} --data {})",
        app.namespace,
        data.display()
    );
    println!("  logs: tether logs SERVICE -f; status: tether ps; stop: Ctrl-C or tether down\n");
}

async fn wait_for(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_line(line: &LogLine) {
    let short = line.task.rsplit('-').next().unwrap_or(&line.task);
    println!("{:>20} | {}", format!("{}/{short}", line.service), line.line);
}
