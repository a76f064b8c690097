//! Reading a YAML (or JSON) document while remembering where everything came from.

use std::fmt;

use marked_yaml::{LoaderOptions, Node};
use serde::de::DeserializeOwned;

/// One document as read from a file, kept so that errors found after parsing can still be
/// reported at the line they concern.
pub struct Source {
    name: String,
    root: Node,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file's name as the user gave it.
    pub file: String,
    /// 1-based line and column, when known.
    pub line: usize,
    pub column: usize,
    /// The field, as a path (`outbound[1].listen`); empty for the document itself.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// Every error found in a file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Source {
    /// Parses `text` (YAML, or JSON, which is read as YAML flow style).
    pub fn parse(name: impl Into<String>, text: &str) -> Result<Self, ConfigErrors> {
        Self::parse_expecting(name, text, "`admin: 127.0.0.1:9901`")
    }

    /// [`Source::parse`] for a kind of file whose first field is shown by `example` (such as
    /// `` `namespace: shop.local` ``) when the file is empty or not a mapping.
    pub fn parse_expecting(name: impl Into<String>, text: &str, example: &str) -> Result<Self, ConfigErrors> {
        let name = name.into();
        if text.trim().is_empty() {
            return Err(ConfigErrors(vec![ConfigError {
                file: name,
                line: 1,
                column: 1,
                field: String::new(),
                message: format!("the file is empty; expected a mapping such as {example}"),
            }]));
        }
        let options = LoaderOptions::default().error_on_duplicate_keys(true).toplevel_mapping();
        match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(root) => Ok(Self { name, root }),
            Err(e) => Err(ConfigErrors(vec![load_error(&name, text, e, example)])),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deserializes the document into `T`, reporting the first type error with its position.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        marked_yaml::from_node(&self.root).map_err(|e| {
            let (line, column) = e.start_mark().map_or((1, 1), |m| (m.line(), m.column()));
            let field = e.path().unwrap_or_default().to_owned();
            let message = describe_serde_error(&e.into_inner());
            ConfigErrors(vec![ConfigError { file: self.name.clone(), line, column, field, message }])
        })
    }

    /// An error about `field` (a path such as `outbound[1].listen`), placed at the deepest node
    /// of that path that exists in the document.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        let (line, column) = self.locate(&field);
        ConfigError { file: self.name.clone(), line, column, field, message: message.into() }
    }

    /// The position of the deepest node of `path` in the document: a scalar's own position, or
    /// the key of a mapping or sequence (which in block style starts on the next line).
    fn locate(&self, path: &str) -> (usize, usize) {
        let mut node = &self.root;
        let mut mark = node.span().start();
        for segment in path_segments(path) {
            let next = match segment {
                Segment::Key(key) => {
                    node.as_mapping().and_then(|m| m.iter().find(|(k, _)| k.as_str() == key)).map(|(k, v)| {
                        (v, if v.as_scalar().is_some() { v.span().start() } else { k.span().start() })
                    })
                }
                Segment::Index(i) => {
                    node.as_sequence().and_then(|s| s.get_node(i)).map(|v| (v, v.span().start()))
                }
            };
            match next {
                Some((next, at)) => {
                    node = next;
                    mark = at.or(mark);
                }
                None => break,
            }
        }
        mark.map_or((1, 1), |m| (m.line(), m.column()))
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> impl Iterator<Item = Segment<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        let indices =
            rest.split('[').filter_map(|i| i.trim_end_matches(']').parse().ok()).map(Segment::Index);
        (!key.is_empty()).then_some(Segment::Key(key)).into_iter().chain(indices.collect::<Vec<_>>())
    })
}

fn load_error(file: &str, text: &str, e: marked_yaml::LoadError, example: &str) -> ConfigError {
    use marked_yaml::LoadError::*;
    let (mark, message) = match &e {
        TopLevelMustBeMapping(m) => {
            (Some(*m), format!("the document must be a mapping of fields such as {example}"))
        }
        DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!(
                "`{}` appears twice in the same mapping (first at line {}); keep one",
                inner.key.as_str(),
                inner.prev_key.span().start().map_or(0, |m| m.line())
            ),
        ),
        ScanError(m, scan) => {
            let mut message = format!("not valid YAML: {}", scan.info());
            // The scanner notices an unclosed `[` or `{` only lines later, where nothing is wrong.
            if let Some((open, line, column)) = open_flow_collection(text, m.line()) {
                let close = if open == '[' { ']' } else { '}' };
                message.push_str(&format!(
                    "; the `{open}` at line {line} column {column} is still open here: is a `{close}` missing?"
                ));
            }
            (Some(*m), message)
        }
        other => (None, format!("not supported here: {other}")),
    };
    ConfigError {
        file: file.to_owned(),
        line: mark.map_or(1, |m| m.line()),
        column: mark.map_or(1, |m| m.column()),
        field: String::new(),
        message,
    }
}

/// The innermost flow collection (`[` or `{`) opened before `before_line` and not closed by
/// then, as `(bracket, line, column)`. A heuristic for messages: quotes and comments are
/// skipped, and a bracket counts only where a flow collection may start.
fn open_flow_collection(text: &str, before_line: usize) -> Option<(char, usize, usize)> {
    let (mut line, mut column) = (1, 0);
    let (mut open, mut quote, mut comment, mut prev) = (Vec::new(), None, false, ' ');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || c == '\r' {
            // YAML breaks lines at CRLF, LF and a lone CR.
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            (line, column, comment, prev) = (line + 1, 0, false, ' ');
            if line >= before_line {
                break;
            }
            continue;
        }
        column += 1;
        let starts_token = prev.is_whitespace() || "[{,:".contains(prev);
        match (quote, c) {
            _ if comment => {}
            (Some('"'), '\\') => {
                chars.next();
                column += 1;
            }
            (Some('\''), '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                column += 1;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if starts_token => quote = Some(c),
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '[' | '{') if starts_token => open.push((c, line, column)),
            (None, ']' | '}') => {
                open.pop();
            }
            _ => {}
        }
        prev = c;
    }
    open.pop()
}

fn describe_serde_error(e: &marked_yaml::Error) -> String {
    use marked_yaml::Error::*;
    match e {
        NotBoolean(_) => "expected `true` or `false`".into(),
        IntegerParseFailure(err, _) => format!("not a whole number ({err})"),
        FloatParseFailure(err, _) => format!("not a number ({err})"),
        UnknownFieldError(field, expected, _) => {
            format!("unknown field `{field}`; expected one of: {}", expected.join(", "))
        }
        Other(message, _) => message.clone(),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
