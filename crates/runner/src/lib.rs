//! The runner: task sandboxes, health checks, supervision and rolling deployments (design §7).
