//! `memberOf` expressions: the part of ECS's cluster query language that reads host attributes.
//!
//! ```text
//! expression := all ("or" all)*
//! all        := term ("and" term)*
//! term       := "(" expression ")" | attribute test
//! attribute  := "attribute:" NAME
//! test       := "==" VALUE | "!=" VALUE | "in" list | "not_in" list | "exists" | "!exists"
//! list       := "[" VALUE ("," VALUE)* "]"
//! ```
//!
//! Names and values are made of `[A-Za-z0-9_.:-]`. ECS's other subjects (`instanceId`,
//! `task:group`, …) and its `=~` matching are not supported, and are refused with a column.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// ECS's limit on an expression's length.
const MAX_LENGTH: usize = 2000;

/// A parsed `memberOf` expression, e.g. `attribute:zone in [a, b] and attribute:gpu exists`.
/// Displays (and serializes) as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    text: String,
    condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    /// `or`: one of them holds.
    Any(Vec<Condition>),
    /// `and`: each of them holds.
    All(Vec<Condition>),
    Test {
        attribute: String,
        test: Test,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    Missing,
}

/// Why a text is not an expression, at which column (from 1) of the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionError {
    pub column: usize,
    /// What was expected and what was found, with the column.
    pub message: String,
}

impl Expression {
    /// Whether a host with `attributes` matches. A host without an attribute has none of its
    /// values: `!=` and `not_in` match it, `==` and `in` do not.
    pub fn matches(&self, attributes: &BTreeMap<String, String>) -> bool {
        self.condition.holds(attributes)
    }

    /// The attributes the expression reads, in the order written (a name may repeat).
    pub fn attributes(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.condition.attributes(&mut names);
        names
    }

    /// The expression as written, without surrounding blanks.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Condition {
    fn holds(&self, attributes: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Any(conditions) => conditions.iter().any(|c| c.holds(attributes)),
            Self::All(conditions) => conditions.iter().all(|c| c.holds(attributes)),
            Self::Test { attribute, test } => {
                let value = attributes.get(attribute);
                match test {
                    Test::Equals(v) => value == Some(v),
                    Test::NotEquals(v) => value != Some(v),
                    Test::In(values) => value.is_some_and(|value| values.contains(value)),
                    Test::NotIn(values) => value.is_none_or(|value| !values.contains(value)),
                    Test::Exists => value.is_some(),
                    Test::Missing => value.is_none(),
                }
            }
        }
    }

    fn attributes<'c>(&'c self, names: &mut Vec<&'c str>) {
        match self {
            Self::Any(conditions) | Self::All(conditions) => {
                conditions.iter().for_each(|c| c.attributes(names));
            }
            Self::Test { attribute, .. } => names.push(attribute),
        }
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Expression {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpressionError {}

impl FromStr for Expression {
    type Err = ExpressionError;

    fn from_str(written: &str) -> Result<Self, ExpressionError> {
        // Only ASCII blanks, so that the bytes before the text are as many characters.
        let text = written.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let leading = written.len() - text.len();
        let text = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
        if text.chars().count() > MAX_LENGTH {
            return Err(ExpressionError {
                column: leading + MAX_LENGTH + 1,
                message: format!(
                    "is {} characters long; ECS allows expressions of at most {MAX_LENGTH}",
                    text.chars().count()
                ),
            });
        }
        let mut parser = Parser { text, offset: leading, at: 0, peeked: None };
        let condition = parser.any()?;
        if parser.peek()?.token != Token::End {
            return Err(parser.expected("`and`, `or` or the end of the expression"));
        }
        Ok(Self { text: text.to_owned(), condition })
    }
}

/// Whether `s` is an attribute name (or value): `[A-Za-z0-9_.:-]+`.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.:-".contains(&b)
}

/// What operators are made of: `==`, `!=`, `!exists`, and ECS's `=~` that tether does not read.
fn is_operator_byte(b: u8) -> bool {
    b"=!<>~".contains(&b)
}

// ---- reading -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'t> {
    /// A name, a value or a keyword (`and`, `in`, `exists`, …): `[A-Za-z0-9_.:-]+`.
    Word(&'t str),
    /// A run of `=!<>~`: `==`, `!=`, the `!` of `!exists`, or something tether does not read.
    Operator(&'t str),
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    End,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Word(s) | Self::Operator(s) => write!(f, "`{s}`"),
            Self::Open => f.write_str("`(`"),
            Self::Close => f.write_str("`)`"),
            Self::OpenList => f.write_str("`[`"),
            Self::CloseList => f.write_str("`]`"),
            Self::Comma => f.write_str("`,`"),
            Self::End => f.write_str("the end of the expression"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Lexed<'t> {
    token: Token<'t>,
    /// From 1, in the text as written.
    column: usize,
}

/// Reads `text` (which starts `offset` bytes into what was written) a token at a time, so that
/// errors come in the order a person reads. Columns count bytes, which are characters: anything
/// but ASCII is refused where it is met.
struct Parser<'t> {
    text: &'t str,
    offset: usize,
    /// Where the next token starts, in `text`.
    at: usize,
    peeked: Option<Lexed<'t>>,
}

impl<'t> Parser<'t> {
    fn peek(&mut self) -> Result<Lexed<'t>, ExpressionError> {
        if let Some(lexed) = self.peeked {
            return Ok(lexed);
        }
        let bytes = self.text.as_bytes();
        while bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        let start = self.at;
        let column = self.offset + start + 1;
        let run = |pred: fn(u8) -> bool| start + bytes[start..].iter().take_while(|&&b| pred(b)).count();
        let (token, end) = match bytes.get(start) {
            None => (Token::End, start),
            Some(b'(') => (Token::Open, start + 1),
            Some(b')') => (Token::Close, start + 1),
            Some(b'[') => (Token::OpenList, start + 1),
            Some(b']') => (Token::CloseList, start + 1),
            Some(b',') => (Token::Comma, start + 1),
            Some(&b) if is_name_byte(b) => {
                let end = run(is_name_byte);
                (Token::Word(&self.text[start..end]), end)
            }
            Some(&b) if is_operator_byte(b) => {
                let end = run(is_operator_byte);
                (Token::Operator(&self.text[start..end]), end)
            }
            Some(_) => {
                let found = self.text[start..].chars().next().unwrap_or_default();
                let hint = match found {
                    '&' => "; write `and` to require both conditions",
                    '|' => "; write `or` to require either condition",
                    '"' | '\'' => "; values are written without quotes",
                    _ => "",
                };
                return Err(ExpressionError {
                    column,
                    message: format!(
                        "found `{found}` at column {column}, which cannot appear in an expression{hint}; names and values are made of A-Z, a-z, 0-9, `_`, `.`, `:` and `-`"
                    ),
                });
            }
        };
        self.at = end;
        let lexed = Lexed { token, column };
        self.peeked = Some(lexed);
        Ok(lexed)
    }

    /// Whether the next token is `token`, taking it if so.
    fn take(&mut self, token: Token<'_>) -> Result<bool, ExpressionError> {
        let found = self.peek()?.token == token;
        if found {
            self.peeked = None;
        }
        Ok(found)
    }

    /// Takes the next token, whatever it is.
    fn skip(&mut self) -> Result<(), ExpressionError> {
        self.peek()?;
        self.peeked = None;
        Ok(())
    }

    /// An error at the next token, which has been peeked at.
    fn expected(&mut self, what: impl fmt::Display) -> ExpressionError {
        match self.peek() {
            Ok(Lexed { token, column }) => ExpressionError {
                column,
                message: format!("expected {what}, found {token} at column {column}"),
            },
            Err(e) => e,
        }
    }

    fn any(&mut self) -> Result<Condition, ExpressionError> {
        let mut conditions = vec![self.all()?];
        while self.take(Token::Word("or"))? {
            conditions.push(self.all()?);
        }
        Ok(if conditions.len() == 1 { conditions.remove(0) } else { Condition::Any(conditions) })
    }

    fn all(&mut self) -> Result<Condition, ExpressionError> {
        let mut conditions = vec![self.term()?];
        while self.take(Token::Word("and"))? {
            conditions.push(self.term()?);
        }
        Ok(if conditions.len() == 1 { conditions.remove(0) } else { Condition::All(conditions) })
    }

    fn term(&mut self) -> Result<Condition, ExpressionError> {
        let Lexed { token, column } = self.peek()?;
        match token {
            Token::Open => {
                self.skip()?;
                let condition = self.any()?;
                if !self.take(Token::Close)? {
                    return Err(
                        self.expected(format_args!("`and`, `or` or `)` to close the `(` at column {column}"))
                    );
                }
                Ok(condition)
            }
            Token::Word(subject) if subject.starts_with("attribute:") => {
                self.skip()?;
                let attribute = &subject["attribute:".len()..];
                if attribute.is_empty() {
                    return Err(ExpressionError {
                        column,
                        message: format!(
                            "expected an attribute name after `attribute:` at column {column}, e.g. `attribute:zone`"
                        ),
                    });
                }
                let test = self.test(subject)?;
                Ok(Condition::Test { attribute: attribute.to_owned(), test })
            }
            Token::Word(_) => Err(self.expected(
                "`attribute:NAME` (tether's memberOf reads host attributes only), e.g. `attribute:zone == a`",
            )),
            _ => Err(self.expected("a condition such as `attribute:zone == a`, or `(`")),
        }
    }

    /// What follows `attribute:NAME` (`subject`).
    fn test(&mut self, subject: &str) -> Result<Test, ExpressionError> {
        let test = match self.peek()?.token {
            Token::Operator(operator @ ("==" | "!=")) => {
                self.skip()?;
                let value = self.value(format_args!("a value after `{operator}`"))?;
                if operator == "==" { Test::Equals(value) } else { Test::NotEquals(value) }
            }
            Token::Word("in") => Test::In(self.list("in")?),
            Token::Word("not_in") => Test::NotIn(self.list("not_in")?),
            Token::Word("exists") => {
                self.skip()?;
                Test::Exists
            }
            Token::Operator("!") => {
                self.skip()?;
                if !self.take(Token::Word("exists"))? {
                    return Err(self.expected("`exists` after `!`"));
                }
                Test::Missing
            }
            _ => {
                return Err(self.expected(format_args!(
                    "`==`, `!=`, `in`, `not_in`, `exists` or `!exists` after `{subject}`"
                )));
            }
        };
        Ok(test)
    }

    fn value(&mut self, what: fmt::Arguments<'_>) -> Result<String, ExpressionError> {
        match self.peek()?.token {
            Token::Word(value) => {
                self.skip()?;
                Ok(value.to_owned())
            }
            _ => Err(self.expected(what)),
        }
    }

    /// `[a, b]`, after `in` or `not_in` (`operator`).
    fn list(&mut self, operator: &str) -> Result<Vec<String>, ExpressionError> {
        self.skip()?;
        if !self.take(Token::OpenList)? {
            return Err(self
                .expected(format_args!("`[` after `{operator}`, as in `attribute:zone {operator} [a, b]`")));
        }
        let mut values = vec![self.value(format_args!("a value in the list after `{operator}`"))?];
        loop {
            if self.take(Token::CloseList)? {
                return Ok(values);
            }
            if !self.take(Token::Comma)? {
                return Err(self.expected("`,` or `]` in the list"));
            }
            values.push(self.value(format_args!("a value after `,`"))?);
        }
    }
}
