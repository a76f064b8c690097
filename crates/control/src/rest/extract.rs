//! Extractors whose failures are JSON errors naming the field to blame, rather than axum's
//! plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::Error;

/// A JSON body. A type error, an unknown field or a missing field is reported with the path of
/// the field (`serviceConnectConfiguration.services[0].timeout`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| Error::invalid("", e.body_text()))?;
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes` as JSON into `T`, reporting the first error with its field path.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("", "the body is empty; expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        Error::invalid(blamed_field(&path, &message), describe(&inner, message))
    })?;
    de.end().map_err(|e| Error::invalid("", e.to_string()))?;
    Ok(value)
}

/// serde reports a missing field at the object that should hold it; the field itself is what is
/// to blame. (An unknown field's path already ends with its name.)
fn blamed_field(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    let missing =
        message.strip_prefix("missing field `").and_then(|rest| rest.split_once('`')).map(|(name, _)| name);
    match missing {
        Some(name) if path.is_empty() => name.to_owned(),
        Some(name) => format!("{path}.{name}"),
        None => path.to_owned(),
    }
}

fn describe(e: &serde_json::Error, message: String) -> String {
    if e.is_syntax() || e.is_eof() { format!("not valid JSON: {message}") } else { message }
}

/// Path parameters as strings; a segment that is not valid UTF-8 is a 400.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(e) => Err(Error::invalid("", e.body_text())),
        }
    }
}

/// The query string's `name=value` pairs, in order.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(QueryPairs)
            .map_err(|e| Error::invalid("", format!("the query string cannot be read: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Outer {
        #[allow(dead_code)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        #[allow(dead_code)]
        port: u16,
    }

    fn field(body: &str) -> (String, String) {
        match decode::<Outer>(body.as_bytes()) {
            Err(Error::Invalid(errors)) => (errors.0[0].field.clone(), errors.0[0].message.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field(r#"{"items": [{"port": 1}, {"port": "x"}]}"#).0, "items[1].port");
        assert_eq!(field(r#"{"items": [{"port": 1, "prot": 2}]}"#).0, "items[0].prot");
        assert_eq!(field(r#"{"items": [{}]}"#).0, "items[0].port");
        assert_eq!(field(r#"{"itemz": []}"#).0, "itemz");
        let (at, message) = field(r#"{"items": [}"#);
        assert!(message.starts_with("not valid JSON"), "{at}: {message}");
        assert_eq!(field("").1, "the body is empty; expected a JSON object");
        assert!(field(r#"{"items": []} trailing"#).1.contains("trailing"));
    }
}
