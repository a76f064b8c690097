//! `GET /v1/namespaces/{ns}/tasks/{id}/logs?tail=N&follow=true` (admin only): a task's app
//! output, read from the agent of the host it runs or ran on and relayed as it comes.
//!
//! The request to the agent is signed with an HMAC keyed by the agent's join token, which the
//! control plane makes again from the agent's name (see `tether_model::fleet::logs`); the
//! token itself never travels.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tether_model::fleet::logs::{self, EXPIRES_HEADER, SIGNATURE_HEADER, SIGNATURE_LIFE_SECONDS};
use tether_store::Store;

use super::Api;
use super::extract::{PathParams, QueryPairs};
use crate::fleet::now;
use crate::{Error, Result};

/// How long the agent may take to accept the connection, and to answer with its head.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn task_logs<S: Store>(
    State(api): State<Api<S>>,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryPairs(query): QueryPairs,
) -> Result<Response> {
    let (tail, follow) = logs::parse_query(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|(field, message)| Error::invalid(field, message))?;
    api.registry.get_namespace(&ns).await?;
    let not_found = || Error::TaskNotFound { namespace: ns.clone(), id: id.clone() };
    let (task, _) = api.fleet.task(&ns, &id).await?.ok_or_else(not_found)?;
    let Some(host) = task.host.clone() else {
        return Err(Error::NotYet(format!("task `{id}` is PENDING on no host yet: it has no logs")));
    };
    let unavailable = |reason: &str| Error::HostUnavailable {
        host: host.clone(),
        task: id.clone(),
        reason: reason.to_owned(),
    };
    let agent = api
        .fleet
        .agent(&host)
        .await?
        .ok_or_else(|| unavailable("it has left the fleet (its lease expired)"))?;
    let port = agent
        .registration
        .logs_port
        .ok_or_else(|| unavailable("its agent serves no logs (it runs an older tether)"))?;
    let address = SocketAddr::new(agent.registration.address, port);
    let unreachable = |reason: String| Error::HostUnreachable {
        host: host.clone(),
        task: id.clone(),
        address: address.to_string(),
        reason,
    };

    let expires = now() + SIGNATURE_LIFE_SECONDS;
    let text = logs::signed_text(&ns, &task.service, &id, expires);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, api.joins.mint(&host).as_bytes());
    let signature: String =
        ring::hmac::sign(&key, text.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("{}{}", logs::agent_path(&ns, &task.service, &id), logs::query(tail, follow));
    let request = Request::get(path)
        .header(header::HOST, address.to_string())
        .header(EXPIRES_HEADER, expires.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(Body::empty())
        .map_err(|e| unreachable(e.to_string()))?;

    let answer = tokio::time::timeout(AGENT_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        // Ends when the body has been read, or dropped (the caller went away).
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {AGENT_TIMEOUT:?}")))?
    .map_err(unreachable)?;

    match answer.status() {
        status if status.is_success() => {
            let mut response = Response::new(Body::new(answer.into_body()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(response.into_response())
        }
        StatusCode::NOT_FOUND => Err(Error::LogNotFound { host, task: id }),
        status => Err(unreachable(format!("it answered {status}"))),
    }
}
