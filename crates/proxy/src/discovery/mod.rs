//! A sidecar fed by the control plane: subscribes to its config stream, applies each update to
//! the running proxy and answers ACK or NACK, keeps its last good snapshot on disk, and serves
//! from that snapshot while the control plane is away (design §6, static stability).
//!
//! ```text
//! control plane ══ ConfigUpdate ══► Discovery ── Update ──► Proxy::run_with_updates
//!               ◄══ Ack / Nack ════           ◄─ applied ──
//!               ◄══ CSR ═══════════           ── identity, trust bundle ──► Credentials
//! ```
//!
//! With [`Discovery::with_credentials`] it also keeps the sidecar's identity: it makes a key
//! (which never leaves the process), sends a CSR on the stream, and puts the certificate it gets
//! into the proxy's credentials; it asks again at half the certificate's remaining lifetime, at
//! once when the root that signs changes (a CA rotation), and on every new stream while it
//! has none. While the control plane is away the certificate keeps serving until it expires;
//! then the proxy fails closed until a new one comes.

mod client;
mod keeper;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use client::Discovery;

/// Who the proxy is, where its control plane is, and what it decides for itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The control plane's replicas, e.g. `http://127.0.0.1:7700`: any one of them will do, and
    /// when the one in use fails the next is tried.
    pub servers: Vec<String>,
    pub token: String,
    pub namespace: String,
    pub service: String,
    pub task: String,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// Where the last good snapshot is kept.
    pub state_dir: PathBuf,
    /// Bind every outbound listener on this address with a port of the system's choosing,
    /// instead of the alias's own address and port (several sidecars on one host without
    /// sandboxes).
    pub outbound_ip: Option<IpAddr>,
    /// An edge proxy: it serves the namespace's published ports instead of a task's listeners.
    pub edge: bool,
    /// How long draining keeps serving new connections (`drainWaitSeconds`); `None` keeps the
    /// default.
    pub drain_wait_seconds: Option<f64>,
}

/// Checks a control-plane URL as `--server` takes it: `http://HOST:PORT`.
pub fn check_server_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(()),
        _ => Err(format!("`{url}` is not an http://HOST:PORT URL, e.g. http://127.0.0.1:7700")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the saved snapshot {path} cannot be used: {reason}")]
    Saved { path: PathBuf, reason: String },
    #[error("cannot keep the snapshot in {path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
}
