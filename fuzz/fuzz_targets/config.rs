//! The config decoder, `ProxyConfig::parse` (see `harness/config.rs` for the properties).
#![no_main]

#[path = "../harness/config.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
