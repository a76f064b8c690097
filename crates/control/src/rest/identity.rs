//! The routes of the certificate authority: its status, root rotation step by step, and
//! bootstrap tokens for the sidecars a runner starts.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tether_model::identity::EDGE;
use tether_model::registry::{check_instance_id, check_namespace_name, check_service_name};
use tether_store::Store;

use super::Api;
use super::extract::{PathParams, decode};
use crate::ca::{Ca, RotationStep};
use crate::fleet::Caller;
use crate::identity::{CaStatus, Issuer, Scope};
use crate::{Error, Result};

fn issuer<S>(api: &Api<S>) -> Result<&std::sync::Arc<Issuer<S>>> {
    api.issuer.as_ref().ok_or_else(|| Error::Ca("this server runs no certificate authority".to_owned()))
}

pub async fn get_ca<S: Store>(State(api): State<Api<S>>) -> Result<Json<CaStatus>> {
    Ok(Json(issuer(&api)?.status()))
}

/// The body of `POST /v1/ca/rotation`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotationBody {
    step: Step,
    /// Go ahead although sidecars are not there yet.
    #[serde(default)]
    force: bool,
    /// The root to move to (`begin` only), PEM; with `caKey`.
    ca_cert: Option<String>,
    ca_key: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Step {
    Begin,
    Activate,
    Finish,
}

pub async fn rotate<S: Store>(State(api): State<Api<S>>, body: Bytes) -> Result<Json<CaStatus>> {
    let body: RotationBody = decode(&body)?;
    let step = match body.step {
        Step::Begin => RotationStep::Begin,
        Step::Activate => RotationStep::Activate,
        Step::Finish => RotationStep::Finish,
    };
    let next = match (body.ca_cert, body.ca_key) {
        (None, None) => None,
        (Some(_), Some(_)) if !matches!(body.step, Step::Begin) => {
            return Err(Error::invalid("caCert", "a root to move to is given with `step: begin` only"));
        }
        (Some(cert), Some(key)) => {
            Some(Ca::from_pem(&cert, &key).map_err(|e| Error::invalid("caCert", e.to_string()))?)
        }
        (Some(_), None) => return Err(Error::invalid("caKey", "missing: `caCert` needs its `caKey`")),
        (None, Some(_)) => return Err(Error::invalid("caCert", "missing: `caKey` needs its `caCert`")),
    };
    Ok(Json(issuer(&api)?.rotate(step, next, body.force).await?))
}

/// The body of `POST /v1/namespaces/{ns}/bootstrap-tokens`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenBody {
    /// The service of the task; or `edge: true` for the namespace's edge proxy.
    service: Option<String>,
    #[serde(default)]
    edge: bool,
    task: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    token: String,
    /// The identity a sidecar with this token is issued.
    spiffe_id: String,
}

pub async fn bootstrap_token<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams(ns): PathParams<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<TokenView>)> {
    let body: TokenBody = decode(&body)?;
    check_namespace_name(&ns).map_err(|m| Error::invalid("namespace", m))?;
    check_instance_id(&body.task).map_err(|m| Error::invalid("task", m))?;
    let service = match (body.service, body.edge) {
        (Some(service), false) => {
            check_service_name(&service).map_err(|m| Error::invalid("service", m))?;
            service
        }
        (None, true) => EDGE.to_owned(),
        (Some(_), true) => {
            return Err(Error::invalid("edge", "name a `service` or set `edge: true`, not both"));
        }
        (None, false) => {
            return Err(Error::invalid(
                "service",
                "missing: name the task's `service` (or set `edge: true`)",
            ));
        }
    };
    if let Caller::Agent(agent) = &caller {
        if service == EDGE {
            // An agent's edge proxy is named after its host.
            if body.task != format!("edge-{agent}") {
                api.metrics.denied("agent", "bootstrap_token");
                return Err(Error::Forbidden(format!(
                    "agent {agent} may get an edge token for task `edge-{agent}` only"
                )));
            }
        } else {
            api.authorize(&caller, &ns, &service, &body.task, "bootstrap_token").await?;
        }
    }
    let scope = Scope { namespace: ns, service, task: body.task };
    let spiffe_id = scope.spiffe_id().map_err(|e| Error::invalid("service", e.to_string()))?.to_string();
    Ok((StatusCode::CREATED, Json(TokenView { token: api.tokens.mint(&scope), spiffe_id })))
}
