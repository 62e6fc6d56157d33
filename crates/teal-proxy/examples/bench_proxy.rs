//! teal's proxy alone, in front of one backend: for profiling the request path
//! without the daemon around it.
//!
//! ```text
//! cargo run --release -p teal-proxy --example bench_proxy -- BACKEND_ADDRESS [PORT]
//! ```
//!
//! Serves 127.0.0.1:PORT (default: a free port, printed) with a route table whose
//! active backend is blue revision 1 on BACKEND_ADDRESS; runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use teal_core::Color;
use teal_core::spec::PreviewMatch;
use teal_proxy::{Backend, Proxy, Role, RouteTable};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(backend) = args.next().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: bench_proxy BACKEND_ADDRESS [PORT]");
        return ExitCode::from(2);
    };
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let proxy = Proxy::new("bench");
    proxy.set_routes(RouteTable {
        active: Some(Backend {
            color: Color::Blue,
            revision: 1,
            instances: vec![backend],
        }),
        preview: None,
        preview_match: PreviewMatch::default(),
    });
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bench_proxy: cannot listen: {err}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(bound) => println!("bench_proxy listening on http://{bound} → {backend}"),
        Err(err) => eprintln!("bench_proxy: {err}"),
    }
    // Ctrl-C or SIGTERM ends it normally (main returns), so a build instrumented for
    // profile-guided optimization writes its profile.
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if let Err(err) = teal_proxy::serve(listener, proxy, Role::Active, stop).await {
        eprintln!("bench_proxy: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
