//! Whole spec files, `App::parse`, and REST service bodies (see `harness/spec.rs` for the
//! properties).
#![no_main]

#[path = "../harness/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../harness/spec.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
