//! The CLI's side of the API: finds the daemon, sends a call, turns errors into one
//! clear sentence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use teal_core::api::ErrorBody;

use crate::server::{ADDRESS_FILE, DEFAULT_API, TOKEN_FILE};

/// How many times a call is sent to a daemon that answers it handed over (every
/// 200 ms, so for about 10 s).
const HANDOVER_ATTEMPTS: u32 = 50;

/// A connection to one daemon.
pub struct Client {
    base: String,
    token: Option<String>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

/// An answer the daemon gave with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The daemon's sentence.
    pub message: String,
    /// Every problem, when there are several (such as spec errors).
    pub details: Vec<String>,
}

/// The default data directory: `$TEAL_DATA_DIR`, else `$XDG_DATA_HOME/teal`, else
/// `~/.local/share/teal`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("teal");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/teal")
}

impl Client {
    /// Finds the daemon: `api` if given, else the address the daemon wrote into
    /// `data_dir`, else the default; the token likewise.
    pub fn new(data_dir: &Path, api: Option<String>, token: Option<String>) -> Client {
        let api = api
            .or_else(|| std::fs::read_to_string(data_dir.join(ADDRESS_FILE)).ok())
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_API.to_owned());
        let base = if api.starts_with("http://") {
            api
        } else {
            format!("http://{api}")
        };
        let token = token.or_else(|| {
            std::fs::read_to_string(data_dir.join(TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The daemon's base URL, e.g. `http://127.0.0.1:7070`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API token, when one was found.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// POST (or DELETE) with a JSON body, with the token.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(method, path, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        // A daemon that handed over to a new one (a restart of teal) answers 503 with
        // Retry-After and changes nothing; the same address soon reaches the new one.
        let mut attempts = 0;
        let response = loop {
            let response = self.request(method.clone(), path, body).await?;
            attempts += 1;
            if response.status() != StatusCode::SERVICE_UNAVAILABLE
                || !response.headers().contains_key(hyper::header::RETRY_AFTER)
                || attempts >= HANDOVER_ATTEMPTS
            {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("the daemon's answer was cut off")?
            .to_bytes();
        if !status.is_success() {
            let error: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: format!(
                    "the daemon answered {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ),
                details: Vec::new(),
            });
            return Err(ApiError {
                status,
                message: error.error,
                details: error.details,
            }
            .into());
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the daemon's answer to {path} is not what this teal expects"))
    }

    /// Sends a request and returns the raw response (for streams such as logs).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(token) = self.token.as_ref().filter(|_| method != Method::GET) {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(body)?))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body)?;
        match self.http.request(request).await {
            Ok(response) => Ok(response),
            Err(error) => bail!(
                "cannot reach the teal daemon at {} ({error}); is `teal server` running? (--api or --data-dir point the CLI at it)",
                self.base
            ),
        }
    }
}
