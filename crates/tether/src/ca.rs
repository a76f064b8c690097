//! `tether ca status` and `tether ca rotate`: the mesh's certificate authority.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api_client::{ApiClient, Target};
use crate::inspect::text;

/// The mesh's certificate authority: its roots and its sidecars, and root rotation.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Status(StatusArgs),
    Rotate(RotateArgs),
}

/// Show the trusted roots (the signing one first), the rotation under way if any, and the
/// sidecars connected to this control plane with the roots they trust.
#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// Move every sidecar to a new root without dropping a request.
///
/// Three steps, each waiting for the sidecars before the next:
///
///   begin     a new root joins the trust bundle; it does not sign yet. Every sidecar is sent
///             the bundle; the next step waits until each has taken it.
///   activate  the new root signs. Every sidecar sees that the signing root changed and asks for
///             a new certificate at once; the next step waits until each has one.
///   finish    the old root leaves the bundle.
///
/// Without --step, all three run in turn (or the rest of a rotation under way). A sidecar that
/// does not catch up within --wait stops the rotation with its name; run the command again to
/// go on, or pass --force to go ahead without it (its peers will refuse it until it catches
/// up). Only sidecars connected to the control plane asked are waited for.
///
///   tether ca rotate
///   tether ca rotate --ca-cert next.pem --ca-key next.key     # move to a CA of your own
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
struct RotateArgs {
    #[command(flatten)]
    target: Target,
    /// Run one step only.
    #[arg(long, value_enum)]
    step: Option<Step>,
    /// The root to move to (PEM, ECDSA P-256), instead of a new one; with --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// How long each step waits for the sidecars, e.g. 90s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait)]
    wait: Duration,
    /// Go ahead even when sidecars have not caught up.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Step {
    Begin,
    Activate,
    Finish,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Activate => "activate",
            Self::Finish => "finish",
        }
    }
}

pub fn main(args: Args) -> ExitCode {
    match args.command {
        Command::Status(args) => crate::inspect::run(status(args)),
        Command::Rotate(args) => crate::inspect::run(rotate(args)),
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.target)?;
    let status = client.get("/v1/ca").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("rotation: {}", phase(&status));
    for root in status["roots"].as_array().into_iter().flatten() {
        let role = if root["signing"].as_bool() == Some(true) { "signs" } else { "trusted" };
        println!(
            "root {} {role:<7} {} (until {})",
            text(&root["fingerprint"]),
            text(&root["subject"]),
            text(&root["notAfter"])
        );
    }
    println!("certificates live {} s", status["certificateLifetimeSeconds"]);
    let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
    println!("{} sidecars connected", proxies.len());
    for p in &proxies {
        let trusts: Vec<String> = p["trusts"].as_array().into_iter().flatten().map(text).collect();
        println!(
            "  {}/{} ({}): trusts {}, certificate from {}",
            text(&p["namespace"]),
            text(&p["task"]),
            text(&p["service"]),
            if trusts.is_empty() { "nothing yet".to_owned() } else { trusts.join("+") },
            p["signedBy"].as_str().unwrap_or("none yet"),
        );
    }
    Ok(())
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.target)?;
    let next_root = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            Some((read(cert)?, read(key)?))
        }
        _ => None,
    };
    let steps = match args.step {
        Some(step) => vec![step],
        None => {
            // The rest of a rotation under way, or a whole new one.
            let status = client.get("/v1/ca").await?;
            match status["nextStep"].as_str() {
                Some("activate") => {
                    println!("a rotation is under way: its next root is trusted; going on");
                    vec![Step::Activate, Step::Finish]
                }
                Some("finish") => {
                    println!("a rotation is under way: its new root signs; going on");
                    vec![Step::Finish]
                }
                _ => vec![Step::Begin, Step::Activate, Step::Finish],
            }
        }
    };
    if next_root.is_some() && steps.first() != Some(&Step::Begin) {
        bail!(
            "--ca-cert/--ca-key name the root to move to, at the begin step; a rotation is already under way"
        );
    }
    for step in steps {
        if step != Step::Begin {
            wait_for_sidecars(&client, step, args.wait, args.force).await?;
        }
        let mut body = json!({ "step": step.name(), "force": args.force });
        if let (Step::Begin, Some((cert, key))) = (step, &next_root) {
            body["caCert"] = cert.clone().into();
            body["caKey"] = key.clone().into();
        }
        let status = client.post("/v1/ca/rotation", &body).await?;
        println!("{:<8} done: {}", step.name(), phase(&status));
    }
    Ok(())
}

/// Waits until no connected sidecar holds `step` up, showing who is waited for as it changes.
async fn wait_for_sidecars(
    client: &ApiClient,
    step: Step,
    wait: Duration,
    force: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = None;
    loop {
        let status = client.get("/v1/ca").await?;
        let waiting = status["waitingFor"].as_array().cloned().unwrap_or_default();
        if waiting.is_empty() {
            return Ok(());
        }
        let names: Vec<String> =
            waiting.iter().map(|w| format!("{}/{}", text(&w["namespace"]), text(&w["task"]))).collect();
        if shown.as_ref() != Some(&names) {
            let what = match step {
                Step::Activate => "to trust the next root",
                _ => "to renew their certificates from the new root",
            };
            println!("waiting for {} sidecars {what}: {}", names.len(), shorten(&names));
            shown = Some(names.clone());
        }
        if force {
            println!("--force: going ahead without them");
            return Ok(());
        }
        if started.elapsed() >= wait {
            bail!(
                "{} sidecars did not catch up within {} s ({}); run `tether ca rotate` again to go on waiting, or pass --force",
                names.len(),
                wait.as_secs(),
                shorten(&names)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn phase(status: &Value) -> &'static str {
    match status["phase"].as_str() {
        Some("staged") => "the next root is trusted but does not sign yet",
        Some("activated") => "the new root signs; the previous one is still trusted",
        _ => "none under way; one root",
    }
}

fn shorten(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut shown = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        shown += &format!(" and {} more", names.len() - SHOWN);
    }
    shown
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    crate::server::parse_duration(text, Duration::from_secs(1)..=Duration::from_secs(7 * 86_400))
}
