//! What the `framing` fuzz target checks, on any bytes. Shared with the corpus test
//! (`crates/proxy/tests/fuzz_corpus.rs`), which runs it over `fuzz/corpus/framing/` on stable.
//!
//! - The raw HTTP/1 scanner never panics, and its verdicts do not depend on how the bytes are
//!   cut into reads; a broken body is reported at an offset inside the input.
//! - The checks on parsed requests and response heads never panic on any request the `http`
//!   crate can build from the bytes, and refuse more than 100 fields.
//! - `parse_length` agrees with the standard library on what a decimal length is.

use http::{HeaderName, HeaderValue, Request, Version};
use tether_proxy::framing::{self, BrokenBody, Scanner, Violation};

pub fn run(data: &[u8]) {
    scanner_is_split_invariant(data);
    parsed_request_checks(data);
    lengths_and_codings(data);
}

type Scan = (Vec<Result<(), Violation>>, Option<BrokenBody>);

/// Feeds `data` to a scanner in pieces of `piece` bytes.
fn scan_in_pieces(data: &[u8], piece: usize) -> Scan {
    let mut scanner = Scanner::new();
    let mut heads = Vec::new();
    let mut offset = 0;
    for chunk in data.chunks(piece.max(1)) {
        if let Err(broken) = scanner.feed(chunk, |v| heads.push(v)) {
            return (heads, Some(BrokenBody { at: offset + broken.at, ..broken }));
        }
        offset += chunk.len();
    }
    (heads, None)
}

fn scanner_is_split_invariant(data: &[u8]) {
    let whole = scan_in_pieces(data, data.len());
    if let Some(broken) = whole.1 {
        assert!(broken.at < data.len(), "{broken:?} is outside the input");
    }
    // After a violation the scanner stops: nothing follows it.
    if let Some(i) = whole.0.iter().position(Result::is_err) {
        assert_eq!(i + 1, whole.0.len(), "verdicts after a violation: {:?}", whole.0);
        assert!(whole.1.is_none());
    }
    for piece in [1, 2, 3, 7, 64] {
        assert_eq!(whole, scan_in_pieces(data, piece), "reads of {piece} bytes changed the verdicts");
    }
}

/// A request built from the bytes: the first byte picks the version and whether there is a
/// body, the first line is `METHOD TARGET`, each further line `name: value`.
fn parsed_request_checks(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(selector % 3)];
    let mut lines = rest.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (b"GET".as_slice(), first),
    };
    let mut builder = Request::builder().version(version);
    if let Ok(method) = http::Method::from_bytes(method) {
        builder = builder.method(method);
    }
    if let Ok(uri) = http::Uri::try_from(target) {
        builder = builder.uri(uri);
    }
    let body = if selector & 0x80 != 0 { String::from("x") } else { String::new() };
    let Ok(mut req) = builder.body(body) else { return };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    let verdict = framing::check_request(&req);
    if req.headers().len() > framing::MAX_FIELDS {
        assert!(verdict.is_err(), "{} fields passed", req.headers().len());
    }
    let _ = framing::check_response_head(req.headers());
}

fn lengths_and_codings(data: &[u8]) {
    let decimal = !data.is_empty() && data.iter().all(u8::is_ascii_digit);
    let std = decimal.then(|| std::str::from_utf8(data).ok()?.parse::<u64>().ok()).flatten();
    assert_eq!(framing::parse_length(data), std, "{data:?}");
    if framing::transfer_coding(data).is_ok() {
        assert!(data.trim_ascii().eq_ignore_ascii_case(b"chunked"), "{data:?} passed as chunked");
    }
}
