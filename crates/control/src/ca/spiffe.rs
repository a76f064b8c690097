//! SPIFFE IDs: one type for the CA and the sidecars, in `tether_model::identity`.

pub use tether_model::identity::{MAX_SPIFFE_ID_BYTES, SpiffeId, SpiffeIdError};

use super::Error;

impl From<SpiffeIdError> for Error {
    fn from(e: SpiffeIdError) -> Self {
        Error::BadSpiffeId { id: e.id, reason: e.reason }
    }
}
