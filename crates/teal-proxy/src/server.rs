//! The accept loop of one listener, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::{Proxy, Role};

/// How long open connections may take to finish their current request after
/// shutdown before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after an accept error that is not about one connection (typically out of
/// file descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/1.1 on the listener, routing every request by `proxy`'s current route
/// table for the given role, until `shutdown` resolves.
///
/// On shutdown it stops accepting, lets every open connection finish the request it is
/// serving (keep-alive connections are closed after it), and returns after at most
/// [`SHUTDOWN_GRACE`]; connections still busy then are cut.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    debug!(rollout = %proxy.rollout(), %local, ?role, "listening");
    // Tells every connection task to shut down gracefully.
    let (closing_tx, closing_rx) = watch::channel(false);
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
                        closing_rx.clone(),
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

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    role: Role,
    mut closing: watch::Receiver<bool>,
) {
    // Latency matters more than packet count for request/response traffic.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, error = %err, "could not set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.handle(request, role, peer).await) }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        // The timer enables hyper's header read timeout (slow clients holding a
        // connection without ever finishing their request headers).
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Err means the sender is gone, which only happens when serve() is over;
        // shut down gracefully in that case too.
        // `.map(drop)` releases the watch's read lock before awaiting below.
        _ = async { closing.wait_for(|closing| *closing).await.map(drop) } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Clients that disconnect mid-request end up here; that is their business.
        debug!(%peer, error = %err, "connection ended with an error");
    }
}
