//! `tether proxy`: run a sidecar (or a plain client-side load balancer) from a static file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tether_model::ProxyConfig;
use tether_proxy::Proxy;
use tracing::{error, info, warn};

/// The exit status for a config that cannot be used (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

/// Run a sidecar proxy from a static config file.
///
/// The file (YAML or JSON) lists an admin address, inbound listeners (a published port → the
/// app's port) and outbound listeners (a client alias → a set of endpoints):
///
///   admin: 127.0.0.1:9901
///   outbound:
///     - dnsName: payment-service
///       listen: 127.0.0.1:8080
///       appProtocol: http
///       endpoints: ["127.0.0.1:18081", "127.0.0.1:18082"]
///
/// With only `outbound` it is a client-side load balancer. SIGTERM (or POST /drain on the admin
/// endpoint) drains gracefully; a second signal exits at once. A config that cannot be used
/// exits with status 64 and a message naming the file, line and field.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The config file (YAML or JSON).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Worker threads; 1 runs everything on one thread, the lightest footprint.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Validate the config, print the effective config as JSON and exit.
    #[arg(long)]
    check: bool,
}

pub fn main(args: Args) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check {
        println!("{}", serde_json::to_string_pretty(&config).expect("the config serializes"));
        return ExitCode::SUCCESS;
    }
    match run(config, args.threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Result<ProxyConfig, String> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("{name}: cannot read the config file: {e}"))?;
    ProxyConfig::parse(&name, &text).map_err(|errors| format!("invalid config:\n{errors}"))
}

fn run(config: ProxyConfig, threads: u16) -> anyhow::Result<()> {
    raise_open_files_limit();
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.into()).enable_all().build()
    }
    .context("starting the runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await?;
        for (kind, name, addr) in proxy.local_addrs() {
            info!(%kind, %name, %addr, "listening");
        }
        proxy.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Every connection is a file descriptor, and the usual soft limit (1024) is far below what a
/// proxy serves: raise it to the hard limit, which needs no privilege. `maxDownstreamConnections`
/// then caps connections below it.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open files limit"),
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        error!("cannot install signal handlers; SIGTERM will not drain");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        error!("second signal: exiting without finishing the drain");
        std::process::exit(130);
    });
}
