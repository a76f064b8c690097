//! The admin endpoint: liveness, readiness, metrics, the effective config and drain.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tether_model::ProxyConfig;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::body::ProxyBody;
use crate::drain::Trigger;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct Admin {
    registry: Registry,
    /// The effective config, as `/config` shows it.
    config_json: ArcSwap<String>,
    drain: Trigger,
}

impl Admin {
    pub fn new(registry: Registry, config: &ProxyConfig, drain: Trigger) -> Self {
        Self { registry, config_json: ArcSwap::from_pointee(to_json(config)), drain }
    }

    pub fn set_config(&self, config: &ProxyConfig) {
        self.config_json.store(Arc::new(to_json(config)));
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
            (&Method::GET, "/ready") if self.drain.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/metrics") => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => with_type(text(StatusCode::OK, out), OPENMETRICS),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n"),
                }
            }
            (&Method::GET, "/config") => {
                with_type(text(StatusCode::OK, String::clone(&self.config_json.load())), "application/json")
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

fn to_json(config: &ProxyConfig) -> String {
    serde_json::to_string_pretty(config).expect("the config serializes")
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
