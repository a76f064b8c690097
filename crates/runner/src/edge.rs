//! The host's edge proxy for one namespace: it owns the namespace's `publish` ports and
//! balances them across the namespace's tasks fleet-wide.

use std::time::Duration;

use tracing::warn;

use crate::process::TaskProcess;
use crate::{Context, sandbox};

/// The host's edge proxy for one namespace: it owns the `publish` ports and balances them
/// across the namespace's tasks.
pub(crate) struct Edge {
    namespace: String,
    /// Its name as a task: `edge-<host>`.
    task: String,
    /// Its log file's name, in the host's `logs/`.
    log: String,
    process: Option<TaskProcess>,
}

impl Edge {
    pub(crate) fn new(namespace: &str, task: String, log: String) -> Self {
        Self { namespace: namespace.to_owned(), task, log, process: None }
    }

    pub(crate) async fn keep(&mut self, ctx: &Context, wanted: bool) {
        if let Some(process) = &mut self.process {
            if !wanted {
                process.stop(ctx.host.drain_wait + Duration::from_secs(5)).await;
                self.process = None;
                return;
            }
            match process.try_wait() {
                Ok(None) => return,
                _ => {
                    warn!(namespace = %self.namespace, "the edge proxy exited; starting it again");
                    self.process = None;
                }
            }
        }
        if !wanted {
            return;
        }
        match self.start(ctx).await {
            Ok(process) => self.process = Some(process),
            Err(e) => warn!(namespace = %self.namespace, "cannot start the edge proxy: {e}"),
        }
    }

    async fn start(&self, ctx: &Context) -> std::io::Result<TaskProcess> {
        let dir = ctx.host.data_dir.join("edge").join(&self.namespace);
        let logs = ctx.host.data_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&logs)?;
        let mut command = sandbox::host_command(&ctx.host.tether_exe.to_string_lossy())?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let token = ctx
            .client
            .bootstrap_token(&self.namespace, None, &self.task)
            .await
            .map_err(std::io::Error::other)?;
        command
            .arg("proxy")
            .args(["--server", ctx.client.base(), "--namespace", &self.namespace, "--edge"])
            .args(["--task", &self.task])
            .args(["--admin", &admin.to_string()])
            .arg("--state-dir")
            .arg(dir.join("proxy"))
            .args(["--drain-wait", &ctx.host.drain_wait.as_secs_f64().to_string()])
            .env("TETHER_TOKEN", token)
            .env("TETHER_LOG", "warn");
        TaskProcess::spawn(command, &logs.join(&self.log), None).await
    }
}
