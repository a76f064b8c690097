//! The byte-level HTTP/1 request scanner: framing rules hyper does not enforce, checked on
//! the bytes before hyper parses them.

use super::*;

pub(super) fn is_tchar(b: u8) -> bool {
    CLASS[b as usize] & TCHAR != 0
}

/// Visible characters and obs-text, as field values may hold (besides SP and HTAB).
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

// Byte classes (bits of `CLASS`), so that whole lines are checked with one table lookup per
// byte.
/// What a field name or a method may hold.
const TCHAR: u8 = 1;
/// What a field value may hold: SP, HTAB, visible characters and obs-text.
const VALUE: u8 = 2;
/// What a request target may hold: anything but controls, SP and DEL.
const TARGET: u8 = 4;

static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    const TOKEN_SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        let mut tchar = b.is_ascii_alphanumeric();
        let mut j = 0;
        while j < TOKEN_SYMBOLS.len() {
            tchar |= TOKEN_SYMBOLS[j] == b;
            j += 1;
        }
        if tchar {
            class |= TCHAR;
        }
        if b == b' ' || b == b'\t' || (b >= 0x21 && b != 0x7f) {
            class |= VALUE;
        }
        if b > b' ' && b != 0x7f {
            class |= TARGET;
        }
        table[i] = class;
        i += 1;
    }
    table
}

/// The length of the run of bytes of `class` at the start of `bytes`, or `None` if they all
/// are (the run may go on in bytes not read yet).
fn run_of(class: u8, bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| CLASS[b as usize] & class == 0)
}

// ===== The raw HTTP/1 byte stream =====

/// Where a [`Scanner`] is in an HTTP/1 connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line of a head or trailer section (see [`Scanner::section`]).
    LineStart,
    RequestLine,
    Name,
    Value,
    /// A CR ended a line; the next byte must be LF.
    Lf(Line),
    /// A Content-Length body with this many bytes to go.
    Body(u64),
    ChunkSize,
    /// After a chunk size: whitespace, then `;` or the end of the line.
    ChunkWs,
    ChunkExt,
    ChunkData(u64),
    /// A chunk's data has been read; its CR comes next.
    ChunkEnd,
    /// HTTP/2 with prior knowledge: not this scanner's to check.
    Passthrough,
    /// Framing cannot be trusted from here on.
    Failed,
}

/// What the line that a CR ended was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// An empty line before a request line (RFC 9112 §2.2 allows ignoring it).
    Leading,
    Request,
    Field,
    /// The empty line that ends a head or trailer section.
    SectionEnd,
    ChunkSize,
    ChunkData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    RequestLine,
    Head,
    Trailers,
}

/// The bytes of a field name or value a [`Short`] keeps.
const SHORT: usize = 48;

/// A few bytes of a line: enough to recognise the fields that decide framing and to read
/// their values; longer content only sets `overflow`.
#[derive(Debug, Clone, Copy)]
struct Short {
    buf: [u8; SHORT],
    len: u8,
    overflow: bool,
}

impl Default for Short {
    fn default() -> Self {
        Self { buf: [0; SHORT], len: 0, overflow: false }
    }
}

impl Short {
    fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.len as usize) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && !self.overflow
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn get(&self) -> Option<&[u8]> {
        (!self.overflow).then(|| &self.buf[..self.len as usize])
    }
}

/// What a head has said about framing so far.
#[derive(Debug, Clone, Copy, Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: Option<Result<(), Violation>>,
    hosts: u8,
    http10: bool,
}

impl Framing {
    /// A field line of a request head: its name (any case) and its value, without leading
    /// blanks; `None` for either if longer than a [`Short`] keeps.
    fn field(&mut self, name: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), Violation> {
        let Some(name) = name else { return Ok(()) };
        let is = |known: &[u8]| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        let value = value.map(<[u8]>::trim_ascii_end);
        if is(b"content-length") {
            if self.content_length.is_some() {
                return Err(TWO_CL);
            }
            if self.transfer_encoding.is_some() {
                return Err(CL_AND_TE);
            }
            self.content_length = Some(value.and_then(parse_length).ok_or(BAD_CL)?);
        } else if is(b"transfer-encoding") {
            if self.transfer_encoding.is_some() {
                return Err(malformed("more than one Transfer-Encoding"));
            }
            if self.content_length.is_some() {
                return Err(CL_AND_TE);
            }
            if self.http10 {
                return Err(malformed("Transfer-Encoding in HTTP/1.0"));
            }
            let coding = value.map_or(Err(malformed("Transfer-Encoding too long")), transfer_coding);
            self.transfer_encoding = Some(coding);
        } else if is(b"host") {
            self.hosts += 1;
            if self.hosts > 1 {
                return Err(TWO_HOSTS);
            }
        }
        Ok(())
    }
}

/// Reads the bytes of one HTTP/1 connection as they arrive and judges every request's framing
/// strictly by RFC 9112: CRLF line endings only, field names that are tokens with the colon
/// right after them, no obs-fold, no control characters in values, one Content-Length or one
/// `Transfer-Encoding: chunked` and never both, one Host, well-formed chunks and trailers. It
/// keeps about a hundred bytes of state, whatever the traffic, and skips body data unread.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    section: Section,
    /// Past the head of a chunked request: chunk lines and trailers. A violation here is the
    /// body's, found after the request may have been handed on.
    body: bool,
    /// The connection's first request line is still to come (it may be HTTP/2's preface).
    at_start: bool,
    /// Bytes and fields of the current head or trailer section.
    section_bytes: usize,
    fields: usize,
    /// The first bytes of the current line's field name (or of the request line), and of its
    /// field value (or of the request line's last word).
    name: Short,
    value: Short,
    /// Request line: spaces seen. Chunk-size line: digits seen.
    count: u32,
    /// Chunk-size line: its length so far, and the size.
    chunk_line: usize,
    chunk_size: u64,
    framing: Framing,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

/// A body violation at this offset of the bytes given to [`Scanner::feed`]: none of the bytes
/// from there on may be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenBody {
    pub at: usize,
    pub violation: Violation,
}

const CR: u8 = b'\r';
const LF: u8 = b'\n';

impl Scanner {
    pub fn new() -> Self {
        Self {
            state: State::LineStart,
            section: Section::RequestLine,
            body: false,
            at_start: true,
            section_bytes: 0,
            fields: 0,
            name: Short::default(),
            value: Short::default(),
            count: 0,
            chunk_line: 0,
            chunk_size: 0,
            framing: Framing::default(),
        }
    }

    /// Whether the connection turned out to be HTTP/2: nothing more to check.
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Whether a violation was found: the connection's framing is unknown from there on.
    pub fn has_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Scans the next bytes of the connection. `on_head` gets the verdict on every request head
    /// as soon as it is known: when the head ends, or at its first violation (after which the
    /// scanner stops). A broken body is returned instead: the bytes from its offset on must not
    /// be passed on.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_head: impl FnMut(Result<(), Violation>),
    ) -> Result<(), BrokenBody> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Passthrough | State::Failed => return Ok(()),
                State::Body(left) => {
                    let n = left.min((input.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left { self.next_message() } else { State::Body(left - n) };
                    continue;
                }
                State::ChunkData(left) => {
                    let n = left.min((input.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left { State::ChunkEnd } else { State::ChunkData(left - n) };
                    continue;
                }
                State::LineStart => {
                    if let Some((len, outcome)) = self.whole_line(&input[i..]) {
                        // What the byte-wise path would have found at the line's LF.
                        self.settle(outcome, i + len - 1, &mut on_head)?;
                        i += len;
                        continue;
                    }
                }
                _ => {}
            }
            let outcome = self.byte(input[i]);
            self.settle(outcome, i, &mut on_head)?;
            i += 1;
        }
        Ok(())
    }

    /// Acts on what the byte at offset `at` of the input found.
    fn settle(
        &mut self,
        outcome: Result<bool, Violation>,
        at: usize,
        on_head: &mut impl FnMut(Result<(), Violation>),
    ) -> Result<(), BrokenBody> {
        match outcome {
            Ok(false) => {}
            Ok(true) => on_head(Ok(())),
            Err(violation) => {
                self.state = State::Failed;
                if !self.body {
                    on_head(Err(violation));
                } else {
                    return Err(BrokenBody { at, violation });
                }
            }
        }
        Ok(())
    }

    /// The fast path: a whole line of a head or trailer section at the start of `input`,
    /// CRLF included, checked with a table lookup per byte. Taken only when every byte of the
    /// line is well-formed and the line fits the section's limit, so that the outcome is the
    /// one [`Scanner::byte`] reaches at the line's LF: returns the line's length and that
    /// outcome. Anything else (a line not complete in `input`, a malformed byte, a section
    /// over its limit, a leading empty line, HTTP/2's preface) returns `None` with nothing
    /// changed, and the byte-wise path takes the line, finding the same violation at the same
    /// byte it always did.
    pub(super) fn whole_line(&mut self, input: &[u8]) -> Option<(usize, Result<bool, Violation>)> {
        let fits = |len: usize| self.section_bytes + len <= MAX_HEAD_BYTES;
        match (self.section, input) {
            (Section::RequestLine, _) => {
                // method SP request-target SP HTTP-version CRLF
                let method = run_of(TCHAR, input)?;
                let target = run_of(TARGET, input.get(method + 1..)?)?;
                if method == 0 || target == 0 || input[method] != b' ' {
                    return None;
                }
                let version = method + 1 + target;
                let http10 = match input.get(version..version + 10)? {
                    b" HTTP/1.1\r" => false,
                    b" HTTP/1.0\r" => true,
                    _ => return None,
                };
                let len = version + 11;
                if input.get(len - 1) != Some(&LF) || !fits(len) {
                    return None;
                }
                self.section_bytes += len;
                self.at_start = false;
                self.framing.http10 = http10;
                self.section = Section::Head;
                Some((len, Ok(false)))
            }
            (_, [CR, LF, ..]) => {
                if !fits(2) {
                    return None;
                }
                self.section_bytes += 2;
                Some((2, self.end_of_line(Line::SectionEnd)))
            }
            _ => {
                // field-name ":" OWS field-value OWS CRLF
                let name = run_of(TCHAR, input)?;
                if name == 0 || input[name] != b':' {
                    return None;
                }
                let cr = name + 1 + run_of(VALUE, &input[name + 1..])?;
                let len = cr + 2;
                if input[cr] != CR || input.get(cr + 1) != Some(&LF) || !fits(len) {
                    return None;
                }
                self.section_bytes += len;
                // As a `Short` would keep them: the value from its first non-blank byte.
                let value = &input[name + 1..cr];
                let value = &value[value.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
                let value = (value.len() <= SHORT).then_some(value);
                Some((len, self.end_of_field(Some(&input[..name]), value)))
            }
        }
    }

    fn next_message(&mut self) -> State {
        self.section = Section::RequestLine;
        self.body = false;
        self.section_bytes = 0;
        self.fields = 0;
        self.framing = Framing::default();
        State::LineStart
    }

    /// One byte outside body data; `Ok(true)` when it ended a request head.
    fn byte(&mut self, b: u8) -> Result<bool, Violation> {
        if !self.body || self.section == Section::Trailers {
            self.section_bytes += 1;
            if self.section_bytes > MAX_HEAD_BYTES {
                return Err(if self.body { TRAILERS_TOO_LARGE } else { HEAD_TOO_LARGE });
            }
        }
        match self.state {
            State::LineStart => {
                self.name.clear();
                self.value.clear();
                self.count = 0;
                match (self.section, b) {
                    (_, LF) => return Err(BARE_LF),
                    (Section::RequestLine, CR) => self.state = State::Lf(Line::Leading),
                    (Section::RequestLine, _) => {
                        self.state = State::RequestLine;
                        self.byte_of_request_line(b)?;
                    }
                    (_, CR) => self.state = State::Lf(Line::SectionEnd),
                    (_, b' ' | b'\t') => return Err(malformed("obs-fold (a line starting with whitespace)")),
                    _ => {
                        self.state = State::Name;
                        self.byte_of_name(b)?;
                    }
                }
            }
            State::RequestLine => match b {
                CR => self.state = State::Lf(Line::Request),
                LF => return Err(BARE_LF),
                _ => self.byte_of_request_line(b)?,
            },
            State::Name => self.byte_of_name(b)?,
            State::Value => match b {
                CR => self.state = State::Lf(Line::Field),
                LF => return Err(BARE_LF),
                b' ' | b'\t' if self.value.is_empty() => {}
                b' ' | b'\t' => self.value.push(b),
                _ if is_field_vchar(b) => self.value.push(b),
                _ => return Err(malformed("a control character in a field value")),
            },
            State::Lf(line) => {
                if b != LF {
                    return Err(BARE_CR);
                }
                return self.end_of_line(line);
            }
            State::ChunkSize | State::ChunkWs | State::ChunkExt => self.byte_of_chunk_line(b)?,
            State::ChunkEnd => match b {
                CR => self.state = State::Lf(Line::ChunkData),
                _ => return Err(malformed("a chunk is longer than its size")),
            },
            State::Body(_) | State::ChunkData(_) | State::Passthrough | State::Failed => {
                unreachable!("feed handles {:?}", self.state)
            }
        }
        Ok(false)
    }

    fn byte_of_request_line(&mut self, b: u8) -> Result<(), Violation> {
        self.name.push(b);
        match b {
            b' ' => {
                // Exactly one space between method, target and version.
                if self.value.is_empty() || self.count >= 2 {
                    return Err(malformed("malformed request line"));
                }
                self.count += 1;
                self.value.clear();
            }
            _ if self.count == 0 && !is_tchar(b) => return Err(malformed("invalid method")),
            _ if b < b' ' || b == 0x7f => return Err(malformed("a control character in the request line")),
            _ => self.value.push(b),
        }
        Ok(())
    }

    fn byte_of_name(&mut self, b: u8) -> Result<(), Violation> {
        match b {
            b':' if !self.name.is_empty() => self.state = State::Value,
            _ if is_tchar(b) => self.name.push(b.to_ascii_lowercase()),
            _ => return Err(malformed("invalid field name (or whitespace before the colon)")),
        }
        Ok(())
    }

    /// `chunk-size [ BWS ; chunk-ext ] CRLF`, the size in hex.
    fn byte_of_chunk_line(&mut self, b: u8) -> Result<(), Violation> {
        const BAD_SIZE: Violation = malformed("invalid chunk size");
        self.chunk_line += 1;
        if self.chunk_line > MAX_CHUNK_LINE {
            return Err(malformed("chunk-size line too long"));
        }
        match (self.state, b) {
            (_, LF) => return Err(BARE_LF),
            (State::ChunkSize, _) if self.count == 0 && !b.is_ascii_hexdigit() => return Err(BAD_SIZE),
            (_, CR) => self.state = State::Lf(Line::ChunkSize),
            (State::ChunkSize | State::ChunkWs, b';') => self.state = State::ChunkExt,
            (State::ChunkSize | State::ChunkWs, b' ' | b'\t') => self.state = State::ChunkWs,
            (State::ChunkSize, _) => {
                let digit = (b as char).to_digit(16).ok_or(BAD_SIZE)?;
                self.count += 1;
                self.chunk_size = self
                    .chunk_size
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or(malformed("chunk size too large"))?;
            }
            (State::ChunkWs, _) => return Err(BAD_SIZE),
            (_, b' ' | b'\t') => {}
            (_, _) if is_field_vchar(b) => {}
            (_, _) => return Err(malformed("invalid chunk extension")),
        }
        Ok(())
    }

    /// A CRLF ended a line; `Ok(true)` when it ended a request head.
    fn end_of_line(&mut self, line: Line) -> Result<bool, Violation> {
        self.state = State::LineStart;
        match line {
            Line::Leading => {}
            Line::Request => {
                if self.at_start && self.name.get() == Some(b"PRI * HTTP/2.0".as_slice()) {
                    self.state = State::Passthrough;
                    return Ok(false);
                }
                self.at_start = false;
                self.framing.http10 = match self.value.get() {
                    Some(b"HTTP/1.1") if self.count == 2 => false,
                    Some(b"HTTP/1.0") if self.count == 2 => true,
                    _ => return Err(malformed("malformed request line or unsupported version")),
                };
                self.section = Section::Head;
            }
            Line::Field => {
                let (name, value) = (self.name, self.value);
                return self.end_of_field(name.get(), value.get());
            }
            Line::SectionEnd if self.section == Section::Trailers => self.state = self.next_message(),
            Line::SectionEnd => {
                self.end_of_head()?;
                return Ok(true);
            }
            Line::ChunkSize if self.chunk_size == 0 => {
                self.section = Section::Trailers;
                self.section_bytes = 0;
                self.fields = 0;
            }
            Line::ChunkSize => self.state = State::ChunkData(self.chunk_size),
            Line::ChunkData => self.start_chunk(),
        }
        Ok(false)
    }

    fn start_chunk(&mut self) {
        self.state = State::ChunkSize;
        self.body = true;
        self.count = 0;
        self.chunk_line = 0;
        self.chunk_size = 0;
    }

    /// A complete field line: its name and value (from the first non-blank byte), each
    /// `None` if longer than a [`Short`] keeps.
    fn end_of_field(&mut self, name: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, Violation> {
        self.fields += 1;
        if self.fields > MAX_FIELDS {
            return Err(TOO_MANY_FIELDS);
        }
        if self.section == Section::Head {
            self.framing.field(name, value)?;
        }
        Ok(false)
    }

    /// The empty line ending a request head: where its body ends, or why it cannot be known.
    fn end_of_head(&mut self) -> Result<(), Violation> {
        match (self.framing.transfer_encoding, self.framing.content_length) {
            (Some(coding), _) => {
                coding?;
                self.start_chunk();
            }
            (None, Some(n)) if n > 0 => self.state = State::Body(n),
            (None, _) => self.state = self.next_message(),
        }
        Ok(())
    }
}
