//! `tether services` and `tether endpoints NAME`: what a running control plane knows.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tether_model::registry::HealthFilter;

use crate::api_client::{ApiClient, Target};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table, for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

#[derive(clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub target: Target,
    /// The namespace; may be left out when the control plane has only one.
    #[arg(long, short, value_name = "NS", env = "TETHER_NAMESPACE")]
    pub namespace: Option<String>,
    /// table (for people) or json (for scripts).
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// List a namespace's services: their discovery names, client aliases and healthy instances.
#[derive(clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    common: Common,
}

/// List the instances behind a service or a discovery name, with their health.
#[derive(clap::Args)]
pub struct EndpointsArgs {
    /// A service name or a discovery name.
    name: String,
    /// Which instances: HEALTHY, UNHEALTHY, ALL or HEALTHY_OR_ELSE_ALL.
    #[arg(long, value_name = "FILTER", default_value = "ALL")]
    health: HealthFilter,
    #[command(flatten)]
    common: Common,
}

pub fn services(args: ServicesArgs) -> ExitCode {
    run(async move {
        let (client, ns) = connect(&args.common).await?;
        let services = list_services(&client, &ns).await?;
        match args.common.output {
            Output::Json => print_json(&Value::Array(services)),
            Output::Table => {
                let mut rows = vec![row(["NAME", "DISCOVERY NAMES", "CLIENT ALIASES", "HEALTHY/TOTAL"])];
                for s in &services {
                    let discovery =
                        s["effective"]["discovery"].as_array().map(Vec::as_slice).unwrap_or_default();
                    let names =
                        discovery.iter().filter_map(|d| d["discoveryName"].as_str()).collect::<Vec<_>>();
                    let aliases = discovery
                        .iter()
                        .flat_map(|d| d["clientAliases"].as_array().cloned().unwrap_or_default())
                        .map(|a| format!("{}:{}", text(&a["dnsName"]), a["port"]))
                        .collect::<Vec<_>>();
                    let counts = &s["instances"];
                    rows.push(vec![
                        text(&s["name"]),
                        or_dash(names.join(",")),
                        or_dash(aliases.join(",")),
                        format!("{}/{}", counts["healthy"], counts["total"]),
                    ]);
                }
                print_table(&rows);
                if services.is_empty() {
                    println!("(no services in namespace {ns})");
                }
            }
        }
        Ok(())
    })
}

pub fn endpoints(args: EndpointsArgs) -> ExitCode {
    run(async move {
        let (client, ns) = connect(&args.common).await?;
        let services = list_services(&client, &ns).await?;
        let (service, port_name) = find(&services, &args.name).ok_or_else(|| {
            let names: Vec<String> = services.iter().map(|s| text(&s["name"])).collect();
            anyhow!(
                "no service or discovery name `{}` in namespace {ns}; services: {}",
                args.name,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )
        })?;
        let path = format!("/v1/namespaces/{ns}/services/{service}/instances?health={}", args.health);
        let answer = client.get(&path).await?;
        let mut instances = answer["instances"].as_array().cloned().unwrap_or_default();
        // A discovery name stands for one port of the service: keep that port's instances.
        if let Some(port) = port_name {
            instances.retain(|i| i["portName"].as_str().is_none_or(|p| p == port));
        }
        match args.common.output {
            Output::Json => print_json(&Value::Array(instances)),
            Output::Table => {
                let mut rows = vec![row(["ID", "ADDRESS", "HEALTH", "TASK", "PORT NAME", "REVISION"])];
                for i in &instances {
                    let address = match text(&i["address"]) {
                        v6 if v6.contains(':') => format!("[{v6}]:{}", i["port"]),
                        v4 => format!("{v4}:{}", i["port"]),
                    };
                    rows.push(vec![
                        text(&i["id"]),
                        address,
                        text(&i["health"]),
                        text(&i["task"]),
                        or_dash(text(&i["portName"])),
                        i["revision"].to_string(),
                    ]);
                }
                print_table(&rows);
                if instances.is_empty() {
                    println!("(no instances of {service} pass the filter {})", args.health);
                }
            }
        }
        Ok(())
    })
}

/// The service named `name`, or the one publishing discovery name `name` (and its port).
fn find(services: &[Value], name: &str) -> Option<(String, Option<String>)> {
    if let Some(s) = services.iter().find(|s| s["name"] == name) {
        return Some((text(&s["name"]), None));
    }
    services.iter().find_map(|s| {
        let discovery = s["effective"]["discovery"].as_array()?;
        let entry = discovery.iter().find(|d| d["discoveryName"] == name)?;
        Some((text(&s["name"]), entry["portName"].as_str().map(str::to_owned)))
    })
}

pub(crate) async fn connect(common: &Common) -> anyhow::Result<(ApiClient, String)> {
    let client = ApiClient::new(&common.target)?;
    if let Some(ns) = &common.namespace {
        return Ok((client, ns.clone()));
    }
    let answer = client.get("/v1/namespaces").await?;
    let names: Vec<String> =
        answer["namespaces"].as_array().into_iter().flatten().map(|n| text(&n["name"])).collect();
    match names.as_slice() {
        [only] => {
            let ns = only.clone();
            Ok((client, ns))
        }
        [] => bail!("the control plane has no namespaces yet"),
        several => bail!(
            "the control plane has several namespaces ({}); pick one with --namespace",
            several.join(", ")
        ),
    }
}

async fn list_services(client: &ApiClient, ns: &str) -> anyhow::Result<Vec<Value>> {
    let answer = client.get(&format!("/v1/namespaces/{ns}/services")).await?;
    answer["services"].as_array().cloned().context("the answer has no `services` list")
}

pub fn run(work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(work));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // For people at a terminal: no timestamp or level, as a log line would have.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

pub(crate) fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub(crate) fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        println!("{line}");
    }
}
