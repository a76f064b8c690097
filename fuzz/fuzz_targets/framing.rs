//! The proxy's request framing checks: the raw HTTP/1 scanner and the checks on parsed
//! requests and response heads (see `harness/framing.rs` for the properties).
#![no_main]

#[path = "../harness/framing.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
