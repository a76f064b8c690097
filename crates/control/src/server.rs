//! The control plane as one noun: one listener serving the REST API and the proxy stream, over
//! a registry on a store, with the certificate authority and (when asked) the scheduler.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use axum::Router;
use tether_store::Store;
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::identity::{IdentityOptions, Issuer};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::stream::ConfigStreamService;
use crate::token::AdminToken;
use crate::{Error, Result, rest};

/// Where `tether server` listens unless told otherwise: loopback only, so that a first start
/// exposes nothing; pass `--listen 0.0.0.0:7700` to serve other hosts.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7700);

/// The data directory unless told otherwise: `/var/lib/tether` for root; otherwise
/// `$XDG_DATA_HOME/tether`, or `~/.local/share/tether`.
pub fn default_data_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let home_data = || {
        std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".local/share"))
        })
    };
    match (root, home_data()) {
        (false, Some(data)) => data.join("tether"),
        _ => PathBuf::from("/var/lib/tether"),
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Holds `admin.token` (and the embedded store, which the caller opens there).
    pub data_dir: PathBuf,
    /// The certificate authority's settings.
    pub identity: IdentityOptions,
    /// Run the fleet's scheduler (see [`crate::scheduler`]); only one per store.
    pub scheduler: Option<SchedulerOptions>,
}

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// After start, how long agents have to come back before their hosts count as lost: at
    /// least their lease's TTL.
    pub lost_grace: std::time::Duration,
}

pub struct Server<S> {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: Registry<S>,
    router: Router,
    token: AdminToken,
    token_path: PathBuf,
    issuer: Arc<Issuer<S>>,
    scheduler: Option<Scheduler<S>>,
}

/// Creates the data directory if it is missing, readable by its owner only (mode 0700): it holds
/// the admin token and the registry.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::DataDir { path: dir.to_owned(), source })
}

impl<S: Store> Server<S> {
    /// Creates the data directory, the admin token and the CA if they are missing (both are
    /// shared through the store with other replicas, see [`AdminToken::load_or_create`] and
    /// [`Issuer::start`]), and binds the listener, so that a taken port fails here and the
    /// address is known before serving.
    pub async fn bind(config: &ServerConfig, store: S) -> Result<Self> {
        ensure_data_dir(&config.data_dir)?;
        let (token, token_path) = AdminToken::load_or_create(&config.data_dir, &store).await?;
        let issuer = Issuer::start(store.clone(), config.identity.clone()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
        let registry = Registry::new(store);
        let stream = ConfigStreamService::new(registry.clone(), token.clone(), issuer.clone());
        let router =
            rest::router_with(registry.clone(), token.clone(), Some(issuer.clone())).merge(stream.router());
        let scheduler = config.scheduler.as_ref().map(|o| Scheduler::new(registry.clone(), o.lost_grace));
        Ok(Self { listener, local_addr, registry, router, token, token_path, issuer, scheduler })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry the API serves, for other services on the same listener.
    pub fn registry(&self) -> &Registry<S> {
        &self.registry
    }

    /// The admin token, for services merged onto the listener that accept it too.
    pub fn admin_token(&self) -> &AdminToken {
        &self.token
    }

    /// The certificate authority, for the proxy stream.
    pub fn issuer(&self) -> &Arc<Issuer<S>> {
        &self.issuer
    }

    /// Where the admin token is kept.
    pub fn token_path(&self) -> &Path {
        &self.token_path
    }

    /// Serves HTTP/1.1 and HTTP/2 (h2c, so gRPC too) until `shutdown` resolves, then stops
    /// accepting and lets requests in flight finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        self.run_until(std::future::pending(), shutdown).await
    }

    /// [`Server::run`], with the scheduler stopping earlier, at `scheduler_stop`: `tether up`
    /// stops placing tasks before its agent drains them, and keeps serving while it does.
    pub async fn run_until(
        self,
        scheduler_stop: impl Future<Output = ()> + Send + 'static,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(scheduler) = self.scheduler {
            let mut stopped = stopped.clone();
            tokio::spawn(scheduler.run(async move {
                tokio::select! {
                    () = scheduler_stop => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            }));
        }
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await.map_err(Error::Serve)
    }
}
