//! The HTTP path shared by inbound and outbound listeners: a [`Route`] admits a request within
//! its limits, picks a usable endpoint, rewrites the request for the endpoint's HTTP version,
//! sends it within the per-request timeout, retries what is safe to retry, and streams the
//! response back.

pub mod framing;
mod headers;
#[cfg(test)]
mod route_tests;
pub mod server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_model::{Limits, LoadBalancing, OutlierDetection, RetryPolicy, Timeouts};
use tokio::time::Instant;

use crate::balance::{Balancer, Load};
use crate::body::{OnEnd, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::ListenerMetrics;
use crate::mtls::Caller;
use crate::netns::Network;
use crate::resilience::{Outcome, OutlierState, Outliers, RetryBudget};
use crate::tls::{ALPN_H2, Credentials, SpiffeId};
use crate::upstream::{self, ClientConfig, Dialer, HttpClient, Pending, Pooled, SendError, Sent};
use server::ActiveRequest;

/// Request bodies up to this size, with a known length, are kept so the request can be retried.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// One endpoint reachable over HTTP, with what the balancer and outlier detection know of it.
pub struct HttpEndpoint {
    addr: SocketAddr,
    version: Version,
    identity: Option<SpiffeId>,
    healthy: AtomicBool,
    load: Load,
    outlier: OutlierState,
    client: HttpClient,
}

/// An endpoint as the config gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub healthy: bool,
    /// HTTP/2 to it (another sidecar, or an h2c/gRPC app); HTTP/1.1 otherwise.
    pub http2: bool,
    /// A sidecar reached over mutual TLS, which must prove it is this identity.
    pub identity: Option<SpiffeId>,
}

impl HttpEndpoint {
    fn new(spec: &EndpointSpec, dialer: Dialer, client: ClientConfig) -> Self {
        let version = if spec.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        Self {
            addr: spec.addr,
            version,
            identity: spec.identity.clone(),
            healthy: AtomicBool::new(spec.healthy),
            load: Load::new(),
            outlier: OutlierState::default(),
            client: HttpClient::new(dialer, client),
        }
    }

    /// Whether this endpoint is the one `spec` describes, so that it can carry on.
    fn is(&self, spec: &EndpointSpec) -> bool {
        self.addr == spec.addr
            && (self.version == Version::HTTP_2) == spec.http2
            && self.identity == spec.identity
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// How a route treats its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    pub policy: LoadBalancing,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub outlier_detection: OutlierDetection,
    pub limits: Limits,
}

/// Where the requests of one listener go. It lives as long as its listener; what it routes to
/// ([`Routing`]) is replaced whole when the config changes, and each request keeps the one it
/// started with.
pub struct Route {
    name: String,
    current: ArcSwap<Routing>,
    in_flight: Arc<AtomicU32>,
    metrics: ListenerMetrics,
    /// Where new connections to the endpoints are made from; the host's unless told otherwise.
    network: Network,
    /// What connections to endpoints with an identity prove this sidecar with.
    credentials: Arc<Credentials>,
}

/// A route's endpoints and settings, as of one config.
struct Routing {
    settings: RouteSettings,
    endpoints: Vec<Arc<HttpEndpoint>>,
    balancer: Balancer,
    per_request: Option<Duration>,
    /// What a failed attempt costs an endpoint in the balancer's eyes, at least.
    failure_cost: Duration,
    budget: Arc<RetryBudget>,
    outliers: Arc<Outliers>,
    pending: Arc<Pending>,
}

impl Route {
    pub fn new(
        name: String,
        endpoints: &[EndpointSpec],
        settings: RouteSettings,
        metrics: ListenerMetrics,
        credentials: &Arc<Credentials>,
    ) -> Self {
        let routing = Routing::build(&name, endpoints, settings, None, &metrics, credentials);
        Self {
            name,
            current: ArcSwap::from_pointee(routing),
            in_flight: Arc::new(AtomicU32::new(0)),
            metrics,
            network: Network::Host,
            credentials: credentials.clone(),
        }
    }

    /// Connects to the endpoints from `network` (the app's namespace, for an inbound route).
    pub fn connect_from(&mut self, network: Network) {
        self.network = network;
    }

    /// Routes new requests by `settings` to `endpoints`. With the same settings, endpoints that
    /// stay keep their connections, load and outlier history; requests already on their way
    /// finish where they are.
    pub fn update(&self, endpoints: &[EndpointSpec], settings: RouteSettings) {
        let previous = self.current.load();
        let routing = Routing::build(
            &self.name,
            endpoints,
            settings,
            Some(&previous),
            &self.metrics,
            &self.credentials,
        );
        self.current.store(Arc::new(routing));
    }

    /// The idle timeout of downstream connections.
    pub fn idle(&self) -> Option<Duration> {
        self.current.load().settings.timeouts.idle()
    }

    /// Answers one request from `caller` (on an inbound listener: who the peer is, and whether
    /// it may call now; `None` on an outbound listener, which serves the local app).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        active: ActiveRequest,
        caller: Option<Arc<Caller>>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let m = &self.metrics;
        m.requests.inc();
        if let Some(grpc) = &m.grpc_requests
            && is_grpc(&req)
        {
            grpc.inc();
        }
        if let Some(Err(denied)) = caller.as_deref().map(Caller::check) {
            return Ok(denied.response());
        }
        if let Err(violation) = framing::check_request(&req) {
            return Ok(framing::refuse(violation, req.version(), m));
        }
        let r = self.current.load_full();
        let start = Instant::now();
        let deadline = r.per_request.map(|t| start + t);
        let downstream = req.version();
        let req = req.map(|body| ProxyBody::incoming(body).count_bytes(m.bytes.clone()));
        let max_requests = r.settings.limits.max_requests;
        let result = match self.admit(max_requests) {
            Some(in_flight) => self.forward(&r, req, deadline).await.map(|sent| (sent, in_flight)),
            None => Err(ProxyError::Overflow {
                target: self.name.clone(),
                limit: "maxRequests",
                max: max_requests,
            }),
        };
        match result {
            Ok(((sent, endpoint), in_flight)) => {
                let rtt = start.elapsed();
                if let Some(h) = &m.response_time {
                    h.observe(rtt.as_secs_f64());
                }
                let Sent { mut response, pooled } = sent;
                headers::for_downstream(&mut response, downstream);
                m.response(response.status());
                let release = Release { endpoint, pooled, _in_flight: in_flight, _active: active };
                Ok(response.map(|body| {
                    ProxyBody::incoming(body)
                        .count_bytes(m.bytes.clone())
                        .deadline(deadline)
                        .on_end(Box::new(release))
                }))
            }
            Err(error) => {
                tracing::debug!(route = %self.name, %error, "request failed");
                if matches!(error, ProxyError::Overflow { .. }) {
                    m.resilience.overflows.inc();
                }
                let response = error.response();
                m.response(response.status());
                Ok(response)
            }
        }
    }

    /// Counts a request in flight, unless `maxRequests` are already.
    fn admit(&self, max: u32) -> Option<InFlight> {
        let admitted =
            self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        admitted.is_ok().then(|| InFlight(self.in_flight.clone()))
    }

    /// Sends `req` to an endpoint, and again to another one when that is safe and the retry
    /// budget allows: a request that never left, or an idempotent one whose body is kept.
    async fn forward(
        &self,
        r: &Routing,
        req: Request<ProxyBody>,
        deadline: Option<Instant>,
    ) -> Result<(Sent, Arc<HttpEndpoint>), ProxyError> {
        r.budget.request();
        let authority = headers::authority(&req);
        let (mut unsent, replay) = self.keep_for_replay(r, req, deadline).await?;
        let attempts = 1 + r.settings.retry.max_retries as usize;
        let mut tried = Tried::default();
        loop {
            let mut req = match (unsent.take(), &replay) {
                (Some(req), _) => req,
                (None, Some(replay)) => replay.request(),
                (None, None) => unreachable!("a request that cannot be sent again is never retried"),
            };
            let Some(choice) = r.pick(tried.as_slice()) else {
                return Err(ProxyError::NoEndpoints { target: self.name.clone() });
            };
            if choice.fell_back {
                self.metrics.resilience.no_healthy_endpoints.inc();
            }
            let i = choice.index;
            tried.push(i);
            let endpoint = &r.endpoints[i];
            let authority = authority.clone().unwrap_or_else(|| {
                endpoint.addr.to_string().parse().expect("a socket address is an authority")
            });
            headers::for_upstream(&mut req, endpoint.version, authority.clone())?;
            endpoint.load.begin();
            let sent_at = Instant::now();
            let again = replay.as_ref().map(|replay| {
                let authority = authority.clone();
                move || {
                    let mut req = replay.request();
                    // The same rewrite of the same request succeeded just above.
                    let _ = headers::for_upstream(&mut req, endpoint.version, authority.clone());
                    req
                }
            });
            let again = again.as_ref().map(|f| f as &upstream::Again<'_>);
            let send = endpoint.client.send(req, again, &self.network);
            let sent = match deadline {
                Some(at) => tokio::time::timeout_at(at, send).await,
                None => Ok(send.await),
            };
            // The balancer learns each attempt's time on the endpoint it went to, failures
            // included: one whose connects time out must look slow, not untried, and the time
            // lost on it must not be charged to the endpoint that answered the retry.
            endpoint.load.observe_attempt(sent_at.elapsed(), matches!(sent, Ok(Ok(_))), r.failure_cost);
            let retries_left = tried.len() < attempts;
            match sent {
                Ok(Ok(sent)) => {
                    let status = sent.response.status();
                    r.outliers.record(&endpoint.outlier, outcome_of(status), r.endpoints.len());
                    let retry = (r.settings.retry.retry_on.contains(&status.as_u16())
                        || app_failed_behind_peer(&sent.response))
                        && replay.is_some();
                    if retry && retries_left && self.take_retry(r) {
                        endpoint.load.finish();
                        tracing::debug!(route = %self.name, endpoint = %endpoint.addr, %status, "retrying");
                        discard(sent, deadline).await;
                        continue;
                    }
                    return Ok((sent, endpoint.clone()));
                }
                Err(_elapsed) => {
                    endpoint.load.finish();
                    r.outliers.record(&endpoint.outlier, Outcome::GatewayFailure, r.endpoints.len());
                    let timeout = r.per_request.unwrap_or_default();
                    return Err(ProxyError::RequestTimeout { endpoint: endpoint.addr, timeout });
                }
                Ok(Err(SendError { error, request })) => {
                    endpoint.load.finish();
                    if error.is_gateway_failure() {
                        r.outliers.record(&endpoint.outlier, Outcome::GatewayFailure, r.endpoints.len());
                    }
                    // A request handed back unsent may go anywhere, whatever its method; one
                    // that may have reached the app only as a kept copy (idempotent, small
                    // body). A limit's refusal is never retried: it sheds load.
                    // Nor is a missing certificate: no other endpoint would fare better.
                    let retryable = match (&request, &error) {
                        (_, ProxyError::Overflow { .. } | ProxyError::NoCertificate { .. }) => false,
                        (Some(_), _) => true,
                        (None, error) => replay.is_some() && error.is_gateway_failure(),
                    };
                    // A request that never left costs the apps nothing: it needs no budget.
                    if retryable && retries_left && (error.never_sent() || self.take_retry(r)) {
                        if error.never_sent() {
                            self.metrics.resilience.retries.inc();
                        }
                        tracing::debug!(route = %self.name, %error, "retrying on another endpoint");
                        unsent = request;
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Splits `req` into what the first attempt sends and, when the request may be sent more
    /// than once, a copy to send again: idempotent, with a body of known length up to
    /// [`MAX_REPLAY_BODY`], which is read whole first.
    async fn keep_for_replay(
        &self,
        r: &Routing,
        req: Request<ProxyBody>,
        deadline: Option<Instant>,
    ) -> Result<(Option<Request<ProxyBody>>, Option<Replay>), ProxyError> {
        let small = req.body().size_hint().exact().is_some_and(|n| n <= MAX_REPLAY_BODY);
        if r.settings.retry.max_retries == 0 || !upstream::is_idempotent(&req) || !small {
            return Ok((Some(req), None));
        }
        let (parts, body) = req.into_parts();
        let body =
            if body.is_end_stream() { Bytes::new() } else { self.read_body(r, body, deadline).await? };
        let replay = Replay {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
        };
        Ok((None, Some(replay)))
    }

    async fn read_body(
        &self,
        r: &Routing,
        body: ProxyBody,
        deadline: Option<Instant>,
    ) -> Result<Bytes, ProxyError> {
        let collect = body.collect();
        let body = match deadline {
            Some(at) => tokio::time::timeout_at(at, collect)
                .await
                .map_err(|_| ProxyError::RequestBodyTimeout { timeout: r.per_request.unwrap_or_default() })?,
            None => collect.await,
        }
        .map_err(|_| ProxyError::BadRequest { reason: "the request body could not be read" })?;
        Ok(body.to_bytes())
    }

    fn take_retry(&self, r: &Routing) -> bool {
        let m = &self.metrics.resilience;
        if r.budget.try_retry() {
            m.retries.inc();
            true
        } else {
            m.retry_budget_exhausted.inc();
            false
        }
    }
}

impl Routing {
    fn build(
        name: &str,
        specs: &[EndpointSpec],
        settings: RouteSettings,
        previous: Option<&Routing>,
        metrics: &ListenerMetrics,
        credentials: &Arc<Credentials>,
    ) -> Self {
        let m = &metrics.resilience;
        let same = previous.filter(|p| p.settings == settings);
        let pending = match same {
            Some(p) => p.pending.clone(),
            None => Arc::new(Pending::new(name, settings.limits.max_pending_requests)),
        };
        let client = |spec: &EndpointSpec| ClientConfig {
            http2: spec.http2,
            idle_timeout: settings.timeouts.idle(),
            max_connections: settings.limits.max_connections,
            pending: pending.clone(),
        };
        let connect = settings.timeouts.connect();
        // HTTP to a sidecar always travels as HTTP/2 (see `outbound`).
        let dialer = |spec: &EndpointSpec| match &spec.identity {
            Some(id) => Dialer::mutual_tls(spec.addr, connect, credentials, id.clone(), ALPN_H2),
            None => Dialer::plain(spec.addr, connect),
        };
        let endpoints: Vec<Arc<HttpEndpoint>> = specs
            .iter()
            .map(|spec| match same.and_then(|p| p.endpoints.iter().find(|e| e.is(spec))) {
                Some(e) => {
                    e.healthy.store(spec.healthy, Ordering::Relaxed);
                    e.clone()
                }
                None => Arc::new(HttpEndpoint::new(spec, dialer(spec), client(spec))),
            })
            .collect();
        let outliers = Outliers::carry(
            same.map(|p| &p.outliers),
            settings.outlier_detection,
            &m.ejections,
            &m.endpoints_ejected,
            endpoints.iter().map(|e| &e.outlier),
        );
        m.set_endpoints(endpoints.len(), endpoints.iter().filter(|e| e.healthy()).count());
        let budget = match previous.filter(|p| p.settings.retry == settings.retry) {
            Some(p) => p.budget.clone(),
            None => Arc::new(RetryBudget::new(
                settings.retry.budget_percent,
                settings.retry.budget_min_per_second,
            )),
        };
        Self {
            endpoints,
            balancer: Balancer::new(settings.policy),
            per_request: settings.timeouts.per_request(),
            failure_cost: settings.timeouts.connect(),
            budget,
            outliers,
            pending,
            settings,
        }
    }

    fn pick(&self, tried: &[usize]) -> Option<crate::balance::Choice> {
        let usable = |i: usize| {
            let e = &self.endpoints[i];
            e.healthy() && !self.outliers.is_ejected(&e.outlier)
        };
        self.balancer.pick(self.endpoints.len(), |i| self.endpoints[i].load.cost(), usable, tried)
    }
}

/// Drops a response that is being retried. A small body of known length is read to its end
/// first, so that its HTTP/1 connection goes back to the pool instead of being closed.
async fn discard(sent: Sent, deadline: Option<Instant>) {
    const SMALL: u64 = 64 * 1024;
    let Sent { response, pooled } = sent;
    let body = response.into_body();
    if body.size_hint().exact().is_none_or(|n| n > SMALL) {
        return;
    }
    let read = body.collect();
    let read = match deadline {
        Some(at) => tokio::time::timeout_at(at, read).await.ok(),
        None => Some(read.await),
    };
    if let (Some(Ok(_)), Some(pooled)) = (read, pooled) {
        pooled.release();
    }
}

/// What outlier detection learns from a response.
fn outcome_of(status: StatusCode) -> Outcome {
    match status.as_u16() {
        502..=504 => Outcome::GatewayFailure,
        500..=599 => Outcome::Neutral,
        _ => Outcome::Success,
    }
}

/// The endpoints a request has been sent to, without allocating: `maxRetries` is at most 10.
#[derive(Default)]
struct Tried {
    indices: [usize; 11],
    len: usize,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if self.len < self.indices.len() {
            self.indices[self.len] = i;
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[usize] {
        &self.indices[..self.len]
    }
}

/// A request kept whole so that it can be sent again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    fn request(&self) -> Request<ProxyBody> {
        let mut req = Request::new(ProxyBody::full(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A request counted against `maxRequests` until dropped.
struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a response holds until its body has been read: the route's in-flight count, the
/// endpoint's outstanding count, the downstream connection's activity and, for HTTP/1, the
/// upstream connection.
struct Release {
    endpoint: Arc<HttpEndpoint>,
    pooled: Option<Pooled>,
    _in_flight: InFlight,
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

/// Whether a response is a peer sidecar saying that its app failed while the request was in
/// its hands (a 502 it made itself: the app crashed or reset the connection). For an
/// idempotent request that is a failure of that endpoint like a refused connection, and
/// another endpoint may be tried.
fn app_failed_behind_peer(response: &Response<Incoming>) -> bool {
    response.status() == StatusCode::BAD_GATEWAY
        && response.headers().get(crate::error::ERROR_HEADER).is_some_and(|v| v == "upstream-failed")
}
