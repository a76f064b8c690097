//! `tether validate [FILE]`: check a spec file as a whole and print every error.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};
use tether_model::{App, ConfigError};

/// sysexits.h: the input data was incorrect.
const EX_DATAERR: u8 = 65;
/// sysexits.h: an input file did not exist or was not readable.
const EX_NOINPUT: u8 = 66;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// `FILE:LINE:COLUMN: FIELD: message`, one error per line, for people and editors.
    Text,
    /// `{"ok": bool, "errors": [{file, line, column, field, message}]}`, for scripts.
    Json,
}

/// Check a spec file (YAML or JSON) and print every error, each with its file, line, column
/// and field. Exits 0 when the file is valid, 65 when it is not, 66 when it cannot be read.
#[derive(clap::Args)]
pub struct Args {
    /// The spec file.
    #[arg(value_name = "FILE", default_value = "tether.yaml")]
    file: PathBuf,
    /// text (for people) or json (for scripts).
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub fn main(args: Args) -> ExitCode {
    let name = args.file.display().to_string();
    let text = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "no such file; name the spec file (`tether validate path/to/tether.yaml`) or run in the folder that holds tether.yaml ({e})"
                )
            } else {
                format!("cannot read the spec file: {e}")
            };
            return unreadable(&name, &message, args.output);
        }
    };
    let result = match String::from_utf8(text) {
        Ok(text) => App::parse(&name, &text).map_err(|errors| errors.0),
        Err(e) => Err(vec![ConfigError {
            file: name.clone(),
            line: 1,
            column: 1,
            field: String::new(),
            message: format!("the file is not UTF-8 text ({e}); save it as UTF-8"),
        }]),
    };
    match (result, args.output) {
        (Ok(app), Output::Text) => {
            let names: Vec<&str> = app.services.iter().map(|(_, s)| s.name.as_str()).collect();
            let count = match names.len() {
                1 => "1 service".to_owned(),
                n => format!("{n} services"),
            };
            println!("{name}: ok — namespace {}, {count} ({})", app.namespace, names.join(", "));
            ExitCode::SUCCESS
        }
        (Ok(app), Output::Json) => {
            let names: Vec<&str> = app.services.iter().map(|(_, s)| s.name.as_str()).collect();
            print_json(&json!({ "ok": true, "errors": [], "namespace": app.namespace, "services": names }));
            ExitCode::SUCCESS
        }
        (Err(errors), Output::Text) => {
            for e in &errors {
                eprintln!("{e}");
            }
            ExitCode::from(EX_DATAERR)
        }
        (Err(errors), Output::Json) => {
            let errors: Vec<Value> = errors.iter().map(error_json).collect();
            print_json(&json!({ "ok": false, "errors": errors }));
            ExitCode::from(EX_DATAERR)
        }
    }
}

fn unreadable(name: &str, message: &str, output: Output) -> ExitCode {
    match output {
        Output::Text => eprintln!("{name}: {message}"),
        Output::Json => print_json(&json!({
            "ok": false,
            "errors": [{ "file": name, "line": null, "column": null, "field": "", "message": message }],
        })),
    }
    ExitCode::from(EX_NOINPUT)
}

fn error_json(e: &ConfigError) -> Value {
    json!({ "file": e.file, "line": e.line, "column": e.column, "field": e.field, "message": e.message })
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}
