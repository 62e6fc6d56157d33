//! The response body the proxy hands to hyper: the upstream's streamed body, or a
//! short text teal wrote itself. It carries the in-flight guard of the request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::proxy::InFlight;

/// A response body that keeps its request counted as in flight until the last frame
/// has been handed to hyper, the body failed, or hyper dropped it (the client went
/// away). Frames are passed through one by one; nothing is buffered.
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<InFlight>,
}

enum Kind {
    Upstream(Incoming),
    // `None` once the text has been handed out.
    Text(Option<Bytes>),
}

impl ResponseBody {
    /// The upstream's body, counted on the guard's color until it ends.
    pub(crate) fn upstream(body: Incoming, guard: InFlight) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body),
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
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Both variants are Unpin, so the wrapper is too.
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Text(text) => Poll::Ready(text.take().map(|bytes| Ok(Frame::data(bytes)))),
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The request is over as far as the instance is concerned: release it now
            // rather than whenever hyper gets around to dropping the body.
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
        }
    }
}
