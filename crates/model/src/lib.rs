//! tether's domain model: configuration shapes, their defaults and their validation.
//!
//! Parsing and validation are separate steps: a file is first read into raw shapes that mirror
//! what people write (camelCase, optional fields), then validated as a whole into the types the
//! rest of tether uses. Every error points at a file, a line and a field. This crate does no IO
//! beyond what its callers hand it.

pub mod bundle;
mod duration;
pub mod fleet;
pub mod identity;
pub mod placement;
pub mod proxy;
pub mod registry;
pub mod rollout;
mod source;
pub mod spec;

pub use duration::Seconds;
pub use identity::SpiffeId;
pub use proxy::{
    AppProtocol, Endpoint, Health, Inbound, InboundTls, Limits, LoadBalancing, Outbound, OutlierDetection,
    ProxyConfig, RetryPolicy, Timeouts,
};
pub use source::{ConfigError, ConfigErrors, Source};
pub use spec::{App, AppSpec};
