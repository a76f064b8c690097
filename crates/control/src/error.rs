//! The control plane's one error type. Each variant says who is to blame; `rest/error.rs` is the
//! one place that turns them into HTTP statuses.

use std::net::SocketAddr;
use std::path::PathBuf;

use tether_model::spec::{FieldError, FieldErrors};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a rule (caller's fault, 400): every error found, each
    /// with its field.
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    /// The request is fine on its own but clashes with what the namespace already holds, such as
    /// a discovery name another service uses (409).
    #[error("conflicts with the namespace: {0}")]
    Taken(FieldErrors),
    /// No token, or not the right one (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("namespace `{0}` not found")]
    NamespaceNotFound(String),
    #[error("service `{service}` not found in namespace `{namespace}`")]
    ServiceNotFound { namespace: String, service: String },
    #[error("instance `{id}` of service `{service}` not found in namespace `{namespace}`")]
    InstanceNotFound { namespace: String, service: String, id: String },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(i64),
    #[error("task `{id}` not found in namespace `{namespace}`")]
    TaskNotFound { namespace: String, id: String },
    /// The caller is known but may not do this (403): an agent acting beyond its own host.
    #[error("{0}")]
    Forbidden(String),
    /// No handler for the path (404).
    #[error("no such route: {method} {path}; see GET /openapi.json")]
    NoRoute { method: String, path: String },
    /// The path exists, the method does not (405).
    #[error("{method} is not allowed on {path}; see GET /openapi.json")]
    MethodNotAllowed { method: String, path: String },
    /// Deleting a namespace that still has services (409): they are not deleted behind the
    /// caller's back.
    #[error("namespace `{namespace}` still has services ({}); delete them first", .services.join(", "))]
    NamespaceNotEmpty { namespace: String, services: Vec<String> },
    /// Concurrent writers kept changing the same namespace; nothing was written (409, retry).
    #[error("{0}")]
    Contended(String),
    /// The store cannot be reached or cannot commit (503): nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value this version cannot read (500).
    #[error("the stored value at `{key}` cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store failed in a way that is not the caller's fault (500).
    #[error("store: {0}")]
    Store(String),
    /// A step the state does not allow yet, such as a CA rotation step that waits for
    /// sidecars (409): nothing changed.
    #[error("{0}")]
    NotYet(String),
    /// The certificate authority cannot do its work: a supplied CA that does not fit the
    /// stored one, a failed signature (500).
    #[error("certificate authority: {0}")]
    Ca(String),
    /// A task's logs are on a host that cannot serve them now: it left the fleet, or its agent
    /// serves no logs (503, retry later).
    #[error("the logs of task `{task}` are on host {host}, which cannot serve them: {reason}")]
    HostUnavailable { host: String, task: String, reason: String },
    /// A task's host did not answer, or refused the control plane (502).
    #[error("the logs of task `{task}` are on host {host} ({address}), which did not serve them: {reason}")]
    HostUnreachable { host: String, task: String, address: String, reason: String },
    /// The task's host has no log of it: it never started there (404).
    #[error("host {host} has no log of task `{task}`: it has not started there")]
    LogNotFound { host: String, task: String },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{}: {source}", .path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

impl Error {
    /// One thing wrong with one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(FieldErrors(vec![FieldError::new(field, message)]))
    }
}

impl From<tether_store::Error> for Error {
    fn from(e: tether_store::Error) -> Self {
        use tether_store::Error as S;
        match e {
            S::Unavailable(message) => Self::Unavailable(message),
            S::LeaseNotFound(lease) => Self::LeaseNotFound(lease),
            // Conflicts are handled where the transaction is built; one that gets here lost
            // every retry.
            S::Conflict(message) => Self::Contended(format!("concurrent changes: {message}; try again")),
            other @ (S::Compacted { .. } | S::Other(_)) => Self::Store(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
