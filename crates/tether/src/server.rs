//! `tether server`: the control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tether_control::ca::Ca;
use tether_control::identity::IdentityOptions;
use tether_control::{
    DEFAULT_LISTEN, SchedulerOptions, Server, ServerConfig, default_data_dir, ensure_data_dir,
};
use tether_store::{Embedded, Etcd, Store};
use tracing::{error, info, warn};

/// The exit status for arguments that cannot be used (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// After a signal, how long requests in flight may take before the server exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Run the control plane: the registry of namespaces, services and instances, and its REST API.
///
/// On first start it creates the data directory (mode 0700) and a random admin token, kept in
/// the store (so servers sharing an etcd accept the same one) and in DIR/admin.token (mode
/// 0600); later starts reuse it. Every API route except /healthz and /openapi.json needs that
/// token: `Authorization: Bearer TOKEN`.
///
/// The registry is kept in DIR/store.redb (durable: a write is on disk before it is
/// acknowledged), or in etcd with --store etcd://HOST:PORT,..., so that several servers share
/// it. SIGTERM or SIGINT stops accepting and lets requests in flight finish.
///
/// It runs the mesh's certificate authority: an ECDSA P-256 root made on first start and kept
/// in the store (or the CA given with --ca-cert and --ca-key), which gives every sidecar a
/// certificate for spiffe://NAMESPACE/SERVICE, renewed at half its lifetime. `tether ca
/// rotate` moves to a new root without downtime.
///
/// Defaults: --listen 127.0.0.1:7700 (this machine only); --data /var/lib/tether when run as
/// root, else $XDG_DATA_HOME/tether or ~/.local/share/tether.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory: the admin token and the embedded store.
    #[arg(long, value_name = "DIR", env = "TETHER_DATA")]
    data: Option<PathBuf>,
    /// Keep the registry in etcd instead: etcd://HOST:PORT[,HOST:PORT...], one per member.
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    store: Option<String>,
    /// The key prefix in etcd, so several tether deployments can share a cluster.
    #[arg(long, value_name = "PREFIX", default_value = "/tether", requires = "store")]
    etcd_prefix: String,
    /// Where the API listens (IP:PORT); port 0 lets the kernel pick.
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The CA certificate to sign sidecar certificates with (PEM, ECDSA P-256), instead of a
    /// root made on first start. Sidecars trust it as their root. With --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The CA certificate's private key (PKCS #8 PEM). With --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// How long sidecar certificates live, e.g. 24h, 30m, 90s; they are renewed at half-life.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_lifetime)]
    certificate_lifetime: Duration,
    /// Do not run the fleet's scheduler here. With several replicas on one etcd, exactly one
    /// runs it: start the others with this flag.
    #[arg(long)]
    no_scheduler: bool,
}

/// After the server starts, agents have this long to renew before their hosts count as lost
/// (more than an agent's lease, 10 s).
const LOST_GRACE: Duration = Duration::from_secs(15);

/// The lifetime of sidecar certificates, from 10 s to 365 days.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    parse_duration(text, Duration::from_secs(10)..=Duration::from_secs(365 * 86_400))
}

/// A number with a unit (`s`, `m`, `h`, `d`; plain seconds without one) within `range`.
pub fn parse_duration(text: &str, range: std::ops::RangeInclusive<Duration>) -> Result<Duration, String> {
    let text = text.trim();
    let not_one = || format!("`{text}` is not a duration; expected e.g. 90s, 30m, 24h or 7d");
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(not_one()),
    };
    let duration = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds))
        .map(Duration::from_secs)
        .ok_or_else(not_one)?;
    if !range.contains(&duration) {
        return Err(format!(
            "{text} is out of range; expected {} s to {} s",
            range.start().as_secs(),
            range.end().as_secs()
        ));
    }
    Ok(duration)
}

/// The CA the operator supplies, read and checked before anything starts.
fn supplied_ca(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Ca>, String> {
    let (Some(cert), Some(key)) = (cert, key) else { return Ok(None) };
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let ca = Ca::from_pem(&read("--ca-cert", cert)?, &read("--ca-key", key)?)
        .map_err(|e| format!("--ca-cert/--ca-key: {e}"))?;
    Ok(Some(ca))
}

pub fn main(args: Args) -> ExitCode {
    let etcd = match args.store.as_deref().map(etcd_endpoints).transpose() {
        Ok(etcd) => etcd,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let supplied = match supplied_ca(args.ca_cert.as_deref(), args.ca_key.as_deref()) {
        Ok(supplied) => supplied,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = ServerConfig {
        listen: args.listen,
        data_dir: args.data.unwrap_or_else(default_data_dir),
        identity: IdentityOptions { lifetime: args.certificate_lifetime, supplied },
        scheduler: (!args.no_scheduler).then_some(SchedulerOptions { lost_grace: LOST_GRACE }),
    };
    let run = async {
        ensure_data_dir(&config.data_dir)?;
        match etcd {
            Some(endpoints) => {
                let store = Etcd::connect(&endpoints, &args.etcd_prefix)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
                info!(endpoints = %endpoints.join(","), prefix = %args.etcd_prefix, "store: etcd");
                serve(&config, store).await
            }
            None => {
                let dir = config.data_dir.clone();
                // Opening may repair the file after a crash: a blocking job.
                let store = tokio::task::spawn_blocking(move || Embedded::open(&dir))
                    .await
                    .context("opening the embedded store")?
                    .with_context(|| {
                        format!("opening the embedded store in {}", config.data_dir.display())
                    })?;
                info!(dir = %config.data_dir.display(), "store: embedded");
                serve(&config, store).await
            }
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve<S: Store>(config: &ServerConfig, store: S) -> anyhow::Result<()> {
    let server = Server::bind(config, store).await?;
    info!(token = %server.token_path().display(), "admin token");
    // Tests and scripts read the address from this line.
    info!(kind = %"api", addr = %server.local_addr(), "listening");
    // Requests in flight may finish, but long streams must not hold the exit up forever.
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let signal = async move {
        crate::signal::shutdown().await;
        let _ = stopping.send(());
    };
    let run = server.run(signal);
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result?,
        _ = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    info!("stopped");
    Ok(())
}

/// `etcd://a:2379,b:2379` → `["http://a:2379", "http://b:2379"]`.
fn etcd_endpoints(url: &str) -> Result<Vec<String>, String> {
    let usage = "expected etcd://HOST:PORT[,HOST:PORT...], e.g. etcd://127.0.0.1:2379";
    let hosts = url.strip_prefix("etcd://").ok_or_else(|| format!("--store `{url}`: {usage}"))?;
    hosts
        .split(',')
        .map(|host| match host.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(format!("http://{host}"))
            }
            _ => Err(format!("--store: `{host}` is not HOST:PORT; {usage}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls() {
        assert_eq!(
            etcd_endpoints("etcd://a:2379,10.0.0.2:2380").unwrap(),
            ["http://a:2379", "http://10.0.0.2:2380"]
        );
        for bad in ["http://a:2379", "etcd://a", "etcd://a:0", "etcd://", "etcd://a:1,"] {
            assert!(etcd_endpoints(bad).is_err(), "{bad}");
        }
    }
}
