//! What a proxy allows and how long it waits: limits, timeouts, passive health.

use std::time::Duration;

pub use teal_core::spec::UpstreamProtocol;

/// How long an instance may take to send its response headers before teal answers
/// `504 Gateway Timeout`.
pub const UPSTREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting to an instance may take before teal gives up on it (and an
/// idempotent request is retried on another instance; otherwise `502`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an instance may pause between two pieces of a response body before teal
/// cuts the response (nginx's `proxy_read_timeout` has the same default).
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an idle pooled connection to an instance is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long draining a color waits for its upgraded connections (WebSocket and other
/// `Connection: upgrade` tunnels) to end by themselves before closing them.
pub const UPGRADED_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Request limits and upstream timeouts. Every refusal names the limit, in the
/// `x-teal-reason` header and in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request target plus every header name and value):
    /// `431 Request Header Fields Too Large` above it. Default 32 KiB, the total nginx
    /// allows by default. hyper itself refuses heads above about 400 KiB or with more
    /// than 100 headers, with a plain 431.
    pub max_request_header_bytes: usize,
    /// Largest request body: `413 Content Too Large` at once when `Content-Length`
    /// says more, or as soon as a streamed body passes it. Default 1 GiB.
    pub max_request_body_bytes: u64,
    /// Connecting to an instance: `502` with reason `upstream-connect-timeout` after
    /// it. Default [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// From sending the request to the response headers: `504` after it. Default
    /// [`UPSTREAM_HEADER_TIMEOUT`].
    pub response_header_timeout: Duration,
    /// Longest pause inside a response body; after it the response is cut (its head
    /// is long sent, so the client sees the connection close early). Not applied to
    /// upgraded connections, which may rightly be quiet for hours. Default
    /// [`UPSTREAM_IDLE_TIMEOUT`].
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 32 * 1024,
            max_request_body_bytes: 1024 * 1024 * 1024,
            connect_timeout: CONNECT_TIMEOUT,
            response_header_timeout: UPSTREAM_HEADER_TIMEOUT,
            upstream_idle_timeout: UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

/// Passive health: instances that keep failing are taken out of rotation for a while,
/// between the readiness probes (which stay the source of readiness: an instance the
/// probes call unready is never routed to, whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failures (connection errors, timeouts, 5xx answers) of one instance
    /// that take it out of rotation. Default 5; 0 turns passive health off.
    pub consecutive_failures: u32,
    /// How long an instance stays out; then it is tried again. Default 10 s. When
    /// every instance of a color is out, requests go to them anyway rather than
    /// getting a 503.
    pub cooldown: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// Everything configurable about a [`crate::Proxy`]; see [`crate::Proxy::set_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Request limits and upstream timeouts.
    pub limits: Limits,
    /// Passive health checking of instances.
    pub health: PassiveHealth,
    /// How long [`crate::Proxy::drain`] waits for a color's upgraded connections
    /// before closing them. Default [`UPGRADED_DRAIN_TIMEOUT`].
    pub upgraded_drain_timeout: Duration,
    /// What the proxy speaks to instances. Default HTTP/1.1.
    pub upstream_protocol: UpstreamProtocol,
    /// How long a listener that stops (its daemon hands over or stops, or its address
    /// changes) lets its open connections finish the requests they are serving
    /// before it cuts them. Default [`crate::SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            limits: Limits::default(),
            health: PassiveHealth::default(),
            upgraded_drain_timeout: UPGRADED_DRAIN_TIMEOUT,
            upstream_protocol: UpstreamProtocol::Http1,
            shutdown_grace: crate::SHUTDOWN_GRACE,
        }
    }
}
