//! Switches between two colors under load and checks every response.
//!
//! ```text
//! # teal: an in-process teal_proxy::Proxy in front of two in-process backends
//! cargo run --release -p teal-proxy --example switch_bench -- teal \
//!     [--connections 64] [--switches 1000] [--rss-switches 10000] [--pause-ms 2]
//!
//! # any other proxy: it must already serve URL from the blue backend; the command
//! # (run with `sh -c`, `{color}` replaced by blue or green) makes it switch
//! cargo run --release -p teal-proxy --example switch_bench -- external \
//!     --name nginx --url http://127.0.0.1:8080/ --switch-cmd 'bench/switch-nginx.sh {color}' \
//!     [--connections 64] [--switches 50] [--pause-ms 200]
//! ```
//!
//! `--connections` keep-alive connections send `GET /` back to back for the whole run.
//! Every response must be a 2xx from a backend, which names its color in `x-color`
//! (teal also labels it `x-teal-color`; both must agree). Switch k goes to green when k
//! is odd and back to blue when it is even. The switcher waits for the first response
//! from the new color, then `--pause-ms`, then switches again.
//!
//! It prints:
//! - failed requests: connection errors after a request was sent, non-2xx answers,
//!   answers without a known color, and (teal) a label that disagrees with the backend;
//! - old-color responses after a switch returned: requests sent after switch k returned,
//!   answered before switch k+1 began, yet served by the color before k;
//! - the time from the start of the switch call to the first response from the new
//!   color, and to the last response from the old one (requests in flight at the switch
//!   finish where they started);
//! - (teal) the process's RSS before and after `--rss-switches` further switches.
//!
//! The last line, `RESULT key=value ...`, is for scripts.

#[path = "support/backend.rs"]
mod backend;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use teal_core::Color;
use teal_core::spec::PreviewMatch;
use teal_proxy::{Backend, Proxy, Role, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const COLORS: [&str; 2] = ["blue", "green"];

/// Width of one request latency bucket; the last bucket holds everything slower.
const BUCKET_MICROS: u64 = 10;
const LATENCY_BUCKETS: usize = 20_000;

/// The color switch `k` goes to: 0 is the starting color (blue), odd ones green.
fn color_of(switch: usize) -> usize {
    switch % 2
}

#[derive(Debug)]
enum Target {
    Teal,
    External { url: Uri, switch_cmd: String },
}

#[derive(Debug)]
struct Options {
    name: String,
    target: Target,
    connections: usize,
    switches: usize,
    rss_switches: usize,
    pause: Duration,
}

const USAGE: &str = "usage: switch_bench teal [--connections N] [--switches N] [--rss-switches N] [--pause-ms MS]
       switch_bench external --url URL --switch-cmd CMD [--name NAME] [--connections N] [--switches N] [--pause-ms MS]";

fn parse() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or(USAGE)?;
    let teal = match mode.as_str() {
        "teal" => true,
        "external" => false,
        _ => return Err(USAGE.to_owned()),
    };
    let mut options = Options {
        name: mode.clone(),
        target: Target::Teal,
        connections: 64,
        switches: if teal { 1000 } else { 50 },
        rss_switches: if teal { 10_000 } else { 0 },
        pause: Duration::from_millis(if teal { 2 } else { 200 }),
    };
    let (mut url, mut switch_cmd) = (None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let number = |text: String| {
            text.parse::<usize>()
                .map_err(|e| format!("{arg}: {e}: {text:?}"))
        };
        match arg.as_str() {
            "--name" => options.name = value()?,
            "--connections" => options.connections = number(value()?)?.max(1),
            "--switches" => options.switches = number(value()?)?,
            "--rss-switches" => options.rss_switches = number(value()?)?,
            "--pause-ms" => options.pause = Duration::from_millis(number(value()?)? as u64),
            "--url" if !teal => {
                let text = value()?;
                url = Some(
                    text.parse::<Uri>()
                        .map_err(|e| format!("--url {text:?}: {e}"))?,
                );
            }
            "--switch-cmd" if !teal => switch_cmd = Some(value()?),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    if !teal {
        options.target = Target::External {
            url: url.ok_or("external needs --url")?,
            switch_cmd: switch_cmd.ok_or("external needs --switch-cmd")?,
        };
    }
    Ok(options)
}

/// Everything the load connections and the switcher share.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    teal: bool,
    /// The switch in progress (or the last one): set before the switch call starts.
    pending: AtomicUsize,
    /// The last switch whose call has returned.
    done: AtomicUsize,
    /// Per switch, nanoseconds since `start`: when its call started, the first response
    /// from its color, the last response from the previous color.
    started: Vec<AtomicU64>,
    first_new: Vec<AtomicU64>,
    last_old: Vec<AtomicU64>,
    /// Woken when a switch sees its first new-color response.
    new_seen: Notify,
    /// Request latencies while `record` is set, in buckets of [`BUCKET_MICROS`].
    latency: Vec<AtomicU64>,
    record: AtomicBool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    /// The connection failed after the request was sent (no complete response).
    conn_errors: AtomicU64,
    /// Of those, on a connection that had already served a response (a keep-alive
    /// connection the server closed just as the request went out).
    conn_errors_reused: AtomicU64,
    non_2xx: AtomicU64,
    unknown_color: AtomicU64,
    label_mismatch: AtomicU64,
    checked: AtomicU64,
    stale: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    sent: u64,
    ok: u64,
    conn_errors: u64,
    conn_errors_reused: u64,
    non_2xx: u64,
    unknown_color: u64,
    label_mismatch: u64,
    checked: u64,
    stale: u64,
    connects: u64,
    connect_failures: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: load(&self.sent),
            ok: load(&self.ok),
            conn_errors: load(&self.conn_errors),
            conn_errors_reused: load(&self.conn_errors_reused),
            non_2xx: load(&self.non_2xx),
            unknown_color: load(&self.unknown_color),
            label_mismatch: load(&self.label_mismatch),
            checked: load(&self.checked),
            stale: load(&self.stale),
            connects: load(&self.connects),
            connect_failures: load(&self.connect_failures),
        }
    }
}

impl Snapshot {
    fn failed(&self) -> u64 {
        self.conn_errors + self.non_2xx + self.unknown_color + self.label_mismatch
    }
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one answered request that was sent after switch `sent_after` returned.
    fn observe(&self, color: usize, sent_after: usize) {
        let now = self.now();
        let pending = self.pending.load(Ordering::Acquire);
        // No switch began between sending and now: the answer must come from the
        // color the last returned switch chose.
        if pending == sent_after {
            self.counters.checked.fetch_add(1, Ordering::Relaxed);
            if color != color_of(sent_after) {
                self.counters.stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        if pending == 0 {
            return;
        }
        if color == color_of(pending) {
            // Only a request sent after the previous switch returned can tell that this
            // switch took effect (an older one may have been routed two switches ago).
            if sent_after + 1 >= pending
                && self.first_new[pending]
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.new_seen.notify_waiters();
            }
        } else {
            self.last_old[pending].fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// One keep-alive connection sending requests back to back, reconnecting when the
/// server closes it, until told to stop.
async fn load(shared: Arc<Shared>, address: SocketAddr, host: HeaderValue, path: String) {
    let counters = &shared.counters;
    while !shared.stop.load(Ordering::Relaxed) {
        counters.connects.fetch_add(1, Ordering::Relaxed);
        let stream = match TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(_) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, connection)) =
            http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(async move {
            // Its errors show up on the request side.
            let _ = connection.await;
        });
        let mut reused = false;
        while !shared.stop.load(Ordering::Relaxed) {
            // Closed while idle: the server said so before we sent anything, so no
            // request was lost; reconnect.
            if sender.ready().await.is_err() {
                break;
            }
            let sent_after = shared.done.load(Ordering::Acquire);
            let mut request = Request::new(Empty::<Bytes>::new());
            *request.uri_mut() = Uri::try_from(path.as_str()).expect("a path");
            request.headers_mut().insert(HOST, host.clone());
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let sent_at = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(_) => {
                    counters.conn_errors.fetch_add(1, Ordering::Relaxed);
                    if reused {
                        counters.conn_errors_reused.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            };
            reused = true;
            let status = response.status();
            let color = response
                .headers()
                .get(backend::X_COLOR)
                .and_then(|v| COLORS.iter().position(|c| v.as_bytes() == c.as_bytes()));
            let label = response.headers().get("x-teal-color").cloned();
            if response.into_body().collect().await.is_err() {
                counters.conn_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if shared.record.load(Ordering::Relaxed) {
                let bucket = (sent_at.elapsed().as_micros() as u64 / BUCKET_MICROS) as usize;
                shared.latency[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
            }
            if !status.is_success() {
                counters.non_2xx.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(color) = color else {
                counters.unknown_color.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if shared.teal
                && label.as_ref().map(HeaderValue::as_bytes) != Some(COLORS[color].as_bytes())
            {
                counters.label_mismatch.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.ok.fetch_add(1, Ordering::Relaxed);
            shared.observe(color, sent_after);
        }
    }
}

/// What makes the proxy switch.
enum Switcher {
    Teal(Arc<Proxy>, [SocketAddr; 2]),
    Command(String),
}

impl Switcher {
    async fn switch(&self, switch: usize) -> Result<(), String> {
        let color = color_of(switch);
        match self {
            Switcher::Teal(proxy, backends) => {
                proxy.set_routes(route_table(color, switch as u64 + 1, backends[color]));
                Ok(())
            }
            Switcher::Command(template) => {
                let command = template.replace("{color}", COLORS[color]);
                let output = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .output()
                    .await
                    .map_err(|e| format!("cannot run {command:?}: {e}"))?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{command:?} failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ))
                }
            }
        }
    }
}

fn route_table(color: usize, revision: u64, instance: SocketAddr) -> RouteTable {
    RouteTable {
        active: Some(Backend {
            color: if color == 0 {
                Color::Blue
            } else {
                Color::Green
            },
            revision,
            instances: vec![instance],
        }),
        preview: None,
        preview_match: PreviewMatch::default(),
    }
}

/// Runs switches `from..=to`, each followed by waiting for the first response from the
/// new color (up to `timeout`) and the pause. Returns the switch call durations.
async fn run_switches(
    shared: &Shared,
    switcher: &Switcher,
    from: usize,
    to: usize,
    pause: Duration,
    timeout: Duration,
) -> Result<Vec<f64>, String> {
    let mut calls = Vec::with_capacity(to + 1 - from);
    for switch in from..=to {
        let started = shared.now();
        shared.started[switch].store(started, Ordering::Relaxed);
        shared.pending.store(switch, Ordering::Release);
        switcher.switch(switch).await?;
        shared.done.store(switch, Ordering::Release);
        calls.push((shared.now() - started) as f64 / 1e6);

        let seen = async {
            loop {
                let notified = shared.new_seen.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.first_new[switch].load(Ordering::Acquire) != 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, seen).await.is_err() {
            eprintln!(
                "switch {switch}: no response from {} within {timeout:?}",
                COLORS[color_of(switch)]
            );
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(calls)
}

/// Kibibytes of the given /proc/self/status field (VmRSS, VmHWM).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The given percentile of the recorded request latencies, in ms (a bucket's upper
/// bound).
fn latency_percentile(buckets: &[AtomicU64], p: f64) -> f64 {
    let counts: Vec<u64> = buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return ((bucket as u64 + 1) * BUCKET_MICROS) as f64 / 1000.0;
        }
    }
    f64::NAN
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switch_bench: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("switch_bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every check passed.
async fn run(options: Options) -> Result<bool, String> {
    let teal = matches!(options.target, Target::Teal);
    let total = options.switches + options.rss_switches;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // Where the load goes, and how to switch.
    let (address, host, path, switcher) = match &options.target {
        Target::Teal => {
            let mut backends = [SocketAddr::from(([127, 0, 0, 1], 0)); 2];
            for (color, slot) in backends.iter_mut().enumerate() {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| format!("cannot bind a backend: {e}"))?;
                *slot = listener.local_addr().map_err(|e| e.to_string())?;
                tokio::spawn(backend::serve(
                    listener,
                    COLORS[color].to_owned(),
                    backend::Work::None,
                ));
            }
            let proxy = Proxy::new("switch-bench");
            proxy.set_routes(route_table(0, 1, backends[0]));
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot bind the proxy: {e}"))?;
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(teal_proxy::serve(
                listener,
                Arc::clone(&proxy),
                Role::Active,
                async move {
                    let _ = stop_rx.await;
                },
            ));
            let host = HeaderValue::from_str(&address.to_string()).map_err(|e| e.to_string())?;
            (
                address,
                host,
                "/".to_owned(),
                Switcher::Teal(proxy, backends),
            )
        }
        Target::External { url, switch_cmd } => {
            let authority = url.authority().ok_or("--url needs host:port")?;
            let address: SocketAddr = tokio::net::lookup_host(authority.as_str())
                .await
                .map_err(|e| format!("{authority}: {e}"))?
                .next()
                .ok_or(format!("{authority}: no address"))?;
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            let path = url
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned());
            drop(stop_rx);
            (address, host, path, Switcher::Command(switch_cmd.clone()))
        }
    };

    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        teal,
        pending: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        started: (0..=total).map(|_| AtomicU64::new(0)).collect(),
        first_new: (0..=total).map(|_| AtomicU64::new(0)).collect(),
        last_old: (0..=total).map(|_| AtomicU64::new(0)).collect(),
        new_seen: Notify::new(),
        latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        record: AtomicBool::new(true),
        counters: Counters::default(),
    });
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..options.connections {
        clients.spawn(load(
            Arc::clone(&shared),
            address,
            host.clone(),
            path.clone(),
        ));
    }

    // Warm up, and make sure the starting color answers before switching.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm = shared.counters.snapshot();
    if warm.ok == 0 {
        shared.stop.store(true, Ordering::Relaxed);
        return Err(format!(
            "no successful response from {address} during the warm-up ({warm:?})"
        ));
    }

    let timeout = Duration::from_secs(5);
    let begun = Instant::now();
    let calls = run_switches(
        &shared,
        &switcher,
        1,
        options.switches,
        options.pause,
        timeout,
    )
    .await?;
    let elapsed = begun.elapsed();
    let at_end = shared.counters.snapshot();
    shared.record.store(false, Ordering::Relaxed);
    // Let the last switch's stragglers arrive before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let phase1 = shared.counters.snapshot();

    let mut rss = None;
    if options.rss_switches > 0 {
        let before = proc_status_kib("VmRSS");
        let rss_begun = Instant::now();
        run_switches(
            &shared,
            &switcher,
            options.switches + 1,
            total,
            Duration::ZERO,
            timeout,
        )
        .await?;
        let rss_elapsed = rss_begun.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss = Some((before, proc_status_kib("VmRSS"), rss_elapsed));
    }

    // Stop the load first: clients finish the request they are on (a stuck one is not
    // worth waiting for). Only then the proxy, so its shutdown closing keep-alive
    // connections is not counted against it.
    shared.stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    let all = shared.counters.snapshot();
    let _ = stop_tx.send(());

    // Per-switch timings of the measured phase.
    let mut first_new = Vec::new();
    let mut last_old = Vec::new();
    let mut missing = 0;
    for switch in 1..=options.switches {
        let started = shared.started[switch].load(Ordering::Relaxed);
        match shared.first_new[switch].load(Ordering::Relaxed) {
            0 => missing += 1,
            seen => first_new.push(seen.saturating_sub(started) as f64 / 1e6),
        }
        let old = shared.last_old[switch].load(Ordering::Relaxed);
        last_old.push(old.saturating_sub(started) as f64 / 1e6);
    }
    let (calls, first_new, last_old) = (sorted(calls), sorted(first_new), sorted(last_old));

    let name = &options.name;
    let how = match &options.target {
        Target::Teal => "in-process teal_proxy::Proxy, Proxy::set_routes".to_owned(),
        Target::External { switch_cmd, .. } => format!("switch: sh -c {switch_cmd:?}"),
    };
    println!(
        "== {name}: {} switches in {:.1} s under {} keep-alive connections ({how}; {} ms pause after each first new-color response) ==",
        options.switches,
        elapsed.as_secs_f64(),
        options.connections,
        options.pause.as_millis()
    );
    println!(
        "requests                         {} sent, {} ok ({:.0} req/s), {} connections opened ({} connects failed)",
        phase1.sent,
        phase1.ok,
        (at_end.ok - warm.ok) as f64 / elapsed.as_secs_f64(),
        phase1.connects,
        phase1.connect_failures
    );
    println!(
        "failed requests                  {}  (connection errors {} [{} on a reused keep-alive connection], non-2xx {}, unknown color {}, x-teal-color mismatch {})",
        phase1.failed(),
        phase1.conn_errors,
        phase1.conn_errors_reused,
        phase1.non_2xx,
        phase1.unknown_color,
        phase1.label_mismatch
    );
    println!(
        "old color after switch returned  {}  (of {} responses to requests sent after a switch returned and answered before the next began)",
        phase1.stale, phase1.checked
    );
    let ms = |v: &[f64], p: f64| percentile(v, p);
    let (req_p50, req_p99) = (
        latency_percentile(&shared.latency, 50.0),
        latency_percentile(&shared.latency, 99.0),
    );
    println!(
        "request latency under this load  p50 {req_p50:.3} ms  p99 {req_p99:.3} ms  (a switch cannot show before one request's round trip)"
    );
    println!(
        "switch call duration             p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(&calls, 50.0),
        ms(&calls, 99.0),
        ms(&calls, 100.0)
    );
    println!(
        "switch -> first new-color answer p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms{}",
        ms(&first_new, 50.0),
        ms(&first_new, 99.0),
        ms(&first_new, 100.0),
        if missing > 0 {
            format!("  ({missing} switches saw none within {timeout:?})")
        } else {
            String::new()
        }
    );
    println!(
        "switch -> last old-color answer  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (requests in flight at the switch finishing where they started)",
        ms(&last_old, 50.0),
        ms(&last_old, 99.0),
        ms(&last_old, 100.0)
    );
    let mut result = format!(
        "RESULT name={name} switches={} requests={} ok={} failed={} conn_errors={} conn_errors_reused={} non_2xx={} stale={} checked={} call_p50_ms={:.3} call_p99_ms={:.3} first_new_p50_ms={:.3} first_new_p99_ms={:.3} last_old_p50_ms={:.3} last_old_p99_ms={:.3} req_p50_ms={req_p50:.3} req_p99_ms={req_p99:.3} missing={missing}",
        options.switches,
        phase1.sent,
        phase1.ok,
        phase1.failed(),
        phase1.conn_errors,
        phase1.conn_errors_reused,
        phase1.non_2xx,
        phase1.stale,
        phase1.checked,
        ms(&calls, 50.0),
        ms(&calls, 99.0),
        ms(&first_new, 50.0),
        ms(&first_new, 99.0),
        ms(&last_old, 50.0),
        ms(&last_old, 99.0),
    );
    let mut passed = phase1.failed() == 0 && phase1.stale == 0 && missing == 0;
    if let Some((before, after, rss_elapsed)) = rss {
        let extra = all.failed() - phase1.failed();
        let stale = all.stale - phase1.stale;
        println!(
            "RSS (whole process: proxy, {} clients, 2 backends) before {} more switches: {:.1} MiB, after: {:.1} MiB ({:+.1} MiB; {:.1} s; {} failed, {} old-color in those)",
            options.connections,
            options.rss_switches,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 - before as f64) / 1024.0,
            rss_elapsed.as_secs_f64(),
            extra,
            stale
        );
        result.push_str(&format!(
            " rss_switches={} rss_before_kib={before} rss_after_kib={after} rss_failed={extra} rss_stale={stale}",
            options.rss_switches
        ));
        passed &= extra == 0 && stale == 0;
    }
    println!("{result}");
    Ok(passed)
}
