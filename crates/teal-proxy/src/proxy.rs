//! The proxy of one rollout: route table, per-color accounting and forwarding.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use hyper::body::{Body, Incoming};
use hyper::ext::Protocol;
use hyper::header::{
    CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, TE, UPGRADE,
};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use teal_core::Color;
use tokio::sync::Notify;
use tracing::{Level, debug, warn};

use crate::body::{Lease, RequestBody, ResponseBody, Upload};
use crate::headers::{Peer, add_forwarded, strip_hop_by_hop, wants_upgrade};
use crate::options::{Limits, PassiveHealth, ProxyOptions, UpstreamProtocol};
use crate::pool::{ConnectError, Health, Instance, Registry, Sender};
use crate::routing::{self, Route};
use crate::server::Exchange;
use crate::tunnel::{self, Upgraded};
use crate::{Role, RouteTable};

/// Response header naming the color that served the request.
const X_TEAL_COLOR: HeaderName = HeaderName::from_static("x-teal-color");
/// Response header naming the revision that served the request.
const X_TEAL_REVISION: HeaderName = HeaderName::from_static("x-teal-revision");
/// Response header on answers teal made itself, saying why in one token.
const X_TEAL_REASON: HeaderName = HeaderName::from_static("x-teal-reason");

/// How long a drain waits, after closing a color's upgraded connections, for their
/// tunnels to finish closing.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    /// Upgraded connections (WebSocket and other `Connection: upgrade` tunnels) open
    /// now. Not in `in_flight`: their request ended with the `101`.
    pub upgraded: u64,
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
    /// Responses with a 4xx status, including teal's own refusals (`rejected`).
    pub responses_4xx: u64,
    /// Responses with a 5xx status, whether from an instance or from teal.
    pub responses_5xx: u64,
    /// 502, 503 and 504 answers teal produced itself (no instance answered). Also
    /// counted in `responses_5xx`.
    pub proxy_errors: u64,
    /// Requests teal refused itself for passing a limit (431, 413) or whose body the
    /// client broke off (400). Also counted in `responses_4xx`.
    pub rejected: u64,
    /// Body bytes received from clients: request bodies, and what clients sent on
    /// upgraded connections.
    pub bytes_in: u64,
    /// Body bytes sent to clients: response bodies from instances, and what instances
    /// sent on upgraded connections.
    pub bytes_out: u64,
    /// Times passive health took an instance of this color out of rotation.
    pub ejections: u64,
}

impl ColorStats {
    /// Responses of any status.
    pub fn responses(&self) -> u64 {
        self.responses_2xx + self.responses_3xx + self.responses_4xx + self.responses_5xx
    }

    /// What was counted between `before` and this snapshot: every counter is the
    /// difference; the gauges (`in_flight`, `upgraded`) are this snapshot's.
    pub fn since(&self, before: &ColorStats) -> ColorStats {
        let mut latency_buckets = self.latency_buckets;
        for (bucket, earlier) in latency_buckets.iter_mut().zip(&before.latency_buckets) {
            *bucket = bucket.saturating_sub(*earlier);
        }
        ColorStats {
            in_flight: self.in_flight,
            upgraded: self.upgraded,
            latency_buckets,
            latency_sum_micros: self
                .latency_sum_micros
                .saturating_sub(before.latency_sum_micros),
            requests: self.requests.saturating_sub(before.requests),
            responses_2xx: self.responses_2xx.saturating_sub(before.responses_2xx),
            responses_3xx: self.responses_3xx.saturating_sub(before.responses_3xx),
            responses_4xx: self.responses_4xx.saturating_sub(before.responses_4xx),
            responses_5xx: self.responses_5xx.saturating_sub(before.responses_5xx),
            proxy_errors: self.proxy_errors.saturating_sub(before.proxy_errors),
            rejected: self.rejected.saturating_sub(before.rejected),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            ejections: self.ejections.saturating_sub(before.ejections),
        }
    }
}

/// Live state of one color. Shared (Arc) with the in-flight guards, which may outlive
/// the request future inside a response body, and with the tunnels.
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
    rejected: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    ejections: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS],
    latency_sum_micros: AtomicU64,
    /// Upgraded connections open now.
    pub(crate) upgraded: AtomicU64,
    /// Woken when `upgraded` drops to zero.
    pub(crate) upgraded_idle: Notify,
    /// Bumped to close every tunnel open now (each remembers the value it started
    /// with); `close_tunnels` wakes them.
    pub(crate) close_generation: AtomicU64,
    pub(crate) close_tunnels: Notify,
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
            rejected: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: AtomicU64::new(0),
            upgraded: AtomicU64::new(0),
            upgraded_idle: Notify::new(),
            close_generation: AtomicU64::new(0),
            close_tunnels: Notify::new(),
        }
    }

    /// Counts a response. `by_teal`: teal answered itself (a 5xx is then also a proxy
    /// error, a 4xx a refusal).
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
            // 1xx are not final responses (a 101 hands over to a tunnel).
            _ => return,
        };
        class.fetch_add(1, Ordering::Relaxed);
        if by_teal {
            if status.is_server_error() {
                self.proxy_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
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
            rejected: self.rejected.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            upgraded: self.upgraded.load(Ordering::SeqCst),
            latency_buckets: std::array::from_fn(|i| {
                self.latency_buckets[i].load(Ordering::Relaxed)
            }),
            latency_sum_micros: self.latency_sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// Resolves once the counter is zero (immediately if it is), `zero` being notified
/// (notify_waiters) whenever it drops to zero.
async fn wait_zero(counter: &AtomicU64, zero: &Notify) {
    loop {
        let notified = zero.notified();
        tokio::pin!(notified);
        // Register before checking: notify_waiters only wakes registered waiters, so
        // a guard dropping between the check and the await would otherwise be missed.
        notified.as_mut().enable();
        if counter.load(Ordering::SeqCst) == 0 {
            return;
        }
        notified.await;
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

    pub(crate) fn state(&self) -> &ColorState {
        &self.state
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

/// One backend of the route table as requests use it: its instances resolved to
/// their pools, its revision header made once.
struct Target {
    color: Color,
    revision: u64,
    revision_header: HeaderValue,
    instances: Vec<Arc<Instance>>,
}

/// What one request reads, in one atomic load: the route table, its backends
/// resolved, and the options.
struct Routing {
    table: Arc<RouteTable>,
    active: Option<Arc<Target>>,
    preview: Option<Arc<Target>>,
    options: ProxyOptions,
}

impl Routing {
    fn new(table: Arc<RouteTable>, options: ProxyOptions, registry: &Registry) -> Routing {
        let target = |backend: &crate::Backend| {
            Arc::new(Target {
                color: backend.color,
                revision: backend.revision,
                revision_header: HeaderValue::from(backend.revision),
                instances: backend
                    .instances
                    .iter()
                    .map(|addr| registry.instance(*addr))
                    .collect(),
            })
        };
        Routing {
            active: table.active.as_ref().map(target),
            preview: table.preview.as_ref().map(target),
            table,
            options,
        }
    }
}

/// An instance's answer, with the connection it came on.
struct Forwarded {
    response: Response<Incoming>,
    lease: Lease,
}

/// The reverse proxy of one rollout. Shared by its active and preview listeners.
pub struct Proxy {
    rollout: String,
    routing: ArcSwap<Routing>,
    /// Serializes the writers of `routing` (set_routes, set_options), which build the
    /// new value from the current one.
    writer: Mutex<()>,
    /// Indexed by [`color_index`].
    colors: [Arc<ColorState>; 2],
    /// Tables swapped out while requests routed by them may still be between loading
    /// the table and counting themselves in flight (each request holds its table until
    /// it counts as in flight).
    retired: Mutex<Vec<Arc<Routing>>>,
    /// Every instance's connections and passive health, by address.
    registry: Arc<Registry>,
    /// Indexed by [`color_index`]: the revision the color was last routed to, and the
    /// color's counters when it began serving it (see [`Proxy::revision_stats`]).
    revisions: [Mutex<Option<(u64, ColorStats)>>; 2],
}

fn color_index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Proxy {
    /// A proxy for the rollout with an empty route table (every request gets 503 until
    /// [`Proxy::set_routes`]) and the default [`ProxyOptions`].
    pub fn new(rollout: &str) -> Arc<Proxy> {
        Proxy::with_options(rollout, ProxyOptions::default())
    }

    /// Like [`Proxy::new`], with other options.
    pub fn with_options(rollout: &str, options: ProxyOptions) -> Arc<Proxy> {
        let registry = Registry::new();
        let routing = Routing::new(Arc::new(RouteTable::default()), options, &registry);
        Arc::new(Proxy {
            rollout: rollout.to_owned(),
            routing: ArcSwap::from_pointee(routing),
            writer: Mutex::new(()),
            colors: [Arc::new(ColorState::new()), Arc::new(ColorState::new())],
            retired: Mutex::new(Vec::new()),
            registry,
            revisions: [Mutex::new(None), Mutex::new(None)],
        })
    }

    /// Like [`Proxy::new`], with another limit on how long an instance may take to
    /// send its response headers ([`Limits::response_header_timeout`]).
    pub fn with_upstream_timeout(rollout: &str, upstream_timeout: Duration) -> Arc<Proxy> {
        let mut options = ProxyOptions::default();
        options.limits.response_header_timeout = upstream_timeout;
        Proxy::with_options(rollout, options)
    }

    /// The rollout this proxy serves.
    pub fn rollout(&self) -> &str {
        &self.rollout
    }

    /// Replaces the route table in one atomic swap. Requests that already loaded the
    /// old table finish by it; every later request, on any connection, uses the new one.
    pub fn set_routes(&self, routes: RouteTable) {
        debug!(rollout = %self.rollout, ?routes, "route table swapped");
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Before the table goes out, so every request to a new revision counts on it.
        for backend in [&routes.active, &routes.preview].into_iter().flatten() {
            let mut serving = self.revisions[color_index(backend.color)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if serving.as_ref().map(|(revision, _)| *revision) != Some(backend.revision) {
                *serving = Some((backend.revision, self.stats(backend.color)));
            }
        }
        let options = self.routing.load().options;
        self.publish(Routing::new(Arc::new(routes), options, &self.registry));
    }

    /// Replaces the options; requests that start from now on follow them.
    pub fn set_options(&self, options: ProxyOptions) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let table = Arc::clone(&self.routing.load().table);
        self.publish(Routing::new(table, options, &self.registry));
    }

    /// The options requests follow now.
    pub fn options(&self) -> ProxyOptions {
        self.routing.load().options
    }

    fn publish(&self, routing: Routing) {
        let old = self.routing.swap(Arc::new(routing));
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
        Arc::clone(&self.routing.load().table)
    }

    /// Requests currently being served by the color: routed to it and not yet
    /// finished (response body fully handed out, or the client went away).
    pub fn in_flight(&self, color: Color) -> u64 {
        self.state(color).in_flight.load(Ordering::SeqCst)
    }

    /// Instances passive health keeps out of rotation now (after
    /// [`PassiveHealth::consecutive_failures`] failures in a row, for
    /// [`PassiveHealth::cooldown`]), sorted.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        self.registry.ejected()
    }

    /// Waits until nothing is in flight on the color, or the timeout passes; then until
    /// its upgraded connections have ended, or [`ProxyOptions::upgraded_drain_timeout`]
    /// passes, when they are closed (both sides shut down). True when everything
    /// finished by itself in time.
    ///
    /// Call it after swapping the color out of the route table; it does not stop new
    /// requests from being routed to the color. A request that loaded the old table an
    /// instant before the swap is waited for too: drain first waits until every
    /// request routed by an older table has counted itself in flight.
    pub async fn drain(&self, color: Color, timeout: Duration) -> bool {
        let state = self.state(color);
        let requests = async {
            // Routing takes microseconds, so a short poll is cheap and rare.
            while !self.old_tables_released() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            wait_zero(&state.in_flight, &state.idle).await;
        };
        // tokio's timeout copes with durations too large to add to "now".
        let requests_drained = tokio::time::timeout(timeout, requests).await.is_ok();
        // After the requests: an upgrade request still in flight becomes a tunnel
        // before it stops counting as a request.
        let upgraded_drained = self.drain_upgraded(color).await;
        requests_drained && upgraded_drained
    }

    /// Waits until the color's upgraded connections have ended, or
    /// [`ProxyOptions::upgraded_drain_timeout`] passes, when they are closed (both
    /// sides shut down). True when they all ended by themselves. A daemon that handed
    /// over its listeners calls it for every color before it exits, since its tunnels
    /// die with it.
    pub async fn drain_upgraded(&self, color: Color) -> bool {
        let state = self.state(color);
        let timeout = self.options().upgraded_drain_timeout;
        let upgraded = wait_zero(&state.upgraded, &state.upgraded_idle);
        if tokio::time::timeout(timeout, upgraded).await.is_ok() {
            return true;
        }
        warn!(
            rollout = %self.rollout, %color, open = state.upgraded.load(Ordering::SeqCst), ?timeout,
            "upgraded connections still open after the drain timeout; closing them"
        );
        self.close_upgraded(color);
        let closed = wait_zero(&state.upgraded, &state.upgraded_idle);
        let _ = tokio::time::timeout(TUNNEL_CLOSE_WAIT, closed).await;
        false
    }

    /// Closes the color's upgraded connections open now, cleanly (both sides shut
    /// down), without waiting: for a color about to be replaced, whose tunnels a
    /// [`Proxy::drain`] under way would otherwise wait out. Later upgrades are not
    /// affected.
    pub fn close_upgraded(&self, color: Color) {
        let state = self.state(color);
        state.close_generation.fetch_add(1, Ordering::SeqCst);
        state.close_tunnels.notify_waiters();
    }

    /// The color's counters since the proxy was created.
    pub fn stats(&self, color: Color) -> ColorStats {
        self.state(color).snapshot()
    }

    /// The revision the color serves (the last one a route table gave it) and its
    /// counters since it began serving that revision; None before any table routed to
    /// the color. A color keeps its revision and counts while no table routes to it.
    /// Requests of the previous revision still under way when the table changed finish
    /// into the new one's counts (a color gets a new revision once its old one has
    /// drained, so there are seldom any), and the gauges are the color's.
    pub fn revision_stats(&self, color: Color) -> Option<(u64, ColorStats)> {
        let serving = self.revisions[color_index(color)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (revision, baseline) = serving.as_ref()?;
        Some((*revision, self.stats(color).since(baseline)))
    }

    fn state(&self, color: Color) -> &Arc<ColorState> {
        &self.colors[color_index(color)]
    }

    /// Serves one request that arrived on a listener of the given role.
    pub(crate) async fn handle(
        &self,
        mut request: Request<Incoming>,
        role: Role,
        client: &Peer,
        exchange: Option<Exchange>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        // The one load of this request: it is routed by this snapshot, whatever
        // set_routes does meanwhile. The request holds the table until it counts as in
        // flight, which is what lets `drain` know no routing by an old table is pending.
        let routing = self.routing.load();
        let (route, backend) = routing::choose(&routing.table, role, request.headers());
        let target = backend.and_then(|_| match route {
            Route::Active => routing.active.as_ref(),
            Route::Preview => routing.preview.as_ref(),
        });
        let Some(target) = target.map(Arc::clone) else {
            let failure = self.no_instance(route, "no revision is deployed yet".to_owned());
            debug!(rollout = %self.rollout, method = %request.method(), path = request.uri().path(), route = route.as_str(), "no backend");
            return failure_response(failure, None);
        };
        let options = routing.options;
        let state = self.state(target.color);
        state.requests.fetch_add(1, Ordering::Relaxed);

        if target.instances.is_empty() {
            let detail = format!(
                "{} revision {} has no ready instance",
                target.color, target.revision
            );
            let failure = self.no_instance(route, detail);
            debug!(rollout = %self.rollout, method = %request.method(), path = request.uri().path(), route = route.as_str(), color = %target.color, "no ready instance");
            state.record(failure.status, true, started.elapsed());
            return failure_response(failure, Some(&target));
        }
        if let Some(failure) = over_limits(&request, &options.limits) {
            debug!(rollout = %self.rollout, method = %request.method(), path = request.uri().path(), reason = failure.reason, "refused");
            state.record(failure.status, true, started.elapsed());
            return failure_response(failure, Some(&target));
        }

        // From here until the response body ends (or is dropped) the request counts
        // on this color. If the client goes away before the response, hyper drops this
        // future and the guard with it.
        let guard = InFlight::enter(state);
        drop(routing);

        let logged = tracing::enabled!(Level::DEBUG)
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let client_upgrade = match ClientUpgrade::of(&mut request) {
            Ok(upgrade) => upgrade,
            Err(failure) => {
                debug!(rollout = %self.rollout, method = %request.method(), path = request.uri().path(), reason = failure.reason, "refused");
                state.record(failure.status, true, started.elapsed());
                return failure_response(failure, Some(&target));
            }
        };
        let (mut parts, body) = request.into_parts();
        let (body, upload) =
            RequestBody::new(body, state, options.limits.max_request_body_bytes, exchange);
        let hop = strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, client);
        match &client_upgrade {
            Some(ClientUpgrade::Http1(_)) => {
                if let Some(protocol) = hop.upgrade {
                    parts
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    parts.headers.insert(UPGRADE, protocol);
                }
            }
            Some(ClientUpgrade::H2WebSocket(_)) => websocket_handshake(&mut parts),
            None => {}
        }
        to_origin_form(&mut parts);
        // A tunnel is an HTTP/1.1 upgrade, whatever the instance speaks otherwise.
        let protocol = match client_upgrade {
            Some(_) => UpstreamProtocol::Http1,
            None => options.upstream_protocol,
        };
        if protocol == UpstreamProtocol::H2c {
            if hop.trailers {
                // The one TE HTTP/2 allows, which gRPC servers insist on.
                parts
                    .headers
                    .insert(TE, HeaderValue::from_static("trailers"));
            }
            if let Err(failure) = to_h2_form(&mut parts) {
                debug!(rollout = %self.rollout, reason = failure.reason, "refused");
                state.record(failure.status, true, started.elapsed());
                return failure_response(failure, Some(&target));
            }
        }
        let upstream = Request::from_parts(parts, body);

        let forwarded = self
            .forward(
                upstream,
                protocol,
                &target,
                state,
                &options,
                upload.as_deref(),
            )
            .await;
        let Forwarded {
            mut response,
            lease,
        } = match forwarded {
            Ok(forwarded) => forwarded,
            Err(failure) => {
                state.record(failure.status, true, started.elapsed());
                return failure_response(failure, Some(&target));
            }
        };
        let status = response.status();
        if let Some(ClientUpgrade::H2WebSocket(_)) = &client_upgrade
            && status != StatusCode::SWITCHING_PROTOCOLS
            && status.is_success()
        {
            // To an HTTP/2 client a 2xx means "the tunnel is open", which it is not:
            // the instance answered as if this were an ordinary GET.
            let failure = self.bad_gateway(
                &target,
                lease.instance.addr,
                "websocket-not-switched",
                format!(
                    "answered the WebSocket handshake with {status} instead of 101 Switching Protocols"
                ),
            );
            state.record(failure.status, true, started.elapsed());
            return failure_response(failure, Some(&target));
        }
        state.record(status, false, started.elapsed());
        if let Some((method, path)) = logged {
            debug!(
                rollout = %self.rollout, %method, %path, route = route.as_str(),
                color = %target.color, revision = target.revision,
                instance = %lease.instance.addr, status = status.as_u16(), "proxied"
            );
        }

        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _empty) = response.into_parts();
            let hop = strip_hop_by_hop(&mut parts.headers);
            let client_upgrade = match client_upgrade {
                ClientUpgrade::Http1(client_upgrade) => {
                    parts
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(protocol) = hop.upgrade {
                        parts.headers.insert(UPGRADE, protocol);
                    }
                    client_upgrade
                }
                ClientUpgrade::H2WebSocket(client_upgrade) => {
                    // RFC 8441 §5: the stream is open once the client has a 200; the
                    // accept value answered the key teal made up, not the client.
                    parts.status = StatusCode::OK;
                    parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
                    client_upgrade
                }
            };
            label(&mut parts.headers, &target);
            // Counted as upgraded before the request stops counting as in flight.
            let upgraded = Upgraded::enter(state);
            tokio::spawn(async move {
                tunnel::run(client_upgrade, upstream_upgrade, upgraded).await;
                // The connection belongs to the tunnel now; never back to the pool.
                drop(lease);
            });
            drop(guard);
            return Response::from_parts(parts, ResponseBody::empty());
        }

        let (mut parts, body) = response.into_parts();
        let hop = strip_hop_by_hop(&mut parts.headers);
        // The version is per hop: the client talks HTTP/1.1 with us whatever the
        // instance spoke (hyper adapts it for HTTP/1.0 clients).
        parts.version = Version::HTTP_11;
        label(&mut parts.headers, &target);
        // An instance that says it closes the connection will not take another
        // request on it.
        let lease = (!hop.close).then_some(lease);
        let body = ResponseBody::upstream(
            body,
            guard,
            lease,
            upload,
            options.limits.upstream_idle_timeout,
        );
        Response::from_parts(parts, body)
    }

    /// Sends the request to the target's next instance in rotation, on an idle
    /// connection of that instance or a new one. A request whose connect failed (so
    /// nothing of it was sent) is retried once on another instance when its method is
    /// idempotent, never on the other color; one that an idle connection closed under
    /// before it was sent is sent again on a fresh connection.
    async fn forward(
        &self,
        mut request: Request<RequestBody>,
        protocol: UpstreamProtocol,
        target: &Target,
        state: &ColorState,
        options: &ProxyOptions,
        upload: Option<&Upload>,
    ) -> Result<Forwarded, Failure> {
        let limits = &options.limits;
        let count = target.instances.len();
        let start = state.next_instance.fetch_add(1, Ordering::Relaxed);
        let mut index = self.pick(target, start, None);
        let mut may_retry = is_idempotent(request.method()) && count > 1;
        // An HTTP/2 instance may give a stream back unprocessed (see `processed`); a
        // request without a body can then be sent again, from this copy of its head.
        let mut replay =
            (protocol == UpstreamProtocol::H2c && upload.is_none()).then(|| Head::of(&request));
        loop {
            let instance = &target.instances[index];
            let (mut sender, reused) = match instance.checkout(protocol) {
                Some(sender) => (sender, true),
                None => match instance.connect(protocol, limits.connect_timeout).await {
                    Ok(sender) => {
                        self.registry.start_reaper();
                        (sender, false)
                    }
                    Err(err) => {
                        self.instance_failed(instance, target, state, &options.health);
                        let (reason, error) = match err {
                            ConnectError::Timeout(timeout) => (
                                "upstream-connect-timeout",
                                format!("connect timeout: no connection within {timeout:?}"),
                            ),
                            ConnectError::Failed(error) => (
                                "upstream-connect-failed",
                                format!("connect failed: {error}"),
                            ),
                        };
                        if may_retry {
                            warn!(rollout = %self.rollout, color = %target.color, instance = %instance.addr, %error, "connect failed; retrying on another instance");
                            may_retry = false;
                            index = self.pick(target, index + 1, Some(index));
                            continue;
                        }
                        warn!(rollout = %self.rollout, color = %target.color, instance = %instance.addr, %error, "upstream request failed");
                        return Err(self.bad_gateway(target, instance.addr, reason, error));
                    }
                },
            };
            if reused && !self.ready(&mut sender, limits.connect_timeout).await {
                // Closed while idle: take the next one (nothing was sent).
                continue;
            }
            // HTTP/1.0 clients may send no Host; HTTP/1.1 servers need one, HTTP/2
            // ones an :authority. The instance's address stands in.
            match protocol {
                UpstreamProtocol::Http1 if !request.headers().contains_key(HOST) => {
                    if let Ok(host) = HeaderValue::try_from(instance.addr.to_string()) {
                        request.headers_mut().insert(HOST, host);
                    }
                }
                UpstreamProtocol::H2c if request.uri().authority().is_none() => {
                    let authority = Authority::try_from(instance.addr.to_string()).ok();
                    if let Some(uri) = authority.and_then(|a| absolute(request.uri(), a)) {
                        *request.uri_mut() = uri;
                    }
                }
                _ => {}
            }
            let sent = sender.send(request, limits.response_header_timeout).await;
            match sent {
                Some(Ok(response)) => {
                    if response.status().is_server_error() {
                        self.instance_failed(instance, target, state, &options.health);
                    } else {
                        instance.succeeded();
                    }
                    let lease = Lease {
                        instance: Arc::clone(instance),
                        sender,
                    };
                    return Ok(Forwarded { response, lease });
                }
                Some(Err(mut err)) => {
                    if reused && let Some(unsent) = err.take_message() {
                        // The idle connection went away before the request was
                        // written: nothing reached the instance, send it again, on
                        // another connection (a shared HTTP/2 one is let go, so the
                        // next is a new one).
                        instance.discard(&sender);
                        request = unsent;
                        continue;
                    }
                    let err = err.into_error();
                    if upload.is_some_and(Upload::too_large) {
                        return Err(body_too_large(limits));
                    }
                    if let Some(why) = upload.and_then(Upload::client_failed) {
                        // The client's own body failed (it went away, or sent a bad
                        // chunk): not the instance's fault.
                        return Err(Failure {
                            status: StatusCode::BAD_REQUEST,
                            reason: "client-body-failed",
                            message: format!("teal: the request body could not be read: {why}"),
                        });
                    }
                    instance.discard(&sender);
                    // An instance that turns a request away unprocessed (it is at its
                    // stream limit, or shutting down) is not failing: not held
                    // against it.
                    let processed = processed(&err, protocol);
                    let resend = match processed {
                        Processed::Maybe => false,
                        Processed::No => true,
                        Processed::LikelyNot => replay
                            .as_ref()
                            .is_some_and(|head| is_idempotent(&head.method)),
                    };
                    if resend && let Some(head) = replay.take() {
                        // Nothing of it reached the application: once more, on a new
                        // connection, to another instance when there is one.
                        debug!(rollout = %self.rollout, color = %target.color, instance = %instance.addr, error = %error_chain(&err), "request not processed; sending it again");
                        index = self.pick(target, index + 1, Some(index));
                        request = head.into_request();
                        continue;
                    }
                    if processed == Processed::Maybe {
                        self.instance_failed(instance, target, state, &options.health);
                    }
                    let error = error_chain(&err);
                    warn!(rollout = %self.rollout, color = %target.color, instance = %instance.addr, %error, "upstream request failed");
                    return Err(self.bad_gateway(target, instance.addr, "upstream-failed", error));
                }
                None => {
                    self.instance_failed(instance, target, state, &options.health);
                    instance.discard(&sender);
                    let timeout = limits.response_header_timeout;
                    warn!(rollout = %self.rollout, color = %target.color, instance = %instance.addr, ?timeout, "upstream sent no response headers in time");
                    return Err(Failure {
                        status: StatusCode::GATEWAY_TIMEOUT,
                        reason: "upstream-timeout",
                        message: format!(
                            "teal: instance {} of rollout {:?} ({} revision {}) sent no response headers within {timeout:?} (response header timeout)",
                            instance.addr, self.rollout, target.color, target.revision
                        ),
                    });
                }
            }
        }
    }

    /// Waits until a pooled connection can take a request: usually at once, or after
    /// a moment when its previous response has only just ended. False when it closed
    /// (or, oddly, stayed busy past `limit`).
    async fn ready(&self, sender: &mut Sender, limit: Duration) -> bool {
        // One poll first, so the common case sets no timer.
        match poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await {
            Poll::Ready(ready) => ready.is_ok(),
            Poll::Pending => matches!(
                tokio::time::timeout(limit, sender.ready()).await,
                Ok(Ok(()))
            ),
        }
    }

    /// The instance to use: the first in rotation from `start` that passive health
    /// has not taken out (and is not `skip`); when all are out, the first anyway.
    fn pick(&self, target: &Target, start: usize, skip: Option<usize>) -> usize {
        let count = target.instances.len();
        let mut fallback = None;
        for step in 0..count {
            let index = (start + step) % count;
            if Some(index) == skip {
                continue;
            }
            if !target.instances[index].is_ejected(&self.registry) {
                return index;
            }
            fallback.get_or_insert(index);
        }
        fallback.or(skip).unwrap_or(0)
    }

    /// Counts a failure of the instance for passive health; says so when that takes
    /// it out of rotation.
    fn instance_failed(
        &self,
        instance: &Instance,
        target: &Target,
        state: &ColorState,
        health: &PassiveHealth,
    ) {
        if let Health::Ejected(failures) =
            instance.failed(&self.registry, health.consecutive_failures, health.cooldown)
        {
            state.ejections.fetch_add(1, Ordering::Relaxed);
            warn!(
                rollout = %self.rollout, color = %target.color, revision = target.revision,
                instance = %instance.addr, failures, cooldown = ?health.cooldown,
                "instance failed repeatedly; out of rotation for the cooldown"
            );
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
        target: &Target,
        instance: SocketAddr,
        reason: &'static str,
        error: String,
    ) -> Failure {
        Failure {
            status: StatusCode::BAD_GATEWAY,
            reason,
            message: format!(
                "teal: instance {instance} of rollout {:?} ({} revision {}) failed: {error}",
                self.rollout, target.color, target.revision
            ),
        }
    }
}

/// A refusal when the request is over one of the limits that can be read from its
/// head: the head's size, the body's announced length.
fn over_limits(request: &Request<Incoming>, limits: &Limits) -> Option<Failure> {
    let head = request
        .uri()
        .path_and_query()
        .map_or(1, |target| target.as_str().len())
        + request
            .headers()
            .iter()
            // ": " and CRLF.
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > limits.max_request_header_bytes {
        return Some(Failure {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: "request-header-too-large",
            message: format!(
                "teal: the request head is {head} bytes, over the limit of {} bytes (max_request_header_bytes)",
                limits.max_request_header_bytes
            ),
        });
    }
    // Content-Length, as hyper read it.
    if request.body().size_hint().lower() > limits.max_request_body_bytes {
        return Some(body_too_large(limits));
    }
    None
}

fn body_too_large(limits: &Limits) -> Failure {
    Failure {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "request-body-too-large",
        message: format!(
            "teal: the request body is over the limit of {} bytes (max_request_body_bytes)",
            limits.max_request_body_bytes
        ),
    }
}

/// How a client asked to leave HTTP for a tunnel to its instance.
enum ClientUpgrade {
    /// HTTP/1.1 `Connection: upgrade`: the instance's `101` goes back as it is.
    Http1(OnUpgrade),
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441), which browsers
    /// use on HTTP/2 connections: the instance gets the HTTP/1.1 WebSocket handshake
    /// and its `101` goes back as a `200`.
    H2WebSocket(OnUpgrade),
}

impl ClientUpgrade {
    /// The upgrade the request asks for, if any; a refusal for an HTTP/2 CONNECT teal
    /// cannot carry to an HTTP/1.1 instance.
    fn of(request: &mut Request<Incoming>) -> Result<Option<ClientUpgrade>, Failure> {
        match request.version() {
            Version::HTTP_11 if wants_upgrade(request.headers()) => Ok(Some(ClientUpgrade::Http1(
                hyper::upgrade::on(&mut *request),
            ))),
            Version::HTTP_2 if request.method() == Method::CONNECT => {
                match request.extensions().get::<Protocol>() {
                    Some(protocol) if protocol.as_str().eq_ignore_ascii_case("websocket") => Ok(
                        Some(ClientUpgrade::H2WebSocket(hyper::upgrade::on(request))),
                    ),
                    Some(protocol) => Err(Failure {
                        status: StatusCode::NOT_IMPLEMENTED,
                        reason: "connect-protocol-unsupported",
                        message: format!(
                            "teal: extended CONNECT for protocol {:?} is not supported; only websocket (RFC 8441) is",
                            protocol.as_str()
                        ),
                    }),
                    None => Err(Failure {
                        status: StatusCode::NOT_IMPLEMENTED,
                        reason: "connect-unsupported",
                        message: "teal: CONNECT tunnels are not supported (teal is a reverse proxy); WebSockets over HTTP/2 use extended CONNECT with :protocol websocket".to_owned(),
                    }),
                }
            }
            _ => Ok(None),
        }
    }
}

/// Turns an HTTP/2 WebSocket request (RFC 8441) into the HTTP/1.1 handshake an
/// instance expects (RFC 6455 §4.1): a GET asking to upgrade, with a fresh key.
/// `Sec-WebSocket-Version`, `-Protocol` and `-Extensions` go on as the client sent them.
fn websocket_handshake(parts: &mut Parts) {
    parts.method = Method::GET;
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    parts.headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    let mut nonce = [0u8; 16];
    // The key is a nonce, not a secret: should the system's generator fail, which
    // it does not on any platform teal runs on, a time-based one still differs
    // per connection.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .is_err()
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        nonce = now.as_nanos().to_le_bytes();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

/// Sends the path and query only (origin-form), as an instance expects: a request in
/// absolute-form (or from HTTP/2, where the URI carries the authority) keeps its
/// authority as `Host` when it has none.
fn to_origin_form(parts: &mut Parts) {
    parts.version = Version::HTTP_11;
    let Some(authority) = parts.uri.authority() else {
        return;
    };
    if !parts.headers.contains_key(HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
}

/// Gives a request in origin-form the form HTTP/2 sends (RFC 9113 §8.3.1): its Host
/// as `:authority` (in the URI, which hyper sends as the pseudo-headers) and `http` as
/// `:scheme`, the path as it was. A request without Host is left for `forward` to give
/// the instance's address; a Host that is no authority (a path, user info) is refused
/// rather than let change the path the instance sees.
fn to_h2_form(parts: &mut Parts) -> Result<(), Failure> {
    parts.version = Version::HTTP_2;
    let Some(host) = parts.headers.get(HOST) else {
        return Ok(());
    };
    let uri = Authority::try_from(host.as_bytes())
        .ok()
        .filter(|authority| !authority.as_str().contains('@'))
        .and_then(|authority| absolute(&parts.uri, authority));
    let Some(uri) = uri else {
        return Err(Failure {
            status: StatusCode::BAD_REQUEST,
            reason: "bad-host",
            message: format!(
                "teal: the Host header {:?} is not a host[:port]",
                String::from_utf8_lossy(host.as_bytes())
            ),
        });
    };
    parts.uri = uri;
    parts.headers.remove(HOST);
    Ok(())
}

/// `http://AUTHORITY` and the path and query of `uri` ("/" when it has none): the
/// absolute form hyper sends to an HTTP/2 server as `:scheme`, `:authority` and `:path`.
fn absolute(uri: &Uri, authority: Authority) -> Option<Uri> {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

/// Whether a failed exchange with an instance reached its application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Processed {
    /// It may have: the failure counts against the instance.
    Maybe,
    /// An HTTP/2 instance said it did not (RFC 9113 §8.7): a request without a body of
    /// any method may be sent again.
    No,
    /// Almost surely not, though the instance did not say so: sent again only when
    /// idempotent.
    LikelyNot,
}

/// What a failed exchange says about whether the instance processed the request. An
/// HTTP/2 instance says it did not when it refuses the stream (`REFUSED_STREAM`), or
/// the stream was above the last one its GOAWAY said it would process, or opened
/// after that GOAWAY; h2 reports those as a GOAWAY error from the peer (a stream the
/// instance had taken and then lost with the connection gets an I/O error instead).
/// When the connection ends while a request still waits in hyper for a stream (the
/// instance's stream limit was reached), hyper says its "dispatch task is gone"; that
/// request was almost surely never sent, but one sent an instant before the
/// connection failed can meet the same error.
fn processed(err: &hyper::Error, protocol: UpstreamProtocol) -> Processed {
    if protocol != UpstreamProtocol::H2c {
        return Processed::Maybe;
    }
    // hyper names this error only by its message.
    if err.is_user() && err.to_string() == "dispatch task is gone" {
        return Processed::LikelyNot;
    }
    let refused = std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        });
    if refused {
        Processed::No
    } else {
        Processed::Maybe
    }
}

/// The head of a request without a body, to send it again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn of(request: &Request<RequestBody>) -> Head {
        Head {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    fn into_request(self) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// Methods safe to send twice (RFC 9110 §9.2.2) that we retry. PUT and DELETE are
/// idempotent too but carry intent the user may not want repeated by a proxy.
fn is_idempotent(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// Says who served: `x-teal-color` and `x-teal-revision`.
fn label(headers: &mut HeaderMap, target: &Target) {
    headers.insert(
        X_TEAL_COLOR,
        HeaderValue::from_static(target.color.as_str()),
    );
    headers.insert(X_TEAL_REVISION, target.revision_header.clone());
}

/// A short text answer from teal itself, labelled with the backend it was routed to
/// when there is one.
fn failure_response(failure: Failure, target: Option<&Target>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(format!("{}\n", failure.message)));
    *response.status_mut() = failure.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_TEAL_REASON, HeaderValue::from_static(failure.reason));
    if let Some(target) = target {
        label(headers, target);
    }
    response
}

/// The error and its causes on one line: hyper's top-level message ("client error
/// (Connect)") says little without them.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
