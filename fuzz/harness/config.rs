//! What the `config` fuzz target checks, on any bytes. Shared with the corpus test
//! (`crates/model/tests/fuzz_corpus.rs`), which runs it over `fuzz/corpus/config/` on stable.
//!
//! - `ProxyConfig::parse` never panics: it returns a config or errors.
//! - A rejected document gets at least one error, each naming the file, placed inside the
//!   document (or at no line at all) and saying what is wrong.
//! - A config that parses serializes (the effective config that `/config` prints).

use tether_model::ProxyConfig;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ProxyConfig::parse("fuzz.yaml", text) {
        Ok(config) => {
            serde_json::to_string_pretty(&config).expect("a config serializes");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            let lines = yaml_lines(text);
            for e in &errors.0 {
                assert_eq!(e.file, "fuzz.yaml", "{e:?}");
                assert!(e.line <= lines, "{e:?} is past the end ({lines} lines)");
                assert!(!e.message.is_empty(), "{e:?}");
            }
        }
    }
}

/// How many lines YAML sees in `text`: CRLF, LF and a lone CR each break a line (YAML 1.2
/// §5.4), where `str::lines` would not split at a lone CR. One more for a position just past
/// the end.
pub fn yaml_lines(text: &str) -> usize {
    let bytes = text.as_bytes();
    let breaks = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    breaks + 2
}
