//! Draining the old color happens beside the rollout, not in its way: a WebSocket that
//! keeps the old color busy for minutes holds up no command. And the spec's `proxy`
//! settings reach the proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

/// An upgraded connection through teal to a demo app, which echoes what it gets.
pub(crate) struct Tunnel {
    stream: TcpStream,
}

impl Tunnel {
    /// Upgrades a fresh connection to `address`; returns it and the color behind it.
    pub(crate) fn open(address: SocketAddr) -> (Tunnel, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: teal.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "the head ends early");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let color = head
            .lines()
            .find_map(|line| line.strip_prefix("x-teal-color: "))
            .unwrap_or_default()
            .to_owned();
        (Tunnel { stream }, color)
    }

    /// Sends `text` and expects it back.
    pub(crate) fn echo(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
        let mut back = vec![0u8; text.len()];
        self.stream.read_exact(&mut back).unwrap();
        assert_eq!(String::from_utf8_lossy(&back), text);
    }

    /// True once the other end closed the connection cleanly (end of stream).
    pub(crate) fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// Applies `spec`, waits for the candidate in preview, promotes it and waits until
/// users are on `color`; returns how long that took.
fn release(sandbox: &Sandbox, spec: &DemoSpec, color: Color) -> Duration {
    let started = Instant::now();
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    sandbox.wait_for(spec.name, "the candidate in preview", |r| {
        r.phase == Phase::Paused
    });
    sandbox.teal_ok(&["promote", spec.name]);
    sandbox.wait_for(spec.name, "users switched", |r| {
        r.phase == Phase::Healthy && r.active_color == Some(color)
    });
    started.elapsed()
}

#[test]
fn a_websocket_on_the_old_color_holds_up_neither_an_undo_nor_the_next_release() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("ws", "v1");
    spec.replicas = 1;
    // The old color is drained and stopped right after each switch, and its
    // WebSockets may keep it for five minutes.
    spec.scale_down_delay = 0;
    spec.strategy_extra = "      proxy: {upgradedDrainTimeout: 5m}\n".to_owned();
    let active = sandbox.go_live(&spec);
    let (mut tunnel, color) = Tunnel::open(active);
    assert_eq!(color, "blue");
    tunnel.echo("hello");

    spec.version = "v2";
    release(&sandbox, &spec, Color::Green);
    // Blue drains: its WebSocket is still open, so its instance still runs, and
    // `teal get` shows it on its way out.
    std::thread::sleep(Duration::from_millis(500));
    tunnel.echo("still on blue");
    let view = sandbox.get("ws");
    let blue = view
        .colors
        .iter()
        .find(|c| c.color == Color::Blue)
        .unwrap_or_else(|| panic!("the draining color is not shown: {:?}", view.colors));
    assert_eq!(blue.role, "stopping");
    assert_eq!(blue.instances.len(), 1);

    // The undo releases v1 again; blue runs it still, so it is kept, not restarted.
    let started = Instant::now();
    sandbox.teal_ok(&["undo", "ws"]);
    sandbox.wait_for("ws", "v1 again in preview", |r| r.phase == Phase::Paused);
    sandbox.teal_ok(&["promote", "ws"]);
    sandbox.wait_for("ws", "users back on blue", |r| {
        r.phase == Phase::Healthy && r.active_color == Some(Color::Blue)
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the undo waited for the drain: {:?}",
        started.elapsed()
    );
    tunnel.echo("blue was kept");

    // Green takes v4; blue drains again behind the WebSocket. A release into blue
    // does not wait the drain out either: blue's WebSocket is closed cleanly and v5
    // replaces it.
    spec.version = "v4";
    release(&sandbox, &spec, Color::Green);
    tunnel.echo("blue drains again");
    spec.version = "v5";
    let took = release(&sandbox, &spec, Color::Blue);
    assert!(took < Duration::from_secs(45), "v5 waited: {took:?}");
    assert!(tunnel.closed(), "blue's WebSocket was closed, not cut");
    let rt = runtime();
    let answer = rt.block_on(get_once(active, None));
    assert!(answer.body.contains("version v5"), "{answer:?}");
}

/// A POST with `size` bytes of body on a fresh connection; the status and the
/// `x-teal-reason` header.
fn post(address: SocketAddr, size: usize) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: teal.test\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The proxy may answer before reading the body and close: ignore a failed write.
    let _ = stream.write_all(&vec![b'x'; size]);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let reason = answer
        .lines()
        .find_map(|line| line.strip_prefix("x-teal-reason: "))
        .map(str::to_owned);
    (status, reason)
}

#[test]
fn proxy_limits_from_the_spec_are_enforced_and_follow_a_new_apply() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("limits", "v1");
    spec.replicas = 1;
    spec.strategy_extra = "      proxy: {maxRequestBodyBytes: 100}\n".to_owned();
    let active = sandbox.go_live(&spec);

    assert_eq!(post(active, 100).0, 200);
    assert_eq!(
        post(active, 101),
        (413, Some("request-body-too-large".to_owned()))
    );

    // Same template, new settings: no new revision, and the next request follows them.
    spec.strategy_extra = "      proxy: {maxRequestBodyBytes: 1000}\n".to_owned();
    let applied = sandbox.apply_ok("spec.yaml", &spec.yaml());
    assert!(applied.contains("configured"), "{applied}");
    assert_eq!(post(active, 1000).0, 200);
    assert_eq!(post(active, 1001).0, 413);
}

/// The protocol the instance says a GET through the listener reached it in.
fn protocol_at_instance(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = "GET / HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .lines()
        .find_map(|line| line.strip_prefix("x-demo-protocol: "))
        .unwrap_or_else(|| panic!("no x-demo-protocol in {answer}"))
        .to_owned()
}

#[test]
fn upstream_protocol_h2c_speaks_http2_to_the_instances_and_follows_a_new_apply() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("grpc", "v1");
    spec.replicas = 1;
    spec.strategy_extra = "      proxy: {upstreamProtocol: h2c}\n".to_owned();
    let active = sandbox.go_live(&spec);
    // The client speaks HTTP/1.1 to teal; teal speaks HTTP/2 to the instance.
    assert_eq!(protocol_at_instance(active), "HTTP/2.0");

    // Same template, the setting removed: the next request goes in HTTP/1.1.
    spec.strategy_extra = String::new();
    let applied = sandbox.apply_ok("spec.yaml", &spec.yaml());
    assert!(applied.contains("configured"), "{applied}");
    assert_eq!(protocol_at_instance(active), "HTTP/1.1");
}

/// Threads of the process named `teal-proxy-N`.
fn proxy_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("teal-proxy-"))
        .count()
}

#[test]
fn the_proxy_serves_on_as_many_threads_as_asked() {
    // More than the cores, so the default could not pass for it.
    let cores = std::thread::available_parallelism().unwrap().get();
    let asked = (cores + 1).to_string();
    let sandbox = Sandbox::start_with(&["--proxy-threads", &asked]);
    let mut spec = DemoSpec::new("threads", "v1");
    spec.replicas = 1;
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let live = sandbox.wait_for("threads", "v1 live", |r| r.phase == Phase::Healthy);
    let active: SocketAddr = live.active_listen.parse().unwrap();
    // They start with the first route table; a request shows it is served.
    assert_eq!(protocol_at_instance(active), "HTTP/1.1");
    assert_eq!(proxy_threads(sandbox.daemon_pid()), cores + 1);

    // By default, one per core.
    let sandbox = Sandbox::start();
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let live = sandbox.wait_for("threads", "v1 live", |r| r.phase == Phase::Healthy);
    assert_eq!(
        protocol_at_instance(live.active_listen.parse().unwrap()),
        "HTTP/1.1"
    );
    assert_eq!(proxy_threads(sandbox.daemon_pid()), cores);
}
