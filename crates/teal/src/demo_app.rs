//! `teal demo-app`: a tiny HTTP server for demos and tests. It answers with its color
//! and version, has `/healthz` and `/ready`, and can be told to fail a share of
//! requests, to answer slowly, or never to become ready. A request that asks for an
//! upgrade (`Connection: upgrade`, as a WebSocket handshake does) is answered `101` and
//! the connection then echoes whatever it receives, like a WebSocket held open. It
//! speaks HTTP/1.1 and, to a client that starts with the HTTP/2 preface, h2c (as
//! gRPC servers do); `x-demo-protocol` says which a request came in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// How the demo app behaves; every field also has an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoAppOptions {
    /// Port to listen on (127.0.0.1).
    #[arg(long, env = "PORT")]
    pub port: u16,
    /// Version it reports.
    #[arg(long, env = "DEMO_VERSION", default_value = "v1")]
    pub version: String,
    /// Share of requests (0.0 to 1.0) answered with 500, spread evenly.
    #[arg(long, env = "DEMO_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, env = "DEMO_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Apply the fail rate only after this many requests were answered: a version
    /// that looks fine in preview and breaks under real traffic.
    #[arg(long, env = "DEMO_FAIL_AFTER", default_value_t = 0)]
    pub fail_after: u64,
    /// `/ready` always answers 503.
    #[arg(long, env = "DEMO_NEVER_READY", default_value_t = false)]
    pub never_ready: bool,
}

struct App {
    options: DemoAppOptions,
    color: String,
    instance: String,
    served: AtomicU64,
}

/// Serves until killed.
pub async fn run(options: DemoAppOptions) -> anyhow::Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], options.port));
    let listener = TcpListener::bind(address).await?;
    let app = Arc::new(App {
        color: std::env::var("TEAL_COLOR").unwrap_or_else(|_| "none".to_owned()),
        instance: std::env::var("TEAL_INSTANCE")
            .unwrap_or_else(|_| format!("demo-app-{}", std::process::id())),
        options,
        served: AtomicU64::new(0),
    });
    println!(
        "demo-app {} ({}) listening on http://{address}",
        app.options.version, app.color
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => {
                println!("demo-app: SIGTERM, exiting");
                return Ok(());
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, hyper::Error>(app.answer(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl App {
    async fn answer(&self, mut request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if let Some(protocol) = request.headers().get(hyper::header::UPGRADE).cloned() {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                }
            });
            let mut response = self.text(StatusCode::SWITCHING_PROTOCOLS, String::new());
            let headers = response.headers_mut();
            headers.remove("content-type");
            headers.insert(
                hyper::header::CONNECTION,
                "upgrade".parse().expect("static"),
            );
            headers.insert(hyper::header::UPGRADE, protocol);
            return response;
        }
        let mut response = self.answer_request(&request).await;
        if let Ok(protocol) = format!("{:?}", request.version()).parse() {
            response.headers_mut().insert("x-demo-protocol", protocol);
        }
        response
    }

    async fn answer_request(
        &self,
        request: &Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        match path {
            "/healthz" => return self.text(StatusCode::OK, "ok\n".to_owned()),
            "/ready" if self.options.never_ready => {
                return self.text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready (DEMO_NEVER_READY)\n".to_owned(),
                );
            }
            "/ready" => return self.text(StatusCode::OK, "ready\n".to_owned()),
            _ => {}
        }
        let mut delay = Duration::from_millis(self.options.delay_ms);
        if path == "/slow" {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            delay += Duration::from_millis(ms);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let count = self.served.fetch_add(1, Ordering::Relaxed);
        // Deterministic spread: request n fails when the running share crosses a whole
        // number, so a rate of 0.25 fails exactly one request in four.
        let rate = self.options.fail_rate.clamp(0.0, 1.0);
        let fails = count >= self.options.fail_after
            && ((count + 1) as f64 * rate).floor() > (count as f64 * rate).floor();
        if fails {
            return self.text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "error from {}, version {} (DEMO_FAIL_RATE)\n",
                    self.color, self.options.version
                ),
            );
        }
        self.text(
            StatusCode::OK,
            format!(
                "hello from {}, version {} (instance {})\n",
                self.color, self.options.version, self.instance
            ),
        )
    }

    fn text(&self, status: StatusCode, body: String) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            "text/plain; charset=utf-8".parse().expect("static header"),
        );
        if let Ok(version) = self.options.version.parse() {
            headers.insert("x-demo-version", version);
        }
        response
    }
}
