//! What the `spiffe` fuzz target checks, on any bytes: the two readers of a peer's identity.
//! Shared with the corpus test (`crates/proxy/tests/fuzz_corpus.rs`), which runs it over
//! `fuzz/corpus/spiffe/` (certificates, DER, and SPIFFE IDs as text) on stable.
//!
//! - Reading the SPIFFE ID out of a certificate never panics, and an ID it reads is one the
//!   text parser accepts and prints back as read.
//! - The text parser never panics; what it accepts prints back exactly as given; what it refuses
//!   it repeats only shortened and escaped (a peer's bytes never flood a log line).

use tether_proxy::tls::{SpiffeId, peer_identity};

pub fn run(data: &[u8]) {
    if let Ok(id) = peer_identity(data) {
        round_trips(&id.to_string());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match SpiffeId::parse(text) {
            Ok(_) => round_trips(text),
            Err(e) => {
                // At most 80 characters of it, each escaped to at most 10 (`\u{10ffff}`), and `…`.
                assert!(e.id.chars().count() <= 80 * 10 + 1, "the refused ID is repeated whole: {}", e.id);
                assert!(!e.id.chars().any(char::is_control), "a control character is repeated: {:?}", e.id);
            }
        }
    }
}

fn round_trips(text: &str) {
    let id = SpiffeId::parse(text).unwrap_or_else(|e| panic!("`{text}` does not parse back: {e}"));
    assert_eq!(id.to_string(), text);
    if !id.is_edge() {
        assert_eq!(SpiffeId::new(id.namespace(), id.service()).as_ref(), Ok(&id));
    }
}
