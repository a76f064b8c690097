use std::collections::BTreeMap;

use super::{Expression, ExpressionError};

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[track_caller]
fn parse(text: &str) -> Expression {
    text.parse().unwrap_or_else(|e| panic!("`{text}` does not parse: {e}"))
}

/// Which of the hosts `a` (zone a, gpu), `b` (zone b) and `none` (no attribute) match.
#[track_caller]
fn selects(text: &str) -> Vec<&'static str> {
    let e = parse(text);
    let hosts = [
        ("a", attributes(&[("zone", "a"), ("gpu", "true")])),
        ("b", attributes(&[("zone", "b")])),
        ("none", attributes(&[])),
    ];
    hosts.iter().filter(|(_, attrs)| e.matches(attrs)).map(|(name, _)| *name).collect()
}

#[track_caller]
fn error(text: &str) -> ExpressionError {
    match text.parse::<Expression>() {
        Ok(e) => panic!("`{text}` parsed as {e:?}"),
        Err(e) => e,
    }
}

#[test]
fn comparisons() {
    assert_eq!(selects("attribute:zone == a"), ["a"]);
    assert_eq!(selects("attribute:zone != a"), ["b", "none"], "a host without the attribute is not `a`");
    assert_eq!(selects("attribute:zone in [a, b]"), ["a", "b"]);
    assert_eq!(selects("attribute:zone in [b]"), ["b"]);
    assert_eq!(selects("attribute:zone not_in [a,b]"), ["none"]);
    assert_eq!(selects("attribute:gpu exists"), ["a"]);
    assert_eq!(selects("attribute:gpu !exists"), ["b", "none"]);
    assert_eq!(selects("attribute:zone==b"), ["b"], "operators need no blanks around them");
}

#[test]
fn and_binds_tighter_than_or() {
    // b, or (a and without gpu): only b.
    assert_eq!(selects("attribute:zone == b or attribute:zone == a and attribute:gpu !exists"), ["b"]);
    assert_eq!(selects("(attribute:zone == b or attribute:zone == a) and attribute:gpu exists"), ["a"]);
    assert_eq!(
        selects("attribute:zone == a and attribute:gpu exists or attribute:zone !exists"),
        ["a", "none"]
    );
    assert_eq!(selects("((attribute:zone exists))"), ["a", "b"]);
}

#[test]
fn names_and_values_take_dots_colons_and_dashes() {
    let e = parse("attribute:ecs.availability-zone in [us-east-1a, us-east-1b] and attribute:k:v == x_1");
    assert!(e.matches(&attributes(&[("ecs.availability-zone", "us-east-1b"), ("k:v", "x_1")])));
    assert_eq!(e.attributes(), ["ecs.availability-zone", "k:v"]);
}

#[test]
fn it_displays_and_serializes_as_written() {
    let e = parse("  attribute:zone  in [a,b]  ");
    assert_eq!(e.to_string(), "attribute:zone  in [a,b]");
    assert_eq!(e.as_str(), "attribute:zone  in [a,b]");
    assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::json!("attribute:zone  in [a,b]"));
}

#[test]
fn errors_say_what_was_expected_what_was_found_and_where() {
    let cases = [
        (
            "attribute:zone = a",
            16,
            "expected `==`, `!=`, `in`, `not_in`, `exists` or `!exists` after `attribute:zone`, found `=` at column 16",
        ),
        (
            "attribute:zone",
            15,
            "expected `==`, `!=`, `in`, `not_in`, `exists` or `!exists` after `attribute:zone`, found the end of the expression at column 15",
        ),
        (
            "",
            1,
            "expected a condition such as `attribute:zone == a`, or `(`, found the end of the expression at column 1",
        ),
        (
            "attribute:zone ==",
            18,
            "expected a value after `==`, found the end of the expression at column 18",
        ),
        (
            "attribute:zone in a",
            19,
            "expected `[` after `in`, as in `attribute:zone in [a, b]`, found `a` at column 19",
        ),
        ("attribute:zone in []", 20, "expected a value in the list after `in`, found `]` at column 20"),
        ("attribute:zone in [a b]", 22, "expected `,` or `]` in the list, found `b` at column 22"),
        (
            "attribute:zone in [a,",
            22,
            "expected a value after `,`, found the end of the expression at column 22",
        ),
        (
            "attribute:zone == a b",
            21,
            "expected `and`, `or` or the end of the expression, found `b` at column 21",
        ),
        (
            "attribute:zone == a)",
            20,
            "expected `and`, `or` or the end of the expression, found `)` at column 20",
        ),
        (
            "(attribute:zone == a",
            21,
            "expected `and`, `or` or `)` to close the `(` at column 1, found the end of the expression at column 21",
        ),
        (
            "attribute:zone == a and",
            24,
            "expected a condition such as `attribute:zone == a`, or `(`, found the end of the expression at column 24",
        ),
        (
            "zone == a",
            1,
            "expected `attribute:NAME` (tether's memberOf reads host attributes only), e.g. `attribute:zone == a`, found `zone` at column 1",
        ),
        (
            "task:group == web",
            1,
            "expected `attribute:NAME` (tether's memberOf reads host attributes only), e.g. `attribute:zone == a`, found `task:group` at column 1",
        ),
        (
            "attribute: == a",
            1,
            "expected an attribute name after `attribute:` at column 1, e.g. `attribute:zone`",
        ),
        ("attribute:gpu ! exist", 17, "expected `exists` after `!`, found `exist` at column 17"),
        (
            "attribute:type =~ g2.*",
            16,
            "expected `==`, `!=`, `in`, `not_in`, `exists` or `!exists` after `attribute:type`, found `=~` at column 16",
        ),
    ];
    for (text, column, message) in cases {
        let e = error(text);
        assert_eq!((e.column, e.message.as_str()), (column, message), "for `{text}`");
        assert_eq!(e.to_string(), message);
    }
}

#[test]
fn characters_outside_names_are_refused_with_a_hint() {
    let e = error("attribute:zone == a && attribute:gpu exists");
    assert_eq!(e.column, 21);
    assert!(
        e.message.starts_with("found `&` at column 21, which cannot appear in an expression; write `and`"),
        "{e}"
    );
    let e = error("attribute:zone == \"a\"");
    assert!(e.message.contains("values are written without quotes"), "{e}");
    let e = error("attribute:zone == é");
    assert_eq!(e.column, 19);
    assert!(e.message.contains("names and values are made of A-Z, a-z, 0-9, `_`, `.`, `:` and `-`"), "{e}");
}

#[test]
fn columns_count_from_the_text_as_written() {
    assert_eq!(error("   attribute:zone = a").column, 19);
}

#[test]
fn an_expression_is_at_most_ecs_s_2000_characters() {
    let long = format!("attribute:zone in [{}]", vec!["a"; 1000].join(","));
    let e = error(&long);
    assert_eq!(e.column, 2001);
    assert_eq!(e.message, "is 2019 characters long; ECS allows expressions of at most 2000");
    let fits = format!("attribute:zone in [{}]", vec!["a"; 990].join(","));
    assert!(fits.len() <= 2000);
    assert_eq!(selects(&fits), ["a"]);
}
