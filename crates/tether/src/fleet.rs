//! The fleet's commands: `tether agent` (one host), `tether token create --agent NAME` (its
//! join token), `tether hosts`, `tether tasks` and `tether deployments` (what the control plane
//! placed where, and how rollouts went).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tether_model::placement::Resources;
use tether_runner::HostConfig;
use tether_runner::agent::{Agent, AgentConfig};

use crate::api_client::{ApiClient, Target};
use crate::inspect::{Common, Output, connect, or_dash, print_json, print_table, row, run, text};

/// Run this host's share of a fleet: join the control plane with a join token, hold a lease,
/// run the tasks the scheduler places here (each in its sandbox beside its sidecar, health
/// checked, registered on --advertise), and serve every namespace's published ports.
///
///   tether token create --agent host1          # on the control plane's machine
///   tether agent --server http://10.0.0.1:7700 --token jt1:host1:… \
///       --name host1 --advertise 10.0.0.11 --attribute zone=a
///
/// SIGTERM or Ctrl-C drains every task (the scheduler replaces them elsewhere) and leaves.
/// When the agent cannot renew its lease within --lease-ttl, the host counts as lost and its
/// tasks are replaced; coming back, it stops those it no longer owns.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct AgentArgs {
    /// The control plane's URL (the first of a comma-separated list is used).
    #[arg(long, value_name = "URL[,URL…]", env = "TETHER_SERVER")]
    server: String,
    /// This host's join token (`tether token create --agent NAME`).
    #[arg(long, value_name = "JOIN_TOKEN", env = "TETHER_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// This host's name in the fleet; the join token must be for it.
    #[arg(long, value_name = "HOST", env = "TETHER_NAME")]
    name: String,
    /// The address other hosts reach this one on: instances are registered there and the
    /// sidecars' inbound listeners bind to it.
    #[arg(long, value_name = "IP", env = "TETHER_ADVERTISE")]
    advertise: IpAddr,
    /// Where task files, logs and sidecar state are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/tether-agent")]
    data: PathBuf,
    /// An attribute for placement, NAME=VALUE (repeat it): `--attribute zone=a`.
    #[arg(long = "attribute", value_name = "NAME=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// What tasks may reserve here, `cpu=UNITS,memory=MiB` (1024 units = one CPU). Default:
    /// this machine's CPUs and memory.
    #[arg(long, value_name = "cpu=N,memory=MiB", value_parser = parse_capacity)]
    capacity: Option<Resources>,
    /// Seconds without a renewal before the host counts as lost.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_ttl: u64,
    /// Seconds a stopping task's sidecar keeps serving while its removal reaches the callers.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    drain_wait: f64,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}`: expected NAME=VALUE, e.g. zone=a")),
    }
}

fn parse_capacity(text: &str) -> Result<Resources, String> {
    let mut capacity = Resources::default();
    for part in text.split(',') {
        let bad = || format!("`{part}`: expected cpu=UNITS or memory=MiB, e.g. cpu=2048,memory=4096");
        let (name, value) = part.split_once('=').ok_or_else(bad)?;
        match name.trim() {
            "cpu" => capacity.cpu = value.trim().parse().map_err(|_| bad())?,
            "memory" => capacity.memory_mib = value.trim().parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        }
    }
    Ok(capacity)
}

/// This machine's CPUs (1024 units each) and memory.
pub(crate) fn detected_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Resources { cpu: cpus * 1024, memory_mib: memory_kib / 1024 }
}

pub fn agent(args: AgentArgs) -> ExitCode {
    if !(0.0..=110.0).contains(&args.drain_wait) {
        eprintln!("--drain-wait: expected seconds from 0 to 110");
        return ExitCode::from(crate::app::EX_DATAERR);
    }
    if let Err(e) = tether_runner::sandbox::become_root_in_user_namespace() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    crate::app::run_async(async move {
        let server = args.server.split(',').next().unwrap_or_default().trim().to_owned();
        std::fs::create_dir_all(&args.data).with_context(|| format!("creating {}", args.data.display()))?;
        let data = args.data.canonicalize()?;
        let capacity = args.capacity.unwrap_or_else(detected_capacity);
        let config = AgentConfig {
            name: args.name.clone(),
            server: server.clone(),
            token: args.token,
            address: args.advertise,
            attributes: args.attributes.into_iter().collect(),
            capacity,
            lease_ttl: Duration::from_secs(args.lease_ttl),
            host: HostConfig {
                data_dir: data.clone(),
                base_dir: data.clone(),
                tether_exe: std::env::current_exe().context("finding the tether binary")?,
                advertise: args.advertise,
                drain_wait: Duration::from_secs_f64(args.drain_wait),
            },
        };
        let agent =
            Agent::join(config).await.with_context(|| format!("joining {server} as {}", args.name))?;
        println!(
            "{}: joined {server} (advertising {}, cpu {} units, memory {} MiB)",
            args.name, args.advertise, capacity.cpu, capacity.memory_mib
        );
        agent.run(crate::signal::shutdown()).await;
        println!("{}: left the fleet", args.name);
        Ok(ExitCode::SUCCESS)
    })
}

/// Make tokens: `tether token create --agent NAME` prints a join token for one host (as the
/// last line), which `tether agent --token` takes.
#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// A join token for the host NAME: it lets `tether agent --name NAME` join and act for that
    /// host only.
    Create {
        #[arg(long, value_name = "NAME")]
        agent: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn token(args: TokenArgs) -> ExitCode {
    let TokenCommand::Create { agent, target } = args.command;
    run(async move {
        let client = ApiClient::new(&target)?;
        let answer = client.post("/v1/join-tokens", &serde_json::json!({ "agent": agent })).await?;
        let token = answer["token"].as_str().context("the answer has no token")?;
        println!("join token for agent {agent} (give it to `tether agent --name {agent} --token …`):");
        println!("{token}");
        Ok(())
    })
}

/// List the hosts of the fleet: name, address, attributes, capacity used/free and tasks.
#[derive(clap::Args)]
pub struct HostsArgs {
    #[command(flatten)]
    target: Target,
    /// table (for people) or json (for scripts).
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn hosts(args: HostsArgs) -> ExitCode {
    run(async move {
        let client = ApiClient::new(&args.target)?;
        let answer = client.get("/v1/agents").await?;
        let agents = answer["agents"].as_array().cloned().context("the answer has no `agents` list")?;
        if args.output == Output::Json {
            print_json(&Value::Array(agents));
            return Ok(());
        }
        let mut rows = vec![row([
            "NAME",
            "ADDRESS",
            "STATE",
            "TASKS",
            "CPU USED/TOTAL",
            "MEMORY USED/TOTAL",
            "ATTRIBUTES",
        ])];
        for a in &agents {
            let attributes: Vec<String> = a["attributes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            rows.push(vec![
                text(&a["name"]),
                text(&a["address"]),
                text(&a["state"]),
                text(&a["tasks"]),
                format!("{}/{}", a["used"]["cpu"], a["capacity"]["cpu"]),
                format!("{}/{} MiB", a["used"]["memoryMib"], a["capacity"]["memoryMib"]),
                or_dash(attributes.join(",")),
            ]);
        }
        print_table(&rows);
        if agents.is_empty() {
            println!(
                "(no host has joined: start `tether agent` on each, with a token from `tether token create --agent NAME`)"
            );
        }
        Ok(())
    })
}

/// `tether ps --server URL`: a namespace's tasks across the fleet: service, task, host,
/// revision, state and why.
pub fn ps(common: Common) -> ExitCode {
    let args = TasksArgs { common };
    run(async move {
        let (client, ns) = connect(&args.common).await?;
        let answer = client.get(&format!("/v1/namespaces/{ns}/tasks")).await?;
        let tasks = answer["tasks"].as_array().cloned().context("the answer has no `tasks` list")?;
        if args.common.output == Output::Json {
            print_json(&Value::Array(tasks));
            return Ok(());
        }
        let mut rows = vec![row(["SERVICE", "TASK", "HOST", "REVISION", "STATE", "DESIRED", "REASON"])];
        for t in &tasks {
            rows.push(vec![
                text(&t["service"]),
                text(&t["id"]),
                or_dash(text(&t["host"])),
                text(&t["revision"]),
                text(&t["state"]),
                text(&t["desired"]),
                or_dash(text(&t["reason"])),
            ]);
        }
        print_table(&rows);
        if tasks.is_empty() {
            println!("(no tasks in namespace {ns})");
        }
        Ok(())
    })
}

struct TasksArgs {
    common: Common,
}

/// List a namespace's deployments (of one service, or all): revisions, state and progress.
#[derive(clap::Args)]
pub struct DeploymentsArgs {
    /// Only this service's.
    service: Option<String>,
    #[command(flatten)]
    common: Common,
}

pub fn deployments(args: DeploymentsArgs) -> ExitCode {
    run(async move {
        let (client, ns) = connect(&args.common).await?;
        let query = args.service.as_deref().map(|s| format!("?service={s}")).unwrap_or_default();
        let answer = client.get(&format!("/v1/namespaces/{ns}/deployments{query}")).await?;
        let list =
            answer["deployments"].as_array().cloned().context("the answer has no `deployments` list")?;
        if args.common.output == Output::Json {
            print_json(&Value::Array(list));
            return Ok(());
        }
        let mut rows = vec![row(["SERVICE", "ID", "FROM", "TO", "STATE", "HEALTHY", "MESSAGE"])];
        for d in &list {
            rows.push(vec![
                text(&d["service"]),
                text(&d["id"]),
                text(&d["fromRevision"]),
                text(&d["toRevision"]),
                text(&d["state"]),
                format!("{}/{}", d["healthy"], d["desired"]),
                text(&d["message"]),
            ]);
        }
        print_table(&rows);
        Ok(())
    })
}
