//! The REST API for people, the CLI and runners (design §6), as an axum [`Router`] so that
//! other services (the proxy stream's gRPC) can be merged onto the same listener.
//!
//! Every route needs `Authorization: Bearer <admin token>` except `GET /healthz` and
//! `GET /openapi.json`. The routes are listed once, in [`routes`]; `openapi.json` describes the
//! same list and a test keeps the two equal.

mod error;
mod extract;
mod handlers;
mod identity;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use tether_store::Store;

use std::sync::Arc;

use crate::Error;
use crate::identity::{BootstrapTokens, Issuer};
use crate::registry::Registry;
use crate::token::AdminToken;

pub use handlers::OPENAPI;

/// What every handler gets.
pub struct Api<S> {
    pub registry: Registry<S>,
    /// The certificate authority, when the server runs one.
    pub issuer: Option<Arc<Issuer<S>>>,
    pub tokens: BootstrapTokens,
}

impl<S: Clone> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self { registry: self.registry.clone(), issuer: self.issuer.clone(), tokens: self.tokens.clone() }
    }
}

/// Routes anyone may call.
pub const PUBLIC: [(&str, &str); 2] = [("GET", "/healthz"), ("GET", "/openapi.json")];

/// The API's router, with its state applied: merge other routers into it, or it into others.
pub fn router<S: Store>(registry: Registry<S>, token: AdminToken) -> Router {
    router_with(registry, token, None)
}

/// The same, with the routes of a certificate authority.
pub fn router_with<S: Store>(
    registry: Registry<S>,
    token: AdminToken,
    issuer: Option<Arc<Issuer<S>>>,
) -> Router {
    let tokens = BootstrapTokens::new(&token);
    let protected = routes::<S>().router.route_layer(from_fn_with_state(token, require_token));
    Router::new()
        .route("/healthz", axum::routing::get(handlers::healthz))
        .route("/openapi.json", axum::routing::get(handlers::openapi))
        .merge(protected)
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(Api { registry, issuer, tokens })
}

/// Every route that needs the token, as `(method, path)`.
pub fn protected_routes<S: Store>() -> Vec<(&'static str, &'static str)> {
    routes::<S>().table
}

struct Routes<S> {
    router: Router<Api<S>>,
    table: Vec<(&'static str, &'static str)>,
}

impl<S: Store> Routes<S> {
    fn add<H, T>(mut self, method: &'static str, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, Api<S>>,
        T: 'static,
    {
        let filter = match method {
            "GET" => MethodFilter::GET,
            "PUT" => MethodFilter::PUT,
            "POST" => MethodFilter::POST,
            "DELETE" => MethodFilter::DELETE,
            other => unreachable!("the API uses no {other} route"),
        };
        // Routing the same path again merges the methods.
        self.router = self.router.route(path, on(filter, handler));
        self.table.push((method, path));
        self
    }
}

fn routes<S: Store>() -> Routes<S> {
    use handlers::*;
    const NAMESPACE: &str = "/v1/namespaces/{ns}";
    const SERVICE: &str = "/v1/namespaces/{ns}/services/{name}";
    const INSTANCES: &str = "/v1/namespaces/{ns}/services/{name}/instances";
    const INSTANCE: &str = "/v1/namespaces/{ns}/services/{name}/instances/{id}";
    Routes { router: Router::new(), table: Vec::new() }
        .add("GET", "/v1/namespaces", list_namespaces::<S>)
        .add("PUT", NAMESPACE, put_namespace::<S>)
        .add("GET", NAMESPACE, get_namespace::<S>)
        .add("DELETE", NAMESPACE, delete_namespace::<S>)
        .add("GET", "/v1/namespaces/{ns}/services", list_services::<S>)
        .add("PUT", SERVICE, put_service::<S>)
        .add("GET", SERVICE, get_service::<S>)
        .add("DELETE", SERVICE, delete_service::<S>)
        .add("GET", INSTANCES, list_instances::<S>)
        .add("PUT", INSTANCE, put_instance::<S>)
        .add("GET", INSTANCE, get_instance::<S>)
        .add("DELETE", INSTANCE, delete_instance::<S>)
        .add("POST", "/v1/leases", grant_lease::<S>)
        .add("PUT", "/v1/leases/{id}", renew_lease::<S>)
        .add("DELETE", "/v1/leases/{id}", revoke_lease::<S>)
        .add("POST", "/v1/namespaces/{ns}/bootstrap-tokens", identity::bootstrap_token::<S>)
        .add("GET", "/v1/ca", identity::get_ca::<S>)
        .add("POST", "/v1/ca/rotation", identity::rotate::<S>)
}

const MISSING_TOKEN: &str = "this route needs the admin token: send `Authorization: Bearer TOKEN` (the token is in the server's data directory, file admin.token)";
const WRONG_TOKEN: &str = "the bearer token is not the admin token";

async fn require_token(State(token): State<AdminToken>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match given {
        None => Error::Unauthorized(MISSING_TOKEN).into_response(),
        Some(given) if token.matches(given.trim()) => next.run(req).await,
        Some(_) => Error::Unauthorized(WRONG_TOKEN).into_response(),
    }
}

#[cfg(test)]
mod tests;
