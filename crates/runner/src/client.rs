//! The runner's side of the control plane's REST API: plain HTTP/1.1 and JSON.
//!
//! A client may know several control-plane URLs (replicas on one store): it keeps to the one
//! that last answered, and moves to the next only when a connection cannot be made, never on
//! an HTTP error answer, so a request that reached a control plane is never sent twice.

mod lines;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
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
/// A connection not made within this long counts as a failed one: the next URL is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub use lines::Lines;

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
    /// The control plane's URLs, in the order given.
    bases: Arc<[String]>,
    /// `bases` comma-separated, as `tether proxy --server` takes them.
    joined: String,
    /// The index in `bases` of the one that last answered; shared by clones.
    current: Arc<AtomicUsize>,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client for the control plane at `base`, or at any of a comma-separated list of URLs;
    /// an empty `token` sends none.
    pub fn new(base: &str, token: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        let mut bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            bases.push(String::new());
        }
        let joined = bases.join(",");
        Self { bases: bases.into(), joined, current: Arc::default(), token: token.to_owned(), http }
    }

    /// The control plane's URLs, comma-separated (one, unless several were given): what the
    /// sidecars this client's runner starts get as their `--server`.
    pub fn base(&self) -> &str {
        &self.joined
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

    /// `GET path` of a body that is streamed: its lines as they come. An answer that is not a
    /// 2xx is an error, as with the other calls.
    pub async fn get_lines(&self, path: &str) -> Result<Lines, ApiError> {
        let (base, response) = self.send(Method::GET, path, Bytes::new()).await?;
        let status = response.status();
        if !status.is_success() {
            let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
                .await
                .map_err(|_| ApiError::Unreachable {
                    url: base.clone(),
                    reason: format!("no answer within {TIMEOUT:?}"),
                })?
                .map_err(|e| ApiError::Unreachable { url: base, reason: e.to_string() })?
                .to_bytes();
            return Err(refused(Method::GET, path, status, &body));
        }
        Ok(Lines::new(response.into_body(), base, path.to_owned()))
    }

    /// Sends a request to the control plane that last answered, or, while connections cannot
    /// be made, to the next: the URL that answered, and its answer's head.
    async fn send(
        &self,
        method: Method,
        path: &str,
        bytes: Bytes,
    ) -> Result<(String, http::Response<Incoming>), ApiError> {
        let first = self.current.load(Ordering::Relaxed) % self.bases.len();
        let mut failures = Vec::new();
        for i in (0..self.bases.len()).map(|n| (first + n) % self.bases.len()) {
            let base = &self.bases[i];
            let mut request = Request::builder().method(method.clone()).uri(format!("{base}{path}"));
            if !self.token.is_empty() {
                request = request.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
            }
            let request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes.clone()))
                .map_err(|e| ApiError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
            let unreachable = |reason: String| ApiError::Unreachable { url: base.clone(), reason };
            match tokio::time::timeout(TIMEOUT, self.http.request(request)).await {
                Ok(Ok(response)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((base.clone(), response));
                }
                // Not connected: the request never left, so another control plane may take it.
                Ok(Err(e)) if e.is_connect() && self.bases.len() > 1 => {
                    failures.push(format!("{base}: {}", innermost(&e)));
                }
                Ok(Err(e)) => return Err(unreachable(innermost(&e))),
                Err(_) => return Err(unreachable(format!("no answer within {TIMEOUT:?}"))),
            }
        }
        Err(ApiError::Unreachable { url: self.joined.clone(), reason: failures.join("; ") })
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
        let (base, response) = self.send(method.clone(), path, bytes).await?;
        let unreachable = |reason: String| ApiError::Unreachable { url: base.clone(), reason };
        let status = response.status();
        let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(refused(method, path, status, &body));
        }
        let body = if body.is_empty() { Bytes::from_static(b"null") } else { body };
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed { path: path.to_owned(), reason: e.to_string() })
    }
}

/// An answer that is not a 2xx, with the `error` of its JSON body when it has one.
fn refused(method: Method, path: &str, status: StatusCode, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ApiError::Refused { method, path: path.to_owned(), status, message }
}

/// The innermost cause of an error, which says it best ("Connection refused").
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A control plane that answers every request with `status` and `{}`; returns its URL.
    async fn answering(status: u16) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    /// A URL nothing listens on any more.
    async fn closed() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    #[tokio::test]
    async fn a_refused_connection_moves_to_the_next_url_and_stays_there() {
        let (down, up) = (closed().await, answering(200).await);
        let client = ControlClient::new(&format!("{down}, {up}/"), "t");
        assert_eq!(client.base(), format!("{down},{up}"));
        client.get("/v1/namespaces").await.unwrap();
        assert_eq!(client.current.load(Ordering::Relaxed), 1, "sticks with the one that answered");
        // Clones share which one answers.
        client.clone().get("/v1/namespaces").await.unwrap();
        assert_eq!(client.current.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_error_answer_is_not_sent_elsewhere() {
        let (refusing, answering) = (answering(503).await, answering(200).await);
        let client = ControlClient::new(&format!("{refusing},{answering}"), "t");
        let error = client.get("/v1/namespaces").await.unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{error}");
        assert_eq!(client.current.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn when_none_answers_the_error_names_every_url() {
        let (a, b) = (closed().await, closed().await);
        let client = ControlClient::new(&format!("{a},{b}"), "t");
        match client.get("/v1/namespaces").await.unwrap_err() {
            ApiError::Unreachable { url, reason } => {
                assert_eq!(url, format!("{a},{b}"));
                assert!(reason.contains(&a) && reason.contains(&b), "{reason}");
            }
            other => panic!("{other}"),
        }
    }
}
