//! Upstream connections, kept per instance, and each instance's passive health.
//!
//! A request takes an idle connection of its instance (or opens one), sends on it,
//! and gives it back when the response body has ended: the connection's
//! `SendRequest` travels with the response body, so giving it back costs one short
//! lock and no task. Instances live in a registry keyed by address that only route
//! table swaps and the reaper touch; a request reaches its instance through the
//! route table, by index, with no lookup.
//!
//! Instances spoken to in h2c have one HTTP/2 connection per thread instead, shared
//! by every request (requests that find none while it is being opened wait for it).
//! It is let go when a request on it fails or times out, when it
//! closes, or after [`POOL_IDLE_TIMEOUT`] unused.
//!
//! Idle connections are kept per thread (see `workers`): a connection is served by a
//! task of the thread that opened it, whose I/O driver watches its socket, so the
//! requests that use it should run there too.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::RequestBody;
use crate::options::{POOL_IDLE_TIMEOUT, UpstreamProtocol};
use crate::timer::Deadline;
use crate::workers;

/// Idle connections kept per instance and thread at most; more are closed when given
/// back.
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// How often the reaper closes connections idle for longer than [`POOL_IDLE_TIMEOUT`].
const REAP_EVERY: Duration = Duration::from_secs(15);

/// A way to send one request to an instance.
pub(crate) enum Sender {
    /// An HTTP/1.1 connection of its own, ready for one request, with the timer its
    /// requests' response header timeout runs on (see `timer`).
    Http1 {
        request: http1::SendRequest<RequestBody>,
        deadline: Deadline,
    },
    /// A handle on the instance's HTTP/2 connection, which many requests share, and
    /// which connection that is (see [`Instance::discard`]).
    Http2 {
        request: http2::SendRequest<RequestBody>,
        id: u64,
    },
}

impl Sender {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Sender::Http1 { request, .. } => request.is_closed(),
            Sender::Http2 { request, .. } => request.is_closed(),
        }
    }

    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Sender::Http1 { request, .. } => request.poll_ready(cx),
            Sender::Http2 { request, .. } => request.poll_ready(cx),
        }
    }

    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    pub(crate) fn protocol(&self) -> UpstreamProtocol {
        match self {
            Sender::Http1 { .. } => UpstreamProtocol::Http1,
            Sender::Http2 { .. } => UpstreamProtocol::H2c,
        }
    }

    /// Sends the request and waits for the response head; None when none came within
    /// `limit`.
    pub(crate) async fn send(
        &mut self,
        request: Request<RequestBody>,
        limit: Duration,
    ) -> Option<Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> {
        match self {
            Sender::Http1 {
                request: sender,
                deadline,
            } => {
                let sent = pin!(sender.try_send_request(request));
                deadline.limit(limit, sent).await
            }
            // Requests share the connection, so each has a timer of its own.
            Sender::Http2 {
                request: sender, ..
            } => tokio::time::timeout(limit, sender.try_send_request(request))
                .await
                .ok(),
        }
    }
}

/// Why no connection could be opened.
#[derive(Clone)]
pub(crate) enum ConnectError {
    /// The connect did not complete in time.
    Timeout(Duration),
    /// Refused, unreachable, or the HTTP handshake failed.
    Failed(String),
}

/// One instance: its idle connections and its passive health.
pub(crate) struct Instance {
    pub(crate) addr: SocketAddr,
    /// HTTP/1.1 connections not in use, per thread that may use them (see
    /// `workers::place`).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// The HTTP/2 connection of each thread, when the instance is spoken to in h2c.
    shared: Box<[Mutex<Option<Shared>>]>,
    /// Per thread, held by the request that opens its HTTP/2 connection, so that the
    /// requests finding none meanwhile wait for that one rather than each open their
    /// own; with when the last attempt failed, and why.
    opening: Box<[tokio::sync::Mutex<LastFailure>]>,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// Milliseconds since the registry's start until which the instance is out of
    /// rotation; 0 when it is in.
    ejected_until: AtomicU64,
}

/// When opening a connection last failed, and why.
type LastFailure = Option<(Instant, ConnectError)>;

/// A thread's HTTP/2 connection to an instance.
struct Shared {
    request: http2::SendRequest<RequestBody>,
    /// Tells this connection from the one that may replace it.
    id: u64,
    /// When a request last took it; idle past [`POOL_IDLE_TIMEOUT`], it is let go
    /// (requests on it finish first).
    used: Instant,
}

/// Numbers the HTTP/2 connections.
static NEXT_SHARED: AtomicU64 = AtomicU64::new(0);

/// How often an HTTP/2 connection with requests under way is pinged, and how long
/// the answer may take before the connection is closed (and its requests fail): an
/// instance that froze or a connection that broke silently is found out in
/// seconds, not when the kernel gives up on the socket.
const H2_PING_EVERY: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

struct Idle {
    sender: Sender,
    since: Instant,
}

/// What a failure did to the instance.
pub(crate) enum Health {
    /// Still in rotation.
    Failing,
    /// Just taken out, after this many consecutive failures.
    Ejected(u32),
}

impl Instance {
    fn new(addr: SocketAddr) -> Instance {
        Instance {
            addr,
            idle: (0..workers::places())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            shared: (0..workers::places()).map(|_| Mutex::new(None)).collect(),
            opening: (0..workers::places())
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// A connection for one request in the protocol: for HTTP/1.1 an idle one, most
    /// recently used first (it may still be finishing its previous exchange: wait for
    /// `ready()` before sending); for HTTP/2 this thread's shared one.
    pub(crate) fn checkout(&self, protocol: UpstreamProtocol) -> Option<Sender> {
        if protocol == UpstreamProtocol::H2c {
            let mut shared = here(&self.shared);
            return match shared.as_mut() {
                Some(connection) if !connection.request.is_closed() => {
                    connection.used = Instant::now();
                    Some(Sender::Http2 {
                        request: connection.request.clone(),
                        id: connection.id,
                    })
                }
                _ => {
                    *shared = None;
                    None
                }
            };
        }
        let mut idle = here(&self.idle);
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Gives a connection back once its exchange is over.
    pub(crate) fn checkin(&self, sender: Sender) {
        if sender.is_closed() || sender.protocol() == UpstreamProtocol::H2c {
            // An HTTP/2 handle is one of many; the connection stays shared.
            return;
        }
        let since = Instant::now();
        let mut idle = here(&self.idle);
        if idle.len() < MAX_IDLE_PER_INSTANCE {
            idle.push(Idle { sender, since });
        }
    }

    /// Opens a connection in the protocol and starts serving it on its own task; an
    /// HTTP/2 one becomes this thread's shared connection.
    pub(crate) async fn connect(
        &self,
        protocol: UpstreamProtocol,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        match protocol {
            UpstreamProtocol::Http1 => self.connect_http1(timeout).await,
            UpstreamProtocol::H2c => self.connect_shared(timeout).await,
        }
    }

    /// A TCP connection to the instance, with `TCP_NODELAY`.
    async fn open(&self, timeout: Duration) -> Result<TokioIo<TcpStream>, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(ConnectError::Failed(io_error(&err))),
            Err(_elapsed) => return Err(ConnectError::Timeout(timeout)),
        };
        if let Err(err) = stream.set_nodelay(true) {
            debug!(instance = %self.addr, error = %err, "could not set TCP_NODELAY");
        }
        Ok(TokioIo::new(stream))
    }

    /// This thread's HTTP/2 connection: opened by the first request that finds none;
    /// the others wait for it (and, when it cannot be opened, get the same error
    /// rather than each try in turn, each up to the connect timeout).
    async fn connect_shared(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let asked = Instant::now();
        let mut last_failure = self.opening[workers::place()].lock().await;
        if let Some(sender) = self.checkout(UpstreamProtocol::H2c) {
            return Ok(sender);
        }
        if let Some((failed, error)) = last_failure.as_ref()
            && *failed >= asked
        {
            return Err(error.clone());
        }
        let opened = self.open_h2(timeout).await;
        *last_failure = opened
            .as_ref()
            .err()
            .map(|error| (Instant::now(), error.clone()));
        opened
    }

    async fn open_h2(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let io = self.open(timeout).await?;
        let (request, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_EVERY)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .handshake(io)
            .await
            .map_err(|err| ConnectError::Failed(err.to_string()))?;
        let addr = self.addr;
        tokio::spawn(async move {
            // Ends when the connection closes (either side, or every handle gone).
            if let Err(err) = connection.await {
                debug!(instance = %addr, error = %err, "upstream connection ended with an error");
            }
        });
        let id = NEXT_SHARED.fetch_add(1, Ordering::Relaxed);
        *here(&self.shared) = Some(Shared {
            request: request.clone(),
            id,
            used: Instant::now(),
        });
        Ok(Sender::Http2 { request, id })
    }

    async fn connect_http1(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let io = self.open(timeout).await?;
        let addr = self.addr;
        let (request, connection) = http1::Builder::new()
            // One buffer, one write() (see the server's builder).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|err| ConnectError::Failed(err.to_string()))?;
        tokio::spawn(async move {
            // Upgrades hand the socket to the tunnel; otherwise this ends when the
            // connection closes (either side, or every SendRequest dropped).
            if let Err(err) = connection.with_upgrades().await {
                debug!(instance = %addr, error = %err, "upstream connection ended with an error");
            }
        });
        Ok(Sender::Http1 {
            request,
            deadline: Deadline::new(),
        })
    }

    /// After a request on the connection failed or timed out: an HTTP/2 connection is
    /// no longer handed out (a new one is opened), whatever state it is in. An
    /// HTTP/1.1 one is closed by dropping it.
    pub(crate) fn discard(&self, sender: &Sender) {
        let Sender::Http2 { id, .. } = sender else {
            return;
        };
        let mut shared = here(&self.shared);
        if shared
            .as_ref()
            .is_some_and(|connection| connection.id == *id)
        {
            *shared = None;
        }
    }

    /// True while passive health keeps the instance out of rotation. The first call
    /// after the cooldown puts it back (and says so once).
    pub(crate) fn is_ejected(&self, registry: &Registry) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if registry.now_ms() < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(instance = %self.addr, "instance back in rotation after its cooldown");
        }
        false
    }

    /// Counts a success: the failure streak is over.
    pub(crate) fn succeeded(&self) {
        // Loads are cheaper than stores on a shared line; most requests succeed.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; the `threshold`-th in a row ejects the instance for
    /// `cooldown` (a threshold of 0 never does).
    pub(crate) fn failed(&self, registry: &Registry, threshold: u32, cooldown: Duration) -> Health {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || failures < threshold {
            return Health::Failing;
        }
        self.failures.store(0, Ordering::Relaxed);
        let cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        // Never 0, which means "in rotation".
        let until = registry.now_ms().saturating_add(cooldown_ms).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        Health::Ejected(failures)
    }

    /// Closes connections idle for longer than `max_idle`.
    fn reap(&self, now: Instant, max_idle: Duration) -> usize {
        let mut kept = 0;
        for place in &self.shared {
            let mut shared = place.lock().unwrap_or_else(|p| p.into_inner());
            if shared.as_ref().is_some_and(|connection| {
                connection.request.is_closed() || now.duration_since(connection.used) >= max_idle
            }) {
                *shared = None;
            }
            kept += usize::from(shared.is_some());
        }
        for place in &self.idle {
            let mut idle = place.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|conn| {
                !conn.sender.is_closed() && now.duration_since(conn.since) < max_idle
            });
            kept += idle.len();
        }
        kept
    }
}

/// The current thread's entry of a per-thread table (see `workers::place`), locked.
fn here<T>(places: &[Mutex<T>]) -> MutexGuard<'_, T> {
    places[workers::place()]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Every instance the proxy has routed to lately, by address.
pub(crate) struct Registry {
    instances: Mutex<HashMap<SocketAddr, Arc<Instance>>>,
    started: Instant,
    reaping: AtomicBool,
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        Arc::new(Registry {
            instances: Mutex::new(HashMap::new()),
            started: Instant::now(),
            reaping: AtomicBool::new(false),
        })
    }

    /// The instance at the address, created on first use. Kept across route swaps,
    /// so a color that comes back finds its connections and its health as they were.
    pub(crate) fn instance(&self, addr: SocketAddr) -> Arc<Instance> {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            instances
                .entry(addr)
                .or_insert_with(|| Arc::new(Instance::new(addr))),
        )
    }

    /// Addresses passive health keeps out of rotation now.
    pub(crate) fn ejected(&self) -> Vec<SocketAddr> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let mut ejected: Vec<SocketAddr> = instances
            .values()
            .filter(|instance| instance.is_ejected(self))
            .map(|instance| instance.addr)
            .collect();
        ejected.sort();
        ejected
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the reaper the first time a connection is opened (there is a runtime
    /// then). It stops when the registry is gone.
    pub(crate) fn start_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let registry: Weak<Registry> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.reap();
            }
        });
    }

    /// Closes idle connections past [`POOL_IDLE_TIMEOUT`] and forgets instances no
    /// route table and no request holds any more, once they have nothing to keep.
    fn reap(&self) {
        let now = Instant::now();
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.retain(|_, instance| {
            let idle = instance.reap(now, POOL_IDLE_TIMEOUT);
            let referenced = Arc::strong_count(instance) > 1;
            referenced || idle > 0 || instance.ejected_until.load(Ordering::Relaxed) != 0
        });
    }
}

/// The error and its causes on one line.
fn io_error(err: &io::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
