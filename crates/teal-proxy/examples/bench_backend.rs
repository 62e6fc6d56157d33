//! A tiny, fast HTTP/1.1 backend for the proxy benchmarks in `bench/`.
//!
//! ```text
//! cargo run --release -p teal-proxy --example bench_backend -- \
//!     [--port PORT] [--color COLOR] [--work-ms N] [--spin] [--threads N]
//! ```
//!
//! It listens on 127.0.0.1:PORT (default: `$PORT`, as teal gives its instances) and
//! answers every request with `hello from COLOR` (default: `$TEAL_COLOR`) and an
//! `x-color` header. `--work-ms N` waits N ms before each answer (a timer, like an app
//! waiting on its database); with `--spin` it keeps a core busy for that long instead.
//! `/ready` always answers at once. `--threads` sets tokio's worker threads (default:
//! one per core).

#[path = "support/backend.rs"]
mod backend;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use backend::Work;

struct Options {
    port: u16,
    color: String,
    work_ms: f64,
    spin: bool,
    threads: Option<usize>,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        port: std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        color: std::env::var("TEAL_COLOR").unwrap_or_else(|_| "none".to_owned()),
        work_ms: 0.0,
        spin: false,
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => {
                options.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--color" => options.color = value("--color")?,
            "--work-ms" => {
                options.work_ms = value("--work-ms")?
                    .parse()
                    .map_err(|e| format!("--work-ms: {e}"))?;
            }
            "--spin" => options.spin = true,
            "--threads" => {
                options.threads = Some(
                    value("--threads")?
                        .parse()
                        .map_err(|e| format!("--threads: {e}"))?,
                );
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench_backend [--port PORT] [--color COLOR] [--work-ms N] [--spin] [--threads N]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let work = if options.work_ms <= 0.0 {
        Work::None
    } else if options.spin {
        Work::Spin(Duration::from_secs_f64(options.work_ms / 1000.0))
    } else {
        Work::Sleep(Duration::from_secs_f64(options.work_ms / 1000.0))
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = options.threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench_backend: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let address = SocketAddr::from(([127, 0, 0, 1], options.port));
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("bench_backend: cannot listen on {address}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener.local_addr().unwrap_or(address);
        println!(
            "bench_backend {} listening on http://{bound} (work: {work:?})",
            options.color
        );
        backend::serve(listener, options.color, work).await;
        ExitCode::SUCCESS
    })
}
