//! The threads that serve client connections: one single-threaded tokio runtime per
//! core, each on its own thread, shared by every listener of the process.
//!
//! An accepted connection is handed to the next thread in turn and stays there with
//! everything it does: its requests, the instance connections they use (opened and
//! pooled per thread, each served by a task of that thread), its tunnels. No task
//! moves between threads, no wake-up on the request path crosses threads, and no
//! idle thread spins looking for work to steal.
//!
//! Measured with `examples/bench_proxy.rs` (wrk -t2 -c64 -d5s, 5 interleaved rounds,
//! medians, on a 2-core machine shared with wrk and the backend): on one
//! work-stealing runtime 40,100 req/s, p99 4.8 ms; on these threads 42,700 to 45,500
//! req/s over two runs, p99 3.8 to 4.7 ms. Driving each instance connection inside
//! the request's task instead of a task of its own was tried on these threads: 3,200
//! more instructions per request (callgrind, 33,900 against 30,700) and no better
//! in wall-clock time, so each connection keeps its task.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tracing::warn;

struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Option<Workers>> = OnceLock::new();

/// How many threads [`start`] starts, when set before it runs.
static THREADS: OnceLock<usize> = OnceLock::new();

/// Sets how many threads serve client connections (at least one; default one per
/// core). Takes effect only before they start (on a proxy's first route table or first
/// connection, whichever comes first): false when it came
/// too late or was already set.
pub fn set_threads(count: usize) -> bool {
    WORKERS.get().is_none() && THREADS.set(count.max(1)).is_ok()
}

thread_local! {
    /// The index of the worker this thread is; None on every other thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many places [`place`] can return: one per worker thread, and one shared by
/// every other thread.
pub(crate) fn places() -> usize {
    WORKERS
        .get_or_init(start)
        .as_ref()
        .map_or(0, |workers| workers.handles.len())
        + 1
}

/// Where the current thread keeps what belongs to it alone (below [`places`]): its
/// worker index, or the last place on any other thread.
///
/// Sockets are watched by the I/O driver of the runtime that opened them, and an
/// instance connection is served by a task there: used by a request on another
/// worker, every exchange on it would cross threads (a wake-up through the other
/// runtime's eventfd each way). Pools keep connections per place.
pub(crate) fn place() -> usize {
    CURRENT.with(Cell::get).unwrap_or_else(|| places() - 1)
}

/// Spawns `task` into `set` on the next worker thread in turn (on the current runtime
/// if the threads could not be started).
pub(crate) fn spawn<F>(set: &mut JoinSet<F::Output>, task: F)
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    match WORKERS.get_or_init(start).as_ref() {
        Some(workers) => {
            let turn = workers.next.fetch_add(1, Ordering::Relaxed) % workers.handles.len();
            set.spawn_on(task, &workers.handles[turn]);
        }
        None => {
            set.spawn(task);
        }
    }
}

/// One thread per core, each running its runtime until the process ends.
fn start() -> Option<Workers> {
    let count = match THREADS.get() {
        Some(count) => *count,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        // The runtime is built on its own thread and never leaves it: dropping one
        // here, inside the caller's runtime, would panic.
        let (built, handle) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("teal-proxy-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = built.send(Err(err));
                        return;
                    }
                };
                CURRENT.with(|current| current.set(Some(index)));
                if built.send(Ok(runtime.handle().clone())).is_ok() {
                    // Runs what is spawned on it; the process's end stops it.
                    runtime.block_on(std::future::pending::<()>());
                }
            });
        if let Err(err) = thread {
            return failed(&err);
        }
        match handle.recv() {
            Ok(Ok(handle)) => handles.push(handle),
            Ok(Err(err)) => return failed(&err),
            Err(_gone) => return failed(&std::io::Error::other("the thread ended at once")),
        }
    }
    Some(Workers {
        handles,
        next: AtomicUsize::new(0),
    })
}

/// Threads already started stay idle: nothing is spawned on them.
fn failed(err: &std::io::Error) -> Option<Workers> {
    warn!(error = %err, "could not start the proxy's threads; serving connections on the caller's runtime");
    None
}
