//! One probe check: an HTTP GET or a TCP connect to an instance's port.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use teal_core::spec::{Probe, ProbeAction};
use tokio::net::TcpStream;

/// How often, without a readinessProbe, we check that the port accepts connections.
const DEFAULT_READINESS_PERIOD: Duration = Duration::from_millis(500);

/// The probe used when a template has no readinessProbe: ready once the port accepts
/// a TCP connection.
pub(crate) fn default_readiness() -> Probe {
    Probe {
        action: ProbeAction::TcpSocket,
        initial_delay: Duration::ZERO,
        period: DEFAULT_READINESS_PERIOD,
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 3,
    }
}

/// Why a check failed.
#[derive(Debug)]
enum Failure {
    /// The HTTP answer was outside 200..=399.
    Status(u16),
    /// No answer in time.
    Timeout(Duration),
    /// Could not connect, or the connection broke.
    Error(String),
}

/// Runs one check of `probe` against `127.0.0.1:port`. On failure, returns one
/// sentence that starts with `label` (e.g. "readiness probe GET /ready answered 503").
pub(crate) async fn check(probe: &Probe, label: &str, port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let outcome = match tokio::time::timeout(probe.timeout, attempt(&probe.action, addr)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::Timeout(probe.timeout)),
    };
    outcome.map_err(|failure| match failure {
        Failure::Status(code) => format!("{label} answered {code}"),
        Failure::Timeout(limit) => format!("{label} got no answer within {limit:?}"),
        Failure::Error(error) => format!("{label} failed: {error}"),
    })
}

/// What a probe is called in messages: "readiness probe GET /ready".
pub(crate) fn label(kind: &str, action: &ProbeAction, port: u16) -> String {
    match action {
        ProbeAction::HttpGet { path } => format!("{kind} probe GET {path}"),
        ProbeAction::TcpSocket => format!("{kind} probe TCP port {port}"),
    }
}

async fn attempt(action: &ProbeAction, addr: SocketAddr) -> Result<(), Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::Error(format!("cannot connect to {addr}: {}", describe_io(&e))))?;
    match action {
        ProbeAction::TcpSocket => Ok(()),
        ProbeAction::HttpGet { path } => {
            let code = http_get(stream, addr, path).await?;
            if (200..=399).contains(&code) {
                Ok(())
            } else {
                Err(Failure::Status(code))
            }
        }
    }
}

/// One GET over a fresh connection; the answer's status code.
async fn http_get(stream: TcpStream, addr: SocketAddr, path: &str) -> Result<u16, Failure> {
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "teal-probe")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Error(format!("invalid request: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Error(e.to_string()))?;
    // The connection future drives the socket; it ends when we drop it with the task.
    let driver = tokio::spawn(connection);
    let answer = sender.send_request(request).await;
    driver.abort();
    answer
        .map(|response| response.status().as_u16())
        .map_err(|e| Failure::Error(format!("no HTTP answer: {e}")))
}

/// An I/O error as the OS describes it ("Connection refused"), without Rust's
/// "(os error 111)" suffix, for messages people read.
pub(crate) fn describe_io(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => error.to_string(),
    }
}
