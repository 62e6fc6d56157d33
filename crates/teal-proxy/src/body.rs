//! The bodies the proxy streams: the client's request body on its way to the instance
//! and the instance's response body on its way back. Frames are passed through one by
//! one; nothing is buffered. Both count their bytes on the request's color.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::pool::{Instance, Sender};
use crate::proxy::{ColorState, InFlight, error_chain};
use crate::server::Exchange;

/// What a body fails with: hyper's errors, or teal's own limits.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A limit teal enforced in the middle of a body.
#[derive(Debug)]
pub(crate) enum Cut {
    /// The request body passed `max_request_body_bytes`.
    RequestTooLarge(u64),
    /// The instance sent nothing for this long in the middle of its response body.
    UpstreamIdle(Duration),
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::RequestTooLarge(limit) => {
                write!(f, "request body larger than the limit of {limit} bytes")
            }
            Cut::UpstreamIdle(idle) => write!(
                f,
                "instance sent nothing for {idle:?} in the middle of its response body"
            ),
        }
    }
}

impl StdError for Cut {}

/// How far a streamed request body got; shared between the body (inside hyper's
/// upstream connection) and the response (which decides whether the connection can
/// be used again).
#[derive(Default)]
pub(crate) struct Upload {
    /// The whole body was handed to the instance's connection.
    done: AtomicBool,
    /// The body passed the size limit and was cut.
    too_large: AtomicBool,
    /// Why the client's body broke off (it went away, or sent a malformed chunk).
    /// Known here because how the failure reaches teal depends on the instance's
    /// protocol: HTTP/1.1 hands the body's error back, HTTP/2 only resets the stream.
    client_failed: OnceLock<String>,
}

impl Upload {
    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Acquire)
    }

    pub(crate) fn client_failed(&self) -> Option<&str> {
        self.client_failed.get().map(String::as_str)
    }
}

/// The body sent to an instance.
pub(crate) struct RequestBody {
    /// None for a request without a body (nothing to stream, nothing to track).
    inner: Option<Streamed>,
}

struct Streamed {
    body: Incoming,
    /// The client connection's exchange, which lasts until the body has been read.
    _exchange: Option<Exchange>,
    state: Arc<ColorState>,
    upload: Arc<Upload>,
    limit: u64,
    received: u64,
}

impl RequestBody {
    /// No body.
    pub(crate) fn empty() -> RequestBody {
        RequestBody { inner: None }
    }

    /// The client's body, counted on the color and cut when it passes `limit`; the
    /// `Upload` says how far it got. A body that is already over is sent as nothing.
    /// The exchange (HTTP/1.1) is held until the body is dropped.
    pub(crate) fn new(
        body: Incoming,
        state: &Arc<ColorState>,
        limit: u64,
        exchange: Option<Exchange>,
    ) -> (RequestBody, Option<Arc<Upload>>) {
        if body.is_end_stream() {
            return (RequestBody { inner: None }, None);
        }
        let upload = Arc::new(Upload::default());
        let inner = Streamed {
            body,
            _exchange: exchange,
            state: Arc::clone(state),
            upload: Arc::clone(&upload),
            limit,
            received: 0,
        };
        (RequestBody { inner: Some(inner) }, Some(upload))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(this) = self.get_mut().inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    this.received += len;
                    this.state.bytes_in.fetch_add(len, Ordering::Relaxed);
                    if this.received > this.limit {
                        this.upload.too_large.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(Cut::RequestTooLarge(this.limit)))));
                    }
                }
                if this.body.is_end_stream() {
                    this.upload.done.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.upload.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                let _ = this.upload.client_failed.set(error_chain(&err));
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.body.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// A connection lent to one exchange, given back to its instance when the exchange
/// ended cleanly.
pub(crate) struct Lease {
    pub(crate) instance: Arc<Instance>,
    pub(crate) sender: Sender,
}

/// A response body that keeps its request counted as in flight until the last frame
/// has been handed to hyper, the body failed, or hyper dropped it (the client went
/// away); then gives the upstream connection back when it can serve another request.
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<InFlight>,
}

enum Kind {
    Upstream(Upstream),
    // `None` once the text has been handed out.
    Text(Option<Bytes>),
}

struct Upstream {
    body: Incoming,
    /// None when the connection must not be used again (the instance said `close`).
    lease: Option<Lease>,
    /// The request body's progress; None when there was none.
    upload: Option<Arc<Upload>>,
    idle_timeout: Duration,
    /// Armed when the instance makes us wait, so the clock is read only then.
    idle: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl ResponseBody {
    /// The instance's body, counted on the guard's color until it ends.
    pub(crate) fn upstream(
        body: Incoming,
        guard: InFlight,
        lease: Option<Lease>,
        upload: Option<Arc<Upload>>,
        idle_timeout: Duration,
    ) -> Self {
        ResponseBody {
            kind: Kind::Upstream(Upstream {
                body,
                lease,
                upload,
                idle_timeout,
                idle: None,
                waiting: false,
            }),
            guard: Some(guard),
        }
    }

    /// A body teal wrote itself (errors). Not counted as in flight: no instance is
    /// serving it.
    pub(crate) fn text(text: String) -> Self {
        ResponseBody {
            kind: Kind::Text(Some(Bytes::from(text))),
            guard: None,
        }
    }

    /// No body (a `101 Switching Protocols`: what follows is the tunnel's).
    pub(crate) fn empty() -> Self {
        ResponseBody {
            kind: Kind::Text(None),
            guard: None,
        }
    }
}

impl Upstream {
    /// The exchange is over: a clean end gives the connection back, if the request
    /// body is all sent too (otherwise the connection is still busy sending it).
    fn finish(&mut self, clean: bool) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let sent = self
            .upload
            .as_ref()
            .is_none_or(|upload| upload.done.load(Ordering::Acquire));
        if clean && sent {
            lease.instance.checkin(lease.sender);
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // hyper never polls a body it knows is over (HEAD, 204, a Content-Length it
        // has seen through): that is a clean end too.
        let clean = self.body.is_end_stream();
        self.finish(clean);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Both variants are Unpin, so the wrapper is too.
        let this = self.get_mut();
        let upstream = match &mut this.kind {
            Kind::Upstream(upstream) => upstream,
            Kind::Text(text) => {
                return Poll::Ready(text.take().map(|bytes| Ok(Frame::data(bytes))));
            }
        };
        match Pin::new(&mut upstream.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                upstream.waiting = false;
                if let (Some(data), Some(guard)) = (frame.data_ref(), &this.guard) {
                    guard
                        .state()
                        .bytes_out
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if upstream.body.is_end_stream() {
                    // The last frame: hyper may not poll again. Release the request
                    // now rather than whenever hyper gets around to dropping us.
                    upstream.finish(true);
                    this.guard = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                upstream.finish(true);
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                upstream.finish(false);
                this.guard = None;
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Pending => {
                let timeout = upstream.idle_timeout;
                let idle = upstream
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if !upstream.waiting {
                    // The pause starts now, not at the previous frame: hyper may have
                    // waited on a slow client in between.
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + upstream.idle_timeout);
                    upstream.waiting = true;
                }
                if idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some(lease) = &upstream.lease {
                    tracing::warn!(instance = %lease.instance.addr, ?timeout, "instance paused too long in its response body; cutting the response");
                }
                upstream.finish(false);
                this.guard = None;
                Poll::Ready(Some(Err(Box::new(Cut::UpstreamIdle(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(upstream) => upstream.body.is_end_stream(),
            Kind::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(upstream) => upstream.body.size_hint(),
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
        }
    }
}
