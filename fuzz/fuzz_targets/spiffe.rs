//! Reading a peer's SPIFFE ID: out of a certificate (DER), and as text (see `harness/spiffe.rs`).
#![no_main]

#[path = "../harness/spiffe.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
