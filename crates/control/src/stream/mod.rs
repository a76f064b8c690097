//! The proxy stream (design §6): each sidecar subscribes with who it is; it gets a full
//! snapshot of what it needs (every client alias of its namespace with its endpoints, and its
//! own inbound listeners), then a versioned update whenever any of that changes, and answers
//! each with an ACK or a NACK.
//!
//! ```text
//! store ─watch─► follower (one per namespace: resources, encoded once) ─broadcast Change─►
//!     stream (one per proxy: what it was sent, the delta) ─► ConfigUpdate ─► proxy
//! ```

mod delta;
mod follower;
mod issuing;
pub mod resources;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tether_api::v1::config_stream_server::{ConfigStream, ConfigStreamServer};
use tether_api::v1::{ConfigUpdate, Hello, ProxyMessage, proxy_message};
use tether_model::SpiffeId;
use tether_model::identity::EDGE;
use tether_store::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::identity::{BootstrapTokens, Issuer, Scope};
use crate::{AdminToken, Registry};
use follower::Followers;
use issuing::Issuing;
use session::Session;

/// How long a proxy has to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConfigStreamService<S> {
    followers: Arc<Followers<S>>,
    token: AdminToken,
    tokens: BootstrapTokens,
    issuer: Arc<Issuer<S>>,
}

/// Who opened a stream, by its bearer token.
enum Caller {
    /// The admin token: any proxy of any namespace (runners that predate bootstrap tokens,
    /// `tether run`, an edge started by hand).
    Admin,
    /// A bootstrap token: the one task it was made for.
    Task(Scope),
}

impl<S: Store> ConfigStreamService<S> {
    pub fn new(registry: Registry<S>, token: AdminToken, issuer: Arc<Issuer<S>>) -> Self {
        let tokens = BootstrapTokens::new(&token);
        Self { followers: Arc::new(Followers::new(registry)), token, tokens, issuer }
    }

    fn caller(&self, token: &str) -> Option<Caller> {
        if self.token.matches(token) {
            return Some(Caller::Admin);
        }
        self.tokens.verify(token).map(Caller::Task)
    }

    /// The gRPC service as routes to serve beside the REST API (with no fallback of its own,
    /// so that unknown paths get the API's answer).
    pub fn router(self) -> axum::Router {
        let path =
            format!("/{}/{{*method}}", <ConfigStreamServer<Self> as tonic::server::NamedService>::NAME);
        axum::Router::new().route_service(&path, ConfigStreamServer::new(self))
    }
}

#[tonic::async_trait]
impl<S: Store> ConfigStream for ConfigStreamService<S> {
    type SubscribeStream = ReceiverStream<Result<ConfigUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let bearer = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let token = bearer.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
        let Some(caller) = self.caller(token) else {
            return Err(Status::unauthenticated("a valid bearer token (admin or bootstrap) is required"));
        };
        let mut incoming = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.message()).await {
            Ok(Ok(Some(ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
            Ok(_) => return Err(Status::invalid_argument("the first message must be a hello")),
        };
        for (field, value) in
            [("namespace", &hello.namespace), ("service", &hello.service), ("task", &hello.task)]
        {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!("the hello must name the proxy's {field}")));
            }
        }
        let identity = identity_of(&hello, &caller)?;
        info!(namespace = %hello.namespace, service = %hello.service, task = %hello.task, %identity, "proxy subscribed");
        let followed = self.followers.follow(&hello.namespace);
        let (updates, stream) = mpsc::channel(16);
        let handle = self.issuer.proxies().connect(&hello.namespace, identity.service(), &hello.task);
        let issuing = Issuing::new(self.issuer.clone(), identity, handle);
        tokio::spawn(Session::new(followed, hello, updates, issuing).run(incoming));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// The identity a proxy is issued: the one its bootstrap token names (the hello must agree with
/// it), or with the admin token the one its hello names.
fn identity_of(hello: &Hello, caller: &Caller) -> Result<SpiffeId, Status> {
    let service = if hello.edge { EDGE } else { hello.service.as_str() };
    if let Caller::Task(scope) = caller
        && (scope.namespace != hello.namespace || scope.service != service || scope.task != hello.task)
    {
        return Err(Status::permission_denied(format!(
            "the bootstrap token is for task `{}` of `{}` in namespace `{}`, not task `{}` of `{}` in `{}`",
            scope.task, scope.service, scope.namespace, hello.task, service, hello.namespace
        )));
    }
    let id = if hello.edge {
        SpiffeId::edge(&hello.namespace)
    } else {
        SpiffeId::new(&hello.namespace, &hello.service)
    };
    id.map_err(|e| Status::invalid_argument(format!("the hello names no identity tether issues: {e}")))
}
