//! A second `teal server` on the same data directory takes over from the running one:
//! clients that never stop sending see no refused connection and no failed request.
//!
//! What counts as a failure: a refused (or otherwise failed) connect, an error on a
//! fresh connection, any status but 200, a response cut off, a wrong body. What does
//! not: a keep-alive connection the old daemon closed between two requests. A client
//! then finds its connection closed before sending, or has just sent a request that
//! got no byte of a response because the server had closed the idle connection
//! before reading it; as browsers, curl, Go's net/http and hyper's pooled client do
//! for idempotent requests, it sends the request again on a new connection, once.
//! Those are counted as reconnects, and the retry must succeed. The old daemon only
//! ever closes idle connections (a connection with a request under way is answered
//! first), so no request was in flight on them.

use std::net::SocketAddr;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use teal_core::Color;
use teal_core::rollout::Phase;
use tokio::net::TcpStream;

use crate::support::*;

/// How one client uses its connections.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// One keep-alive connection, requests back to back.
    KeepAlive,
    /// One keep-alive connection, idle for a moment between requests.
    KeepAliveIdle,
    /// A new connection for every request.
    Fresh,
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    /// Answered after the old daemon exited.
    ok_after: u64,
    reconnects: u64,
    /// Why each reconnect was needed.
    closed: Vec<String>,
    failures: Vec<String>,
}

/// How a request on an open connection went.
enum Outcome {
    Answered(u16, String),
    /// Nothing of a response arrived: the connection was closed under the request.
    NoResponse(String),
    Failed(String),
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(address: SocketAddr) -> Result<(Sender, SocketAddr), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect to {address}: {e}"))?;
    let local = stream.local_addr().unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {address}: {e}"))?;
    tokio::spawn(connection);
    Ok((sender, local))
}

async fn send(sender: &mut Sender, path: &str) -> Outcome {
    if let Err(error) = sender.ready().await {
        return Outcome::NoResponse(format!("closed before sending: {error}"));
    }
    let request = hyper::Request::get(path)
        .header("host", "teal.test")
        .body(Empty::new())
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        // No response head: the server closed the connection without answering.
        Err(error) => return Outcome::NoResponse(error.to_string()),
    };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(body) => Outcome::Answered(status, String::from_utf8_lossy(&body.to_bytes()).into()),
        Err(error) => Outcome::Failed(format!("{status} cut off: {error}")),
    }
}

/// A client sending `GET path` until `stop`; `expect` must be in every answer.
fn client(
    rt: &tokio::runtime::Runtime,
    address: SocketAddr,
    path: &'static str,
    expect: &'static str,
    style: Style,
    stop: Arc<AtomicBool>,
    old_gone: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Tally> {
    rt.spawn(async move {
        let mut tally = Tally::default();
        let mut kept: Option<Sender> = None;
        let mut local = None;
        while !stop.load(Ordering::Relaxed) {
            let after = old_gone.load(Ordering::Relaxed);
            let reused = kept.is_some();
            let mut sender = match kept.take() {
                Some(sender) => sender,
                None => match connect(address).await {
                    Ok((sender, l)) => {
                        local = Some(l);
                        sender
                    }
                    Err(error) => {
                        tally.failures.push(error);
                        continue;
                    }
                },
            };
            let mut outcome = send(&mut sender, path).await;
            if let Outcome::NoResponse(why) = &outcome
                && reused
            {
                tally.reconnects += 1;
                tally.closed.push(why.clone());
                outcome = match connect(address).await {
                    Ok((fresh, l)) => {
                        local = Some(l);
                        sender = fresh;
                        match send(&mut sender, path).await {
                            Outcome::NoResponse(again) => {
                                Outcome::Failed(format!("{why}, then on a new connection: {again}"))
                            }
                            other => other,
                        }
                    }
                    Err(error) => Outcome::Failed(format!("{why}, then {error}")),
                };
            }
            match outcome {
                Outcome::Answered(200, body) if body.contains(expect) => {
                    tally.ok += 1;
                    if after {
                        tally.ok_after += 1;
                    }
                }
                Outcome::Answered(status, body) => tally
                    .failures
                    .push(format!("{path}: {status} {}", body.trim())),
                Outcome::NoResponse(error) | Outcome::Failed(error) => tally
                    .failures
                    .push(format!("{path} at {} from {:?}: {error}", now_ms(), local)),
            }
            match style {
                Style::KeepAlive => kept = Some(sender),
                Style::KeepAliveIdle => {
                    kept = Some(sender);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                Style::Fresh => {}
            }
        }
        tally
    })
}

/// The old daemon, killed if the test ends before it exits.
struct Old(Child);

impl Drop for Old {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn instance_pids(rollout: &teal_core::api::RolloutView) -> Vec<u32> {
    let mut pids: Vec<u32> = rollout
        .colors
        .iter()
        .flat_map(|c| c.instances.iter().filter_map(|i| i.pid))
        .collect();
    pids.sort();
    pids
}

#[test]
fn restarting_the_daemon_while_clients_send_loses_no_request() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let spec = DemoSpec::new("relay", "v1");
    sandbox.apply_ok("relay.yaml", &spec.yaml());
    let before = sandbox.wait_for("relay", "v1 live on blue", |r| {
        r.phase == Phase::Healthy
            && r.active_color == Some(Color::Blue)
            && r.colors
                .iter()
                .flat_map(|c| &c.instances)
                .filter(|i| i.ready)
                .count()
                == 2
    });
    let active: SocketAddr = before.active_listen.parse().unwrap();
    let preview: SocketAddr = before.preview_listen.as_deref().unwrap().parse().unwrap();
    let api = api_address(&sandbox);

    let stop = Arc::new(AtomicBool::new(false));
    let old_gone = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut add = |address, path, expect, style, copies| {
        for _ in 0..copies {
            clients.push(client(
                &rt,
                address,
                path,
                expect,
                style,
                stop.clone(),
                old_gone.clone(),
            ));
        }
    };
    add(active, "/", "version v1", Style::KeepAlive, 3);
    add(active, "/", "version v1", Style::KeepAliveIdle, 2);
    add(active, "/", "version v1", Style::Fresh, 2);
    add(preview, "/", "version v1", Style::KeepAliveIdle, 1);
    add(
        api,
        "/api/v1/rollouts/relay",
        "\"relay\"",
        Style::KeepAliveIdle,
        1,
    );
    add(api, "/healthz", "ok", Style::Fresh, 1);
    std::thread::sleep(Duration::from_secs(1));

    let old = Old(sandbox.start_successor());
    let old_pid = old.0.id();
    let mut old = old;
    let exited = eventually(
        Duration::from_secs(60),
        "the old daemon exits after handing over",
        || old.0.try_wait().unwrap(),
    );
    old_gone.store(true, Ordering::Relaxed);
    assert!(
        exited.success(),
        "the old daemon exited with {exited}:\n{}",
        sandbox.daemon_log()
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients
        .into_iter()
        .map(|client| rt.block_on(client).unwrap())
        .collect();

    let log = sandbox.daemon_log();
    assert!(
        log.contains(&format!("took over 3 listeners from pid {old_pid}")),
        "the new daemon says what it took over:\n{log}"
    );
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let reconnects: u64 = tallies.iter().map(|t| t.reconnects).sum();
    let closed: Vec<&String> = tallies.iter().flat_map(|t| &t.closed).collect();
    eprintln!("{ok} requests answered, {reconnects} reconnects ({closed:?}), {failures:?}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}\n{log}",
        failures.len(),
        ok as usize + failures.len()
    );
    for (index, tally) in tallies.iter().enumerate() {
        assert!(
            tally.ok_after > 0,
            "client {index} was answered after the old daemon exited: {tally:?}"
        );
    }
    // The old daemon closes its keep-alive connections (the proxy's and the API's)
    // cleanly: it answers their next request with `Connection: close` (or closes them
    // while idle), so a client learns before it sends that it must reconnect; no
    // request meets a closed connection.
    let cut: Vec<&String> = tallies
        .iter()
        .flat_map(|t| &t.closed)
        .filter(|why| !why.starts_with("closed before sending"))
        .collect();
    assert!(cut.is_empty(), "requests met a closed connection: {cut:?}");

    let after = sandbox.get("relay");
    assert_eq!(
        instance_pids(&after),
        instance_pids(&before),
        "the instances were handed over, not restarted"
    );
    assert_eq!(after.status, before.status, "the rollout is where it was");
    assert_eq!(
        (
            after.active_listen.as_str(),
            after.preview_listen.as_deref()
        ),
        (
            before.active_listen.as_str(),
            before.preview_listen.as_deref()
        )
    );
    assert_eq!(api_address(&sandbox), api, "the API kept its address");
    // The new daemon decides and reconciles from now on.
    let mut spec = spec;
    spec.version = "v2";
    sandbox.apply_ok("relay.yaml", &spec.yaml());
    sandbox.wait_for("relay", "v2 in preview", |r| {
        r.phase == Phase::Paused && r.preview_revision == Some(2)
    });
}

/// One handoff message: a 4-byte big-endian length, then JSON.
fn write_message(stream: &mut std::os::unix::net::UnixStream, json: &str) {
    use std::io::Write;
    stream
        .write_all(&(json.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(json.as_bytes()).unwrap();
}

fn read_message(stream: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).unwrap();
    let mut json = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut json).unwrap();
    String::from_utf8(json).unwrap()
}

#[test]
fn a_takeover_that_fails_leaves_the_running_daemon_in_charge() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("steady", "v1");
    sandbox.apply_ok("steady.yaml", &spec.yaml());
    let before = sandbox.wait_for("steady", "v1 live", |r| r.phase == Phase::Healthy);
    let active: SocketAddr = before.active_listen.parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [Style::KeepAlive, Style::Fresh]
        .into_iter()
        .map(|style| {
            client(
                &rt,
                active,
                "/",
                "version v1",
                style,
                stop.clone(),
                never.clone(),
            )
        })
        .collect();

    // A successor that takes the sockets and dies before it serves them.
    let mut stream =
        std::os::unix::net::UnixStream::connect(sandbox.data_dir().join("handoff.sock")).unwrap();
    write_message(&mut stream, r#"{"hello":{"pid":1,"version":"test"}}"#);
    let offer = read_message(&mut stream);
    assert!(offer.starts_with(r#"{"offer":"#), "{offer}");
    drop(stream);
    eventually(
        Duration::from_secs(10),
        "the daemon says the takeover failed",
        || {
            sandbox
                .daemon_log()
                .contains("a takeover failed")
                .then_some(())
        },
    );

    // It still serves, decides, reconciles and supervises.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let tally = rt.block_on(client).unwrap();
        assert!(
            tally.failures.is_empty() && tally.reconnects == 0 && tally.ok > 0,
            "{tally:?}"
        );
    }
    spec.version = "v2";
    sandbox.apply_ok("steady.yaml", &spec.yaml());
    let after = sandbox.wait_for("steady", "v2 in preview", |r| {
        r.phase == Phase::Paused
            && r.preview_revision == Some(2)
            && r.colors.iter().flat_map(|c| &c.instances).all(|i| i.ready)
    });
    let blue = |r: &teal_core::api::RolloutView| {
        r.colors
            .iter()
            .filter(|c| c.color == Color::Blue)
            .flat_map(|c| c.instances.iter().filter_map(|i| i.pid))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        blue(&after),
        blue(&before),
        "blue was left running as it was"
    );
}

/// The old daemon drains as a switch does: a request that takes longer than the
/// 5 s a listener gives by default is answered within `drainTimeoutSeconds`, a
/// WebSocket goes on until `upgradedDrainTimeout` and is then closed cleanly, and the
/// new daemon does not stop the color under them (here blue, switched away from just
/// before the takeover and due to be stopped).
#[test]
fn a_takeover_drains_the_old_daemon_within_the_rollout_drain_timeouts() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("drained", "v1");
    spec.replicas = 1;
    spec.scale_down_delay = 1;
    spec.strategy_extra =
        "      drainTimeoutSeconds: 30\n      proxy: {upgradedDrainTimeout: 3s}\n".to_owned();
    let active = sandbox.go_live(&spec);
    spec.version = "v2";
    sandbox.apply_ok("drained.yaml", &spec.yaml());
    sandbox.wait_for("drained", "v2 in preview", |r| r.phase == Phase::Paused);

    let (mut tunnel, color) = crate::drain::Tunnel::open(active);
    assert_eq!(color, "blue");
    tunnel.echo("before");
    let slow = rt.spawn(async move {
        let started = std::time::Instant::now();
        let answer = Connection::open(active)
            .await
            .map_err(|e| e.to_string())?
            .get("/slow?ms=15000", None)
            .await?;
        Ok::<_, String>((answer, started.elapsed()))
    });
    std::thread::sleep(Duration::from_millis(300));
    sandbox.teal_ok(&["promote", "drained"]);
    sandbox.wait_for("drained", "users on green", |r| {
        r.active_color == Some(Color::Green)
    });
    // Past the scale-down delay: blue is draining, to be stopped once the slow request
    // and the WebSocket are done.
    std::thread::sleep(Duration::from_millis(1500));

    let mut old = sandbox.start_successor();
    eventually(Duration::from_secs(30), "the new daemon serves", || {
        sandbox.daemon_log().contains("took over").then_some(())
    });
    let answer = rt.block_on(get_once(active, None));
    assert!(answer.body.contains("version v2"), "{answer:?}");

    let (answer, took) = rt
        .block_on(slow)
        .unwrap()
        .expect("the slow request is answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.color.as_deref(), Some("blue"), "{answer:?}");
    // Without the rollout's drain timeout the old daemon would have cut it 5 s after
    // it stopped accepting, seconds before it was done.
    assert!(took >= Duration::from_secs(15), "{took:?}");
    tunnel.echo("after the takeover");
    // The old daemon has no request left; it stays for the WebSocket.
    std::thread::sleep(Duration::from_millis(1500));
    tunnel.echo("still up");

    // Closed by the old daemon once upgradedDrainTimeout is over, which then exits.
    let closed_at = std::time::Instant::now();
    assert!(tunnel.closed(), "the WebSocket is closed cleanly");
    assert!(closed_at.elapsed() < Duration::from_secs(8));
    let status = eventually(Duration::from_secs(15), "the old daemon exits", || {
        old.try_wait().unwrap()
    });
    assert!(status.success(), "{}", sandbox.daemon_log());

    // Only now does the new daemon stop blue.
    let log = sandbox.daemon_log();
    assert!(
        log.contains("waiting for the daemon this one took over from"),
        "{log}"
    );
    sandbox.wait_for("drained", "blue stopped", |r| {
        r.colors
            .iter()
            .filter(|c| c.color == Color::Blue)
            .all(|c| c.instances.is_empty())
    });
}

/// The running daemon gave up waiting (it carries on) just as the new one said it
/// serves: the new one is not confirmed, and exits rather than run beside it.
#[test]
fn a_successor_the_running_daemon_does_not_confirm_exits() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("handoff.sock")).unwrap();
    let old = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello = read_message(&mut stream);
        assert!(hello.starts_with(r#"{"hello":"#), "{hello}");
        write_message(
            &mut stream,
            r#"{"offer":{"pid":1,"version":"test","api":null,"rollouts":[],"confirms":true}}"#,
        );
        // Ready arrives; no Going is sent back.
        read_message(&mut stream)
    });
    let mut successor = std::process::Command::new(TEAL)
        .args(["server", "--api", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually(Duration::from_secs(30), "the successor exits", || {
        successor.try_wait().unwrap()
    });
    let _ = successor.kill();
    assert_eq!(old.join().unwrap(), r#""ready""#);
    let output = successor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("pid 1 did not confirm the takeover"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("api.addr").exists(),
        "it never announced itself"
    );
}

/// A rollout live on one instance whose WebSockets may drain for 10 minutes, with a
/// WebSocket open through it and a request of `slow_ms` in flight.
struct Busy {
    sandbox: Sandbox,
    rt: tokio::runtime::Runtime,
    active: SocketAddr,
    tunnel: crate::drain::Tunnel,
    slow: tokio::task::JoinHandle<Result<Answer, String>>,
}

fn busy(name: &'static str, slow_ms: u64) -> Busy {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new(name, "v1");
    spec.replicas = 1;
    spec.strategy_extra = "      proxy: {upgradedDrainTimeout: 10m}\n".to_owned();
    let active = sandbox.go_live(&spec);
    let (mut tunnel, _) = crate::drain::Tunnel::open(active);
    tunnel.echo("before");
    let slow = rt.spawn(async move {
        Connection::open(active)
            .await
            .map_err(|e| e.to_string())?
            .get(&format!("/slow?ms={slow_ms}"), None)
            .await
    });
    // The request reaches the daemon before anything else happens.
    std::thread::sleep(Duration::from_millis(200));
    Busy {
        sandbox,
        rt,
        active,
        tunnel,
        slow,
    }
}

/// Sends SIGTERM to `daemon` while `slow` is in flight: the WebSocket must close cleanly
/// within `within`, and the request be answered.
fn stop_closes_the_websocket_and_answers_the_request(
    daemon: &Child,
    tunnel: &mut crate::drain::Tunnel,
    rt: &tokio::runtime::Runtime,
    slow: tokio::task::JoinHandle<Result<Answer, String>>,
    within: Duration,
) {
    assert!(
        !slow.is_finished(),
        "the request is still in flight at the signal"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let closed_at = std::time::Instant::now();
    assert!(tunnel.closed(), "the WebSocket is closed cleanly");
    let took = closed_at.elapsed();
    assert!(took < within, "the WebSocket closed after {took:?}");
    let answer = rt
        .block_on(slow)
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// An old daemon that drains a WebSocket for minutes after a takeover closes it at
/// once when told to stop, and still answers the request it is serving: the operator
/// need not wait out `upgradedDrainTimeout`, and no request is cut.
#[test]
fn a_stop_signal_closes_the_old_daemons_websockets_but_not_its_requests() {
    let Busy {
        mut sandbox,
        rt,
        active,
        mut tunnel,
        slow,
    } = busy("patient", 15_000);

    let mut old = sandbox.start_successor();
    eventually(Duration::from_secs(30), "the new daemon serves", || {
        sandbox.daemon_log().contains("took over").then_some(())
    });
    tunnel.echo("the old daemon carries it on");
    assert!(old.try_wait().unwrap().is_none(), "it drains");
    stop_closes_the_websocket_and_answers_the_request(
        &old,
        &mut tunnel,
        &rt,
        slow,
        Duration::from_secs(2),
    );
    let status = eventually(Duration::from_secs(10), "the old daemon exits", || {
        old.try_wait().unwrap()
    });
    assert!(status.success(), "{}", sandbox.daemon_log());
    assert!(sandbox.daemon_log().contains(
        "stopped while draining; closing the WebSockets, answering the requests in flight"
    ));
    // The instances belong to the new daemon: it still serves.
    let answer = rt.block_on(get_once(active, None));
    assert!(answer.body.contains("version v1"), "{answer:?}");
}

/// Two takeovers in a row while the first daemon still drains a WebSocket and a
/// request: the middle daemon, which waits for the first before it exits, is told to
/// stop. It stops the first one the same way (the WebSocket closes at once, the request
/// is answered) and exits only after it, so the newest daemon, which waits for the
/// middle one before it stops a color, has waited for every request of the chain.
#[test]
fn a_stop_signal_to_a_daemon_that_took_over_stops_the_one_it_took_over_from() {
    let Busy {
        mut sandbox,
        rt,
        active,
        mut tunnel,
        slow,
    } = busy("chain", 20_000);

    let mut first = sandbox.start_successor();
    eventually(Duration::from_secs(30), "the second daemon serves", || {
        sandbox
            .newest_daemon_log()
            .contains("took over")
            .then_some(())
    });
    let mut middle = sandbox.start_successor();
    eventually(Duration::from_secs(30), "the third daemon serves", || {
        sandbox
            .newest_daemon_log()
            .contains("took over")
            .then_some(())
    });
    tunnel.echo("the first daemon carries it on");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first daemon drains"
    );
    assert!(
        middle.try_wait().unwrap().is_none(),
        "the middle daemon waits for the first"
    );
    // The WebSocket and the request are the first daemon's.
    stop_closes_the_websocket_and_answers_the_request(
        &middle,
        &mut tunnel,
        &rt,
        slow,
        Duration::from_secs(3),
    );
    let status = eventually(Duration::from_secs(20), "the middle daemon exits", || {
        middle.try_wait().unwrap()
    });
    assert!(status.success(), "{}", sandbox.daemon_log());
    let first_status = first
        .try_wait()
        .unwrap()
        .expect("the first daemon exited before the middle one");
    assert!(first_status.success(), "{}", sandbox.daemon_log());
    assert!(
        sandbox
            .daemon_log()
            .contains("the daemon this one took over from, the same way"),
        "{}",
        sandbox.daemon_log()
    );
    let answer = rt.block_on(get_once(active, None));
    assert!(answer.body.contains("version v1"), "{answer:?}");
}

/// A preview address another program took while no daemon ran: the daemon that
/// starts then only warns about it, and so does one that takes over from it (the
/// active socket it was handed is served; only a handed socket must be).
#[test]
fn a_takeover_goes_through_when_an_address_nobody_was_handed_cannot_be_bound() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("squatted", "v1");
    spec.replicas = 1;
    let (active, preview) = (free_address(), free_address());
    spec.active = active.to_string();
    spec.preview = preview.to_string();
    sandbox.apply_ok("squatted.yaml", &spec.yaml());
    sandbox.wait_for("squatted", "v1 live", |r| r.phase == Phase::Healthy);

    sandbox.kill_daemon();
    let _squatter = std::net::TcpListener::bind(preview).unwrap();
    sandbox.start_daemon();
    // Adopted after a crash, the instance is probed before it is routed to.
    eventually(Duration::from_secs(20), "v1 served again", || {
        let answer = rt.block_on(get_once(active, None));
        answer.body.contains("version v1").then_some(())
    });

    let mut old = sandbox.start_successor();
    let status = eventually(Duration::from_secs(60), "the old daemon exits", || {
        old.try_wait().unwrap()
    });
    assert!(status.success(), "{}", sandbox.daemon_log());
    // The successor's own log: it took over, and only warned about the address.
    let log = sandbox.newest_daemon_log();
    assert!(log.contains("took over"), "{log}");
    assert!(
        log.contains(&format!("cannot listen on {preview} for the preview route")),
        "{log}"
    );
    assert!(
        rt.block_on(get_once(active, None))
            .body
            .contains("version v1")
    );
}
