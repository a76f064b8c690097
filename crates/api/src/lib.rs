//! The wire contract between the sidecar proxy and the control plane: a gRPC stream of config
//! updates (see `proto/tether/v1/config.proto`). Both sides convert these messages to model
//! types at their edge and nowhere else.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tether.v1");
}

pub mod pieces;
pub mod resource;

pub use resource::ResourceName;
