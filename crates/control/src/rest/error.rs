//! The one place where an [`Error`] becomes an HTTP response:
//! `{ "error": "...", "field": "path.to.field", "errors": [{ "field", "message" }, ...] }`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tether_model::spec::FieldError;

use crate::Error;

#[derive(Serialize)]
struct Body {
    error: String,
    /// Set when exactly one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    errors: Vec<Item>,
}

#[derive(Serialize)]
struct Item {
    #[serde(skip_serializing_if = "String::is_empty")]
    field: String,
    message: String,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NamespaceNotFound(_)
            | Error::ServiceNotFound { .. }
            | Error::InstanceNotFound { .. }
            | Error::LeaseNotFound(_)
            | Error::TaskNotFound { .. }
            | Error::LogNotFound { .. }
            | Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            Error::HostUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::HostUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Taken(_) | Error::NamespaceNotEmpty { .. } | Error::Contended(_) | Error::NotYet(_) => {
                StatusCode::CONFLICT
            }
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Corrupt { .. }
            | Error::Store(_)
            | Error::Ca(_)
            | Error::Bind { .. }
            | Error::DataDir { .. }
            | Error::Serve(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = match &self {
            Error::Invalid(errors) | Error::Taken(errors) => {
                let items: Vec<Item> = errors.0.iter().map(item).collect();
                let field = match items.as_slice() {
                    [only] if !only.field.is_empty() => Some(only.field.clone()),
                    _ => None,
                };
                let summary = errors.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                Body { error: summary, field, errors: items }
            }
            Error::LeaseNotFound(_) => one(&self, "lease"),
            other => one(other, ""),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn item(e: &FieldError) -> Item {
    Item { field: e.field.clone(), message: e.message.clone() }
}

fn one(e: &Error, field: &str) -> Body {
    let error = e.to_string();
    Body {
        field: (!field.is_empty()).then(|| field.to_owned()),
        errors: vec![Item { field: field.to_owned(), message: error.clone() }],
        error,
    }
}
