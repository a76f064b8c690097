use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Everything a scanner says about `input` fed in one piece: the head verdicts, and the broken
/// body if any.
fn scan(input: &[u8]) -> (Vec<Result<(), Violation>>, Option<BrokenBody>) {
    let mut verdicts = Vec::new();
    let broken = Scanner::new().feed(input, |v| verdicts.push(v)).err();
    (verdicts, broken)
}

/// The same, fed one byte at a time; must agree with [`scan`] (offsets made absolute).
fn scan_bytewise(input: &[u8]) -> (Vec<Result<(), Violation>>, Option<BrokenBody>) {
    let mut scanner = Scanner::new();
    let mut verdicts = Vec::new();
    for (i, b) in input.iter().enumerate() {
        if let Err(broken) = scanner.feed(std::slice::from_ref(b), |v| verdicts.push(v)) {
            return (verdicts, Some(BrokenBody { at: i + broken.at, ..broken }));
        }
    }
    (verdicts, None)
}

/// Scans `input` whole and byte by byte, checks both agree, and returns the verdicts.
fn verdicts(input: &str) -> (Vec<Result<(), Violation>>, Option<BrokenBody>) {
    let whole = scan(input.as_bytes());
    assert_eq!(whole, scan_bytewise(input.as_bytes()), "split changed the verdicts on {input:?}");
    whole
}

/// The one violation `input` has, in its head.
fn head_violation(input: &str) -> Violation {
    match verdicts(input) {
        (v, None) if v.last().is_some_and(Result::is_err) => v.last().unwrap().unwrap_err(),
        other => panic!("expected a head violation in {input:?}, got {other:?}"),
    }
}

/// The violation of `input`'s body, at the offset of `marker` (the first offending byte).
fn body_violation(input: &str, marker: &str) -> Violation {
    let (heads, broken) = verdicts(input);
    assert!(heads.iter().all(Result::is_ok), "{input:?}: {heads:?}");
    let broken = broken.unwrap_or_else(|| panic!("expected a broken body in {input:?}"));
    assert_eq!(broken.at, input.find(marker).unwrap(), "{input:?}: {broken:?}");
    broken.violation
}

fn ok_heads(input: &str, n: usize) {
    assert_eq!(verdicts(input), (vec![Ok(()); n], None), "{input:?}");
}

#[test]
fn well_formed_requests_pass() {
    ok_heads("GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1);
    ok_heads("GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 2);
    ok_heads("\r\nGET / HTTP/1.0\r\n\r\n", 1);
    ok_heads("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", 2);
    // A body that looks like a request is skipped, not read.
    ok_heads("POST / HTTP/1.1\r\nContent-Length: 16\r\n\r\nGET / HTTP/1.1\n\nGET / HTTP/1.1\r\n\r\n", 2);
    ok_heads(
        "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n1a \r\nabcdefghijklmnopqrstuvwxyz\r\n\
         0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        2,
    );
    ok_heads("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0000\r\n\r\n", 1);
    ok_heads("GET /p?q=%20 HTTP/1.1\r\nX-Empty:\r\nX-Tab:\ta\tb\t\r\nX-Obs-Text: caf\u{e9}\r\n\r\n", 1);
    ok_heads("OPTIONS * HTTP/1.1\r\n\r\n", 1);
    ok_heads("GET http://h:80/x HTTP/1.1\r\nHost: h:80\r\n\r\n", 1);
}

#[test]
fn http2_prior_knowledge_passes_through() {
    let mut s = Scanner::new();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    assert_eq!(s.feed(preface, |v| panic!("{v:?}")), Ok(()));
    assert!(s.is_passthrough());
    // Only as a connection's first line.
    assert_eq!(
        head_violation("GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\n").reason,
        "malformed request line or unsupported version"
    );
}

#[test]
fn request_smuggling_classics_are_refused() {
    let cl_te =
        "POST / HTTP/1.1\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED";
    assert_eq!(head_violation(cl_te), CL_AND_TE);
    let te_cl = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n";
    assert_eq!(head_violation(te_cl), CL_AND_TE);
    assert_eq!(
        head_violation("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        TWO_CL
    );
    assert_eq!(head_violation("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n"), TWO_CL);
    let te_te = "POST / HTTP/1.1\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(head_violation(te_te).reason, "more than one Transfer-Encoding");
    assert_eq!(
        head_violation("POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n").kind,
        Kind::Malformed
    );
    assert_eq!(
        head_violation("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").reason,
        "Transfer-Encoding in HTTP/1.0"
    );
    assert_eq!(head_violation("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), TWO_HOSTS);
}

#[test]
fn transfer_codings_other_than_chunked_are_refused() {
    let te = |v: &str| head_violation(&format!("POST / HTTP/1.1\r\nTransfer-Encoding: {v}\r\n\r\n"));
    assert_eq!(te("gzip, chunked").kind, Kind::UnsupportedCoding);
    assert_eq!(te("gzip, chunked").status(), StatusCode::NOT_IMPLEMENTED);
    for malformed in ["chunked, gzip", "identity", "gzip", "xchunked", "chunked, chunked", ", chunked", ""] {
        assert_eq!(te(malformed).kind, Kind::Malformed, "{malformed:?}");
    }
    assert_eq!(te(&format!("{}chunked", "x, ".repeat(20))).reason, "Transfer-Encoding too long");
    assert_eq!(transfer_coding(b"chunked"), Ok(()));
    assert_eq!(transfer_coding(b" CHUNKED "), Ok(()));
    assert_eq!(transfer_coding(b"gzip , deflate,chunked").unwrap_err().kind, Kind::UnsupportedCoding);
    assert_eq!(transfer_coding(b"g(zip), chunked").unwrap_err().kind, Kind::Malformed);
}

#[test]
fn content_lengths_must_be_plain_decimal() {
    for bad in ["abc", "-1", "+5", "0x5", "1 0", "5, 5", "", "18446744073709551616", "5;"] {
        let input = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(head_violation(&input), BAD_CL, "{bad:?}");
    }
    ok_heads("POST / HTTP/1.1\r\nContent-Length:  007 \r\n\r\n1234567", 1);
    assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_length(b"18446744073709551616"), None);
    assert_eq!(parse_length(b""), None);
}

#[test]
fn line_syntax_is_strict() {
    for (input, reason) in [
        ("GET / HTTP/1.1\nHost: h\n\n", BARE_LF.reason),
        ("GET / HTTP/1.1\r\nHost: h\n\r\n", BARE_LF.reason),
        ("GET / HTTP/1.1\r\nHost: h\r\n\n", BARE_LF.reason),
        ("\nGET / HTTP/1.1\r\n\r\n", BARE_LF.reason),
        ("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", BARE_CR.reason),
        ("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", "a control character in a field value"),
        ("GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", "a control character in a field value"),
        ("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "obs-fold (a line starting with whitespace)"),
        ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", "invalid field name (or whitespace before the colon)"),
        ("GET / HTTP/1.1\r\nX\0: 1\r\n\r\n", "invalid field name (or whitespace before the colon)"),
        ("GET / HTTP/1.1\r\n: 1\r\n\r\n", "invalid field name (or whitespace before the colon)"),
        ("GET / HTTP/1.1\r\nX(y): 1\r\n\r\n", "invalid field name (or whitespace before the colon)"),
        ("GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
        (" GET / HTTP/1.1\r\n\r\n", "malformed request line"),
        ("GET\t/ HTTP/1.1\r\n\r\n", "invalid method"),
        ("GET / HTTP/1.1 x\r\n\r\n", "malformed request line"),
        ("GET /\r\n\r\n", "malformed request line or unsupported version"),
        ("GET / HTTP/2.0\r\n\r\n", "malformed request line or unsupported version"),
        ("GET / http/1.1\r\n\r\n", "malformed request line or unsupported version"),
        ("GET /\x01 HTTP/1.1\r\n\r\n", "a control character in the request line"),
        ("G\x01T / HTTP/1.1\r\n\r\n", "invalid method"),
    ] {
        assert_eq!(head_violation(input).reason, reason, "{input:?}");
    }
}

#[test]
fn heads_beyond_the_limits_are_431() {
    let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(head_violation(&format!("GET / HTTP/1.1\r\n{many}\r\n")), TOO_MANY_FIELDS);
    let hundred: String = (0..MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
    ok_heads(&format!("GET / HTTP/1.1\r\n{hundred}\r\n"), 1);
    let line = "GET / HTTP/1.1\r\n";
    let fits = format!("{line}X: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES - line.len() - 7));
    assert_eq!(fits.len(), MAX_HEAD_BYTES);
    ok_heads(&fits, 1);
    let over = format!("{line}X: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES - line.len() - 6));
    let violation = head_violation(&over);
    assert_eq!(
        (violation, violation.status()),
        (HEAD_TOO_LARGE, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    );
}

#[test]
fn broken_chunked_bodies_are_found_where_they_break() {
    let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (body, marker, reason) in [
        ("zz\r\nhello\r\n0\r\n\r\n", "zz", "invalid chunk size"),
        ("-5\r\nhello\r\n0\r\n\r\n", "-5", "invalid chunk size"),
        ("\r\n", "\r\n", "invalid chunk size"),
        ("1 0\r\nhello", "0\r\nhello", "invalid chunk size"),
        ("5\nhello\n0\n\n", "\nhello", BARE_LF.reason),
        ("3\r\nhello\r\n0\r\n\r\n", "lo\r\n0", "a chunk is longer than its size"),
        ("5\r\nhello\n0\r\n\r\n", "\n0", "a chunk is longer than its size"),
        ("5;a\0\r\nhello\r\n", "\0", "invalid chunk extension"),
        ("5\r\nhello\r\n0\r\nX-T: 1\nY", "\nY", BARE_LF.reason),
        ("5\r\nhello\r\n0\r\n\tX: 1\r\n\r\n", "\tX", "obs-fold (a line starting with whitespace)"),
    ] {
        let input = format!("{head}{body}");
        let at = head.len() + body.find(marker).unwrap();
        let (heads, broken) = verdicts(&input);
        assert_eq!(heads, vec![Ok(())], "{body:?}");
        let broken = broken.unwrap_or_else(|| panic!("{body:?} passed"));
        assert_eq!((broken.at, broken.violation.reason), (at, reason), "{body:?}");
    }
    let big = format!("{head}10000000000000000\r\n");
    assert_eq!(body_violation(&big, "0\r\n").reason, "chunk size too large");
    let long_ext = format!("{head}5;{}\r\nhello", "x".repeat(MAX_CHUNK_LINE));
    let (_, broken) = verdicts(&long_ext);
    let broken = broken.expect("the long line is refused");
    assert_eq!(
        (broken.at, broken.violation.reason),
        (head.len() + MAX_CHUNK_LINE, "chunk-size line too long")
    );
    let fields: String = (0..=MAX_FIELDS).map(|i| format!("T-{i}: v\r\n")).collect();
    // Found at the LF ending the field one too many (the last one).
    let many_trailers = format!("{head}0\r\n{fields}\r\n");
    let (_, broken) = verdicts(&many_trailers);
    let expected = BrokenBody { at: many_trailers.len() - 3, violation: TOO_MANY_FIELDS };
    assert_eq!(broken, Some(expected));
}

#[test]
fn the_scanner_stops_at_the_first_violation() {
    let (heads, broken) = verdicts(
        "GET / HTTP/1.1\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    );
    assert_eq!((heads, broken), (vec![Err(BARE_LF)], None));
    let mut s = Scanner::new();
    let _ = s.feed(b"GET / HTTP/1.1\r\nX: \0", |_| {});
    assert!(s.has_failed());
    assert_eq!(s.feed(b"anything at all\n", |v| panic!("{v:?}")), Ok(()));
}

/// Feeds `input` in pieces whose lengths come from `cut`, with offsets made absolute.
fn scan_in_pieces(
    input: &[u8],
    mut cut: impl FnMut() -> usize,
) -> (Vec<Result<(), Violation>>, Option<BrokenBody>) {
    let mut scanner = Scanner::new();
    let mut verdicts = Vec::new();
    let mut offset = 0;
    while offset < input.len() {
        let end = (offset + cut().max(1)).min(input.len());
        if let Err(broken) = scanner.feed(&input[offset..end], |v| verdicts.push(v)) {
            return (verdicts, Some(BrokenBody { at: offset + broken.at, ..broken }));
        }
        offset = end;
    }
    (verdicts, None)
}

#[test]
fn the_whole_line_fast_path_is_taken_for_well_formed_lines() {
    let mut s = Scanner::new();
    let head = b"GET /x?y HTTP/1.1\r\nHost: h\r\nContent-Length:\t 2 \r\n\r\nhi";
    assert_eq!(s.whole_line(head).map(|(n, _)| n), Some(19));
    assert_eq!(s.whole_line(&head[19..]).map(|(n, _)| n), Some(9));
    assert_eq!(s.whole_line(&head[28..]).map(|(n, _)| n), Some(21));
    assert_eq!(s.whole_line(&head[49..]), Some((2, Ok(true))));
    // Incomplete or irregular lines are left to the byte-wise path, with nothing changed.
    let mut s = Scanner::new();
    for line in [
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r",
        "GET / HTTP/1.1\n",
        "GET  / HTTP/1.1\r\n",
        "GET / HTTP/2.0\r\n",
        "PRI * HTTP/2.0\r\n",
        "\r\nGET / HTTP/1.1\r\n",
    ] {
        assert_eq!(s.whole_line(line.as_bytes()), None, "{line:?}");
    }
    assert_eq!(s.whole_line(b"GET / HTTP/1.0\r\n").map(|(n, _)| n), Some(16));
    for line in ["Host: h", "Host: h\r", "Host : h\r\n", " Host: h\r\n", "X: a\rb\r\n", "X: \0\r\n", "\r\r\n"]
    {
        assert_eq!(s.whole_line(line.as_bytes()), None, "{line:?}");
    }
    // A violation found at a line's end is the same the byte-wise path finds there.
    assert_eq!(s.whole_line(b"Host: a\r\n"), Some((9, Ok(false))));
    assert_eq!(s.whole_line(b"host: b\r\n"), Some((9, Err(TWO_HOSTS))));
}

/// The fast path and the byte-wise path must agree on everything: mutations of well-formed
/// and malformed requests, cut into reads at random, give the same verdicts and the same
/// broken-body offsets as the same bytes fed one at a time.
#[test]
fn whole_lines_and_single_bytes_agree_on_mutated_requests() {
    let long = "v".repeat(60);
    let seeds = [
        "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.0\r\nhost: h\r\nX-A: b\r\n\r\n".to_string(),
        "POST /p HTTP/1.1\r\nContent-Length: 5\r\nHost: h\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n".to_string(),
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_string(),
        "POST / HTTP/1.1\r\nTransfer-Encoding:  chunked \r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n"
            .to_string(),
        format!("GET /{long} HTTP/1.1\r\nX-{long}: {long}\r\nContent-Length: {long}\r\nTransfer-Encoding: {long}\r\n\r\n"),
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc".to_string(),
        "\r\n\r\nOPTIONS * HTTP/1.1\r\nX-Obs: caf\u{e9}\r\nX-Tab:\ta\t\r\nX-Empty:\r\n\r\n".to_string(),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
        // Values at the edge of what the scanner keeps of them (48 bytes, blanks included).
        format!("POST / HTTP/1.1\r\nContent-Length: {}5\r\n\r\n", "0".repeat(47)),
        format!("POST / HTTP/1.1\r\nContent-Length: {}5\r\n\r\n", "0".repeat(48)),
        format!("POST / HTTP/1.1\r\nContent-Length:  5{}\r\n\r\n", " ".repeat(47)),
        format!("POST / HTTP/1.1\r\ncontent-length: 5{} \r\n\r\n", " ".repeat(47)),
        format!("POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n", "x,".repeat(20)),
        format!("POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n", "x, ".repeat(14)),
    ];
    const BYTES: &[u8] = b"\r\n \t:;,\0\x7f\x80aA05-/";
    let mut rng = fastrand::Rng::with_seed(9112);
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..rng.usize(0..4) {
            let at = rng.usize(0..=input.len());
            let byte = BYTES[rng.usize(..BYTES.len())];
            match rng.u8(0..3) {
                0 if at < input.len() => input[at] = byte,
                1 if at < input.len() => drop(input.remove(at)),
                _ => input.insert(at, byte),
            }
        }
        let bytewise = scan_in_pieces(&input, || 1);
        assert_eq!(scan(&input), bytewise, "whole: {:?}", String::from_utf8_lossy(&input));
        let cut = rng.usize(2..40);
        assert_eq!(
            scan_in_pieces(&input, || rng.usize(1..cut)),
            bytewise,
            "cut: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

fn h2_get(authority: &str) -> http::request::Builder {
    Request::get(format!("http://{authority}/x")).version(Version::HTTP_2)
}

fn check(builder: http::request::Builder) -> Result<(), Violation> {
    check_request(&builder.body(Full::new(Bytes::from_static(b"hello"))).unwrap())
}

#[test]
fn requests_agree_on_their_authority() {
    assert_eq!(check(h2_get("a:1")), Ok(()));
    assert_eq!(check(h2_get("a:1").header("host", "A:1")), Ok(()));
    assert_eq!(
        check(h2_get("a:1").header("host", "b:1")).unwrap_err().reason,
        "Host differs from the target's authority"
    );
    assert_eq!(check(h2_get("a:1").header("host", "a:1").header("host", "a:1")), Err(TWO_HOSTS));
    assert_eq!(check(h2_get("u@a:1")).unwrap_err().reason, "userinfo in the authority");
    assert_eq!(check(Request::get("/").header("host", "u@a")).unwrap_err().reason, "userinfo in Host");
    // HTTP/1 absolute form: the target's authority must agree with Host too.
    let absolute = Request::get("http://evil/").header("host", "good");
    assert_eq!(check(absolute).unwrap_err().reason, "Host differs from the target's authority");
    assert_eq!(check(Request::get("http://h/").header("host", "h")), Ok(()));
}

#[test]
fn http2_requests_need_a_path() {
    let missing = Request::get(http::Uri::from_parts(Default::default()).unwrap()).version(Version::HTTP_2);
    assert_eq!(check(missing).unwrap_err().reason, "missing or invalid :path");
    let asterisk = Request::options("*").version(Version::HTTP_2);
    assert_eq!(check(asterisk), Ok(()));
    assert!(check(Request::get("*").version(Version::HTTP_2)).is_err());
}

#[test]
fn parsed_lengths_and_codings_are_checked_again() {
    let post = || Request::post("/").version(Version::HTTP_11);
    assert_eq!(check(post().header("content-length", "5")), Ok(()));
    assert_eq!(check(post().header("content-length", "5").header("content-length", "5")), Err(TWO_CL));
    assert_eq!(check(post().header("content-length", "x")), Err(BAD_CL));
    assert_eq!(
        check(post().header("content-length", "5").header("transfer-encoding", "chunked")),
        Err(CL_AND_TE)
    );
    assert_eq!(check(post().header("transfer-encoding", "chunked")), Ok(()));
    let gzip = check(post().header("transfer-encoding", "gzip, chunked")).unwrap_err();
    assert_eq!(gzip.kind, Kind::UnsupportedCoding);
    let two = post().header("transfer-encoding", "chunked").header("transfer-encoding", "chunked");
    assert_eq!(check(two).unwrap_err().reason, "more than one Transfer-Encoding");
    let h2 = Request::post("http://a/").version(Version::HTTP_2).header("transfer-encoding", "chunked");
    assert_eq!(check(h2).unwrap_err().reason, "Transfer-Encoding outside HTTP/1.1");
    // A declared length the body can no longer match (h2 reset the stream, or it ended).
    let ended = Request::post("http://a/").version(Version::HTTP_2).header("content-length", "5");
    let ended = check_request(&ended.body(Empty::<Bytes>::new()).unwrap());
    assert_eq!(ended.unwrap_err().reason, "the body does not match Content-Length");
    let many = (0..=MAX_FIELDS).fold(h2_get("a"), |b, i| b.header(format!("x-{i}"), "v"));
    assert_eq!(check(many), Err(TOO_MANY_FIELDS));
}

#[test]
fn the_scanners_verdict_travels_with_the_request() {
    let mut req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    req.extensions_mut().insert(Verdict(Err(CL_AND_TE)));
    assert_eq!(check_request(&req), Err(CL_AND_TE));
    let verdicts = Verdicts::default();
    verdicts.publish(2, Some((1, TWO_CL)));
    let attached = |v: &Verdicts| {
        let mut req = Request::get("/").body(()).unwrap();
        v.attach(&mut req);
        req.extensions().get::<Verdict>().map(|v| v.0)
    };
    // A pass travels as no extension at all, which check_request takes as a pass.
    assert_eq!(attached(&verdicts), None);
    assert_eq!(attached(&verdicts), Some(Err(TWO_CL)));
    // Every request after the scanner stopped shares its violation.
    assert_eq!(attached(&verdicts), Some(Err(TWO_CL)));
    // A request the scanner has no verdict on is refused, not waved through.
    let unchecked = Verdicts::default();
    assert!(attached(&unchecked).is_some_and(|v| v.is_err()));
    // HTTP/2 requests are not the scanner's, and take no verdict from the sequence.
    let verdicts = Verdicts::default();
    verdicts.publish(1, None);
    let mut h2 = Request::get("/").version(Version::HTTP_2).body(()).unwrap();
    verdicts.attach(&mut h2);
    assert!(h2.extensions().get::<Verdict>().is_none());
    assert_eq!(verdicts.next(), Ok(()));
    assert!(verdicts.next().is_err());
}

/// The checks of [`check_request`] as first written, with a hashed lookup per field name.
fn check_by_lookups<B: Body>(req: &Request<B>) -> Result<(), Violation> {
    if let Some(Verdict(verdict)) = req.extensions().get::<Verdict>() {
        verdict.as_ref().map_err(|v| *v)?;
    }
    let headers = req.headers();
    if headers.len() > MAX_FIELDS {
        return Err(TOO_MANY_FIELDS);
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(TWO_HOSTS);
    }
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(malformed("userinfo in the authority"));
        }
        if host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())) {
            return Err(malformed("Host differs from the target's authority"));
        }
    }
    if host.is_some_and(|h| h.as_bytes().contains(&b'@')) {
        return Err(malformed("userinfo in Host"));
    }
    if req.version() == Version::HTTP_2 {
        let path = req.uri().path();
        let asterisk = path == "*" && req.method() == http::Method::OPTIONS;
        if req.method() != http::Method::CONNECT && !path.starts_with('/') && !asterisk {
            return Err(malformed("missing or invalid :path"));
        }
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(TWO_CL),
        (Some(first), None) => Some(parse_length(first.as_bytes().trim_ascii()).ok_or(BAD_CL)?),
    };
    if let Some(te) = headers.get(http::header::TRANSFER_ENCODING) {
        if req.version() != Version::HTTP_11 {
            return Err(malformed("Transfer-Encoding outside HTTP/1.1"));
        }
        if length.is_some() {
            return Err(CL_AND_TE);
        }
        if headers.get_all(http::header::TRANSFER_ENCODING).iter().count() > 1 {
            return Err(malformed("more than one Transfer-Encoding"));
        }
        transfer_coding(te.as_bytes())?;
    }
    if length.is_some_and(|n| n > 0) && req.body().is_end_stream() {
        return Err(malformed("the body does not match Content-Length"));
    }
    Ok(())
}

#[test]
fn one_walk_checks_what_a_lookup_per_name_checks() {
    let targets = ["/x", "*", "http://a:1/x", "http://u@a:1/", "http://b/", "a:1"];
    let methods = ["GET", "POST", "OPTIONS", "CONNECT"];
    let fields = [
        ("host", "a:1"),
        ("host", "A:1"),
        ("host", "b"),
        ("host", "u@a:1"),
        ("content-length", "5"),
        ("content-length", " 0 "),
        ("content-length", "x"),
        ("content-length", "0"),
        ("transfer-encoding", "chunked"),
        ("transfer-encoding", "gzip, chunked"),
        ("transfer-encoding", "chunked, gzip"),
        ("x-other", "1"),
        ("te", "trailers"),
    ];
    let mut rng = fastrand::Rng::with_seed(9110);
    for round in 0..10_000 {
        let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][rng.usize(..3)];
        let builder = Request::builder()
            .method(methods[rng.usize(..methods.len())])
            .uri(targets[rng.usize(..targets.len())])
            .version(version);
        let body = if rng.bool() { Full::new(Bytes::from_static(b"hello")) } else { Full::new(Bytes::new()) };
        let mut req = builder.body(body).unwrap();
        for _ in 0..rng.usize(0..5) {
            let (name, value) = fields[rng.usize(..fields.len())];
            req.headers_mut().append(name, HeaderValue::from_static(value));
        }
        if round % 50 == 0 {
            for i in 0..MAX_FIELDS {
                req.headers_mut().append(
                    http::HeaderName::try_from(format!("x-{i}")).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
        }
        if rng.u8(..10) == 0 {
            req.extensions_mut().insert(Verdict(Err(TWO_CL)));
        }
        assert_eq!(check_request(&req), check_by_lookups(&req), "{req:?}");
    }
}

#[test]
fn response_heads_are_bounded() {
    let mut headers = HeaderMap::new();
    for i in 0..MAX_FIELDS {
        headers.insert(http::HeaderName::try_from(format!("x-{i}")).unwrap(), HeaderValue::from_static("v"));
    }
    assert_eq!(check_response_head(&headers), Ok(()));
    headers.insert("x-one-more", HeaderValue::from_static("v"));
    assert_eq!(check_response_head(&headers).unwrap_err().kind, Kind::UpstreamHead);
    let mut large = HeaderMap::new();
    large.insert("x-big", HeaderValue::from_str(&"a".repeat(MAX_HEAD_BYTES - 9)).unwrap());
    assert_eq!(check_response_head(&large), Ok(()));
    large.insert("x-big", HeaderValue::from_str(&"a".repeat(MAX_HEAD_BYTES - 8)).unwrap());
    let violation = check_response_head(&large).unwrap_err();
    assert_eq!(
        (violation.status(), violation.cause()),
        (StatusCode::BAD_GATEWAY, "upstream-headers-too-large")
    );
    let res = checked_response(
        Response::builder().header("x-big", large["x-big"].clone()).body(ProxyBody::empty()).unwrap(),
    );
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.headers()[crate::error::ERROR_HEADER], "upstream-headers-too-large");
}

#[test]
fn violations_map_to_statuses_and_causes() {
    let e = ProxyError::Framing(CL_AND_TE);
    let res = e.response();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()[crate::error::ERROR_HEADER], "bad-request");
    assert_eq!(e.blame(), crate::error::Blame::Downstream);
    assert_eq!(
        ProxyError::Framing(TOO_MANY_FIELDS).response().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let upstream = Violation::new(Kind::UpstreamHead, "x");
    assert_eq!(ProxyError::Framing(upstream).blame(), crate::error::Blame::Upstream);
}

#[tokio::test]
async fn the_guard_queues_verdicts_and_cuts_broken_bodies() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut guard = Guard::new(server);
    let verdicts = guard.verdicts();
    let good = "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    let bad = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n";
    client.write_all(format!("{good}{bad}").as_bytes()).await.unwrap();
    let mut read = vec![0u8; 1024];
    let n = guard.read(&mut read).await.unwrap();
    // Everything up to the broken chunk size is passed on, nothing after it.
    assert_eq!(&read[..n], format!("{good}{}", &bad[..bad.len() - 4]).as_bytes());
    assert!(guard.read(&mut read).await.is_err());
    // The first request is fine; the second, not yet handed on, is refused for its body.
    assert_eq!(verdicts.next(), Ok(()));
    assert_eq!(verdicts.next().unwrap_err().reason, "invalid chunk size");
}

#[tokio::test]
async fn a_body_broken_after_its_request_was_handed_on_refuses_what_follows() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut guard = Guard::new(server);
    let verdicts = guard.verdicts();
    let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    let mut read = vec![0u8; 1024];
    assert_eq!(guard.read(&mut read).await.unwrap(), head.len());
    assert_eq!(verdicts.next(), Ok(()));
    client.write_all(b"2\r\nhi\r\nzz\r\n").await.unwrap();
    assert_eq!(guard.read(&mut read).await.unwrap(), 7);
    assert!(guard.read(&mut read).await.is_err());
    assert_eq!(verdicts.next().unwrap_err().reason, "invalid chunk size");
}

/// Writes `bytes` to the guard's peer and reads them back through the guard.
async fn pass<S: AsyncRead + Unpin>(
    client: &mut tokio::io::DuplexStream,
    guard: &mut Guard<S>,
    bytes: &[u8],
) {
    client.write_all(bytes).await.unwrap();
    let mut read = vec![0u8; bytes.len()];
    guard.read_exact(&mut read).await.unwrap();
}

#[tokio::test]
async fn the_guard_hands_verdicts_in_order_across_reads() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut guard = Guard::new(server);
    let verdicts = guard.verdicts();
    for _ in 0..3 {
        pass(&mut client, &mut guard, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /").await;
        // The second head, completed in another read, is judged once complete.
        pass(&mut client, &mut guard, b" HTTP/1.1\r\n\r\n").await;
    }
    for _ in 0..6 {
        assert_eq!(verdicts.next(), Ok(()));
    }
    pass(&mut client, &mut guard, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(verdicts.next(), Err(TWO_HOSTS));
    assert_eq!(verdicts.next(), Err(TWO_HOSTS));
    assert!(verdicts.next().is_err());
}

#[tokio::test]
async fn the_guard_passes_http2_through_untouched() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut guard = Guard::new(server);
    let bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n\0\0 anything";
    client.write_all(bytes).await.unwrap();
    guard.write_all(b"out").await.unwrap();
    let mut out = [0u8; 3];
    client.read_exact(&mut out).await.unwrap();
    assert_eq!(&out, b"out");
    drop(client);
    let mut read = Vec::new();
    guard.read_to_end(&mut read).await.unwrap();
    assert_eq!(read, bytes);
}
