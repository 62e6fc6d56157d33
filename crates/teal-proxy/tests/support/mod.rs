//! What the proxy's integration tests share (`tests/proxy.rs` and
//! `tests/protocols.rs`): real backends, starting a proxy, route tables, and waiting.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use teal_core::Color;
use teal_core::spec::PreviewMatch;
use teal_proxy::{Backend, Proxy, ProxyOptions, Role, RouteTable, TlsSetting};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Holds `/hold` requests until released, and counts how many arrived; also what
/// the backend saw (connections, upload chunks) and whether it fails on purpose.
#[derive(Clone)]
pub struct Gate {
    arrived: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
    connections: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Bytes>>>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            arrived: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(Semaphore::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
            received: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Connections the backend accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// From now on every request gets `500` (true) or is served again (false).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The chunks of `/upload` bodies received so far, in order, as they arrived.
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect()
    }

    /// Requests that reached the backend's `/hold` handler.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.open.add_permits(n);
    }

    /// Waits until `n` requests are being held.
    pub async fn wait_arrived(&self, n: usize) {
        eventually(&format!("{n} held requests"), || self.arrived() >= n).await;
    }
}

/// A real HTTP/1.1 backend that answers with its own name.
///
/// - every response echoes the request headers back as `echo-<name>`, and the
///   request's method, version and target as `echo-method`, `echo-version` and
///   `echo-path`;
/// - `/hold` waits until the gate is released;
/// - `/hop` answers with a hop-by-hop header the proxy must drop;
/// - `/stream` sends a first chunk, the rest once the gate opens;
/// - `/events` is a server-sent event stream: one event at once, then one more
///   each time the gate opens, three in all;
/// - `/upload` records each chunk of the request body as it arrives and answers
///   `received N` at its end (`/upload?count`: counts them only);
/// - a request with `Upgrade` switches protocols (answering any
///   `Sec-WebSocket-Accept` and the first `Sec-WebSocket-Protocol`, without checking
///   the key: the tests do): the backend then writes its name and a newline, and
///   echoes whatever it reads;
/// - while the gate says so, everything is a `500`.
pub async fn backend(name: &str) -> SocketAddr {
    gated_backend(name).await.0
}

/// [`backend`], with the gate that controls its `/hold` requests.
pub async fn gated_backend(name: &str) -> (SocketAddr, Gate) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Gate::new();
    let name: Arc<str> = Arc::from(name);
    let accept_gate = gate.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = Arc::clone(&name);
            let gate = accept_gate.clone();
            gate.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let name = Arc::clone(&name);
                    let gate = gate.clone();
                    async move { Ok::<_, Infallible>(answer(&name, &gate, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, gate)
}

async fn answer(
    name: &str,
    gate: &Gate,
    mut request: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    if gate.failing.load(Ordering::SeqCst) {
        let mut response = Response::new(Full::new(Bytes::from(format!("{name} failing"))).boxed());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    }
    if let Some(protocol) = request.headers().get(UPGRADE).cloned() {
        let upgrade = hyper::upgrade::on(&mut request);
        let greeting = format!("{name}\n");
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        echo(&request, response.headers_mut());
        let headers = response.headers_mut();
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        // Any value: a proxy that made the key up must not hand this on.
        headers.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        if let Some(subprotocol) = request.headers().get("sec-websocket-protocol") {
            headers.insert("sec-websocket-protocol", subprotocol.clone());
        }
        return response;
    }
    if request.uri().path() == "/upload" {
        let keep = request.uri().query() != Some("count");
        let mut body = request.into_body();
        let mut total = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if keep {
                    gate.received.lock().unwrap().push(data);
                }
            }
        }
        return Response::new(Full::new(Bytes::from(format!("received {total}"))).boxed());
    }
    if request.uri().path() == "/events" {
        let (events, body) = tokio::sync::mpsc::channel(1);
        let gate = gate.clone();
        tokio::spawn(async move {
            for n in 1..=3 {
                if n > 1 {
                    gate.arrived.fetch_add(1, Ordering::SeqCst);
                    gate.open.acquire().await.unwrap().forget();
                }
                if events
                    .send(Bytes::from(format!("data: {n}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut response = Response::new(Chunks(body).boxed());
        response.headers_mut().insert(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("text/event-stream"),
        );
        return response;
    }
    if request.uri().path() == "/hold" {
        gate.arrived.fetch_add(1, Ordering::SeqCst);
        gate.open.acquire().await.unwrap().forget();
    }
    let body = if request.uri().path() == "/stream" {
        // "<name>:first;" at once, "second" only once the gate opens.
        let (chunks, body) = tokio::sync::mpsc::channel(1);
        let first = Bytes::from(format!("{name}:first;"));
        let gate = gate.clone();
        tokio::spawn(async move {
            chunks.send(first).await.unwrap();
            gate.arrived.fetch_add(1, Ordering::SeqCst);
            gate.open.acquire().await.unwrap().forget();
            let _ = chunks.send(Bytes::from_static(b"second")).await;
        });
        Chunks(body).boxed()
    } else {
        Full::new(Bytes::from(name.to_owned())).boxed()
    };
    let mut response = Response::new(body);
    echo(&request, response.headers_mut());
    if request.uri().path() == "/hop" {
        let headers = response.headers_mut();
        headers.insert("connection", HeaderValue::from_static("x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
    }
    response
}

/// Says in `echo-*` headers what the request was: every header as `echo-<name>`, and
/// its method, version and target.
fn echo(request: &Request<Incoming>, headers: &mut HeaderMap) {
    for (header, value) in request.headers() {
        let echo = HeaderName::from_bytes(format!("echo-{header}").as_bytes()).unwrap();
        headers.append(echo, value.clone());
    }
    let version = format!("{:?}", request.version());
    let target = request.uri().to_string();
    for (header, value) in [
        ("echo-method", request.method().as_str()),
        ("echo-version", &version),
        ("echo-path", &target),
    ] {
        headers.insert(header, HeaderValue::from_str(value).unwrap());
    }
}

/// A body streamed from a channel, one frame per message, unknown length.
pub struct Chunks(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// An address nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Serves the proxy on a fresh port until the test ends.
/// A proxy whose active route is the one backend, blue revision 1.
pub fn proxy_to(backend: SocketAddr) -> Arc<Proxy> {
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[backend])), None));
    proxy
}

/// Serves the proxy on a fresh port, with TLS while `tls` holds a certificate, until
/// the test ends.
pub async fn start_tls(proxy: &Arc<Proxy>, role: Role, tls: TlsSetting) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(teal_proxy::serve_tls(
        listener,
        Arc::clone(proxy),
        role,
        tls,
        std::future::pending(),
    ));
    addr
}

/// Serves the proxy (plain HTTP) on a fresh port until the test ends.
pub async fn start(proxy: &Arc<Proxy>, role: Role) -> SocketAddr {
    start_tls(proxy, role, TlsSetting::default()).await
}

pub fn be(color: Color, revision: u64, instances: &[SocketAddr]) -> Backend {
    Backend {
        color,
        revision,
        instances: instances.to_vec(),
    }
}

pub fn table(active: Option<Backend>, preview: Option<Backend>) -> RouteTable {
    RouteTable {
        active,
        preview,
        preview_match: PreviewMatch::default(),
    }
}

/// One answer, body collected.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The response with its body read to the end.
    async fn read(response: Response<Incoming>) -> Result<Answer, hyper::Error> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub fn color(&self) -> &str {
        self.headers
            .get("x-teal-color")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// One keep-alive client connection: every request goes over the same socket,
/// which is closed at once (whatever is in flight on it) when the Conn is dropped.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Conn { sender, task }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], "").await.unwrap()
    }

    /// Sends a GET and returns as soon as the response headers are in.
    pub async fn start(&mut self, path: &str) -> Response<Incoming> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("shop.test"));
        self.sender.ready().await.unwrap();
        self.sender.send_request(request).await.unwrap()
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer, hyper::Error> {
        let mut request = Request::new(Full::new(Bytes::from(body.to_owned())));
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("shop.test"));
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        Answer::read(response).await
    }
}

/// Sends raw bytes on a fresh connection and returns everything the proxy answered.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends a request whose body is whatever arrives on the returned channel (sent
/// chunked, as it comes), on a fresh connection; the answer comes from the handle.
pub async fn upload(
    addr: SocketAddr,
    path: &str,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    JoinHandle<Result<Answer, hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Chunks>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (chunks, body) = tokio::sync::mpsc::channel(4);
    let mut request = Request::new(Chunks(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path.parse().unwrap();
    request
        .headers_mut()
        .insert(HOST, HeaderValue::from_static("shop.test"));
    let answer = tokio::spawn(async move {
        let response = sender.send_request(request).await?;
        Answer::read(response).await
    });
    (chunks, answer)
}

/// This process's peak resident memory so far, in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A proxy with the default options changed by `change`.
pub fn proxy_with(change: impl FnOnce(&mut ProxyOptions)) -> Arc<Proxy> {
    let mut options = ProxyOptions::default();
    change(&mut options);
    Proxy::with_options("shop", options)
}

/// A client on a raw socket, for what hyper's client would not do on purpose
/// (chunked uploads paced by the test, protocol upgrades by hand).
pub struct Raw {
    stream: TcpStream,
    /// Read but not yet consumed.
    buffered: Vec<u8>,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buffered: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// One chunk of a chunked body.
    pub async fn chunk(&mut self, data: &str) {
        self.write(&format!("{:x}\r\n{data}\r\n", data.len())).await;
    }

    async fn fill(&mut self) -> usize {
        let mut buf = [0u8; 8192];
        let n = within("bytes from the proxy", self.stream.read(&mut buf))
            .await
            .unwrap_or(0);
        self.buffered.extend_from_slice(&buf[..n]);
        n
    }

    /// A response head, up to and including its blank line.
    pub async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buffered.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(
                self.fill().await > 0,
                "connection closed before a full head"
            );
        }
    }

    /// Exactly `n` bytes.
    pub async fn exactly(&mut self, n: usize) -> String {
        while self.buffered.len() < n {
            assert!(self.fill().await > 0, "connection closed early");
        }
        let bytes: Vec<u8> = self.buffered.drain(..n).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Everything until the proxy closes the connection (a reset counts as a
    /// close).
    pub async fn rest(&mut self) -> String {
        while self.fill().await > 0 {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buffered)).into_owned()
    }
}

/// An address whose connects hang: a listener that never accepts, its backlog
/// filled, so the kernel drops further SYNs. Keep the value alive.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _filling: Vec<TcpStream>,
}

pub async fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => filling.push(stream),
            // The backlog is full: this connect hangs, as the proxy's will.
            Err(_) => {
                return Blackhole {
                    addr,
                    _listener: listener,
                    _filling: filling,
                };
            }
            Ok(Err(err)) => panic!("connect to the blackhole failed: {err}"),
        }
    }
    panic!("the listen backlog never filled up");
}

/// A backend that answers one request per connection and then closes it without
/// saying so beforehand (no `Connection: close`), as servers whose keep-alive
/// timeout ran out do.
pub async fn one_shot_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// Polls the condition until it holds; fails the test after 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the future with a generous limit so a hang fails the test instead of CI.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
