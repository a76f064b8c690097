//! tether's control plane (design §6): the registry of namespaces, services and instances over a
//! [`Store`](tether_store::Store), the REST API that people, the CLI and runners use, and the
//! server that serves it.
//!
//! ```text
//! Server::bind(config, store)      data dir, admin token, listener
//!   └─ rest::router                axum Router: bearer auth → handlers → Registry
//!        └─ Registry<S: Store>     typed operations, each one atomic transaction
//!             └─ registry::keys    the key layout; Snapshot + watch_prefix for the proxy stream
//! ```

pub mod ca;
mod error;
pub mod fleet;
pub mod identity;
mod metrics;
pub mod registry;
pub mod rest;
pub mod scheduler;
mod server;
pub mod stream;
mod token;

pub use error::{Error, Result};
pub use registry::{Outcome, Registry, ServiceRecord, Snapshot, watch_prefix};
pub use server::{DEFAULT_LISTEN, SchedulerOptions, Server, ServerConfig, default_data_dir, ensure_data_dir};
pub use token::{AdminToken, TOKEN_FILE};
