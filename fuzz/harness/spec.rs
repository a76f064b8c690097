//! What the `spec` fuzz target checks, on any bytes. Shared with the corpus test
//! (`crates/model/tests/fuzz_corpus.rs`), which runs it over `fuzz/corpus/spec/` on stable.
//!
//! - `App::parse` (a whole `tether.yaml`) never panics: it returns an application or errors.
//! - A rejected file gets at least one error, each naming the file, placed inside the document
//!   and saying what is wrong.
//! - An accepted file's services each validate again on their own, as the REST API will check
//!   them, and their specs survive a JSON round trip (what `tether up` sends).
//! - The same bytes as a REST body (`PUT …/services/{name}`: JSON into a `ServiceSpec`, then
//!   validation) never panic either.

use tether_model::App;
use tether_model::spec::ServiceSpec;

pub fn run(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<ServiceSpec>(data) {
        let _ = spec.validate("fuzzed", "fuzz.local");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match App::parse("tether.yaml", text) {
        Ok(app) => {
            for (spec, service) in &app.services {
                let again = spec
                    .validate(&service.name, &app.namespace)
                    .expect("an accepted service validates alone");
                assert_eq!(&again, service, "validating alone gives another service");
                let json = serde_json::to_vec(spec).expect("a spec serializes");
                let back: ServiceSpec = serde_json::from_slice(&json).expect("a serialized spec reads back");
                assert_eq!(&back, spec, "a spec changed through JSON");
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            let lines = crate::config::yaml_lines(text);
            for e in &errors.0 {
                assert_eq!(e.file, "tether.yaml", "{e:?}");
                assert!(e.line <= lines, "{e:?} is past the end ({lines} lines)");
                assert!(!e.message.is_empty(), "{e:?}");
            }
        }
    }
}
