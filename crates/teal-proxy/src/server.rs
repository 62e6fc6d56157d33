//! The accept loop of one listener, with graceful shutdown.
//!
//! One port speaks HTTP/1.1 and HTTP/2: over TLS the client picks with ALPN, in plain
//! text an HTTP/2 client starts with the connection preface ("prior knowledge", h2c)
//! and anything else is HTTP/1.1. What an HTTP/2 request carries differently
//! (`:authority`, split cookies) is put back into HTTP/1.1 form before it is routed;
//! the proxy gives it HTTP/2 form again for instances spoken to in h2c.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, COOKIE, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::body::{BoxError, ResponseBody};
use crate::headers::Peer;
use crate::tls::{Tls, TlsSetting};
use crate::{Proxy, Role, workers};

/// How long open connections may take to finish their current request after
/// shutdown before they are cut, unless [`crate::ProxyOptions::shutdown_grace`] says
/// otherwise.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to complete the TLS handshake before it is dropped, so
/// connections that never finish one do not pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown begins, how long an idle keep-alive connection is kept open for the
/// request its client may be sending (it is answered with `Connection: close`) before
/// it is closed while idle. Closing it at once would race such a request, which would
/// then meet a closed connection.
pub const IDLE_LINGER: Duration = Duration::from_secs(2);

/// How long a new connection may stay silent before it is dropped (the header read
/// timeout takes over once it has sent something).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/1.1 client may take to send a complete request head, counted from
/// when its connection is ready for one (served, or done with the previous exchange);
/// then the connection is closed. hyper's default header read timeout, which teal
/// keeps itself: hyper's arms a timer for every request head and polls the socket
/// once more per request to start it, about 1,600 instructions per request; this one
/// keeps one timer per connection and looks at it only when it fires.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until a new connection has sent something; false if it closed or stayed
/// silent for `FIRST_BYTES_TIMEOUT` (30 s).
///
/// Hyper closes a connection it has read nothing from when told to shut down. A client
/// that connected just before a shutdown is about to send, and the socket it connected
/// to may live on in a daemon that took over (`teal server`'s handoff): it must be
/// answered, not dropped. So a connection is given to hyper once its first bytes are
/// there (`peek`: `readable` may be a false positive), and the caller lets hyper read
/// them before it can hear of the shutdown (a `biased` select).
pub async fn first_bytes_arrived(stream: &TcpStream) -> bool {
    matches!(
        tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.peek(&mut [0u8; 1])).await,
        Ok(Ok(read)) if read > 0
    )
}

/// Pause after an accept error that is not about one connection (typically out of
/// file descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves plain HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the listener, routing
/// every request by `proxy`'s current route table for the given role, until `shutdown`
/// resolves.
///
/// On shutdown it stops accepting, lets every open connection finish the requests it is
/// serving (keep-alive connections are closed after them; HTTP/2 clients get a GOAWAY),
/// and returns after at most [`crate::ProxyOptions::shutdown_grace`]; connections still
/// busy then are cut. Upgraded connections are not among them: they belong to the
/// proxy (see [`Proxy::drain_upgraded`]).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls(listener, proxy, role, TlsSetting::default(), shutdown).await
}

/// Like [`serve`], with TLS on the connections accepted while `tls` holds a
/// certificate (HTTP/2 or HTTP/1.1 chosen by ALPN); plain while it holds none. The
/// setting is read once per accepted connection, so a change applies to the next one.
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    role: Role,
    tls: TlsSetting,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    debug!(rollout = %proxy.rollout(), %local, ?role, tls = ?tls.current(), "listening");
    // Tells every connection task to shut down gracefully.
    let (closing_tx, closing_rx) = watch::channel(false);
    // The same, read by every request (an atomic load, not the watch's lock).
    let closing_flag = Arc::new(AtomicBool::new(false));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Served on one of the proxy's threads, whose own I/O driver must
                    // watch the socket: it leaves this runtime's here, joins that
                    // one's there.
                    let stream = match stream.into_std() {
                        Ok(stream) => stream,
                        Err(err) => {
                            debug!(%peer, error = %err, "could not hand the connection over");
                            continue;
                        }
                    };
                    let proxy = Arc::clone(&proxy);
                    let tls = tls.current();
                    let closing = Closing {
                        signal: closing_rx.clone(),
                        flag: Arc::clone(&closing_flag),
                    };
                    workers::spawn(&mut connections, async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                serve_connection(stream, peer, proxy, role, tls, closing).await;
                            }
                            Err(err) => {
                                debug!(%peer, error = %err, "could not take the connection over");
                            }
                        }
                    });
                }
                Err(err) if is_connection_error(&err) => {
                    debug!(%local, error = %err, "accept failed for one connection");
                }
                Err(err) => {
                    warn!(%local, error = %err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Stop accepting: new connections are refused from here on.
    drop(listener);
    debug!(rollout = %proxy.rollout(), %local, open = connections.len(), "shutting down");
    // Receivers are alive in every connection task, and we hold one too; an error
    // would only mean nobody listens, which needs no action.
    closing_flag.store(true, Ordering::Release);
    let _ = closing_tx.send(true);
    let grace = proxy.options().shutdown_grace;
    let finished = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!(rollout = %proxy.rollout(), %local, open = connections.len(), ?grace, "connections still busy after the grace period; cutting them");
        connections.shutdown().await;
    }
    Ok(())
}

/// Errors that concern one connection only; the listener itself is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// What every request of one client connection shares.
struct Shared {
    proxy: Arc<Proxy>,
    role: Role,
    peer: Peer,
    /// The listener shuts down: responses say `Connection: close`.
    closing: Arc<AtomicBool>,
    /// The client speaks HTTP/2.
    http2: AtomicBool,
    /// The client started with the HTTP/2 preface: no header read timeout.
    preface_h2: AtomicBool,
    /// When the connection was handed to hyper; `idle_since` counts from it.
    opened: Instant,
    /// HTTP/1.1 exchanges under way: an [`Exchange`] is held by each request body not
    /// yet read to its end and each response not yet written out.
    exchanges: AtomicU32,
    /// Nanoseconds from `opened` to the end of the last exchange.
    idle_since: AtomicU64,
    /// [`HEADER_READ_TIMEOUT`], shorter in tests.
    header_read_timeout: Duration,
}

impl Shared {
    /// Polls the header read timeout of an HTTP/1.1 connection: true once it has been
    /// ready for a request head (no exchange under way) for its header read timeout.
    /// Looks again, each time `timer` fires, at when that began.
    fn head_timed_out(&self, mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> bool {
        while timer.as_mut().poll(cx).is_ready() {
            if self.preface_h2.load(Ordering::Relaxed) || self.http2.load(Ordering::Relaxed) {
                // Not for HTTP/2; the timer stays elapsed and is not looked at again.
                return false;
            }
            let now = Instant::now();
            let ready_since = if self.exchanges.load(Ordering::Acquire) > 0 {
                now
            } else {
                self.opened + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
            };
            let deadline = ready_since + self.header_read_timeout;
            if deadline <= now {
                return true;
            }
            timer.as_mut().reset(deadline.into());
        }
        false
    }
}

/// One part of an HTTP/1.1 exchange under way (its request body, its response): while
/// one is held, the connection is not waiting for a request head.
pub(crate) struct Exchange {
    shared: Arc<Shared>,
}

impl Exchange {
    fn begin(shared: Arc<Shared>) -> Exchange {
        shared.exchanges.fetch_add(1, Ordering::Relaxed);
        Exchange { shared }
    }

    /// Another part of the same exchange.
    pub(crate) fn part(&self) -> Exchange {
        Exchange::begin(Arc::clone(&self.shared))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let shared = &self.shared;
        // Written before the count drops, so whoever sees it at zero sees this time.
        let idle = u64::try_from(shared.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.idle_since.store(idle, Ordering::Release);
        shared.exchanges.fetch_sub(1, Ordering::Release);
    }
}

/// The response body as the client connection sends it: an HTTP/1.1 response holds
/// its part of the exchange until hyper has written it out (and drops it).
struct ClientBody {
    body: ResponseBody,
    _exchange: Option<Exchange>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client connection's stream, read through this to see whether it starts with
/// the HTTP/2 connection preface (then `preface_h2` is set).
struct Sniffed<S> {
    io: S,
    shared: Arc<Shared>,
    /// Bytes of the preface matched so far; None once decided.
    matched: Option<usize>,
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S> Sniffed<S> {
    fn sniff(&mut self, read: &[u8]) {
        let Some(matched) = self.matched else {
            return;
        };
        let expected = &H2_PREFACE[matched..];
        let n = read.len().min(expected.len());
        if read[..n] != expected[..n] {
            self.matched = None;
        } else if n == expected.len() {
            self.shared.preface_h2.store(true, Ordering::Relaxed);
            self.matched = None;
        } else {
            self.matched = Some(matched + n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.matched.is_none() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.sniff(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Tells a connection that its listener shuts down.
struct Closing {
    signal: watch::Receiver<bool>,
    /// Set before `signal` is sent.
    flag: Arc<AtomicBool>,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    role: Role,
    tls: Option<Arc<Tls>>,
    closing: Closing,
) {
    // Latency matters more than packet count for request/response traffic.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, error = %err, "could not set TCP_NODELAY");
    }
    if !first_bytes_arrived(&stream).await {
        return;
    }
    let Some(tls) = tls else {
        return serve_http(
            stream,
            peer,
            proxy,
            role,
            false,
            closing,
            HEADER_READ_TIMEOUT,
        )
        .await;
    };
    // A handshake under way when shutdown begins is finished, not dropped: its client
    // has a request to send, which is answered (with `Connection: close`). A
    // successor that took over the listener accepts the client's next connection.
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            // Scanners, clients that distrust the certificate: their business.
            debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_elapsed) => {
            debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    serve_http(
        stream,
        peer,
        proxy,
        role,
        true,
        closing,
        HEADER_READ_TIMEOUT,
    )
    .await;
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client starts with) on one connection
/// until it ends, or until `closing` says to finish what is in flight and close.
///
/// When closing, an HTTP/1.1 response carries `Connection: close` and the connection
/// closes after it; an idle keep-alive connection gets [`IDLE_LINGER`] to send one
/// more request (answered that way) before it is closed while idle. HTTP/2 clients get
/// a GOAWAY at once, which lets their streams finish and tells them to go elsewhere.
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    role: Role,
    https: bool,
    closing: Closing,
    header_read_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Closing {
        signal: mut closing,
        flag,
    } = closing;
    // Everything a request needs from its connection, behind one Arc: one reference
    // count per request.
    let shared = Arc::new(Shared {
        proxy,
        role,
        peer: Peer::new(peer.ip(), https),
        closing: flag,
        http2: AtomicBool::new(false),
        preface_h2: AtomicBool::new(false),
        opened: Instant::now(),
        exchanges: AtomicU32::new(0),
        idle_since: AtomicU64::new(0),
        header_read_timeout,
    });
    let io = TokioIo::new(Sniffed {
        io: stream,
        shared: Arc::clone(&shared),
        matched: Some(0),
    });
    let connection_shared = Arc::clone(&shared);
    let service = service_fn(move |mut request: Request<Incoming>| {
        let shared = Arc::clone(&connection_shared);
        let version = request.version();
        if version == Version::HTTP_2 {
            shared.http2.store(true, Ordering::Relaxed);
        }
        as_http1(&mut request);
        async move {
            // HTTP/1.1: the exchange lasts until the request body is read and the
            // response written; the header read timeout waits for it.
            let exchange = match version < Version::HTTP_2 {
                true => Ok(Exchange::begin(shared)),
                false => Err(shared),
            };
            let (shared, request_part) = match &exchange {
                // A body still to read is a part of its own (most requests have none).
                Ok(exchange) => (
                    &exchange.shared,
                    (!request.body().is_end_stream()).then(|| exchange.part()),
                ),
                Err(shared) => (shared, None),
            };
            let mut response = shared
                .proxy
                .handle(request, shared.role, &shared.peer, request_part)
                .await;
            if version < Version::HTTP_2
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
                && shared.closing.load(Ordering::Relaxed)
            {
                // hyper closes the connection once this response is written.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| ClientBody {
                body,
                _exchange: exchange.ok(),
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // The head and a body chunk copied into one buffer for one write(), rather
        // than queued for writev(): fewer instructions per proxied request (see
        // README, Performance).
        .writev(false)
        // teal's own, cheaper: see HEADER_READ_TIMEOUT.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2 (RFC 8441), as browsers open them once a server
        // says it takes them.
        .enable_connect_protocol();
    // With upgrades, so an HTTP/1.1 request may switch protocols (WebSocket).
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);

    // Err means the sender is gone, which only happens when serve() is over; shut
    // down gracefully in that case too. `.map(drop)` releases the watch's read lock.
    let shutdown = async { closing.wait_for(|closing| *closing).await.map(drop) };
    tokio::pin!(shutdown);
    // The header read timeout (slow clients holding a connection without ever
    // finishing a request head), armed for the first head.
    let mut head_timer = pin!(tokio::time::sleep(header_read_timeout));
    // Both polled once to register this task's waker, then only once the flag says the
    // shutdown began or the timer fired: the connection is polled for every read and
    // write, and neither need be looked at each time.
    let mut registered = false;
    let served = std::future::poll_fn(|cx| {
        // The connection first, so bytes already there are read before a shutdown.
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ended::Served(result));
        }
        if (!registered || head_timer.is_elapsed())
            && shared.head_timed_out(head_timer.as_mut(), cx)
        {
            return Poll::Ready(Ended::HeadTimeout);
        }
        if !registered || shared.closing.load(Ordering::Acquire) {
            registered = true;
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closing);
            }
        }
        Poll::Pending
    })
    .await;
    match served {
        Ended::Served(result) => return log_end(peer, result),
        Ended::HeadTimeout => {
            // As hyper's own: the connection is closed, nothing is answered.
            debug!(%peer, timeout = ?header_read_timeout, "no complete request head in time; closing the connection");
            return;
        }
        Ended::Closing => {}
    }
    if !shared.http2.load(Ordering::Relaxed) {
        // An HTTP/1.1 connection ends after its next response (which says
        // `Connection: close`); give an idle one time to send that request.
        if let Ok(result) = tokio::time::timeout(IDLE_LINGER, connection.as_mut()).await {
            return log_end(peer, result);
        }
    }
    connection.as_mut().graceful_shutdown();
    log_end(peer, connection.await);
}

/// Why a connection stopped being served as usual.
enum Ended {
    /// hyper is done with it.
    Served(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    /// Its HTTP/1.1 client sent no complete request head in time.
    HeadTimeout,
    /// Its listener shuts down.
    Closing,
}

fn log_end(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(err) = result {
        // Clients that disconnect mid-request end up here; that is their business.
        debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Gives an HTTP/2 request the form an HTTP/1.1 instance expects: a `Host` header
/// (HTTP/2 sends the `:authority` pseudo-header instead, which hyper puts in the URI)
/// and a single `Cookie` header (HTTP/2 clients may send one per cookie, to be joined
/// with "; " before going on in HTTP/1.1, RFC 9113 §8.2.3). HTTP/1 requests are left
/// as they are.
fn as_http1(request: &mut Request<Incoming>) {
    if request.version() != Version::HTTP_2 {
        return;
    }
    // RFC 9113 §8.3.1: `:authority` wins over a Host header a client also sent.
    let authority = request
        .uri()
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    let headers = request.headers_mut();
    if let Some(authority) = authority {
        headers.insert(HOST, authority);
    }
    let mut cookies = headers.get_all(COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for cookie in headers.get_all(COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(cookie.as_bytes());
        }
        // Header values joined by "; " are a valid header value again.
        if let Ok(joined) = HeaderValue::from_bytes(&joined) {
            headers.insert(COOKIE, joined);
        }
    }
}

#[cfg(test)]
mod tests {
    use teal_core::Color;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Backend, RouteTable};

    /// The header read timeout of these tests' connections.
    const TIMEOUT: Duration = Duration::from_millis(400);

    /// One client connection to a proxy served with [`TIMEOUT`], routed to the
    /// instance (or to none: every request is a 503 from teal).
    async fn connect(instance: Option<SocketAddr>) -> TcpStream {
        let proxy = Proxy::new("shop");
        if let Some(addr) = instance {
            proxy.set_routes(RouteTable {
                active: Some(Backend {
                    color: Color::Blue,
                    revision: 1,
                    instances: vec![addr],
                }),
                ..RouteTable::default()
            });
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            // Held until the connection ends: a dropped sender means shutdown.
            let (_signal, receiver) = watch::channel(false);
            let closing = Closing {
                signal: receiver,
                flag: Arc::new(AtomicBool::new(false)),
            };
            serve_http(stream, peer, proxy, Role::Active, false, closing, TIMEOUT).await;
        });
        TcpStream::connect(addr).await.unwrap()
    }

    /// Reads until `end` has arrived; what was read.
    async fn read_until(stream: &mut TcpStream, end: &str) -> String {
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&read).contains(end) {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&read).into_owned()
    }

    /// Sends a GET and reads teal's 503 answer (no route), which ends with a newline.
    async fn get_503(stream: &mut TcpStream) {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(stream, "deployed yet)\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }

    /// Waits until the proxy closes the connection, sending nothing; how long it took.
    async fn closed_after(stream: &mut TcpStream) -> Duration {
        let since = Instant::now();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        since.elapsed()
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
        let mut stream = connect(None).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: shop.test\r\n")
            .await
            .unwrap();
        let waited = closed_after(&mut stream).await;
        assert!(waited >= TIMEOUT - Duration::from_millis(20), "{waited:?}");
    }

    #[tokio::test]
    async fn the_header_read_timeout_counts_from_the_end_of_the_previous_exchange() {
        let mut stream = connect(None).await;
        // Three requests, the last one well after the timeout from the first.
        for _ in 0..3 {
            get_503(&mut stream).await;
            tokio::time::sleep(TIMEOUT * 6 / 10).await;
        }
        get_503(&mut stream).await;
        // Then an idle keep-alive connection is closed.
        let waited = closed_after(&mut stream).await;
        assert!(waited >= TIMEOUT - Duration::from_millis(20), "{waited:?}");
    }

    #[tokio::test]
    async fn an_http2_connection_is_not_closed_for_want_of_a_request() {
        let stream = connect(None).await;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        // No request at all for longer than the timeout, then two.
        for _ in 0..2 {
            tokio::time::sleep(TIMEOUT * 3 / 2).await;
            let request = Request::get("http://shop.test/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert!(!connection.is_finished());
    }

    #[tokio::test]
    async fn a_response_sent_for_longer_than_the_header_read_timeout_is_not_cut() {
        // An instance that streams its first answer over 1.4 timeouts, then answers
        // the next request at once.
        let instance = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = instance.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut upstream, _) = instance.accept().await.unwrap();
            read_until(&mut upstream, "\r\n\r\n").await;
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            tokio::time::sleep(TIMEOUT * 7 / 10).await;
            upstream.write_all(b"6\r\nsecond\r\n").await.unwrap();
            tokio::time::sleep(TIMEOUT * 7 / 10).await;
            upstream.write_all(b"0\r\n\r\n").await.unwrap();
            read_until(&mut upstream, "\r\n\r\n").await;
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext")
                .await
                .unwrap();
            // Kept open until the test ends.
            let _ = upstream.read(&mut [0u8; 1]).await;
        });
        let mut stream = connect(Some(addr)).await;
        stream
            .write_all(b"GET /events HTTP/1.1\r\nhost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut stream, "0\r\n\r\n").await;
        assert!(
            answer.contains("first") && answer.contains("second"),
            "{answer}"
        );
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut stream, "next").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
