//! The runner's side of the control plane's REST API: plain HTTP/1.1 and JSON.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether_model::fleet::{AgentRegistration, Assignments, DeploymentRecord, TaskRecord, TaskReport};
use tether_model::registry::Registration;
use tether_model::spec::ServiceSpec;

/// A request gives up after this long: a hung control plane must not hang a task's lifecycle.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the control plane at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{method} {path}: {status}: {message}")]
    Refused { method: Method, path: String, status: StatusCode, message: String },
    #[error("{path}: unexpected answer: {reason}")]
    Malformed { path: String, reason: String },
}

impl ApiError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A service as the control plane holds it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub revision: u64,
    pub spec: ServiceSpec,
}

#[derive(Clone)]
pub struct ControlClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client for the control plane at `base`; an empty `token` sends none.
    pub fn new(base: &str, token: &str) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        Self { base: base.trim_end_matches('/').to_owned(), token: token.to_owned(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn put_namespace(&self, ns: &str) -> Result<(), ApiError> {
        self.call::<Value>(Method::PUT, &format!("/v1/namespaces/{ns}"), Some(&serde_json::json!({})))
            .await?;
        Ok(())
    }

    pub async fn services(&self, ns: &str) -> Result<Vec<ServiceEntry>, ApiError> {
        #[derive(serde::Deserialize)]
        struct List {
            services: Vec<ServiceEntry>,
        }
        let list: List =
            self.call(Method::GET, &format!("/v1/namespaces/{ns}/services"), None::<&()>).await?;
        Ok(list.services)
    }

    /// Stores a service's spec; returns its new revision.
    pub async fn put_service(&self, ns: &str, name: &str, spec: &ServiceSpec) -> Result<u64, ApiError> {
        #[derive(serde::Deserialize)]
        struct Stored {
            revision: u64,
        }
        let path = format!("/v1/namespaces/{ns}/services/{name}");
        let stored: Stored = self.call(Method::PUT, &path, Some(spec)).await?;
        Ok(stored.revision)
    }

    pub async fn delete_service(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        self.delete(&format!("/v1/namespaces/{ns}/services/{name}")).await
    }

    pub async fn put_instance(
        &self,
        ns: &str,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<(), ApiError> {
        let path = format!("/v1/namespaces/{ns}/services/{service}/instances/{id}");
        self.call::<Value>(Method::PUT, &path, Some(registration)).await?;
        Ok(())
    }

    pub async fn delete_instance(&self, ns: &str, service: &str, id: &str) -> Result<(), ApiError> {
        self.delete(&format!("/v1/namespaces/{ns}/services/{service}/instances/{id}")).await
    }

    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, ApiError> {
        #[derive(serde::Deserialize)]
        struct Lease {
            id: i64,
        }
        let body = serde_json::json!({ "ttlSeconds": ttl.as_secs() });
        let lease: Lease = self.call(Method::POST, "/v1/leases", Some(&body)).await?;
        Ok(lease.id)
    }

    pub async fn renew_lease(&self, id: i64) -> Result<(), ApiError> {
        self.call::<Value>(Method::PUT, &format!("/v1/leases/{id}"), Some(&serde_json::json!({}))).await?;
        Ok(())
    }

    pub async fn revoke_lease(&self, id: i64) -> Result<(), ApiError> {
        self.delete(&format!("/v1/leases/{id}")).await
    }

    /// A bootstrap token for the sidecar of `task`: of `service`, or the namespace's edge proxy
    /// when `service` is `None`. It gets that sidecar its config and its certificate, nothing
    /// else.
    pub async fn bootstrap_token(
        &self,
        ns: &str,
        service: Option<&str>,
        task: &str,
    ) -> Result<String, ApiError> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
        }
        let body = match service {
            Some(service) => serde_json::json!({ "service": service, "task": task }),
            None => serde_json::json!({ "edge": true, "task": task }),
        };
        let path = format!("/v1/namespaces/{ns}/bootstrap-tokens");
        let token: Token = self.call(Method::POST, &path, Some(&body)).await?;
        Ok(token.token)
    }

    // ---- the fleet -----------------------------------------------------------------------------

    /// Joins (or renews) agent `name` with what it says of its host.
    pub async fn put_agent(&self, name: &str, registration: &AgentRegistration) -> Result<(), ApiError> {
        self.call::<Value>(Method::PUT, &format!("/v1/agents/{name}"), Some(registration)).await?;
        Ok(())
    }

    /// What the scheduler placed on agent `name`.
    pub async fn assignments(&self, name: &str) -> Result<Assignments, ApiError> {
        self.call(Method::GET, &format!("/v1/agents/{name}/assignments"), None::<&()>).await
    }

    /// An agent's report on one of its tasks.
    pub async fn report_task(&self, ns: &str, id: &str, report: &TaskReport) -> Result<(), ApiError> {
        let path = format!("/v1/namespaces/{ns}/tasks/{id}/status");
        self.call::<Value>(Method::PUT, &path, Some(report)).await?;
        Ok(())
    }

    /// A join token for agent `name` (admin only).
    pub async fn join_token(&self, name: &str) -> Result<String, ApiError> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
        }
        let body = serde_json::json!({ "agent": name });
        let token: Token = self.call(Method::POST, "/v1/join-tokens", Some(&body)).await?;
        Ok(token.token)
    }

    /// Every task record of a namespace.
    pub async fn tasks(&self, ns: &str) -> Result<Vec<TaskRecord>, ApiError> {
        #[derive(serde::Deserialize)]
        struct List {
            tasks: Vec<TaskRecord>,
        }
        let list: List = self.call(Method::GET, &format!("/v1/namespaces/{ns}/tasks"), None::<&()>).await?;
        Ok(list.tasks)
    }

    /// A namespace's deployments (of one service, or all), oldest first.
    pub async fn deployments(
        &self,
        ns: &str,
        service: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>, ApiError> {
        #[derive(serde::Deserialize)]
        struct List {
            deployments: Vec<DeploymentRecord>,
        }
        let query = service.map(|s| format!("?service={s}")).unwrap_or_default();
        let path = format!("/v1/namespaces/{ns}/deployments{query}");
        let list: List = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.deployments)
    }

    /// `POST path` with a JSON body: the JSON body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `GET path`: the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    async fn delete(&self, path: &str) -> Result<(), ApiError> {
        match self.call::<Value>(Method::DELETE, path, None::<&()>).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let bytes = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).expect("request bodies serialize")),
            None => Bytes::new(),
        };
        let mut request = Request::builder().method(method.clone()).uri(format!("{}{path}", self.base));
        if !self.token.is_empty() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| ApiError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
        let unreachable = |reason: String| ApiError::Unreachable { url: self.base.clone(), reason };
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(innermost(&e)))?;
        let status = response.status();
        let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ApiError::Refused { method, path: path.to_owned(), status, message });
        }
        let body = if body.is_empty() { Bytes::from_static(b"null") } else { body };
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed { path: path.to_owned(), reason: e.to_string() })
    }
}

/// The innermost cause of an error, which says it best ("Connection refused").
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
