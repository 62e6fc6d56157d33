//! `teal server`: the daemon's HTTP API on loopback, the store and the reconcilers.
//!
//! A `teal server` started on the data directory of a running one takes over from it
//! (see [`crate::handoff`]): it serves the same listening sockets, adopts the
//! instances, and the old one finishes its requests and exits. Nothing is refused.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use teal_core::Color;
use teal_core::api::{ApplyRequest, ErrorBody, PromoteRequest, UndoRequest};
use teal_platform::LocalPlatform;
use tokio::net::TcpListener;

use crate::daemon::{Daemon, DaemonError};
use crate::handoff::{ApiSocket, Handoffs};
use crate::store::Store;

/// The file in the data dir that holds the API token.
pub const TOKEN_FILE: &str = "token";
/// The file in the data dir that holds the API's bound address, for the CLI.
pub const ADDRESS_FILE: &str = "api.addr";
/// Where the API listens unless told otherwise: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:7070";

/// How `teal server` was started.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where the store, the token, logs and instance records live.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub api: SocketAddr,
}

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    token: Arc<str>,
}

/// How long the API's open connections (event streams, followed logs) may run on after
/// the daemon stops or hands over.
const API_DRAIN: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` resolves, then stops every instance; or, when a
/// new `teal server` takes over, until the requests in flight are answered, leaving
/// the instances to it. Takes over from a daemon already running on the data
/// directory.
pub async fn run(
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let token = load_or_create_token(data_dir)?;
    let store = Store::open(data_dir)?;
    // Before the platform adopts the instances: the old daemon stops supervising them
    // before it hands over.
    let mut takeover = crate::handoff::take_over(data_dir)
        .await
        .context("cannot take over from the daemon running on this data directory")?;
    let platform = LocalPlatform::open(data_dir.join("run")).with_context(|| {
        format!(
            "cannot open the instance directory {}",
            data_dir.join("run").display()
        )
    })?;
    let inherited = match &mut takeover {
        Some(takeover) => {
            takeover.wait_warm(&platform).await;
            takeover.rollouts()
        }
        None => BTreeMap::new(),
    };
    // The API first: a daemon that takes over must not exit after it began serving
    // the handed sockets because its own API address is taken.
    let listener = match takeover.as_mut().and_then(|t| t.api(options.api)) {
        Some(listener) => listener,
        None => TcpListener::bind(options.api)
            .await
            .with_context(|| format!("cannot listen on {} for the API", options.api))?,
    };
    let daemon = Daemon::start(store, platform, inherited).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!("the API listens on {bound}, which is not loopback; keep the token secret");
    }
    let api_socket = match listener.as_fd().try_clone_to_owned() {
        Ok(socket) => Some(ApiSocket {
            configured: options.api,
            bound,
            socket,
        }),
        Err(error) => {
            tracing::warn!(
                "cannot duplicate the API socket ({error}); a daemon that takes over binds it anew"
            );
            None
        }
    };
    let app = router(AppState {
        daemon: daemon.clone(),
        token: token.into(),
    });
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut api = tokio::spawn(serve_api(listener, app, api_stopped));
    if let Some(takeover) = takeover {
        let predecessor = takeover.predecessor();
        if let Err(error) = takeover.finish(daemon.clone()).await {
            // The old daemon carries on with the same sockets and instances: stop
            // accepting, answer what was accepted, and leave every instance alone.
            daemon.give_back(predecessor).await;
            let _ = stop_api.send(());
            for listener in daemon.close_listeners() {
                let _ = listener.await;
            }
            let _ = tokio::time::timeout(API_DRAIN, &mut api).await;
            return Err(error);
        }
    }
    let handoffs = match Handoffs::listen(data_dir, daemon.clone(), api_socket) {
        Ok(handoffs) => Some(handoffs),
        Err(error) => {
            tracing::warn!(
                "{error:#}; a new teal server on this data directory cannot take over from this one"
            );
            None
        }
    };
    // Last: the address file tells the CLI (and tests) that everything is up.
    std::fs::write(data_dir.join(ADDRESS_FILE), bound.to_string())
        .with_context(|| format!("cannot write {}", data_dir.join(ADDRESS_FILE).display()))?;
    println!(
        "teal: API on http://{bound} (data in {})",
        data_dir.display()
    );
    for (name, active, preview) in daemon.bound_addresses() {
        println!("{}", listening_line(&name, active, preview));
    }
    let _ = std::io::stdout().flush();

    tokio::pin!(shutdown);
    let mut signalled = false;
    let api_failed = tokio::select! {
        () = &mut shutdown => {
            signalled = true;
            None
        }
        _ = daemon.handed_over() => None,
        result = &mut api => Some(result),
    };
    // A takeover under way when the signal came decides whether instances stop.
    let successor = match handoffs {
        Some(handoffs) => handoffs.close().await,
        None => None,
    };
    let _ = stop_api.send(());
    if let Some(successor) = successor {
        println!(
            "teal: handed over to pid {successor}; answering the requests in flight (the instances keep running)"
        );
        // A stop signal (now, or one that came during the takeover) closes the
        // WebSockets at once: the operator does not want to wait minutes for them.
        // Requests in flight still get their time.
        let close_now = tokio::sync::watch::channel(signalled).0;
        let drain = daemon.drain_after_handover(close_now.subscribe());
        tokio::pin!(drain);
        if !signalled {
            tokio::select! {
                () = &mut drain => {}
                () = &mut shutdown => {
                    println!("teal: stopped while draining; closing the WebSockets, answering the requests in flight");
                    close_now.send_replace(true);
                    drain.await;
                }
            }
        } else {
            drain.await;
        }
        if api_failed.is_none() && tokio::time::timeout(API_DRAIN, &mut api).await.is_err() {
            tracing::warn!("API connections still open after {API_DRAIN:?}; closing them");
        }
        println!("teal: handed over to pid {successor}; exiting");
        return Ok(());
    }
    match api_failed {
        Some(result) => {
            let result = result.context("the API server panicked")?;
            result.context("the API server failed")?;
        }
        None => {
            if tokio::time::timeout(API_DRAIN, &mut api).await.is_err() {
                tracing::warn!("API connections still open after {API_DRAIN:?}; closing them");
            }
        }
    }
    println!("teal: stopping every instance");
    daemon.shutdown().await;
    Ok(())
}

/// Serves the API until `stop`, then stops accepting and lets every connection
/// finish: responses from then on say `Connection: close`, an idle keep-alive
/// connection gets [`teal_proxy::IDLE_LINGER`] to send the request it may be sending
/// before it is closed, and one accepted but not yet read from is answered first (a
/// successor daemon accepts on the same socket, so a connection that raced the stop
/// must not go unanswered; `axum::serve` drops it). The proxy's listeners do the same.
async fn serve_api(
    listener: TcpListener,
    app: Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let closing_flag = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closing_flag);
    let app = app.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let closing = flag.load(Ordering::Acquire);
            async move {
                if closing {
                    // hyper closes the connection once this response is written.
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_api_connection(stream, app.clone(), closed.clone()));
                }
                Err(error) => {
                    tracing::debug!("the API could not accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    closing_flag.store(true, Ordering::Release);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_api_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    // Served once its first bytes are there, and hyper reads them before it can hear
    // of the stop (`biased`): see `first_bytes_arrived`.
    if !teal_proxy::first_bytes_arrived(&stream).await {
        return;
    }
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        _ = async { closing.wait_for(|closing| *closing).await.map(drop) } => {
            // The next response says `Connection: close`; an idle connection gets a
            // moment to send that request.
            match tokio::time::timeout(teal_proxy::IDLE_LINGER, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!("an API connection ended: {error}");
    }
}

/// `rollout shop: active http://..., preview http://...`
pub fn listening_line(
    name: &str,
    active: Option<SocketAddr>,
    preview: Option<SocketAddr>,
) -> String {
    let mut line = format!("rollout {name}:");
    if let Some(active) = active {
        line.push_str(&format!(" active on http://{active}"));
    }
    if let Some(preview) = preview {
        line.push_str(&format!(", preview on http://{preview}"));
    }
    line
}

fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut random))
        .context("cannot read /dev/urandom to make an API token")?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write the API token to {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/rollouts", get(list))
        .route("/api/v1/rollouts/{name}", get(get_one).delete(delete_one))
        .route("/api/v1/rollouts/{name}/history", get(history))
        .route("/api/v1/rollouts/{name}/logs", get(logs))
        .route("/api/v1/rollouts/{name}/traffic", get(traffic))
        .route("/api/v1/rollouts/{name}/analysis", get(analysis))
        .route("/api/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/rollouts/{name}/promote", post(promote))
        .route("/api/v1/rollouts/{name}/abort", post(abort))
        .route("/api/v1/rollouts/{name}/retry", post(retry))
        .route("/api/v1/rollouts/{name}/undo", post(undo))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such API endpoint".to_owned(),
        Vec::new(),
    )
}

/// Mutating calls need the token; reads on loopback do not.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this call needs the API token (the CLI reads it from the daemon's data directory; pass --data-dir or --token)"
                .to_owned(),
            Vec::new(),
        );
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: String, details: Vec<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message,
            details,
        }),
    )
        .into_response()
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        match self {
            DaemonError::NotFound(message) => error(StatusCode::NOT_FOUND, message, Vec::new()),
            DaemonError::Invalid { message, details } => {
                error(StatusCode::BAD_REQUEST, message, details)
            }
            DaemonError::Refused(message) => error(StatusCode::CONFLICT, message, Vec::new()),
            DaemonError::Unavailable(message) => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message, Vec::new());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                response
            }
            DaemonError::Internal(cause) => {
                tracing::error!("internal error: {cause:#}");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error: {cause:#}"),
                    Vec::new(),
                )
            }
        }
    }
}

type Reply<T> = Result<Json<T>, DaemonError>;

async fn list(State(state): State<AppState>) -> Reply<Vec<teal_core::api::RolloutView>> {
    state.daemon.list().map(Json)
}

async fn get_one(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<teal_core::api::RolloutView> {
    state.daemon.get(&name).map(Json)
}

async fn history(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<teal_core::api::HistoryView> {
    state.daemon.history(&name).map(Json)
}

async fn traffic(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<teal_core::api::TrafficView> {
    state.daemon.traffic(&name).map(Json)
}

/// `?revision=N`.
#[derive(serde::Deserialize)]
struct AnalysisQuery {
    revision: Option<u64>,
}

async fn analysis(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<AnalysisQuery>,
) -> Reply<teal_core::api::AnalysisView> {
    state.daemon.analysis(&name, query.revision).map(Json)
}

async fn metrics(State(state): State<AppState>) -> Result<Response, DaemonError> {
    let text = crate::metrics::render(&state.daemon.metrics()?);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// How often the event stream repeats the list when nothing changed, so traffic
/// figures stay fresh and a dead connection is noticed.
const EVENTS_REFRESH: Duration = Duration::from_secs(2);

/// Server-sent events: `event: rollouts` with every rollout, at once, on every change,
/// and every couple of seconds.
async fn events(State(state): State<AppState>) -> Response {
    let changes = state.daemon.subscribe();
    let stream = futures_util::stream::unfold(
        (state.daemon.clone(), changes, true),
        |(daemon, mut changes, first)| async move {
            if !first {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = tokio::time::sleep(EVENTS_REFRESH) => {}
                }
            }
            let payload = match daemon.list() {
                Ok(rollouts) => {
                    serde_json::to_string(&rollouts).unwrap_or_else(|_| "[]".to_owned())
                }
                Err(error) => {
                    tracing::error!("event stream: {error}");
                    "[]".to_owned()
                }
            };
            let event = Bytes::from(format!("event: rollouts\ndata: {payload}\n\n"));
            Some((Ok::<_, Infallible>(event), (daemon, changes, false)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot build the event stream".to_owned(),
                Vec::new(),
            )
        })
}

async fn apply(
    State(state): State<AppState>,
    Json(request): Json<ApplyRequest>,
) -> Reply<teal_core::api::ApplyResponse> {
    state.daemon.apply(request).await.map(Json)
}

async fn promote(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<teal_core::api::CommandResponse> {
    let request = optional_body::<PromoteRequest>(&body)?;
    state.daemon.promote(&name, request).await.map(Json)
}

/// A JSON body that may be absent (or `null`), meaning "all defaults".
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DaemonError> {
    if body.iter().all(u8::is_ascii_whitespace) || body == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| DaemonError::Invalid {
        message: format!("the request body is not what this call takes: {error}"),
        details: Vec::new(),
    })
}

async fn abort(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<teal_core::api::CommandResponse> {
    state.daemon.abort(&name).await.map(Json)
}

async fn retry(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<teal_core::api::CommandResponse> {
    state.daemon.retry(&name).await.map(Json)
}

async fn undo(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<teal_core::api::CommandResponse> {
    let request = optional_body::<UndoRequest>(&body)?;
    state.daemon.undo(&name, request).await.map(Json)
}

async fn delete_one(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Reply<Vec<String>> {
    state.daemon.delete(&name).await.map(Json)
}

#[derive(Deserialize)]
struct LogQuery {
    color: Option<Color>,
    #[serde(default)]
    follow: bool,
}

/// How much of each log file is shown before following.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Instance logs, each line prefixed with its instance; `follow` keeps streaming.
async fn logs(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<LogQuery>,
    _headers: HeaderMap,
) -> Result<Response, DaemonError> {
    state.daemon.get(&name)?;
    let daemon = state.daemon.clone();
    let mut offsets: std::collections::BTreeMap<PathBuf, u64> = Default::default();
    let first = read_new_lines(&daemon, &name, query.color, &mut offsets, true);
    if !query.follow {
        return Ok(first.into_response());
    }
    let stream = futures_util::stream::unfold(
        (daemon, name, query.color, offsets, Some(first)),
        |(daemon, name, color, mut offsets, first)| async move {
            let chunk = match first {
                Some(first) => first,
                None => loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let chunk = read_new_lines(&daemon, &name, color, &mut offsets, false);
                    if !chunk.is_empty() {
                        break chunk;
                    }
                },
            };
            Some((
                Ok::<_, Infallible>(Bytes::from(chunk)),
                (daemon, name, color, offsets, None),
            ))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .map_err(|e| DaemonError::Internal(e.into()))
}

/// Reads what was added to each log since the last call, prefixed per line.
fn read_new_lines(
    daemon: &Daemon,
    name: &str,
    color: Option<Color>,
    offsets: &mut std::collections::BTreeMap<PathBuf, u64>,
    first: bool,
) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = String::new();
    for log in daemon.platform().log_files(name, color) {
        let Ok(mut file) = std::fs::File::open(&log.path) else {
            continue;
        };
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = match offsets.get(&log.path) {
            // A log that shrank was rotated: read it from its start.
            Some(&offset) if offset <= length => offset,
            Some(_) => 0,
            None if first => length.saturating_sub(LOG_TAIL_BYTES),
            None => 0,
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.take(length - start).read_to_string(&mut text);
        }
        // Keep a partial last line for the next read.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        offsets.insert(log.path.clone(), start + complete as u64);
        for line in text[..complete].lines() {
            out.push_str(&format!("[{}] {line}\n", log.instance));
        }
    }
    out
}
