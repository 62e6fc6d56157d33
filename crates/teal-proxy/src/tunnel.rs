//! Upgraded connections (WebSocket and any other `Connection: upgrade` protocol): once
//! both sides have switched protocols, bytes are copied both ways until either side
//! closes, or until draining the color closes the tunnel.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::proxy::ColorState;

/// How long closing a tunnel may take to flush and send its FINs.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Counts one upgraded connection on its color until dropped, and remembers which
/// close order of the color it is subject to.
pub(crate) struct Upgraded {
    state: Arc<ColorState>,
    /// The color's close generation when the connection was upgraded; a later one
    /// means "close".
    generation: u64,
}

impl Upgraded {
    /// Counts the connection from now: before the `101` goes out, so a drain never
    /// sees a moment when the request is over and the tunnel not yet counted.
    pub(crate) fn enter(state: &Arc<ColorState>) -> Upgraded {
        state.upgraded.fetch_add(1, Ordering::SeqCst);
        Upgraded {
            state: Arc::clone(state),
            generation: state.close_generation.load(Ordering::SeqCst),
        }
    }

    fn closed(&self) -> bool {
        self.state.close_generation.load(Ordering::SeqCst) != self.generation
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        if self.state.upgraded.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.state.upgraded_idle.notify_waiters();
        }
    }
}

/// Waits for both sides to switch protocols, then copies until one side closes or the
/// color closes its tunnels (then both sides are shut down cleanly: FIN, not reset).
pub(crate) async fn run(client: OnUpgrade, upstream: OnUpgrade, guard: Upgraded) {
    let state = Arc::clone(&guard.state);
    let closing = state.close_tunnels.notified();
    tokio::pin!(closing);
    // Register before checking the generation, so a close between the two is seen.
    closing.as_mut().enable();
    if guard.closed() {
        return;
    }
    let (client, upstream) = tokio::select! {
        sides = async { tokio::try_join!(client, upstream) } => match sides {
            Ok(sides) => sides,
            Err(err) => {
                debug!(error = %err, "upgrade did not complete");
                return;
            }
        },
        () = &mut closing => return,
    };
    let mut client = Counted {
        io: TokioIo::new(client),
        counter: Direction::In,
        state: Arc::clone(&state),
    };
    let mut upstream = Counted {
        io: TokioIo::new(upstream),
        counter: Direction::Out,
        state: Arc::clone(&state),
    };
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => Some(copied),
        () = &mut closing => None,
    };
    match copied {
        Some(Ok((sent, received))) => {
            debug!(sent, received, "upgraded connection ended");
        }
        Some(Err(err)) => debug!(error = %err, "upgraded connection ended with an error"),
        None => {
            debug!("closing an upgraded connection: its color was drained");
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                let _ = tokio::join!(client.shutdown(), upstream.shutdown());
            })
            .await;
        }
    }
    drop(guard);
}

/// Which byte counter of the color a side's reads go to.
#[derive(Clone, Copy)]
enum Direction {
    /// Read from the client.
    In,
    /// Read from the instance.
    Out,
}

/// One side of a tunnel, counting what is read from it.
struct Counted<T> {
    io: T,
    counter: Direction,
    state: Arc<ColorState>,
}

impl<T> Counted<T> {
    fn counter(&self) -> &AtomicU64 {
        match self.counter {
            Direction::In => &self.state.bytes_in,
            Direction::Out => &self.state.bytes_out,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.counter().fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
