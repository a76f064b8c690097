//! One task's life: sandbox, sidecar, registration as STARTING, app, health checks, HEALTHY,
//! and on the way out DRAINING, the sidecar's drain, the app's stop and deregistration.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_model::Health;
use tether_model::registry::Registration;
use tether_model::spec::NetworkMode;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::Context;
use crate::cgroup::{CgroupError, Limits, ProcsFiles, TaskCgroup};
use crate::health::{Check, PORT_PROBE_DEADLINE, Verdicts};
use crate::process::TaskProcess;
use crate::sandbox::Sandbox;
use crate::version::Version;

/// How long an app may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a task that has not yet passed its health check is checked (failures still count
/// once per `interval`).
const STARTING_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long the sidecar may take to bind its inbound listeners after registration.
const SIDECAR_DEADLINE: Duration = Duration::from_secs(15);
/// Environment variables that would send an app's calls to some other proxy than its sidecar.
const PROXY_VARIABLES: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// What a task tells its service's supervisor.
#[derive(Debug)]
pub enum TaskEvent {
    /// Its health check passed and it is registered HEALTHY.
    Healthy,
    /// It has stopped: on request (`None`), or because it failed (why).
    Exited(Option<String>),
}

/// The agent's hold on a running task.
pub struct TaskHandle {
    /// Sends whether to drain.
    stop: Option<oneshot::Sender<bool>>,
}

impl TaskHandle {
    /// Asks the task to drain and stop; its `Exited` event follows.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }

    /// Stops the task without draining: it is no longer this host's (its instances went with
    /// an expired lease, and it was replaced elsewhere).
    pub fn abandon(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_none()
    }
}

pub fn start(
    ctx: Arc<Context>,
    version: Arc<Version>,
    id: String,
    events: mpsc::UnboundedSender<(String, TaskEvent)>,
) -> TaskHandle {
    let (stop, stopped) = oneshot::channel();
    let handle = TaskHandle { stop: Some(stop) };
    tokio::spawn(async move {
        let mut task = Task::new(ctx, version, id.clone());
        let outcome = task.run(&events, stopped).await;
        task.teardown(outcome == Ok(true)).await;
        let _ = events.send((id, TaskEvent::Exited(outcome.err())));
    });
    handle
}

struct Task {
    ctx: Arc<Context>,
    version: Arc<Version>,
    id: String,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    sidecar: Option<TaskProcess>,
    app: Option<TaskProcess>,
    /// Instance id, registration, for every port registered.
    instances: Vec<(String, Registration)>,
    healthy: bool,
    /// Holds the task's limits; dropped (and removed) once its processes are gone.
    cgroup: Option<TaskCgroup>,
}

impl Task {
    fn new(ctx: Arc<Context>, version: Arc<Version>, id: String) -> Self {
        let dir = ctx.host.data_dir.join("tasks").join(&id);
        Self {
            ctx,
            version,
            id,
            dir,
            sandbox: None,
            sidecar: None,
            app: None,
            instances: Vec::new(),
            healthy: false,
            cgroup: None,
        }
    }

    fn service(&self) -> &str {
        &self.version.service.name
    }

    /// Until the task is stopped (`Ok(drain)`) or fails (`Err` says why).
    async fn run(
        &mut self,
        events: &mpsc::UnboundedSender<(String, TaskEvent)>,
        mut stop: oneshot::Receiver<bool>,
    ) -> Result<bool, String> {
        let started = Instant::now();
        tokio::select! {
            result = self.start() => result?,
            drain = &mut stop => return Ok(drain.unwrap_or(true)),
        }
        let check = self.check();
        let mut verdicts = Verdicts::new(&check, started);
        let grace_ends = started + self.version.task.grace_period;
        let mut lease = self.ctx.lease.clone();
        let mut next_check = tokio::time::Instant::now();
        let mut last_failure = String::new();
        let mut last_counted = None;
        loop {
            let app = self.app.as_mut().expect("started");
            let sidecar = self.sidecar.as_mut().expect("started");
            tokio::select! {
                status = app.wait() => return Err(self.app_exit(status)),
                status = sidecar.wait() => return Err(format!("its sidecar exited ({})", status.map(|s| s.to_string()).unwrap_or_default())),
                drain = &mut stop => return Ok(drain.unwrap_or(true)),
                changed = lease.changed() => {
                    if changed.is_ok() {
                        self.register_all(if self.healthy { Health::Healthy } else { Health::Starting }).await?;
                    }
                }
                () = tokio::time::sleep_until(next_check) => {
                    let sandbox = self.sandbox.clone().expect("started");
                    let result = check.run(&sandbox, |c| self.prepare(c)).await;
                    let now = Instant::now();
                    if let Err(why) = &result {
                        last_failure.clone_from(why);
                    }
                    // Until the first pass, checks run often so that a task gets traffic as soon
                    // as it is ready; a failure counts only once per interval, as ECS counts.
                    let counts = result.is_ok()
                        || self.healthy
                        || last_counted.is_none_or(|at: Instant| now - at >= check.interval());
                    if !counts {
                        next_check = tokio::time::Instant::now() + STARTING_CHECK_INTERVAL.min(check.interval());
                        continue;
                    }
                    if result.is_err() {
                        last_counted = Some(now);
                    }
                    match verdicts.record(result.is_ok(), now) {
                        Some(true) => {
                            self.register_all(Health::Healthy).await?;
                            self.healthy = true;
                            info!(task = %self.id, after = ?started.elapsed(), "healthy");
                            let _ = events.send((self.id.clone(), TaskEvent::Healthy));
                        }
                        Some(false) if self.healthy => {
                            // No traffic from now on; during the grace period the task is not
                            // replaced, and may become healthy again.
                            self.register_all(Health::Unhealthy).await?;
                            if now >= grace_ends {
                                return Err(format!("unhealthy: {last_failure}"));
                            }
                            self.healthy = false;
                        }
                        _ => {}
                    }
                    if !self.healthy && now >= grace_ends {
                        // A port probe fails until the app listens: only its deadline counts.
                        if verdicts.unhealthy() && matches!(check, Check::Command(_)) {
                            return Err(format!("its health check kept failing: {last_failure}"));
                        }
                        if matches!(check, Check::Port(_)) && now - started > PORT_PROBE_DEADLINE {
                            return Err(format!("not healthy after {PORT_PROBE_DEADLINE:?}: {last_failure}"));
                        }
                    }
                    let interval = match (&check, self.healthy) {
                        (Check::Port(_) | Check::Running, true) => Duration::from_secs(5),
                        (check, true) => check.interval(),
                        (check, false) => STARTING_CHECK_INTERVAL.min(check.interval()),
                    };
                    next_check = tokio::time::Instant::now() + interval;
                }
            }
        }
    }

    /// Sandbox, sidecar, registration, app.
    async fn start(&mut self) -> Result<(), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("cannot create the task's directory", &e))?;
        let logs = self.ctx.host.data_dir.join("logs").join(self.service());
        std::fs::create_dir_all(&logs).map_err(|e| fail("cannot create the log directory", &e))?;
        let procs = self.limit()?;
        let sandbox = match self.version.task.network_mode {
            NetworkMode::Sandbox => {
                Sandbox::create(&self.dir, procs).map_err(|e| fail("cannot create the sandbox", &e))?
            }
            NetworkMode::Host => Sandbox::host(&self.dir, procs),
        };
        self.sandbox = Some(sandbox.clone());

        // The sidecar first, so that every alias answers when the app starts calling.
        let admin = free_port().map_err(|e| fail("no free port for the sidecar", &e))?;
        let mut ports = Vec::new();
        for port in self.version.served_ports() {
            let fixed =
                self.version.service.discovery_for_port(&port.name).and_then(|d| d.ingress_port_override);
            let inbound = match fixed {
                Some(port) => port,
                None => free_port().map_err(|e| fail("no free port for the sidecar", &e))?,
            };
            ports.push((port.name.clone(), inbound));
        }
        let token = self
            .ctx
            .client
            .bootstrap_token(&self.version.service.namespace, Some(self.service()), &self.id)
            .await
            .map_err(|e| fail("cannot get the sidecar's bootstrap token", &e))?;
        let mut sidecar = crate::sandbox::host_command(&self.ctx.host.tether_exe.to_string_lossy())
            .map_err(|e| fail("cannot prepare the sidecar", &e))?;
        sidecar
            .arg("proxy")
            .args(["--server", self.ctx.client.base()])
            .args([
                "--namespace",
                &self.version.service.namespace,
                "--service",
                self.service(),
                "--task",
                &self.id,
            ])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(self.dir.join("proxy"))
            .args(["--drain-wait", &self.ctx.host.drain_wait.as_secs_f64().to_string()])
            .env("TETHER_TOKEN", token)
            .env("TETHER_LOG", "warn");
        if let (Some(netns), Some(hosts)) = (sandbox.netns_path(), sandbox.hosts_file()) {
            sidecar.arg("--netns").arg(netns).arg("--hosts-file").arg(hosts);
        }
        let log = logs.join(format!("{}.sidecar.log", self.id));
        self.sidecar = Some(
            TaskProcess::spawn(sidecar, &log, None)
                .await
                .map_err(|e| fail("cannot start the sidecar", &e))?,
        );
        for (port_name, port) in &ports {
            let registration = Registration {
                task: Some(self.id.clone()),
                address: self.ctx.host.advertise,
                port: *port,
                app_protocol: None,
                health: Health::Starting,
                attributes: Default::default(),
                port_name: Some(port_name.clone()),
                lease: None,
            };
            self.instances.push((format!("{}-{port_name}", self.id), registration));
        }
        self.register_all(Health::Starting).await?;
        self.wait_for_sidecar(admin, &ports).await?;

        let task = &self.version.task;
        let (program, args) = task.command.split_first().ok_or("the service has no command")?;
        let mut app = sandbox.command(program).map_err(|e| fail("cannot prepare the app", &e))?;
        app.args(args);
        self.prepare(&mut app);
        let log = logs.join(format!("{}.log", self.id));
        let lines = Some((self.ctx.logs.clone(), self.service().to_owned(), self.id.clone()));
        let app = TaskProcess::spawn(app, &log, lines)
            .await
            .map_err(|e| fail(&format!("cannot start `{program}`"), &e))?;
        debug!(task = %self.id, pid = app.pid(), "app started");
        self.app = Some(app);
        Ok(())
    }

    /// The task's cgroup, when its spec reserves memory or cpu: the kernel holds the app and its
    /// health checks to it. A host without a usable hierarchy runs the task without limits
    /// and says so.
    fn limit(&mut self) -> Result<Option<ProcsFiles>, String> {
        let resources = self.version.task.resources;
        if resources.memory_mib == 0 && resources.cpu == 0 {
            return Ok(None);
        }
        let limits = Limits {
            memory_mib: (resources.memory_mib > 0).then_some(resources.memory_mib),
            cpu_units: (resources.cpu > 0).then_some(resources.cpu),
        };
        match TaskCgroup::create(&self.id, &limits) {
            Ok(cgroup) => {
                let procs =
                    cgroup.open_procs().map_err(|e| format!("cannot enter the task's cgroup: {e}"))?;
                debug!(task = %self.id, kind = cgroup.kind(), path = %cgroup.path().display(), "cgroup");
                self.cgroup = Some(cgroup);
                Ok(Some(procs))
            }
            Err(CgroupError::Unsupported(why)) => {
                warn!(task = %self.id, "running without its memory and cpu limits: {why}");
                Ok(None)
            }
            Err(e) => Err(format!("cannot make the task's cgroup: {e}")),
        }
    }

    /// Why the app exited: the kernel's OOM killer, or its own doing.
    fn app_exit(&self, status: std::io::Result<std::process::ExitStatus>) -> String {
        if self.cgroup.as_ref().is_some_and(TaskCgroup::oom_killed) {
            return format!(
                "the app exceeded its memory limit ({} MiB) and was killed by the kernel (OOM)",
                self.version.task.resources.memory_mib
            );
        }
        match status {
            Ok(status) => format!("the app exited ({status})"),
            Err(e) => format!("the app could not be waited for: {e}"),
        }
    }

    /// The app's (and its health check's) working directory and environment.
    fn prepare(&self, command: &mut tokio::process::Command) {
        let task = &self.version.task;
        let cwd = match &task.working_directory {
            Some(dir) => self.ctx.host.base_dir.join(dir),
            None => self.ctx.host.base_dir.clone(),
        };
        command.current_dir(cwd);
        for name in PROXY_VARIABLES {
            command.env_remove(name);
        }
        command
            .env("TETHER_TASK", &self.id)
            .env("TETHER_SERVICE", self.service())
            .env("TETHER_NAMESPACE", &self.version.service.namespace)
            .envs(&task.environment);
    }

    fn check(&self) -> Check {
        match (&self.version.task.health_check, self.version.service.ports.first()) {
            (Some(policy), _) => Check::Command(policy.clone()),
            (None, Some(port)) => Check::Port(port.container_port),
            (None, None) => Check::Running,
        }
    }

    /// Until the sidecar answers on its admin port and has bound every inbound listener.
    async fn wait_for_sidecar(&mut self, admin: u16, ports: &[(String, u16)]) -> Result<(), String> {
        let deadline = Instant::now() + SIDECAR_DEADLINE;
        // Inbound listeners bind the advertised address; the admin endpoint loopback.
        let advertise = self.ctx.host.advertise;
        let mut waiting: Vec<SocketAddr> = ports
            .iter()
            .map(|(_, p)| SocketAddr::new(advertise, *p))
            .chain([SocketAddr::from((Ipv4Addr::LOCALHOST, admin))])
            .collect();
        while !waiting.is_empty() {
            if let Ok(Some(status)) =
                self.sidecar.as_mut().map(|s| s.try_wait()).transpose().map(Option::flatten)
            {
                return Err(format!("its sidecar exited at start ({status}); see its log"));
            }
            let mut still = Vec::new();
            for addr in waiting {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    still.push(addr);
                }
            }
            waiting = still;
            if Instant::now() > deadline {
                return Err(format!("its sidecar did not listen on {waiting:?} within {SIDECAR_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn register_all(&mut self, health: Health) -> Result<(), String> {
        let lease = *self.ctx.lease.borrow();
        for (id, registration) in &mut self.instances {
            registration.health = health;
            registration.lease = Some(lease);
            self.ctx
                .client
                .put_instance(&self.version.service.namespace, &self.version.service.name, id, registration)
                .await
                .map_err(|e| format!("cannot register instance {id}: {e}"))?;
        }
        Ok(())
    }

    /// Stops everything the task started, draining first when it served traffic and is being
    /// stopped on request.
    async fn teardown(&mut self, drain: bool) {
        if drain && self.healthy {
            if let Err(e) = self.register_all(Health::Draining).await {
                warn!(task = %self.id, "{e}");
            }
            if let Some(sidecar) = &mut self.sidecar {
                // The sidecar keeps serving until the change has reached the callers, lets
                // requests in flight finish, then exits.
                sidecar.stop(self.ctx.host.drain_wait + STOP_GRACE).await;
            }
        }
        for (id, _) in &self.instances {
            if let Err(e) = self
                .ctx
                .client
                .delete_instance(&self.version.service.namespace, &self.version.service.name, id)
                .await
            {
                warn!(task = %self.id, instance = %id, "cannot deregister: {e}");
            }
        }
        if let Some(sidecar) = &mut self.sidecar {
            sidecar.stop(Duration::from_millis(200)).await;
        }
        if let Some(app) = &mut self.app {
            app.stop(STOP_GRACE).await;
        }
        self.sandbox = None;
        self.cgroup = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
