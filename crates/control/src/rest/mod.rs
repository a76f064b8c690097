//! The REST API for people, the CLI and runners (design §6), as an axum [`Router`] so that
//! other services (the proxy stream's gRPC) can be merged onto the same listener.
//!
//! Every route needs `Authorization: Bearer <admin token>` except `GET /healthz` and
//! `GET /openapi.json`. The routes are listed once, in [`routes`]; `openapi.json` describes the
//! same list and a test keeps the two equal.

mod error;
mod extract;
mod fleet;
mod handlers;
mod identity;
mod logs;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use tether_store::Store;

use std::sync::Arc;

use crate::fleet::{Caller, Fleet, JoinTokens};
use crate::identity::{BootstrapTokens, Issuer};
use crate::metrics::ControlMetrics;
use crate::registry::Registry;
use crate::token::AdminToken;
use crate::{Error, Result};

pub use handlers::OPENAPI;

/// What every handler gets.
pub struct Api<S> {
    pub registry: Registry<S>,
    pub fleet: Fleet<S>,
    /// The certificate authority, when the server runs one.
    pub issuer: Option<Arc<Issuer<S>>>,
    pub tokens: BootstrapTokens,
    pub joins: JoinTokens,
    pub metrics: ControlMetrics,
}

impl<S: Clone> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            fleet: self.fleet.clone(),
            issuer: self.issuer.clone(),
            tokens: self.tokens.clone(),
            joins: self.joins.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: Store> Api<S> {
    /// [`Fleet::authorize_task`], counting a refusal.
    async fn authorize(
        &self,
        caller: &Caller,
        ns: &str,
        service: &str,
        task: &str,
        action: &'static str,
    ) -> Result<()> {
        let result = self.fleet.authorize_task(caller, ns, service, task).await;
        if matches!(result, Err(Error::Forbidden(_))) {
            self.metrics.denied("agent", action);
        }
        result
    }

    /// An agent renews or ends the lease its host hangs on, and no other.
    async fn own_lease(&self, caller: &Caller, lease: i64) -> Result<()> {
        let Caller::Agent(agent) = caller else { return Ok(()) };
        match self.fleet.agent(agent).await? {
            Some(record) if record.registration.lease == lease => Ok(()),
            // Its record went with an expired lease: renewing that lease fails anyway.
            None => Err(Error::LeaseNotFound(lease)),
            Some(_) => {
                self.metrics.denied("agent", "lease");
                Err(Error::Forbidden(format!(
                    "agent {agent} may renew or end its own lease only, not lease {lease}"
                )))
            }
        }
    }
}

/// Routes anyone may call.
pub const PUBLIC: [(&str, &str); 3] = [("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/metrics")];

/// The routes an agent's join token may call; each checks that the agent acts for its own host.
const AGENT_ROUTES: [(&str, &str); 9] = [
    ("PUT", "/v1/agents/{name}"),
    ("GET", "/v1/agents/{name}/assignments"),
    ("PUT", "/v1/namespaces/{ns}/tasks/{id}/status"),
    ("POST", "/v1/leases"),
    ("PUT", "/v1/leases/{id}"),
    ("DELETE", "/v1/leases/{id}"),
    ("PUT", "/v1/namespaces/{ns}/services/{name}/instances/{id}"),
    ("DELETE", "/v1/namespaces/{ns}/services/{name}/instances/{id}"),
    ("POST", "/v1/namespaces/{ns}/bootstrap-tokens"),
];

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
    let joins = JoinTokens::new(&token);
    let metrics = ControlMetrics::default();
    let auth = Auth { admin: token, joins: joins.clone(), metrics: metrics.clone() };
    let protected = routes::<S>().router.route_layer(from_fn_with_state(auth, authenticate));
    let fleet = Fleet::new(registry.store().clone());
    Router::new()
        .route("/healthz", axum::routing::get(handlers::healthz))
        .route("/openapi.json", axum::routing::get(handlers::openapi))
        .route("/metrics", axum::routing::get(handlers::metrics::<S>))
        .merge(protected)
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(Api { registry, fleet, issuer, tokens, joins, metrics })
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
        .add("POST", "/v1/join-tokens", fleet::join_token::<S>)
        .add("GET", "/v1/agents", fleet::list_agents::<S>)
        .add("PUT", "/v1/agents/{name}", fleet::put_agent::<S>)
        .add("GET", "/v1/agents/{name}/assignments", fleet::assignments::<S>)
        .add("GET", "/v1/namespaces/{ns}/tasks", fleet::list_tasks::<S>)
        .add("PUT", "/v1/namespaces/{ns}/tasks/{id}/status", fleet::report::<S>)
        .add("GET", "/v1/namespaces/{ns}/tasks/{id}/logs", logs::task_logs::<S>)
        .add("GET", "/v1/namespaces/{ns}/deployments", fleet::list_deployments::<S>)
}

const MISSING_TOKEN: &str = "this route needs the admin token: send `Authorization: Bearer TOKEN` (the token is in the server's data directory, file admin.token)";
const WRONG_TOKEN: &str = "the bearer token is not the admin token";

#[derive(Clone)]
struct Auth {
    admin: AdminToken,
    joins: JoinTokens,
    metrics: ControlMetrics,
}

/// Who the bearer token says the caller is, as a [`Caller`] for the handlers: the admin, or an
/// agent with its join token on one of the [`AGENT_ROUTES`].
async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let caller = match given {
        None => return Error::Unauthorized(MISSING_TOKEN).into_response(),
        Some(given) if auth.admin.matches(given) => Caller::Admin,
        Some(given) => match auth.joins.verify(given) {
            Some(agent) => {
                let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
                let method = req.method().as_str();
                if !AGENT_ROUTES.iter().any(|(m, p)| *m == method && Some(*p) == route) {
                    auth.metrics.denied("agent", "route");
                    return Error::Forbidden(format!(
                        "agent {agent}'s join token may not call {method} {}; this needs the admin token",
                        req.uri().path()
                    ))
                    .into_response();
                }
                Caller::Agent(agent)
            }
            None => return Error::Unauthorized(WRONG_TOKEN).into_response(),
        },
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests;
