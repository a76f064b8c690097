//! The contract between the control plane and an agent for reading a task's logs.
//!
//! The control plane relays `GET /v1/namespaces/{ns}/tasks/{id}/logs` to the task's agent as
//!
//! ```text
//! GET /tasks/{ns}/{service}/{task}/logs?tail=N&follow=true
//! x-tether-expires: <seconds since the Unix epoch>
//! x-tether-signature: <hex HMAC-SHA256 of signed_text(…), keyed by the agent's join token>
//! ```
//!
//! The control plane can make any agent's join token again (it is an HMAC of the agent's name),
//! and the agent knows its own, so neither sends the token itself. The service is part of the
//! path because an agent keeps a task's app output in `logs/{service}/{task}.log`.

/// The header with the signature's expiry, in seconds since the Unix epoch.
pub const EXPIRES_HEADER: &str = "x-tether-expires";
/// The header with the signature, 64 hex digits.
pub const SIGNATURE_HEADER: &str = "x-tether-signature";
/// How long a signature the control plane makes is good for.
pub const SIGNATURE_LIFE_SECONDS: u64 = 60;
/// An agent refuses signatures that expire later than this from its own clock: that bounds
/// what a leaked signature is worth, and tolerates that much clock skew between hosts.
pub const MAX_SIGNATURE_LIFE_SECONDS: u64 = 300;

/// What the control plane signs for one read of one task's logs.
pub fn signed_text(namespace: &str, service: &str, task: &str, expires: u64) -> String {
    format!("logs\n{namespace}\n{service}\n{task}\n{expires}")
}

/// The agent's path for a task's logs.
pub fn agent_path(namespace: &str, service: &str, task: &str) -> String {
    format!("/tasks/{namespace}/{service}/{task}/logs")
}

/// Whether `part` may be a namespace, service or task in that path: 1 to 255 letters, digits,
/// `_`, `.` and `-`, starting with a letter or digit, and never `..`, so that it names one file
/// or folder below the agent's log directory and nothing else.
pub fn valid_part(part: &str) -> bool {
    part.len() <= 255
        && part.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !part.contains("..")
}

/// `tail` and `follow` as a query string (empty when neither is set).
pub fn query(tail: Option<u64>, follow: bool) -> String {
    let mut pairs = Vec::new();
    if let Some(tail) = tail {
        pairs.push(format!("tail={tail}"));
    }
    if follow {
        pairs.push("follow=true".to_owned());
    }
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

/// Reads `tail` and `follow` from a query string's pairs; the error names the parameter.
pub fn parse_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(Option<u64>, bool), (&'static str, String)> {
    let (mut tail, mut follow) = (None, false);
    for (name, value) in pairs {
        match name {
            "tail" => {
                tail = Some(
                    value.parse().map_err(|_| ("tail", format!("`{value}`: expected a number of lines")))?,
                );
            }
            "follow" => {
                follow = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => return Err(("follow", format!("`{other}`: expected true or false"))),
                }
            }
            _ => {}
        }
    }
    Ok((tail, follow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_name_one_entry_below_the_log_directory() {
        for good in ["shop", "web-1a2b3c", "a.b_c"] {
            assert!(valid_part(good), "{good}");
        }
        for bad in ["", "..", ".", "a/b", "a..b", ".hidden", "-x", "a b", "a%2fb", &"x".repeat(256)] {
            assert!(!valid_part(bad), "{bad}");
        }
    }

    #[test]
    fn queries_go_there_and_back() {
        assert_eq!(query(None, false), "");
        assert_eq!(query(Some(5), true), "?tail=5&follow=true");
        assert_eq!(parse_query([("tail", "5"), ("follow", "true")]), Ok((Some(5), true)));
        assert_eq!(parse_query([]), Ok((None, false)));
        assert_eq!(parse_query([("tail", "x")]).unwrap_err().0, "tail");
        assert_eq!(parse_query([("follow", "maybe")]).unwrap_err().0, "follow");
    }
}
