//! `tether proxy`: run a sidecar (or a plain client-side load balancer) from a static file, or
//! a sidecar fed by the control plane.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tether_model::ProxyConfig;
use tether_proxy::tls::Credentials;
use tether_proxy::{BindError, HostsFile, Netns, Network, Proxy};
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
///
/// With --server instead of --config, the control plane streams the config (the same model),
/// the proxy keeps its last good config in --state-dir and serves from it whenever the control
/// plane cannot be reached, also after a restart:
///
///   tether proxy --server http://127.0.0.1:7700 --namespace shop --service web --task web-1
///
/// It also gets its identity there: it makes a key of its own (never written anywhere), asks
/// the control plane's CA for a certificate for spiffe://NAMESPACE/SERVICE and renews it at half
/// its lifetime; its listeners and connections speak mutual TLS 1.3 wherever the config says
/// so. The token may be the admin token, or a bootstrap token made for this task
/// (POST /v1/namespaces/NS/bootstrap-tokens), which is good for nothing else.
///
/// For a task in a sandbox of its own (either way of taking the config), --netns names the
/// task's network namespace: the proxy stays in the host's and makes the outbound listeners
/// and its connections to the app inside the task's, so the app's only way out is through
/// the proxy, and two tasks can use the same port. --hosts-file keeps the file the app sees as
/// /etc/hosts listing the client aliases:
///
///   tether proxy --config task.yaml --netns /run/netns/web-1 --hosts-file /run/tether/web-1/hosts
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The config file (YAML or JSON).
    #[arg(long, short, value_name = "FILE", required_unless_present = "server", conflicts_with = "server")]
    config: Option<PathBuf>,
    /// The control plane to take the config from, e.g. http://127.0.0.1:7700; several replicas
    /// comma-separated, tried in turn when the one in use fails.
    #[arg(long, value_name = "URL[,URL…]", requires_all = ["namespace", "task"])]
    server: Option<String>,
    /// The bearer token for the control plane (with --server): the admin token, or a
    /// bootstrap token for this task.
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The namespace of the task this sidecar serves.
    #[arg(long)]
    namespace: Option<String>,
    /// The service of the task this sidecar serves (with --server, unless --edge).
    #[arg(long, required_unless_present_any = ["config", "edge"])]
    service: Option<String>,
    /// Serve the namespace's published ports (`publish` in the spec) instead of a task's
    /// listeners: the host's edge, which `tether up` starts (with --server).
    #[arg(long, requires = "server", conflicts_with = "service")]
    edge: bool,
    /// How long a draining proxy keeps serving new connections while its removal reaches the
    /// callers, in seconds (with --server; a config file names its own). Default 20.
    #[arg(long, value_name = "SECONDS", requires = "server")]
    drain_wait: Option<f64>,
    /// The task this sidecar serves.
    #[arg(long)]
    task: Option<String>,
    /// The admin endpoint's address (with --server; a config file names its own).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: std::net::SocketAddr,
    /// Where the last good config is kept (with --server). Default: a folder for the task
    /// under the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Bind every outbound listener on this address, on a port the system picks, instead of
    /// the alias's own address and port (several sidecars on one host without sandboxes).
    #[arg(long, value_name = "IP")]
    outbound_ip: Option<std::net::IpAddr>,
    /// The task's network namespace: a namespace file such as /run/netns/NAME, /proc/PID/ns/net
    /// or /proc/PID/fd/N. The outbound listeners and the connections to the app's port are
    /// made inside it; the admin endpoint, the inbound listeners and the connections to other
    /// sidecars and external services stay in the proxy's own namespace. Needs CAP_SYS_ADMIN.
    /// Without it, every socket is in the proxy's own namespace.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// A hosts file to keep listing the client aliases, typically bind-mounted over the app's
    /// /etc/hosts. What it holds when the proxy starts stays at its top; below comes a
    /// `# tether: client aliases` line and one `IP<TAB>dnsName` line per outbound listener on
    /// a 127.0.0.0/8 address, sorted by name. It is rewritten in place (same inode, so a bind
    /// mount sees it) once the listeners of a config are bound, whenever the aliases change.
    #[arg(long, value_name = "PATH")]
    hosts_file: Option<PathBuf>,
    /// Worker threads; 1 runs everything on one thread, the lightest footprint.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Validate the config, print the effective config as JSON and exit.
    #[arg(long)]
    check: bool,
}

pub fn main(args: Args) -> ExitCode {
    if let Some(server) = args.server.clone() {
        return fed::main(args, server);
    }
    let (config, sandbox) = match load(&args)
        .and_then(|config| Ok((config, Sandbox::open(args.netns.as_deref(), args.hosts_file.as_deref())?)))
    {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check {
        println!("{}", serde_json::to_string_pretty(&config).expect("the config serializes"));
        return ExitCode::SUCCESS;
    }
    match run(config, sandbox, args.threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Result<ProxyConfig, String> {
    let path = args.config.as_deref().unwrap_or(std::path::Path::new("-"));
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read the config file: {e}"))?;
    ProxyConfig::parse(&name, &text).map_err(|errors| format!("invalid config:\n{errors}"))
}

fn runtime(threads: u16) -> anyhow::Result<tokio::runtime::Runtime> {
    raise_open_files_limit();
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.into()).enable_all().build()
    }
    .context("starting the runtime")
}

fn run(config: ProxyConfig, sandbox: Sandbox, threads: u16) -> anyhow::Result<()> {
    runtime(threads)?.block_on(async {
        let proxy = sandbox.bind(config).await?;
        sandbox.keep_hosts_file(proxy).run(crate::signal::shutdown()).await;
        Ok(())
    })
}

/// The task sandbox the proxy serves (--netns, --hosts-file), opened before anything is bound.
struct Sandbox {
    network: Network,
    hosts: Option<HostsFile>,
}

impl Sandbox {
    /// A message for the user when a path cannot be used.
    fn open(netns: Option<&Path>, hosts_file: Option<&Path>) -> Result<Self, String> {
        let network = match netns {
            Some(path) => {
                let netns = Netns::open(path).map_err(|e| format!("--netns: {e}"))?;
                info!(netns = %path.display(), "outbound listeners and connections to the app are in the task's network namespace");
                Network::Task(Arc::new(netns))
            }
            None => Network::Host,
        };
        let hosts = match hosts_file {
            Some(path) => Some(HostsFile::open(path).map_err(|e| format!("--hosts-file: {e}"))?),
            None => None,
        };
        Ok(Self { network, hosts })
    }

    async fn bind(&self, config: ProxyConfig) -> Result<Proxy, BindError> {
        Proxy::bind_in(config, self.network.clone()).await
    }

    /// Binds a proxy whose mutual TLS uses `credentials`.
    async fn bind_with(
        &self,
        config: ProxyConfig,
        credentials: &Arc<Credentials>,
    ) -> Result<Proxy, BindError> {
        Proxy::bind_with(config, self.network.clone(), credentials.clone()).await
    }

    fn keep_hosts_file(self, proxy: Proxy) -> Proxy {
        match self.hosts {
            Some(hosts) => proxy.keep_hosts_file(hosts),
            None => proxy,
        }
    }
}

/// `tether proxy --server`: the config comes from the control plane.
mod fed {
    use super::*;
    use tether_proxy::discovery::{Discovery, Settings};
    use tether_proxy::tls::TlsMetrics;

    pub fn main(args: Args, server: String) -> ExitCode {
        let service = if args.edge { Some("edge".to_owned()) } else { args.service };
        let (Some(namespace), Some(service), Some(task)) = (args.namespace, service, args.task) else {
            unreachable!("clap requires --namespace, --service (or --edge) and --task with --server");
        };
        let Some(token) = args.token else {
            eprintln!("no token: pass --token or set TETHER_TOKEN");
            return ExitCode::from(EXIT_BAD_CONFIG);
        };
        let state_dir = args
            .state_dir
            .unwrap_or_else(|| std::env::temp_dir().join("tether").join(&namespace).join(&task));
        let servers: Vec<String> =
            server.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        let mistakes: Vec<String> = servers
            .iter()
            .filter_map(|url| {
                tether_proxy::discovery::check_server_url(url).err().map(|e| format!("--server: {e}"))
            })
            .chain(servers.is_empty().then(|| "--server names no URL".to_owned()))
            .chain(
                [("--namespace", &namespace), ("--service", &service), ("--task", &task)]
                    .into_iter()
                    .filter(|(_, value)| value.trim().is_empty())
                    .map(|(flag, _)| format!("{flag} is empty")),
            )
            .collect();
        if !mistakes.is_empty() {
            eprintln!("{}", mistakes.join("\n"));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        let sandbox = match Sandbox::open(args.netns.as_deref(), args.hosts_file.as_deref()) {
            Ok(sandbox) => sandbox,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        let settings = Settings {
            servers,
            token,
            namespace,
            service,
            task,
            admin: args.admin,
            state_dir,
            outbound_ip: args.outbound_ip,
            edge: args.edge,
            drain_wait_seconds: args.drain_wait,
        };
        match runtime(args.threads).and_then(|rt| rt.block_on(run(settings, sandbox))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(settings: Settings, sandbox: Sandbox) -> anyhow::Result<()> {
        // The sidecar's identity lives in memory only: a restarted sidecar asks for a new one.
        let credentials = Credentials::empty(TlsMetrics::new());
        let mut discovery = Discovery::new(settings).with_credentials(credentials.clone());
        let saved = discovery.load_saved()?;
        let (updates, mut incoming) = tokio::sync::mpsc::channel(1);
        tokio::spawn(discovery.run(updates));
        let proxy = match saved {
            Some(config) => sandbox.bind_with(config, &credentials).await?,
            None => loop {
                info!("waiting for the first config from the control plane");
                let Some(first) = incoming.recv().await else {
                    anyhow::bail!("the config stream ended before the first config");
                };
                match sandbox.bind_with(first.config, &credentials).await {
                    Ok(proxy) => {
                        let _ = first.done.send(Ok(()));
                        break proxy;
                    }
                    Err(error) => {
                        warn!(%error, "the first config cannot be served");
                        let _ = first.done.send(Err(error));
                    }
                }
            },
        };
        let proxy = sandbox.keep_hosts_file(proxy);
        proxy.run_with_updates(crate::signal::shutdown(), incoming).await;
        Ok(())
    }
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
