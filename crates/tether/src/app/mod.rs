//! The commands that run an application: `up`, `deploy`, `down`, `ps`, `logs` and `run`.

pub mod deploy;
pub mod inspect;
pub mod run;
pub mod session;
pub mod up;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tether_model::App;
use tether_runner::ControlClient;

/// sysexits.h: the input data was incorrect.
pub const EX_DATAERR: u8 = 65;
/// sysexits.h: an input file did not exist or was not readable.
pub const EX_NOINPUT: u8 = 66;

/// Reads and validates a spec file as a whole, printing every error; nothing starts when it
/// has any.
pub fn load_spec(path: &Path) -> Result<App, ExitCode> {
    if !path.exists() {
        eprintln!(
            "{}: no such file; name the spec file (`tether up path/to/tether.yaml`) or run in the folder that holds tether.yaml",
            path.display()
        );
        return Err(ExitCode::from(EX_NOINPUT));
    }
    App::load(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        eprintln!(
            "nothing was started: fix the errors above (`tether validate` checks a file without running it)"
        );
        ExitCode::from(EX_DATAERR)
    })
}

/// As a user other than root, moves into a user namespace where sandboxes can be made (before
/// any thread starts), when the application has a service that needs one. A kernel that does
/// not allow it gets a clear error, and nothing starts.
pub fn prepare_sandboxes(app: &App) -> Result<(), ExitCode> {
    let sandboxed = app
        .services
        .iter()
        .filter_map(|(_, s)| s.task.as_ref())
        .any(|t| t.network_mode == tether_model::spec::NetworkMode::Sandbox);
    if !sandboxed {
        return Ok(());
    }
    match tether_runner::sandbox::become_root_in_user_namespace() {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Runs a command's async body on a runtime; errors are printed, exit 1.
pub fn run_async(body: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(body));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the control plane's namespace hold exactly the file's services: changed specs are
/// stored, unchanged ones left alone, services the file no longer names removed. Returns the
/// new revision of every service whose spec changed.
pub async fn apply(client: &ControlClient, app: &App, quiet: bool) -> anyhow::Result<BTreeMap<String, u64>> {
    let ns = &app.namespace;
    client.put_namespace(ns).await.with_context(|| format!("creating namespace {ns}"))?;
    let current: BTreeMap<String, tether_model::spec::ServiceSpec> =
        client.services(ns).await?.into_iter().map(|s| (s.name, s.spec)).collect();
    let mut changed = BTreeMap::new();
    for (spec, service) in &app.services {
        if current.get(&service.name) == Some(spec) {
            continue;
        }
        let revision = client
            .put_service(ns, &service.name, spec)
            .await
            .with_context(|| format!("storing service {}", service.name))?;
        if !quiet {
            let verb = if current.contains_key(&service.name) { "changed" } else { "added" };
            println!("{}: {verb} (revision {revision})", service.name);
        }
        changed.insert(service.name.clone(), revision);
    }
    for name in current.keys().filter(|name| app.service(name).is_none()) {
        client.delete_service(ns, name).await.with_context(|| format!("removing service {name}"))?;
        if !quiet {
            println!("{name}: removed");
        }
    }
    Ok(changed)
}
