//! `tether`: one binary for the whole mesh. This file only parses the command line and composes
//! the libraries.

mod api_client;
mod app;
mod ca;
mod fleet;
mod inspect;
mod proxy;
mod server;
mod signal;
mod validate;

/// A proxy allocates and frees small buffers on every request; mimalloc does that with less
/// work than glibc's allocator (one hop: about a fifth more requests per second). It is built
/// without transparent huge pages (`no_thp`), which would back every touched region with 2 MiB
/// and double an idle sidecar's memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Service-to-service networking for your own Linux machines: call services by name, with
/// balancing, timeouts, retries, mutual TLS and golden metrics in a sidecar proxy.
#[derive(Parser)]
#[command(name = "tether", version, propagate_version = true)]
struct Cli {
    /// Log level: error, warn, info, debug or trace. Default: warn for the commands that run an
    /// application (up, deploy, run, …), whose progress is printed, info for the others.
    #[arg(long, global = true, env = "TETHER_LOG")]
    log_level: Option<tracing::Level>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Proxy(proxy::Args),
    Server(server::Args),
    Services(inspect::ServicesArgs),
    Endpoints(inspect::EndpointsArgs),
    Validate(validate::Args),
    Up(app::up::Args),
    Deploy(app::deploy::Args),
    Down(app::inspect::DownArgs),
    Ps(app::inspect::PsArgs),
    Logs(app::inspect::LogsArgs),
    Run(app::run::Args),
    Ca(ca::Args),
    Agent(fleet::AgentArgs),
    Token(fleet::TokenArgs),
    Hosts(fleet::HostsArgs),
    Deployments(fleet::DeploymentsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_by_default = matches!(
        cli.command,
        Command::Up(_)
            | Command::Deploy(_)
            | Command::Down(_)
            | Command::Ps(_)
            | Command::Logs(_)
            | Command::Run(_)
            | Command::Agent(_)
    );
    let default_level = if quiet_by_default { tracing::Level::WARN } else { tracing::Level::INFO };
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level.unwrap_or(default_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match cli.command {
        Command::Proxy(args) => proxy::main(args),
        Command::Server(args) => server::main(args),
        Command::Services(args) => inspect::services(args),
        Command::Endpoints(args) => inspect::endpoints(args),
        Command::Validate(args) => validate::main(args),
        Command::Up(args) => app::up::main(args),
        Command::Agent(args) => fleet::agent(args),
        Command::Token(args) => fleet::token(args),
        Command::Hosts(args) => fleet::hosts(args),
        Command::Deployments(args) => fleet::deployments(args),
        Command::Deploy(args) => app::deploy::main(args),
        Command::Down(args) => app::inspect::down(args),
        Command::Ps(args) => app::inspect::ps(args),
        Command::Logs(args) => app::inspect::logs(args),
        Command::Run(args) => app::run::main(args),
        Command::Ca(args) => ca::main(args),
    }
}
