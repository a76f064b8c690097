//! A small client for the control plane's REST API, for the CLI's inspection commands: plain
//! HTTP/1.1, JSON in and out, errors that say what to do.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Every request gives up after this long: a hung server must not hang the CLI.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control plane is and how to prove who we are.
#[derive(clap::Args)]
pub struct Target {
    /// The control plane's URL.
    #[arg(long, value_name = "URL", env = "TETHER_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// The admin token. Default: the admin.token file in the data directory (--data), which
    /// works on the server's own machine.
    #[arg(long, value_name = "TOKEN", env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data directory, where admin.token is read from when --token is not given.
    /// Default: /var/lib/tether as root, else $XDG_DATA_HOME/tether or ~/.local/share/tether.
    #[arg(long, value_name = "DIR", env = "TETHER_DATA")]
    data: Option<PathBuf>,
}

pub struct ApiClient {
    base: String,
    token: Option<String>,
    /// Where the token came from, for the message when it is refused.
    token_source: String,
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let base = target.server.trim_end_matches('/').to_owned();
        let uri: http::Uri = base.parse().with_context(|| format!("--server `{base}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("--server `{base}`: the control plane speaks plain http here, not {other}"),
            None => bail!("--server `{base}`: expected a URL such as http://127.0.0.1:7700"),
        }
        let (token, token_source) = match &target.token {
            Some(token) => (Some(token.trim().to_owned()), "--token / TETHER_TOKEN".to_owned()),
            None => {
                let dir = target.data.clone().unwrap_or_else(tether_control::default_data_dir);
                let path = dir.join(tether_control::TOKEN_FILE);
                let token = std::fs::read_to_string(&path).ok().map(|t| t.trim().to_owned());
                let source = match &token {
                    Some(_) => format!("{}", path.display()),
                    None => format!(
                        "nowhere: --token and TETHER_TOKEN are unset and {} cannot be read",
                        path.display()
                    ),
                };
                (token, source)
            }
        };
        let inner = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Self { base, token, token_source, inner })
    }

    /// `GET path` → the JSON body of a 2xx answer; anything else is an error for people.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = Request::builder().method(Method::GET).uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).context("building the request")?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| {
                // The innermost cause says it best ("Connection refused").
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                anyhow!(
                    "cannot reach the control plane at {}: {cause}; is `tether server` running there? (set --server or TETHER_SERVER)",
                    self.base
                )
            })?;
            let status = response.status();
            let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("the control plane at {} did not answer within {TIMEOUT:?}", self.base))??;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let message = json.as_ref().and_then(|j| j["error"].as_str()).map(str::to_owned);
        match status {
            s if s.is_success() => json
                .ok_or_else(|| anyhow!("the control plane answered {path} with something other than JSON")),
            StatusCode::UNAUTHORIZED => bail!(
                "the control plane at {} refused the token ({}); the token came from {}. Pass the admin token (the server's DATA_DIR/admin.token) with --token or TETHER_TOKEN",
                self.base,
                message.unwrap_or_else(|| "401".into()),
                self.token_source
            ),
            s => bail!("{s}: {}", message.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())),
        }
    }
}
