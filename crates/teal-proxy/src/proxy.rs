//! The proxy of one rollout: route table, per-color accounting and forwarding.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use teal_core::Color;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::body::ResponseBody;
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::routing::{self, Route};
use crate::{Backend, Role, RouteTable};

/// How long an instance may take to send its response headers before teal answers
/// `504 Gateway Timeout`.
pub const UPSTREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting to an instance may take before it counts as a connect failure
/// (and an idempotent request is retried on the next instance).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle pooled connection to an instance is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Response header naming the color that served the request.
const X_TEAL_COLOR: HeaderName = HeaderName::from_static("x-teal-color");
/// Response header naming the revision that served the request.
const X_TEAL_REVISION: HeaderName = HeaderName::from_static("x-teal-revision");
/// Response header on answers teal made itself, saying why in one token.
const X_TEAL_REASON: HeaderName = HeaderName::from_static("x-teal-reason");

/// The body sent upstream: the client's body, or nothing for a request that may be
/// retried (only bodiless requests are, so the retry can send the same nothing again).
type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Upper bounds, in milliseconds, of the latency histogram's buckets; a last bucket
/// holds everything slower. Fine at the low end, where loopback services live, so a
/// p99 read from the buckets is close to the truth.
pub const LATENCY_BUCKETS_MS: [f64; 24] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
    500.0, 750.0, 1000.0, 1500.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// Buckets including the last, unbounded one.
const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// Counters of one color since the proxy started. A snapshot; see [`Proxy::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColorStats {
    /// Requests being served now.
    pub in_flight: u64,
    /// Responses by how long the response head took, per bucket of
    /// [`LATENCY_BUCKETS_MS`] (not cumulative); the last entry counts the slower ones.
    pub latency_buckets: [u64; BUCKETS],
    /// Sum of those latencies, in microseconds.
    pub latency_sum_micros: u64,
    /// Requests routed to this color.
    pub requests: u64,
    /// Responses with a 2xx status.
    pub responses_2xx: u64,
    /// Responses with a 3xx status.
    pub responses_3xx: u64,
    /// Responses with a 4xx status.
    pub responses_4xx: u64,
    /// Responses with a 5xx status, whether from an instance or from teal.
    pub responses_5xx: u64,
    /// 502, 503 and 504 answers teal produced itself (no instance answered). Also
    /// counted in `responses_5xx`.
    pub proxy_errors: u64,
}

/// Live state of one color. Shared (Arc) with the in-flight guards, which may outlive
/// the request future inside a response body.
pub(crate) struct ColorState {
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
    /// Round-robin position over the color's instances.
    next_instance: AtomicUsize,
    requests: AtomicU64,
    responses_2xx: AtomicU64,
    responses_3xx: AtomicU64,
    responses_4xx: AtomicU64,
    responses_5xx: AtomicU64,
    proxy_errors: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS],
    latency_sum_micros: AtomicU64,
}

impl ColorState {
    fn new() -> Self {
        ColorState {
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
            next_instance: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            responses_2xx: AtomicU64::new(0),
            responses_3xx: AtomicU64::new(0),
            responses_4xx: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            proxy_errors: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: AtomicU64::new(0),
        }
    }

    fn record(&self, status: StatusCode, by_teal: bool, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(BUCKETS - 1);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            latency.as_micros().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let class = match status.as_u16() {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            500..=599 => &self.responses_5xx,
            // 1xx are not final responses; nothing else exists.
            _ => return,
        };
        class.fetch_add(1, Ordering::Relaxed);
        if by_teal {
            self.proxy_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> ColorStats {
        ColorStats {
            requests: self.requests.load(Ordering::Relaxed),
            responses_2xx: self.responses_2xx.load(Ordering::Relaxed),
            responses_3xx: self.responses_3xx.load(Ordering::Relaxed),
            responses_4xx: self.responses_4xx.load(Ordering::Relaxed),
            responses_5xx: self.responses_5xx.load(Ordering::Relaxed),
            proxy_errors: self.proxy_errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            latency_buckets: std::array::from_fn(|i| {
                self.latency_buckets[i].load(Ordering::Relaxed)
            }),
            latency_sum_micros: self.latency_sum_micros.load(Ordering::Relaxed),
        }
    }

    /// Resolves once nothing is in flight (immediately if nothing is).
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking: notify_waiters only wakes registered waiters,
            // so a guard dropping between the check and the await would otherwise be
            // missed.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one request as in flight on one color until dropped.
///
/// Holds the color's state directly, so the request stays counted on the color it
/// was routed to whatever happens to the route table meanwhile.
pub(crate) struct InFlight {
    state: Arc<ColorState>,
}

impl InFlight {
    fn enter(state: &Arc<ColorState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            state: Arc::clone(state),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

/// Why teal answered a request itself.
struct Failure {
    status: StatusCode,
    /// One token for the `x-teal-reason` header.
    reason: &'static str,
    /// One sentence for the body and the log.
    message: String,
}

/// The reverse proxy of one rollout. Shared by its active and preview listeners.
pub struct Proxy {
    rollout: String,
    routes: ArcSwap<RouteTable>,
    /// Indexed by [`color_index`].
    colors: [Arc<ColorState>; 2],
    /// Tables swapped out while requests routed by them may still be between loading
    /// the table and counting themselves in flight (each request holds its table until
    /// its response head is returned, by which time it counts as in flight).
    retired: std::sync::Mutex<Vec<Arc<RouteTable>>>,
    client: Client<HttpConnector, UpstreamBody>,
    upstream_timeout: Duration,
}

fn color_index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Proxy {
    /// A proxy for the rollout with an empty route table (every request gets 503 until
    /// [`Proxy::set_routes`]) and the default [`UPSTREAM_HEADER_TIMEOUT`].
    pub fn new(rollout: &str) -> Arc<Proxy> {
        Proxy::with_upstream_timeout(rollout, UPSTREAM_HEADER_TIMEOUT)
    }

    /// Like [`Proxy::new`], with another limit on how long an instance may take to
    /// send its response headers.
    pub fn with_upstream_timeout(rollout: &str, upstream_timeout: Duration) -> Arc<Proxy> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // The idle timeout needs a timer to run on.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(Proxy {
            rollout: rollout.to_owned(),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            colors: [Arc::new(ColorState::new()), Arc::new(ColorState::new())],
            retired: std::sync::Mutex::new(Vec::new()),
            client,
            upstream_timeout,
        })
    }

    /// The rollout this proxy serves.
    pub fn rollout(&self) -> &str {
        &self.rollout
    }

    /// Replaces the route table in one atomic swap. Requests that already loaded the
    /// old table finish by it; every later request, on any connection, uses the new one.
    pub fn set_routes(&self, routes: RouteTable) {
        debug!(rollout = %self.rollout, ?routes, "route table swapped");
        let old = self.routes.swap(Arc::new(routes));
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|table| Arc::strong_count(table) > 1);
        retired.push(old);
    }

    /// True once no request routed by a swapped-out table is still being routed.
    fn old_tables_released(&self) -> bool {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|table| Arc::strong_count(table) > 1);
        retired.is_empty()
    }

    /// The route table requests are routed by now.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Requests currently being served by the color: routed to it and not yet
    /// finished (response body fully handed out, or the client went away).
    pub fn in_flight(&self, color: Color) -> u64 {
        self.state(color).in_flight.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight on the color, or the timeout passes. True when
    /// drained. Call it after swapping the color out of the route table; it does not
    /// stop new requests from being routed to the color. A request that loaded the
    /// old table an instant before the swap is waited for too: drain first waits until
    /// every request routed by an older table has counted itself in flight.
    pub async fn drain(&self, color: Color, timeout: Duration) -> bool {
        let drained = async {
            // Routing takes microseconds, so a short poll is cheap and rare.
            while !self.old_tables_released() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.state(color).wait_idle().await
        };
        // tokio's timeout copes with durations too large to add to "now".
        tokio::time::timeout(timeout, drained).await.is_ok()
    }

    /// The color's counters since the proxy was created.
    pub fn stats(&self, color: Color) -> ColorStats {
        self.state(color).snapshot()
    }

    fn state(&self, color: Color) -> &Arc<ColorState> {
        &self.colors[color_index(color)]
    }

    /// Serves one request that arrived on a listener of the given role.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        role: Role,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        // The one load of this request: it is routed by this snapshot, whatever
        // set_routes does meanwhile. The request holds the table until it counts as in
        // flight, which is what lets `drain` know no routing by an old table is pending.
        let started = std::time::Instant::now();
        let table = self.routes.load_full();
        let (route, backend) = routing::choose(&table, role, request.headers());
        let backend = backend.cloned();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();

        let Some(backend) = backend.as_ref() else {
            let failure = self.no_instance(route, "no revision is deployed yet".to_owned());
            debug!(rollout = %self.rollout, %method, %path, route = route.as_str(), "no backend");
            return failure_response(failure, None);
        };
        let state = self.state(backend.color);
        state.requests.fetch_add(1, Ordering::Relaxed);

        if backend.instances.is_empty() {
            let detail = format!(
                "{} revision {} has no ready instance",
                backend.color, backend.revision
            );
            let failure = self.no_instance(route, detail);
            debug!(rollout = %self.rollout, %method, %path, route = route.as_str(), color = %backend.color, "no ready instance");
            state.record(failure.status, true, started.elapsed());
            return failure_response(failure, Some(backend));
        }

        // From here until the response body ends (or is dropped) the request counts
        // on this color. If the client goes away before the response, hyper drops this
        // future and the guard with it.
        let guard = InFlight::enter(state);
        drop(table);
        match self.forward(request, backend, client).await {
            Ok((instance, response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The version is per hop: the client talks HTTP/1.1 with us whatever
                // the instance spoke (hyper adapts it for HTTP/1.0 clients).
                parts.version = Version::HTTP_11;
                label(&mut parts.headers, backend);
                state.record(parts.status, false, started.elapsed());
                debug!(
                    rollout = %self.rollout, %method, %path, route = route.as_str(),
                    color = %backend.color, revision = backend.revision, %instance,
                    status = parts.status.as_u16(), "proxied"
                );
                Response::from_parts(parts, ResponseBody::upstream(body, guard))
            }
            Err(failure) => {
                state.record(failure.status, true, started.elapsed());
                failure_response(failure, Some(backend))
            }
        }
    }

    /// Sends the request to the backend's next instance (round-robin). A bodiless
    /// idempotent request whose connect failed is retried once on the instance after
    /// it, never on the other color.
    async fn forward(
        &self,
        request: Request<Incoming>,
        backend: &Backend,
        client: SocketAddr,
    ) -> Result<(SocketAddr, Response<Incoming>), Failure> {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        add_forwarded(&mut headers, client.ip());
        let path = parts
            .uri
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/")
            .to_owned();

        // Retrying needs the request a second time; a streamed body can be sent only
        // once, so only requests without one are retried.
        let retryable = is_idempotent(&parts.method) && body.is_end_stream();
        let mut body = if retryable { None } else { Some(body) };

        let count = backend.instances.len();
        let first = self
            .state(backend.color)
            .next_instance
            .fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0;
        loop {
            let instance = backend.instances[(first + attempt) % count];
            let may_retry = retryable && attempt == 0 && count > 1;

            let uri: Uri = format!("http://{instance}{path}").parse().map_err(|err| {
                self.bad_gateway(backend, instance, "bad-uri", format!("bad URI: {err}"))
            })?;
            let mut upstream = Request::new(match body.take() {
                Some(body) => Either::Left(body),
                None => Either::Right(Empty::new()),
            });
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = uri;
            *upstream.headers_mut() = if may_retry {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };

            match tokio::time::timeout(self.upstream_timeout, self.client.request(upstream)).await {
                Ok(Ok(response)) => return Ok((instance, response)),
                Ok(Err(err)) => {
                    let error = error_chain(&err);
                    if may_retry && err.is_connect() {
                        warn!(rollout = %self.rollout, color = %backend.color, %instance, %error, "connect failed; retrying on the next instance");
                        attempt += 1;
                        continue;
                    }
                    warn!(rollout = %self.rollout, color = %backend.color, %instance, %error, "upstream request failed");
                    let reason = if err.is_connect() {
                        "upstream-connect-failed"
                    } else {
                        "upstream-failed"
                    };
                    return Err(self.bad_gateway(backend, instance, reason, error));
                }
                Err(_elapsed) => {
                    warn!(rollout = %self.rollout, color = %backend.color, %instance, timeout = ?self.upstream_timeout, "upstream sent no response headers in time");
                    return Err(Failure {
                        status: StatusCode::GATEWAY_TIMEOUT,
                        reason: "upstream-timeout",
                        message: format!(
                            "teal: instance {instance} of rollout {:?} ({} revision {}) sent no response headers within {:?}",
                            self.rollout, backend.color, backend.revision, self.upstream_timeout
                        ),
                    });
                }
            }
        }
    }

    fn no_instance(&self, route: Route, detail: String) -> Failure {
        Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "no-ready-instance",
            message: format!(
                "teal: no ready instance of rollout {:?} for the {} route ({detail})",
                self.rollout,
                route.as_str()
            ),
        }
    }

    fn bad_gateway(
        &self,
        backend: &Backend,
        instance: SocketAddr,
        reason: &'static str,
        error: String,
    ) -> Failure {
        Failure {
            status: StatusCode::BAD_GATEWAY,
            reason,
            message: format!(
                "teal: instance {instance} of rollout {:?} ({} revision {}) failed: {error}",
                self.rollout, backend.color, backend.revision
            ),
        }
    }
}

/// Methods safe to send twice (RFC 9110 §9.2.2) that we retry. PUT and DELETE are
/// idempotent too but carry intent the user may not want repeated by a proxy.
fn is_idempotent(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// Says who served: `x-teal-color` and `x-teal-revision`.
fn label(headers: &mut HeaderMap, backend: &Backend) {
    headers.insert(
        X_TEAL_COLOR,
        HeaderValue::from_static(backend.color.as_str()),
    );
    headers.insert(X_TEAL_REVISION, HeaderValue::from(backend.revision));
}

/// A short text answer from teal itself, labelled with the backend it was routed to
/// when there is one.
fn failure_response(failure: Failure, backend: Option<&Backend>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(format!("{}\n", failure.message)));
    *response.status_mut() = failure.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_TEAL_REASON, HeaderValue::from_static(failure.reason));
    if let Some(backend) = backend {
        label(headers, backend);
    }
    response
}

/// The error and its causes on one line: hyper's top-level message ("client error
/// (Connect)") says little without them.
fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
