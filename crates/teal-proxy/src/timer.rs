//! A timer kept by a connection and reused by each of its requests.
//!
//! A tokio `Sleep` made per request registers in the runtime's timer wheel when first
//! polled and deregisters when dropped, each time under the timer driver's lock. One
//! kept by the connection and moved to a later deadline for the next request takes no
//! lock: tokio records the new deadline, and files the entry again only if it fires
//! before it (once per timeout period on a busy connection, not once per request).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Sleep;

/// A deadline far enough away to mean "never", for limits too large to add to now.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// One timer for the successive waits of one connection (one at a time).
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
}

impl Deadline {
    /// An unarmed timer. Needs a tokio runtime.
    pub(crate) fn new() -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far_future())),
        }
    }

    /// Polls `future` to completion, or until `limit` has passed (then None), like
    /// `tokio::time::timeout` but on this connection's timer. A limit too large to add
    /// to now is no limit. The future is pinned by the caller, so it is not moved
    /// (copied) once more into this one.
    pub(crate) fn limit<'a, F: Future>(
        &'a mut self,
        limit: Duration,
        mut future: Pin<&'a mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        let deadline = tokio::time::Instant::now().checked_add(limit);
        if let Some(deadline) = deadline {
            self.sleep.as_mut().reset(deadline);
        }
        let sleep = &mut self.sleep;
        poll_fn(move |cx| {
            // The future first, as tokio's timeout does: an answer that is there when
            // the limit passes still counts.
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            match deadline {
                Some(_) => sleep.as_mut().poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + FAR_FUTURE
}
