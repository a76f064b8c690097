//! One handler per route: extract, call the registry, answer. Each answers JSON; errors go through
//! `rest/error.rs`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tether_model::Health;
use tether_model::registry::{HealthFilter, Instance, Namespace, Registration};
use tether_model::spec::{Service, ServiceSpec};
use tether_store::Store;

use super::Api;
use super::extract::{JsonBody, PathParams, QueryPairs, decode};
use crate::fleet::Caller;
use crate::registry::{Outcome, ServiceRecord};
use crate::{Error, Result};

/// The OpenAPI document; `rest/tests.rs` checks it against the router.
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn metrics<S: Store>(State(api): State<Api<S>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], api.metrics.encode()).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn no_route(method: Method, uri: Uri) -> Error {
    Error::NoRoute { method: method.to_string(), path: uri.path().to_owned() }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}

fn status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Replaced => StatusCode::OK,
    }
}

// ---- namespaces ------------------------------------------------------------------------------

/// The body of `PUT /v1/namespaces/{ns}`: nothing yet, but unknown fields are still errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceBody {}

pub async fn put_namespace<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Namespace>)> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        decode::<NamespaceBody>(&body)?;
    }
    let (namespace, outcome) = api.registry.put_namespace(&ns).await?;
    Ok((status(outcome), Json(namespace)))
}

pub async fn get_namespace<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
) -> Result<Json<Namespace>> {
    Ok(Json(api.registry.get_namespace(&ns).await?))
}

pub async fn list_namespaces<S: Store>(State(api): State<Api<S>>) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "namespaces": api.registry.list_namespaces().await? })))
}

pub async fn delete_namespace<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
) -> Result<StatusCode> {
    api.registry.delete_namespace(&ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- services --------------------------------------------------------------------------------

/// A service as the API shows it: the spec as written, what it means, and how many instances.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceView<'a> {
    name: &'a str,
    namespace: &'a str,
    revision: i64,
    spec: &'a ServiceSpec,
    effective: &'a Service,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<Counts>,
}

#[derive(Serialize)]
struct Counts {
    total: usize,
    healthy: usize,
}

impl Counts {
    fn of<'a>(instances: impl Iterator<Item = &'a Instance>) -> Self {
        let (mut total, mut healthy) = (0, 0);
        for i in instances {
            total += 1;
            healthy += usize::from(i.health == Health::Healthy);
        }
        Counts { total, healthy }
    }
}

fn view(record: &ServiceRecord, instances: Option<Counts>) -> ServiceView<'_> {
    ServiceView {
        name: &record.service.name,
        namespace: &record.service.namespace,
        revision: record.revision,
        spec: &record.spec,
        effective: &record.service,
        instances,
    }
}

pub async fn put_service<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, name)): PathParams<(String, String)>,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Result<Response> {
    let (record, outcome) = api.registry.put_service(&ns, &name, spec).await?;
    Ok((status(outcome), Json(view(&record, None))).into_response())
}

pub async fn get_service<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, name)): PathParams<(String, String)>,
) -> Result<Response> {
    let record = api.registry.get_service(&ns, &name).await?;
    let instances = api.registry.list_instances(&ns, &name, HealthFilter::All).await?;
    Ok(Json(view(&record, Some(Counts::of(instances.iter())))).into_response())
}

/// Read at one revision, so the counts match the services.
pub async fn list_services<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
) -> Result<Json<serde_json::Value>> {
    let snapshot = api.registry.snapshot(&ns).await?;
    let services: Vec<ServiceView> = snapshot
        .services
        .values()
        .map(|record| view(record, Some(Counts::of(snapshot.instances_of(&record.service.name)))))
        .collect();
    Ok(Json(json!({ "revision": snapshot.revision, "services": services })))
}

pub async fn delete_service<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, name)): PathParams<(String, String)>,
) -> Result<StatusCode> {
    api.registry.delete_service(&ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- instances -------------------------------------------------------------------------------

pub async fn put_instance<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams((ns, name, id)): PathParams<(String, String, String)>,
    JsonBody(registration): JsonBody<Registration>,
) -> Result<(StatusCode, Json<Instance>)> {
    if let Caller::Agent(agent) = &caller {
        let task = registration.task.as_deref().unwrap_or(&id);
        api.authorize(&caller, &ns, &name, task, "instance").await?;
        let advertised = api.fleet.agent(agent).await?.map(|a| a.registration.address);
        if advertised != Some(registration.address) {
            api.metrics.denied("agent", "instance");
            return Err(Error::Forbidden(format!(
                "agent {agent} registers instances on its own address ({}) only, not {}",
                advertised.map_or("none: it has not joined".to_owned(), |a| a.to_string()),
                registration.address
            )));
        }
    }
    let (instance, outcome) = api.registry.put_instance(&ns, &name, &id, registration).await?;
    Ok((status(outcome), Json(instance)))
}

pub async fn get_instance<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, name, id)): PathParams<(String, String, String)>,
) -> Result<Json<Instance>> {
    Ok(Json(api.registry.get_instance(&ns, &name, &id).await?))
}

pub async fn list_instances<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, name)): PathParams<(String, String)>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<serde_json::Value>> {
    let mut filter = HealthFilter::default();
    for (key, value) in query {
        match key.as_str() {
            "health" => filter = value.parse().map_err(|message| Error::invalid("health", message))?,
            other => {
                return Err(Error::invalid(
                    other,
                    format!("unknown query parameter `{other}`; expected `health`"),
                ));
            }
        }
    }
    let instances = api.registry.list_instances(&ns, &name, filter).await?;
    Ok(Json(json!({ "health": filter, "instances": instances })))
}

pub async fn delete_instance<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams((ns, name, id)): PathParams<(String, String, String)>,
) -> Result<StatusCode> {
    if matches!(caller, Caller::Agent(_)) {
        let instance = api.registry.get_instance(&ns, &name, &id).await?;
        api.authorize(&caller, &ns, &name, &instance.task, "instance").await?;
    }
    api.registry.delete_instance(&ns, &name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- leases ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRequest {
    ttl_seconds: u64,
}

pub async fn grant_lease<S: Store>(
    State(api): State<Api<S>>,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let id = api.registry.grant_lease(request.ttl_seconds).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "ttlSeconds": request.ttl_seconds }))))
}

fn lease_id(text: &str) -> Result<i64> {
    text.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        Error::invalid(
            "id",
            format!("`{text}` is not a lease id; expected the number `POST /v1/leases` returned"),
        )
    })
}

pub async fn renew_lease<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> Result<Json<serde_json::Value>> {
    let id = lease_id(&id)?;
    api.own_lease(&caller, id).await?;
    api.registry.renew_lease(id).await?;
    Ok(Json(json!({ "id": id })))
}

pub async fn revoke_lease<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode> {
    let id = lease_id(&id)?;
    api.own_lease(&caller, id).await?;
    api.registry.revoke_lease(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
