//! The HTTP path shared by inbound and outbound listeners: a [`Route`] picks an endpoint,
//! rewrites the request for the endpoint's HTTP version, sends it within the per-request
//! timeout and streams the response back.

mod headers;
pub mod server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::{Balancer, Load};
use crate::body::{OnEnd, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::ListenerMetrics;
use crate::upstream::{HttpClient, Pooled, SendError, Sent};
use server::ActiveRequest;
use tether_model::{LoadBalancing, Timeouts};

/// How many endpoints a request may be offered to when connecting fails (it never left).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// One endpoint reachable over HTTP, with what the balancer knows of it.
pub struct HttpEndpoint {
    addr: SocketAddr,
    version: Version,
    load: Load,
    client: HttpClient,
}

impl HttpEndpoint {
    /// `http2`: the endpoint speaks HTTP/2 (an h2c app, or another tether sidecar).
    pub fn new(addr: SocketAddr, http2: bool, timeouts: &Timeouts) -> Self {
        let version = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let client = HttpClient::new(addr, http2, timeouts.connect(), timeouts.idle());
        Self { addr, version, load: Load::new(), client }
    }
}

/// Where the requests of one listener go.
pub struct Route {
    name: String,
    endpoints: Vec<Arc<HttpEndpoint>>,
    balancer: Balancer,
    per_request: Option<Duration>,
    /// What a failed attempt costs an endpoint in the balancer's eyes, at least.
    failure_cost: Duration,
    metrics: ListenerMetrics,
}

impl Route {
    pub fn new(
        name: String,
        endpoints: Vec<HttpEndpoint>,
        policy: LoadBalancing,
        timeouts: &Timeouts,
        metrics: ListenerMetrics,
    ) -> Self {
        Self {
            name,
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            balancer: Balancer::new(policy),
            per_request: timeouts.per_request(),
            failure_cost: timeouts.connect(),
            metrics,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        active: ActiveRequest,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let m = &self.metrics;
        m.requests.inc();
        if let Some(grpc) = &m.grpc_requests
            && is_grpc(&req)
        {
            grpc.inc();
        }
        let start = Instant::now();
        let deadline = self.per_request.map(|t| start + t);
        let downstream = req.version();
        let req = req.map(|body| ProxyBody::incoming(body).count_bytes(m.bytes.clone()));
        match self.forward(req, deadline).await {
            Ok((sent, endpoint)) => {
                let rtt = start.elapsed();
                if let Some(h) = &m.response_time {
                    h.observe(rtt.as_secs_f64());
                }
                let Sent { mut response, pooled } = sent;
                headers::for_downstream(&mut response, downstream);
                m.response(response.status());
                let release = Release { endpoint, pooled, _active: active };
                Ok(response.map(|body| {
                    ProxyBody::incoming(body)
                        .count_bytes(m.bytes.clone())
                        .deadline(deadline)
                        .on_end(Box::new(release))
                }))
            }
            Err(error) => {
                tracing::debug!(route = %self.name, %error, "request failed");
                let response = error.response();
                m.response(response.status());
                Ok(response)
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        deadline: Option<Instant>,
    ) -> Result<(Sent, Arc<HttpEndpoint>), ProxyError> {
        let authority = headers::authority(&req);
        let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
        for attempt in 0..MAX_CONNECT_ATTEMPTS {
            let Some(i) = self.pick(&tried[..attempt]) else {
                return Err(ProxyError::NoEndpoints { target: self.name.clone() });
            };
            tried[attempt] = i;
            let endpoint = &self.endpoints[i];
            let authority = authority.clone().unwrap_or_else(|| {
                endpoint.addr.to_string().parse().expect("a socket address is an authority")
            });
            headers::for_upstream(&mut req, endpoint.version, authority);
            endpoint.load.begin();
            let sent_at = Instant::now();
            let sent = match deadline {
                Some(at) => tokio::time::timeout_at(at, endpoint.client.send(req)).await,
                None => Ok(endpoint.client.send(req).await),
            };
            // The balancer learns each attempt's time on the endpoint it went to, failures
            // included: one whose connects time out must look slow, not untried, and the time
            // lost on it must not be charged to the endpoint that answered the retry.
            endpoint.load.observe_attempt(sent_at.elapsed(), matches!(sent, Ok(Ok(_))), self.failure_cost);
            let error = match sent {
                Ok(Ok(sent)) => return Ok((sent, endpoint.clone())),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    endpoint.load.finish();
                    let timeout = self.per_request.unwrap_or_default();
                    return Err(ProxyError::RequestTimeout { endpoint: endpoint.addr, timeout });
                }
            };
            endpoint.load.finish();
            match error {
                SendError { error, request: Some(unsent) } if error.never_sent() => {
                    tracing::debug!(route = %self.name, %error, "trying another endpoint");
                    req = unsent;
                    if attempt + 1 == MAX_CONNECT_ATTEMPTS || attempt + 1 >= self.endpoints.len() {
                        return Err(error);
                    }
                }
                SendError { error, .. } => return Err(error),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn pick(&self, avoid: &[usize]) -> Option<usize> {
        self.balancer.pick(self.endpoints.len(), |i| self.endpoints[i].load.cost(), avoid)
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What a response holds until its body has been read: the endpoint's outstanding count, the
/// downstream connection's activity and, for HTTP/1, the upstream connection.
struct Release {
    endpoint: Arc<HttpEndpoint>,
    pooled: Option<Pooled>,
    _active: ActiveRequest,
}

impl OnEnd for Release {
    fn ended(mut self: Box<Self>) {
        if let Some(pooled) = self.pooled.take() {
            pooled.release();
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.endpoint.load.finish();
    }
}
