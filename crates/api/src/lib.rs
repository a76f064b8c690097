//! The wire contract between the sidecar proxy and the control plane: a gRPC stream of config
//! updates (see `proto/tether/v1/config.proto`). Both sides convert these messages to model
//! types at their edge and nowhere else.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tether.v1");
}

/// Resource names: `inbound/<portName>` and `outbound/<dnsName>`.
pub mod resource {
    pub const INBOUND: &str = "inbound/";
    pub const OUTBOUND: &str = "outbound/";
    /// `outbound/publish:<service>.<portName>`: a service's port published on the host. An
    /// outbound listener like any other, sent only to edge proxies (and only those to them).
    pub const PUBLISH: &str = "outbound/publish:";
}
