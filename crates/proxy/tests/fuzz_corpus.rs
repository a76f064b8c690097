//! The `framing` fuzz target's properties (`fuzz/harness/framing.rs`) over its seed corpus and
//! every crash found so far (`fuzz/corpus/framing/`), on stable, as part of the normal tests.
//! The fuzzer itself needs nightly: `fuzz/run framing`.

#[path = "../../../fuzz/harness/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/harness/framing.rs"]
mod harness;

#[test]
fn framing_corpus() {
    corpus::replay("framing", 20, harness::run);
}

#[path = "../../../fuzz/harness/spiffe.rs"]
mod spiffe;

/// The `spiffe` target: a peer's certificate and SPIFFE ID, both untrusted.
#[test]
fn spiffe_corpus() {
    corpus::replay("spiffe", 10, spiffe::run);
}
