//! The `config` and `spec` fuzz targets' properties (`fuzz/harness/`) over their seed corpora
//! and every crash found so far (`fuzz/corpus/`), on stable, as part of the normal tests.
//! The fuzzer itself needs nightly: `fuzz/run config`.

#[path = "../../../fuzz/harness/config.rs"]
mod config;
#[path = "../../../fuzz/harness/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/harness/spec.rs"]
mod spec;

#[test]
fn config_corpus() {
    corpus::replay("config", 10, config::run);
}

/// The `spec` target (`fuzz/harness/spec.rs`): whole spec files and REST service bodies.
#[test]
fn spec_corpus() {
    corpus::replay("spec", 10, spec::run);
}

/// Found by the fuzzer (`fuzz/corpus/config/lone-cr-line-breaks.yaml`): YAML breaks lines at a
/// lone CR too (YAML 1.2 §5.4), so an error after lone CRs is placed on the line YAML (and an
/// editor) shows, which is later than `str::lines` would count.
#[test]
fn a_lone_cr_breaks_lines_in_error_positions() {
    let text = "admin: 127.0.0.1:9901\r\r\routbound: {\n";
    let errors = tether_model::ProxyConfig::parse("cr.yaml", text).unwrap_err();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(config::yaml_lines(text), 6);
    // The unclosed `{` is reported at the end of the document: after YAML's 4 lines.
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (5, 1), "{e:?}");
}
