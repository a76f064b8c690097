//! tether's sidecar proxy.
//!
//! A [`Proxy`] binds every socket of its config first ([`Proxy::bind`]: conflicts fail at start
//! and addresses are known), then serves ([`Proxy::run`]) until asked to stop, and drains:
//!
//! ```text
//! accept ─► listener (inbound | outbound) ─► http::Route | tcp::TcpRoute
//!             ─► balance (P2C peak-EWMA | round robin) ─► upstream (pooled HTTP/1, shared HTTP/2, TCP)
//! ```
//!
//! A sidecar whose task has a network namespace of its own ([`Proxy::bind_in`]) listens for
//! the app and connects to it inside that namespace, and does everything else in the host's;
//! it can keep the task's hosts file listing the client aliases ([`Proxy::keep_hosts_file`]).
//!
//! Between sidecars, traffic travels over mutual TLS when the config asks for it (an inbound
//! listener's `tls`, an endpoint's `identity`), proven with [`tls::Credentials`] that the
//! control plane fills in while the proxy serves ([`Proxy::bind_with`]).

mod admin;
mod balance;
mod body;
pub mod discovery;
mod drain;
mod error;
mod flood;
pub mod hosts;
mod http;
mod inbound;
mod io;
mod listener;
mod metrics;
mod mtls;
pub mod netns;
mod outbound;
mod resilience;
mod tcp;
pub mod tls;
mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tether_model::{Inbound, Outbound, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use drain::Phase;
pub use error::{ERROR_HEADER, ProxyError};
pub use hosts::{HostsError, HostsFile};
/// Public for the fuzz targets (`fuzz/`) and their corpus tests.
#[doc(hidden)]
pub use http::framing;
pub use listener::BindError;
pub use netns::{Netns, NetnsError, Network};

use admin::Admin;
use drain::Drain;
use listener::{ConnectionLimit, Listener, Serve};
use metrics::Metrics;
use mtls::{Access, Mtls};
use tls::{Credentials, TlsMetrics};

pub struct Proxy {
    config: ProxyConfig,
    metrics: Metrics,
    admin: Admin,
    admin_socket: TcpListener,
    listeners: Vec<Listener>,
    limit: Arc<ConnectionLimit>,
    drain: Drain,
    /// The task's side of the sockets: outbound listeners and connections to the app.
    task: Network,
    mtls: Arc<Mtls>,
    hosts: Option<HostsFile>,
}

/// A new config for a running proxy ([`Proxy::run_with_updates`]), and where to say whether it
/// was applied. A refused update changes nothing.
pub struct Update {
    pub config: ProxyConfig,
    pub done: oneshot::Sender<Result<(), BindError>>,
}

/// Identifies a listener across configs.
type ListenerKey = (&'static str, String);

/// A listener that is serving, and how to change or stop it.
struct Running {
    /// Its part of the config as applied (the listen address as configured, port 0 staying
    /// 0), to tell whether it moved or changed at all.
    config: Entry,
    serve: Arc<ArcSwap<Serve>>,
    access: Option<Arc<Access>>,
    /// Dropping it stops the listener.
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    /// Binds the admin endpoint and every listener.
    pub async fn bind(config: ProxyConfig) -> Result<Self, BindError> {
        Self::bind_in(config, Network::Host).await
    }

    /// Like [`bind`](Self::bind), for a task whose app lives in `task`: the outbound listeners
    /// and the connections to the app are made there, the admin endpoint, the inbound listeners
    /// and the connections to endpoints in the host's namespace (design §7).
    ///
    /// Its credentials stay empty: listeners with `tls` and endpoints with an `identity` refuse
    /// to work. A proxy fed by the control plane is bound [`with`](Self::bind_with) credentials
    /// the control plane fills in.
    pub async fn bind_in(config: ProxyConfig, task: Network) -> Result<Self, BindError> {
        Self::bind_with(config, task, Credentials::empty(TlsMetrics::new())).await
    }

    /// Like [`bind_in`](Self::bind_in), proving the sidecar's identity with `credentials` in
    /// mutual TLS. They may be empty at first and filled in while the proxy serves; until then
    /// mutual TLS fails closed and `/ready` says why. Their metrics join the proxy's.
    pub async fn bind_with(
        config: ProxyConfig,
        task: Network,
        credentials: Arc<Credentials>,
    ) -> Result<Self, BindError> {
        let mut registry = Registry::with_prefix("tether");
        let metrics = Metrics::register(&mut registry, &config.service);
        credentials.metrics().register(&mut registry);
        let mtls = Arc::new(Mtls::new(credentials));
        let admin_socket = listener::bind("admin", "admin", config.admin, &Network::Host).await?;
        let mut bound = Vec::with_capacity(config.inbound.len() + config.outbound.len());
        for listener in listeners(&config) {
            bound.push(listener.bind(&metrics, &task, &mtls).await?);
        }
        let limit =
            ConnectionLimit::new(config.max_downstream_connections, metrics.downstream_overflows.clone());
        let drain = Drain::new();
        let admin = Admin::new(registry, &config, drain.trigger(), mtls.credentials().clone());
        Ok(Self {
            config,
            metrics,
            admin,
            admin_socket,
            listeners: bound,
            limit,
            drain,
            task,
            mtls,
            hosts: None,
        })
    }

    /// Keeps `hosts` listing the client aliases of the config served, from the first one on:
    /// it is rewritten once the listeners of a config are bound, when the aliases changed.
    pub fn keep_hosts_file(mut self, hosts: HostsFile) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// Serves until `shutdown` resolves or a drain is requested at the admin endpoint, then
    /// drains: readiness turns false, new connections are still served for the drain wait,
    /// then listeners close and in-flight requests get the drain grace to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (_updates, none) = mpsc::channel(1);
        self.run_with_updates(shutdown, none).await;
    }

    /// Like [`run`](Self::run), and applies each config that arrives on `updates` while serving.
    pub async fn run_with_updates(
        self,
        shutdown: impl Future<Output = ()>,
        mut updates: mpsc::Receiver<Update>,
    ) {
        let Self { mut config, metrics, admin, admin_socket, listeners, limit, drain, task, mtls, mut hosts } =
            self;
        let mut running = HashMap::new();
        for (configured, listener) in self::listeners(&config).zip(listeners) {
            running.insert(configured.key(), start(listener, configured.entry(), &drain, &limit));
        }
        list_aliases(&mut hosts, &config);
        // Last, so that every `listening` line is out before `/ready` answers.
        let admin = Arc::new(admin);
        if let Ok(addr) = admin_socket.local_addr() {
            info!(kind = %"admin", name = %"admin", %addr, "listening");
        }
        tokio::spawn(admin.clone().run(admin_socket));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = drain.requested() => break,
                Some(update) = updates.recv() => {
                    let context = Context { metrics: &metrics, drain: &drain, limit: &limit, task: &task, mtls: &mtls };
                    let applied = apply(&mut running, &update.config, &context).await;
                    if applied.is_ok() {
                        config = update.config;
                        admin.set_config(&config);
                        list_aliases(&mut hosts, &config);
                    }
                    let _ = update.done.send(applied);
                }
            }
        }
        let wait = config.drain_wait_seconds.0;
        info!(?wait, "draining: readiness is false, still serving new connections");
        drain.advance(Phase::Draining);
        tokio::time::sleep(wait).await;
        let grace = config.drain_grace_seconds.0;
        info!(?grace, "closing listeners; waiting for in-flight requests");
        drain.advance(Phase::Closing);
        if tokio::time::timeout(grace, drain.closed()).await.is_err() {
            warn!(?grace, "connections still open after the drain grace; exiting anyway");
        } else {
            info!("drained");
        }
    }
}

/// One listener's part of the config.
#[derive(Clone, Copy)]
enum ListenerConfig<'a> {
    Inbound(&'a Inbound),
    Outbound(&'a Outbound),
}

/// The same, kept by a running listener.
#[derive(PartialEq)]
enum Entry {
    Inbound(Inbound),
    Outbound(Outbound),
}

impl Entry {
    fn listen(&self) -> SocketAddr {
        match self {
            Self::Inbound(c) => c.listen,
            Self::Outbound(c) => c.listen,
        }
    }
}

impl ListenerConfig<'_> {
    fn entry(&self) -> Entry {
        match *self {
            Self::Inbound(c) => Entry::Inbound(c.clone()),
            Self::Outbound(c) => Entry::Outbound(c.clone()),
        }
    }

    fn is(&self, entry: &Entry) -> bool {
        match (*self, entry) {
            (Self::Inbound(c), Entry::Inbound(e)) => c == e,
            (Self::Outbound(c), Entry::Outbound(e)) => c == e,
            _ => false,
        }
    }

    fn key(&self) -> ListenerKey {
        match self {
            Self::Inbound(c) => ("inbound", c.port_name.clone()),
            Self::Outbound(c) => ("outbound", c.dns_name.clone()),
        }
    }

    fn listen(&self) -> SocketAddr {
        match self {
            Self::Inbound(c) => c.listen,
            Self::Outbound(c) => c.listen,
        }
    }

    fn is_http(&self) -> bool {
        match self {
            Self::Inbound(c) => c.app_protocol.is_http(),
            Self::Outbound(c) => c.app_protocol.is_http(),
        }
    }

    /// Where this listener's sockets live (design §7), decided here and nowhere else. An
    /// outbound listener faces the app: it listens in the task's namespace and connects to
    /// endpoints (other sidecars, external services) from the host's. An inbound listener faces
    /// other hosts: it listens in the host's namespace and connects to the app in the task's.
    fn sockets(&self, task: &Network) -> Sockets {
        match self {
            Self::Inbound(_) => Sockets { listen: Network::Host, connect: task.clone() },
            Self::Outbound(_) => Sockets { listen: task.clone(), connect: Network::Host },
        }
    }

    async fn bind(&self, metrics: &Metrics, task: &Network, mtls: &Arc<Mtls>) -> Result<Listener, BindError> {
        let (kind, name) = self.key();
        let sockets = self.sockets(task);
        let serve = self.serve(metrics, &sockets.connect, mtls);
        // Inbound listeners face other hosts: who may connect is theirs to decide.
        let access = match self {
            Self::Inbound(c) => Some(Arc::new(Access::new(c, mtls.clone(), metrics.denied()))),
            Self::Outbound(_) => None,
        };
        Listener::bind(kind, &name, self.listen(), serve, access, &sockets.listen).await
    }

    fn serve(&self, metrics: &Metrics, connect: &Network, mtls: &Mtls) -> Serve {
        let credentials = mtls.credentials();
        let serve = match self {
            Self::Inbound(c) => inbound::serve(c, metrics, credentials),
            Self::Outbound(c) => outbound::serve(c, metrics, credentials),
        };
        serve.connecting_from(connect)
    }

    fn update(&self, running: &Running, metrics: &Metrics, task: &Network, mtls: &Mtls) {
        if let (Self::Inbound(c), Some(access)) = (self, &running.access) {
            access.update(c);
        }
        // A listener that changes protocol gets new routes, built here so that they connect
        // from the right namespace; otherwise its routes are updated in place.
        let serve = &running.serve;
        if serve.load().is_http() != self.is_http() {
            serve.store(Arc::new(self.serve(metrics, &self.sockets(task).connect, mtls)));
            return;
        }
        let credentials = mtls.credentials();
        match self {
            Self::Inbound(c) => inbound::update(serve, c, metrics, credentials),
            Self::Outbound(c) => outbound::update(serve, c, metrics, credentials),
        }
    }
}

/// The namespaces of one listener's sockets.
struct Sockets {
    listen: Network,
    connect: Network,
}

fn listeners(config: &ProxyConfig) -> impl Iterator<Item = ListenerConfig<'_>> {
    let inbound = config.inbound.iter().map(ListenerConfig::Inbound);
    inbound.chain(config.outbound.iter().map(ListenerConfig::Outbound))
}

fn start(listener: Listener, config: Entry, drain: &Drain, limit: &Arc<ConnectionLimit>) -> Running {
    info!(kind = %listener.kind, name = %listener.name, addr = %listener.local_addr(), "listening");
    let (stop, stopped) = oneshot::channel();
    let (serve, access) = (listener.serve(), listener.access());
    tokio::spawn(listener.run(drain.watch(), limit.clone(), stopped));
    Running { config, serve, access, _stop: stop }
}

/// What a running proxy builds listeners with.
struct Context<'a> {
    metrics: &'a Metrics,
    drain: &'a Drain,
    limit: &'a Arc<ConnectionLimit>,
    task: &'a Network,
    mtls: &'a Arc<Mtls>,
}

/// Moves the running listeners to `config`. A listener that keeps its address is updated in
/// place (its routes keep their connections and endpoint state); new or moved listeners are
/// bound first, and only when every one of them could be bound does anything change.
async fn apply(
    running: &mut HashMap<ListenerKey, Running>,
    config: &ProxyConfig,
    cx: &Context<'_>,
) -> Result<(), BindError> {
    let mut bound = Vec::new();
    for listener in listeners(config) {
        let key = listener.key();
        if running.get(&key).is_none_or(|r| r.config.listen() != listener.listen()) {
            bound.push((key, listener.entry(), listener.bind(cx.metrics, cx.task, cx.mtls).await?));
        }
    }
    // Everything could be bound: from here on nothing fails.
    let wanted: HashMap<ListenerKey, ListenerConfig> = listeners(config).map(|l| (l.key(), l)).collect();
    running.retain(|key, _| {
        let stays = wanted.contains_key(key);
        if !stays {
            info!(kind = %key.0, name = %key.1, "listener removed");
        }
        stays
    });
    for (key, listener) in &wanted {
        // A listener whose part of the config is unchanged is left alone: an update about one
        // alias does not rebuild the routes of all the others.
        if let Some(r) = running.get_mut(key).filter(|r| !listener.is(&r.config))
            && !bound.iter().any(|(k, ..)| k == key)
        {
            listener.update(r, cx.metrics, cx.task, cx.mtls);
            r.config = listener.entry();
        }
    }
    for (key, entry, listener) in bound {
        running.insert(key, start(listener, entry, cx.drain, cx.limit));
    }
    Ok(())
}

/// Brings the hosts file, if the proxy keeps one, up to date with `config`'s aliases. A file that
/// cannot be written costs the app its names, not the proxy its config: the failure is logged,
/// and the next config tries again. (A few hundred bytes of a local file: written inline.)
fn list_aliases(hosts: &mut Option<HostsFile>, config: &ProxyConfig) {
    let Some(hosts) = hosts else { return };
    match hosts.update(hosts::aliases(&config.outbound)) {
        Ok(true) => info!(path = %hosts.path().display(), "hosts file updated"),
        Ok(false) => {}
        Err(error) => warn!(path = %hosts.path().display(), %error, "cannot update the hosts file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(aliases: &[(&str, SocketAddr)]) -> ProxyConfig {
        let mut yaml = "admin: 127.0.0.1:0\ndrainWaitSeconds: 0\noutbound:\n".to_owned();
        for (name, listen) in aliases {
            yaml += &format!(
                "  - {{ dnsName: {name}, listen: \"{listen}\", appProtocol: tcp, endpoints: [\"127.0.0.1:1\"] }}\n"
            );
        }
        ProxyConfig::parse("test.yaml", &yaml).unwrap()
    }

    #[tokio::test]
    async fn the_hosts_file_follows_the_configs_applied() {
        let path = std::env::temp_dir().join(format!("tether-proxy-hosts-{}", std::process::id()));
        std::fs::write(&path, "127.0.0.1\tlocalhost\n").unwrap();
        let hosts = HostsFile::open(&path).unwrap();
        let (a, b) = (([127, 0, 0, 1], 0).into(), ([127, 0, 0, 2], 0).into());
        let proxy = Proxy::bind(config(&[("a", a)])).await.unwrap().keep_hosts_file(hosts);
        let (updates, incoming) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(proxy.run_with_updates(
            async {
                let _ = stopped.await;
            },
            incoming,
        ));
        let apply = |config| {
            let updates = updates.clone();
            async move {
                let (done, applied) = oneshot::channel();
                updates.send(Update { config, done }).await.unwrap();
                applied.await.unwrap()
            }
        };
        let both = "127.0.0.1\tlocalhost\n# tether: client aliases\n127.0.0.1\ta\n127.0.0.2\tb\n";

        apply(config(&[("a", a), ("b", b)])).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), both);
        // A config that cannot be served changes nothing, the hosts file included.
        let taken = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let refused = apply(config(&[("a", a), ("c", taken.local_addr().unwrap())])).await;
        assert!(refused.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), both);
        apply(config(&[("b", b)])).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1\tlocalhost\n# tether: client aliases\n127.0.0.2\tb\n"
        );

        drop(stop);
        running.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
