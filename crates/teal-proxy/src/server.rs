//! The accept loop of one listener, with graceful shutdown.
//!
//! One port speaks HTTP/1.1 and HTTP/2: over TLS the client picks with ALPN, in plain
//! text an HTTP/2 client starts with the connection preface ("prior knowledge", h2c)
//! and anything else is HTTP/1.1. Instances are always spoken to in HTTP/1.1; what an
//! HTTP/2 request carries differently (`:authority`, split cookies) is put back into
//! HTTP/1.1 form before it is routed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONNECTION, COOKIE, HOST, HeaderValue};
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::headers::Peer;
use crate::tls::{Tls, TlsSetting};
use crate::{Proxy, Role};

/// How long open connections may take to finish their current request after
/// shutdown before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to complete the TLS handshake before it is dropped, so
/// connections that never finish one do not pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown begins, how long an idle keep-alive connection is kept open for the
/// request its client may be sending (it is answered with `Connection: close`) before
/// it is closed while idle. Closing it at once would race such a request, which would
/// then meet a closed connection.
pub const IDLE_LINGER: Duration = Duration::from_secs(2);

/// How long a new connection may stay silent before it is dropped (hyper's header read
/// timeout takes over once it has sent something).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until a new connection has sent something; false if it closed or stayed
/// silent for [`FIRST_BYTES_TIMEOUT`].
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
/// and returns after at most [`SHUTDOWN_GRACE`]; connections still busy then are cut.
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
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&proxy),
                        role,
                        tls.current(),
                        Closing {
                            signal: closing_rx.clone(),
                            flag: Arc::clone(&closing_flag),
                        },
                    ));
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
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!(rollout = %proxy.rollout(), %local, open = connections.len(), "connections still busy after the grace period; cutting them");
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
        let io = TokioIo::new(stream);
        return serve_http(io, peer, proxy, role, false, closing).await;
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
    serve_http(TokioIo::new(stream), peer, proxy, role, true, closing).await;
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client starts with) on one connection
/// until it ends, or until `closing` says to finish what is in flight and close.
///
/// When closing, an HTTP/1.1 response carries `Connection: close` and the connection
/// closes after it; an idle keep-alive connection gets [`IDLE_LINGER`] to send one
/// more request (answered that way) before it is closed while idle. HTTP/2 clients get
/// a GOAWAY at once, which lets their streams finish and tells them to go elsewhere.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    role: Role,
    https: bool,
    closing: Closing,
) where
    I: Read + Write + Unpin + Send + 'static,
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
            let mut response = shared
                .proxy
                .handle(request, shared.role, &shared.peer)
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
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // The timer enables hyper's header read timeout (slow clients holding a
        // connection without ever finishing their request headers).
        .timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    // With upgrades, so an HTTP/1.1 request may switch protocols (WebSocket).
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);

    // Err means the sender is gone, which only happens when serve() is over; shut
    // down gracefully in that case too. `.map(drop)` releases the watch's read lock.
    let shutdown = async { closing.wait_for(|closing| *closing).await.map(drop) };
    tokio::pin!(shutdown);
    // Polled once to register this task's waker, then only once the flag says the
    // shutdown began: the connection is polled for every read and write, and the
    // watch need not be looked at each time.
    let mut registered = false;
    let served = std::future::poll_fn(|cx| {
        // The connection first, so bytes already there are read before a shutdown.
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if !registered || shared.closing.load(Ordering::Acquire) {
            registered = true;
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(result) = served {
        return log_end(peer, result);
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
