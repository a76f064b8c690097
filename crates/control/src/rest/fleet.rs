//! The fleet's routes: join tokens, agents joining and renewing, what each agent runs and its
//! reports, and the tasks and deployments people look at (`tether hosts`, `ps`, `deployments`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tether_model::fleet::{Agent, AgentRegistration, Assignments, DeploymentRecord, TaskRecord, TaskReport};
use tether_model::placement::Resources;
use tether_model::registry::check_instance_id;
use tether_store::Store;

use super::Api;
use super::extract::{PathParams, QueryPairs, decode};
use crate::fleet::Caller;
use crate::{Error, Result};

/// The body of `POST /v1/join-tokens`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinTokenBody {
    /// The host's name, as its agent will join (`tether agent --name`).
    agent: String,
}

#[derive(Serialize)]
pub struct JoinTokenView {
    agent: String,
    token: String,
}

pub async fn join_token<S: Store>(
    State(api): State<Api<S>>,
    body: Bytes,
) -> Result<(StatusCode, Json<JoinTokenView>)> {
    let body: JoinTokenBody = decode(&body)?;
    check_instance_id(&body.agent).map_err(|m| Error::invalid("agent", m))?;
    let token = api.joins.mint(&body.agent);
    Ok((StatusCode::CREATED, Json(JoinTokenView { agent: body.agent, token })))
}

/// The agent itself, or the admin.
fn own_host(caller: &Caller, name: &str, api_denied: impl FnOnce()) -> Result<()> {
    match caller {
        Caller::Agent(agent) if agent != name => {
            api_denied();
            Err(Error::Forbidden(format!("agent {agent} may act for its own host only, not for {name}")))
        }
        _ => Ok(()),
    }
}

pub async fn put_agent<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Json<Agent>> {
    own_host(&caller, &name, || api.metrics.denied("agent", "join_as_another"))?;
    let registration: AgentRegistration = decode(&body)?;
    Ok(Json(api.fleet.put_agent(&name, registration).await?))
}

/// An agent as `tether hosts` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    #[serde(flatten)]
    agent: Agent,
    /// Reserved by its tasks that have not ended.
    used: Resources,
    /// Its tasks that have not ended.
    tasks: usize,
    /// Always READY: an agent whose lease expired is no longer listed.
    state: &'static str,
}

pub async fn list_agents<S: Store>(State(api): State<Api<S>>) -> Result<Json<serde_json::Value>> {
    let tasks = api.fleet.tasks(None).await?;
    let mut used: BTreeMap<&str, (Resources, usize)> = BTreeMap::new();
    for (task, _) in tasks.iter().filter(|(t, _)| !t.state.ended()) {
        if let Some(host) = task.host.as_deref() {
            let entry = used.entry(host).or_default();
            entry.0.cpu += task.reserved.cpu;
            entry.0.memory_mib += task.reserved.memory_mib;
            entry.1 += 1;
        }
    }
    let hosts: Vec<HostView> = api
        .fleet
        .agents()
        .await?
        .into_iter()
        .map(|agent| {
            let (used, tasks) = used.get(agent.name.as_str()).copied().unwrap_or_default();
            HostView { agent, used, tasks, state: "READY" }
        })
        .collect();
    Ok(Json(serde_json::json!({ "agents": hosts })))
}

pub async fn assignments<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Assignments>> {
    own_host(&caller, &name, || api.metrics.denied("agent", "read_another"))?;
    let mut edges = Vec::new();
    for namespace in api.registry.list_namespaces().await? {
        let snapshot = api.registry.snapshot(&namespace.name).await?;
        if snapshot.services.values().any(|s| !s.service.publish.is_empty()) {
            edges.push(namespace.name);
        }
    }
    Ok(Json(api.fleet.assignments(&name, edges).await?))
}

pub async fn report<S: Store>(
    State(api): State<Api<S>>,
    Extension(caller): Extension<Caller>,
    PathParams((ns, id)): PathParams<(String, String)>,
    body: Bytes,
) -> Result<Json<TaskRecord>> {
    let report: TaskReport = decode(&body)?;
    let result = api.fleet.report(&caller, &ns, &id, report).await;
    if matches!(result, Err(Error::Forbidden(_))) {
        api.metrics.denied("agent", "task_report");
    }
    Ok(Json(result?))
}

pub async fn list_tasks<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
) -> Result<Json<serde_json::Value>> {
    api.registry.get_namespace(&ns).await?;
    let mut tasks: Vec<TaskRecord> = api.fleet.tasks(Some(&ns)).await?.into_iter().map(|(t, _)| t).collect();
    tasks.sort_by(|a, b| (&a.service, a.created, &a.id).cmp(&(&b.service, b.created, &b.id)));
    Ok(Json(serde_json::json!({ "tasks": tasks })))
}

pub async fn list_deployments<S: Store>(
    State(api): State<Api<S>>,
    PathParams(ns): PathParams<String>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<serde_json::Value>> {
    api.registry.get_namespace(&ns).await?;
    let service = query.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
    let deployments: Vec<DeploymentRecord> =
        api.fleet.deployments(&ns, service).await?.into_iter().map(|(d, _)| d).collect();
    Ok(Json(serde_json::json!({ "deployments": deployments })))
}
