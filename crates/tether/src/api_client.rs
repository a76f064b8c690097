//! The CLI's inspection commands' side of the control plane's REST API: where the token comes
//! from, and errors that say what to do. The requests themselves go through the runner's
//! `ControlClient`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use http::StatusCode;
use serde_json::Value;
use tether_runner::{ApiError, ControlClient};

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

impl Target {
    /// A control plane named on another command's own flags.
    pub fn new(server: String, token: Option<String>) -> Self {
        Self { server, token, data: None }
    }
}

pub struct ApiClient {
    inner: ControlClient,
    /// Where the token came from, for the message when it is refused.
    token_source: String,
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
        let inner = ControlClient::new(&base, token.as_deref().unwrap_or_default());
        Ok(Self { inner, token_source })
    }

    /// `GET path` → the JSON body of a 2xx answer; anything else is an error for people.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.inner.get(path).await.map_err(|e| self.explain(e))
    }

    /// `POST path` with a JSON body → the JSON body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.inner.post(path, body).await.map_err(|e| self.explain(e))
    }

    fn explain(&self, error: ApiError) -> anyhow::Error {
        let base = self.inner.base();
        match error {
            ApiError::Unreachable { reason, .. } => anyhow::anyhow!(
                "cannot reach the control plane at {base}: {reason}; is `tether server` running there? (set --server or TETHER_SERVER)"
            ),
            ApiError::Refused { status: StatusCode::UNAUTHORIZED, message, .. } => anyhow::anyhow!(
                "the control plane at {base} refused the token ({message}); the token came from {}. Pass the admin token (the server's DATA_DIR/admin.token) with --token or TETHER_TOKEN",
                self.token_source
            ),
            ApiError::Refused { status, message, .. } => anyhow::anyhow!("{status}: {message}"),
            e @ ApiError::Malformed { .. } => e.into(),
        }
    }
}
