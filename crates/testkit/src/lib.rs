//! What tether's end-to-end tests share: real `tether` processes, backends whose behaviour a
//! test controls, a bounded load generator and an `assert_eventually!` that replaces sleeps.
//!
//! Everything binds to loopback with port 0 and reports the address the kernel chose, so tests
//! run in parallel without racing for ports.

pub mod app;
mod backend;
mod client;
pub mod control;
pub mod etcd;
pub mod hosts;
mod load;
mod logged;
mod net;
mod process;
mod prometheus;
mod python;
mod raw;
mod sidecar;
mod stream;

pub use backend::{Backend, BackendOptions, Fnv, pattern, pattern_body, pattern_checksum};
pub use client::{Client, Reply};
pub use load::{Load, LoadReport};
pub use logged::LoggedChild;
pub use net::{Unanswered, free_port, refused_addr};
pub use process::BackendProcess;
pub use prometheus::Prometheus;
pub use python::{python, require_python_module};
pub use raw::{CountingBackend, RawReply, raw_exchange};
pub use sidecar::{Sidecar, metric_value, workspace_path};
pub use stream::{Digest, StreamClient};

/// Polls `$cond` (an expression) every 20 ms until it holds, failing the test with `$($msg)+`
/// if it does not within `$timeout`.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
        }
    }};
}
