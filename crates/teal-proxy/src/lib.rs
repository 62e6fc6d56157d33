//! teal's data plane: one reverse proxy per rollout.
//!
//! Every request reads one atomically swapped [`RouteTable`]: which ready instances
//! serve the active route and which serve the preview route. Nothing caches a color per
//! connection, so after a swap the next request on every keep-alive connection goes to
//! the new color, while requests already in flight finish where they started.
//!
//! CONTRACT (the daemon is written against it; keep these names and meanings):
//! - `Proxy::new(rollout_name) -> Arc<Proxy>`
//! - `Proxy::set_routes(&self, RouteTable)`: one atomic swap.
//! - `Proxy::routes(&self) -> Arc<RouteTable>`
//! - `Proxy::in_flight(&self, Color) -> u64`: requests currently being served by that
//!   color (guards that also fire when the client goes away).
//! - `Proxy::drain(&self, Color, Duration) -> bool`: waits until nothing is in flight
//!   on the color, or the timeout, then for its upgraded connections (WebSocket) up to
//!   [`ProxyOptions::upgraded_drain_timeout`], closing those still open; true when
//!   everything ended by itself.
//! - `Proxy::close_upgraded(&self, Color)`: closes the color's upgraded connections
//!   now (a color about to be replaced), which also ends a drain waiting for them.
//! - `Proxy::stats(&self, Color) -> ColorStats`: counters since start.
//! - `Proxy::set_options(&self, ProxyOptions)`: limits, timeouts, passive health.
//! - `serve(listener, proxy, Role, shutdown)`: the caller binds, the server serves.
//!   `serve_tls(listener, proxy, Role, TlsSetting, shutdown)`: the same with TLS
//!   (a [`Tls`] certificate from PEM files, reloaded when they change).
//!
//! Clients speak HTTP/1.1 or HTTP/2 (ALPN over TLS, prior knowledge in plain text);
//! instances are spoken to in HTTP/1.1, or in h2c ([`UpstreamProtocol`]).

#![warn(missing_docs)]

mod body;
mod headers;
mod options;
mod pool;
mod proxy;
mod routing;
mod server;
mod timer;
mod tls;
mod tunnel;
mod workers;

use std::net::SocketAddr;

use teal_core::Color;
use teal_core::spec::PreviewMatch;

pub use options::{
    CONNECT_TIMEOUT, Limits, POOL_IDLE_TIMEOUT, PassiveHealth, ProxyOptions,
    UPGRADED_DRAIN_TIMEOUT, UPSTREAM_HEADER_TIMEOUT, UPSTREAM_IDLE_TIMEOUT, UpstreamProtocol,
};
pub use proxy::{ColorStats, LATENCY_BUCKETS_MS, Proxy};
pub use server::{
    IDLE_LINGER, SHUTDOWN_GRACE, TLS_HANDSHAKE_TIMEOUT, first_bytes_arrived, serve, serve_tls,
};
pub use tls::{Tls, TlsError, TlsSetting};
pub use workers::set_threads;

/// The ready instances of one color at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The color these instances belong to.
    pub color: Color,
    /// The revision they run.
    pub revision: u64,
    /// Ready instances only; empty means "answer 503".
    pub instances: Vec<SocketAddr>,
}

/// Everything one request needs to be routed; swapped as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Where users go. None before the first revision is ready.
    pub active: Option<Backend>,
    /// Where testers go. None: the preview listener serves the active backend (as
    /// Argo's preview Service points at the stable ReplicaSet between releases) and no
    /// request on the active listener is diverted.
    pub preview: Option<Backend>,
    /// Requests on the active listener that match go to `preview` (when there is one).
    pub preview_match: PreviewMatch,
}

/// Which route a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The users' listener: active backend, or preview for matching requests.
    Active,
    /// The testers' listener: preview backend, or active when there is none.
    Preview,
}
