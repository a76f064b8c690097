//! The control plane's certificate authority (design §8): an ECDSA P-256 root, made on first
//! start or supplied by the operator, that gives each sidecar a certificate naming its SPIFFE ID
//! `spiffe://<namespace>/<service>`.
//!
//! ```text
//! CaStore::load_or_create     the CaState in the store (one per cluster, agreed by all replicas)
//!   └─ CaState                the active Ca, the TrustBundle sidecars trust, a staged next Ca
//!        └─ Ca::sign          a sidecar's CSR + the SpiffeId its token earned → Issued leaf + chain
//! ```
//!
//! The sidecar makes its own key; only the CSR (public key and self-signature) crosses the wire.
//! What identity a sidecar gets is decided by the caller of [`Ca::sign`] from the sidecar's
//! bootstrap token, never by the names in the CSR.

mod authority;
mod error;
mod persist;
mod rotation;
mod spiffe;
#[cfg(test)]
mod tests;

pub use authority::{CLOCK_SKEW, Ca, Issued, ROOT_VALIDITY};
pub use error::{Error, Result};
pub use persist::{CA_KEY, CaStore, StoredCa};
pub use rotation::{CaState, RotationPhase, RotationStep, TrustBundle};
pub use spiffe::{MAX_SPIFFE_ID_BYTES, SpiffeId};
