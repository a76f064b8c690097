//! The admin endpoint: liveness, readiness, metrics, the effective config (with the sidecar's
//! identity) and drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tether_model::ProxyConfig;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::body::ProxyBody;
use crate::drain::Trigger;
use crate::tls::{Credentials, rfc3339};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct Admin {
    registry: Registry,
    /// The effective config, as `/config` shows it.
    config: ArcSwap<Served>,
    drain: Trigger,
    credentials: Arc<Credentials>,
}

/// The config being served, and what readiness needs to know of it.
struct Served {
    json: Value,
    /// Some listener takes or makes mutual TLS: the proxy is ready only with usable credentials.
    needs_tls: bool,
}

impl Served {
    fn of(config: &ProxyConfig) -> Self {
        let json = serde_json::to_value(config).expect("the config serializes");
        let needs_tls = config.inbound.iter().any(|i| i.tls.is_some())
            || config.outbound.iter().flat_map(|o| &o.endpoints).any(|e| e.identity.is_some());
        Self { json, needs_tls }
    }
}

impl Admin {
    pub fn new(
        registry: Registry,
        config: &ProxyConfig,
        drain: Trigger,
        credentials: Arc<Credentials>,
    ) -> Self {
        Self { registry, config: ArcSwap::from_pointee(Served::of(config)), drain, credentials }
    }

    pub fn set_config(&self, config: &ProxyConfig) {
        self.config.store(Arc::new(Served::of(config)));
    }

    /// Why the proxy cannot serve what its config asks of it, if it cannot.
    fn not_ready(&self) -> Option<String> {
        if self.drain.is_draining() {
            return Some("draining".to_owned());
        }
        let why = self.credentials.unusable().filter(|_| self.config.load().needs_tls)?;
        Some(format!("mutual TLS is configured and {why}"))
    }

    /// The effective config, and beside it the identity the proxy proves itself with and how
    /// many roots it trusts (`null` until the control plane sent them).
    fn config_json(&self) -> String {
        let mut json = self.config.load().json.clone();
        if let Value::Object(fields) = &mut json {
            let identity = self.credentials.identity().map(|identity| {
                let left = match identity.not_after().duration_since(SystemTime::now()) {
                    Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
                };
                json!({
                    "spiffeId": identity.spiffe_id().to_string(),
                    "notBefore": rfc3339(identity.not_before()),
                    "notAfter": rfc3339(identity.not_after()),
                    "expiresInSeconds": left,
                })
            });
            let bundle = self.credentials.bundle().map(|b| json!({ "roots": b.certificates().len() }));
            fields.insert("identity".to_owned(), identity.unwrap_or(Value::Null));
            fields.insert("trustBundle".to_owned(), bundle.unwrap_or(Value::Null));
        }
        serde_json::to_string_pretty(&json).expect("JSON values serialize")
    }

    pub async fn run(self: Arc<Self>, socket: TcpListener) {
        let admin = self;
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let stream = match socket.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors or the like: back off instead of spinning.
                    debug!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = admin.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(|req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(&req)) }
                });
                if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
                    debug!(%error, "admin connection ended");
                }
            });
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => match self.not_ready() {
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                None => text(StatusCode::OK, "ready\n"),
            },
            (&Method::GET, "/metrics") => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => with_type(text(StatusCode::OK, out), OPENMETRICS),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n"),
                }
            }
            (&Method::GET, "/config") => {
                with_type(text(StatusCode::OK, self.config_json()), "application/json")
            }
            (&Method::POST, "/drain") => {
                if !self.drain.is_draining() {
                    info!("drain requested through the admin endpoint");
                }
                self.drain.drain();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/drain") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live, /ready, /metrics, /config or POST /drain\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body));
    *res.status_mut() = status;
    with_type(res, "text/plain; charset=utf-8")
}

fn with_type(mut res: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    res
}
