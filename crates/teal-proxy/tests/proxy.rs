//! The proxy end to end: real sockets on 127.0.0.1, real hyper backends that answer
//! with their own name, keep-alive clients.

#[path = "proxy/health.rs"]
mod health;
#[path = "proxy/limits.rs"]
mod limits;
#[path = "proxy/streaming.rs"]
mod streaming;
#[path = "proxy/upgrades.rs"]
mod upgrades;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use teal_core::Color;
use teal_core::spec::{NameValue, PreviewMatch};
use teal_proxy::{Proxy, Role};

use support::*;

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_routed_by_the_current_table() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut conn = Conn::open(addr).await;
    let first = conn.get("/").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "blue-1");
    assert_eq!(first.color(), "blue");
    assert_eq!(first.headers["x-teal-revision"], "1");

    proxy.set_routes(table(Some(be(Color::Green, 2, &[green])), None));
    // Same socket: a proxy that pinned the connection to a color would still say blue.
    let second = conn.get("/").await;
    assert_eq!(second.body, "green-1");
    assert_eq!(second.color(), "green");
    assert_eq!(second.headers["x-teal-revision"], "2");

    assert_eq!(proxy.stats(Color::Blue).requests, 1);
    assert_eq!(proxy.stats(Color::Blue).responses_2xx, 1);
    assert_eq!(proxy.stats(Color::Green).requests, 1);
    assert_eq!(
        proxy.routes().active.as_ref().map(|b| b.color),
        Some(Color::Green)
    );
}

#[tokio::test]
async fn preview_cookie_among_others_goes_to_preview() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    let mut routes = table(
        Some(be(Color::Blue, 1, &[blue])),
        Some(be(Color::Green, 2, &[green])),
    );
    routes.preview_match = PreviewMatch {
        cookie: Some(NameValue {
            name: "test".into(),
            value: "true".into(),
        }),
        header: None,
    };
    proxy.set_routes(routes);
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let matching = conn
        .send(
            Method::GET,
            "/",
            &[("cookie", "session=abc; test=true; theme=dark")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(matching.body, "green-1");
    let plain = conn.get("/").await;
    assert_eq!(plain.body, "blue-1");
    let other_value = conn
        .send(
            Method::GET,
            "/",
            &[("cookie", "test=false; xtest=true")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(other_value.body, "blue-1");
    let second_cookie_header = conn
        .send(
            Method::GET,
            "/",
            &[("cookie", "a=b"), ("cookie", "test=true")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(second_cookie_header.body, "green-1");
}

#[tokio::test]
async fn preview_header_name_is_case_insensitive() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    let mut routes = table(
        Some(be(Color::Blue, 1, &[blue])),
        Some(be(Color::Green, 2, &[green])),
    );
    routes.preview_match = PreviewMatch {
        cookie: None,
        header: Some(NameValue {
            name: "X-Preview".into(),
            value: "yes".into(),
        }),
    };
    proxy.set_routes(routes);
    let addr = start(&proxy, Role::Active).await;

    // Raw bytes, so the name really travels in another case than the rule's.
    let matching = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: shop.test\r\nX-PREVIEW: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(matching.starts_with("HTTP/1.1 200"), "{matching}");
    assert!(matching.ends_with("green-1"), "{matching}");

    let wrong_value = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: shop.test\r\nx-preview: YES\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(wrong_value.ends_with("blue-1"), "{wrong_value}");
}

#[tokio::test]
async fn preview_listener_serves_active_until_there_is_a_preview() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let active = start(&proxy, Role::Active).await;
    let preview = start(&proxy, Role::Preview).await;
    let mut users = Conn::open(active).await;
    let mut testers = Conn::open(preview).await;

    assert_eq!(testers.get("/").await.body, "blue-1");

    proxy.set_routes(table(
        Some(be(Color::Blue, 1, &[blue])),
        Some(be(Color::Green, 2, &[green])),
    ));
    assert_eq!(testers.get("/").await.body, "green-1");
    // No preview match configured: users stay on active.
    assert_eq!(users.get("/").await.body, "blue-1");
}

#[tokio::test]
async fn no_ready_instance_is_a_503_that_says_why() {
    let proxy = Proxy::new("shop");
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let nothing = conn.get("/").await;
    assert_eq!(nothing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(nothing.headers["x-teal-reason"], "no-ready-instance");
    assert!(
        nothing
            .body
            .starts_with("teal: no ready instance of rollout \"shop\" for the active route"),
        "{}",
        nothing.body
    );

    proxy.set_routes(table(Some(be(Color::Blue, 3, &[])), None));
    let empty = conn.get("/").await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(empty.color(), "blue");
    assert!(empty.body.contains("blue revision 3"), "{}", empty.body);

    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.responses_5xx, 1);
    assert_eq!(stats.proxy_errors, 1);
    assert_eq!(proxy.in_flight(Color::Blue), 0);
}

#[tokio::test]
async fn round_robin_spreads_over_instances() {
    let one = backend("blue-1").await;
    let two = backend("blue-2").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[one, two])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        *served.entry(conn.get("/").await.body).or_default() += 1;
    }
    assert_eq!(served.get("blue-1"), Some(&3), "{served:?}");
    assert_eq!(served.get("blue-2"), Some(&3), "{served:?}");
}

#[tokio::test]
async fn forwarded_headers_are_added_and_hop_by_hop_headers_dropped() {
    let blue = backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let answer = conn
        .send(
            Method::GET,
            "/hop?x=1",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("x-kept", "1"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let echoed = &answer.headers;
    assert_eq!(echoed["echo-x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(echoed["echo-x-forwarded-proto"], "http");
    assert_eq!(echoed["echo-x-forwarded-host"], "shop.test");
    assert_eq!(echoed["echo-host"], "shop.test");
    assert_eq!(echoed["echo-x-kept"], "1");
    assert!(!echoed.contains_key("echo-x-secret"), "{echoed:?}");
    // The backend's `Connection: x-hop` named a header for its own hop only.
    assert!(!echoed.contains_key("x-hop"), "{echoed:?}");
}

#[tokio::test]
async fn in_flight_request_finishes_on_its_color_after_a_switch() {
    let (blue, gate) = gated_backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut slow = Conn::open(addr).await;
    let slow = tokio::spawn(async move { slow.get("/hold").await });
    gate.wait_arrived(1).await;
    assert_eq!(proxy.in_flight(Color::Blue), 1);

    proxy.set_routes(table(Some(be(Color::Green, 2, &[green])), None));
    let mut fresh = Conn::open(addr).await;
    assert_eq!(fresh.get("/").await.body, "green-1");
    assert_eq!(proxy.in_flight(Color::Blue), 1);
    assert_eq!(proxy.in_flight(Color::Green), 0);

    let drain = tokio::spawn({
        let proxy = Arc::clone(&proxy);
        async move { proxy.drain(Color::Blue, Duration::from_secs(30)).await }
    });
    // Not drained while the request is held (a bounded look, not a wait for success).
    let mut drain = drain;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut drain)
            .await
            .is_err(),
        "drain returned while a request was in flight"
    );

    gate.release(1);
    let answer = within("slow answer", slow).await.unwrap();
    assert_eq!(answer.body, "blue-1");
    assert_eq!(answer.color(), "blue");
    assert!(within("drain", drain).await.unwrap());
    assert_eq!(proxy.in_flight(Color::Blue), 0);
}

#[tokio::test]
async fn response_body_streams_and_stays_in_flight_until_it_ends() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let response = within("response headers", conn.start("/stream")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-teal-color"], "blue");
    let mut body = response.into_body();
    // The first chunk arrives while the backend still holds the rest: nothing waits
    // for the whole body.
    let first = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "blue-1:first;");
    // Headers are long sent, but the body is not done: still in flight.
    assert_eq!(proxy.in_flight(Color::Blue), 1);

    gate.release(1);
    let rest = within("rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
    // The connection is still usable.
    assert_eq!(conn.get("/").await.body, "blue-1");
}

#[tokio::test]
async fn drain_times_out_while_a_request_is_stuck() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut conn = Conn::open(addr).await;
    let stuck = tokio::spawn(async move { conn.get("/hold").await });
    gate.wait_arrived(1).await;

    assert!(!proxy.drain(Color::Blue, Duration::from_millis(100)).await);
    // Nothing on green: drained at once.
    assert!(proxy.drain(Color::Green, Duration::ZERO).await);

    gate.release(1);
    assert_eq!(within("stuck answer", stuck).await.unwrap().body, "blue-1");
    assert!(proxy.drain(Color::Blue, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn client_going_away_mid_request_is_no_longer_in_flight() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut conn = Conn::open(addr).await;
    let pending = tokio::spawn(async move {
        let _ = conn.get("/hold").await;
    });
    gate.wait_arrived(1).await;
    assert_eq!(proxy.in_flight(Color::Blue), 1);

    // Aborting the task drops the Conn, which closes the socket.
    pending.abort();
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
    assert!(proxy.drain(Color::Blue, Duration::ZERO).await);
    gate.release(1);
}

#[tokio::test]
async fn connect_failure_is_retried_for_get_but_not_for_post() {
    let dead = dead_addr().await;
    let live = backend("blue-live").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[dead, live])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    // Round-robin puts every other request on the dead instance.
    for _ in 0..4 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "blue-live");
    }
    let head = conn.send(Method::HEAD, "/", &[], "").await.unwrap();
    assert_eq!(head.status, StatusCode::OK);

    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..2 {
        let answer = conn
            .send(Method::POST, "/orders", &[], "{\"item\": 1}")
            .await
            .unwrap();
        if answer.status == StatusCode::BAD_GATEWAY {
            refused = Some(answer.body.clone());
            assert_eq!(answer.headers["x-teal-reason"], "upstream-connect-failed");
        }
        statuses.push(answer.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    let refused = refused.unwrap();
    assert!(refused.contains(&dead.to_string()), "{refused}");

    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.responses_2xx, 6);
    assert_eq!(stats.proxy_errors, 1);
    assert_eq!(proxy.in_flight(Color::Blue), 0);
}

#[tokio::test]
async fn slow_response_headers_are_a_504() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::with_upstream_timeout("shop", Duration::from_millis(200));
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let answer = conn.get("/hold").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.headers["x-teal-reason"], "upstream-timeout");
    assert_eq!(proxy.stats(Color::Blue).proxy_errors, 1);
    assert_eq!(proxy.in_flight(Color::Blue), 0);
    gate.release(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_routes_flip() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = Proxy::new("shop");
    let blue_routes = table(Some(be(Color::Blue, 1, &[blue])), None);
    let green_routes = table(Some(be(Color::Green, 2, &[green])), None);
    proxy.set_routes(blue_routes.clone());
    let addr = start(&proxy, Role::Active).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        let answered = Arc::clone(&answered);
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut by_color: HashMap<String, usize> = HashMap::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match conn.send(Method::GET, "/", &[], "").await {
                    Ok(answer) => {
                        let expected = format!("{}-1", answer.color());
                        if answer.status != StatusCode::OK || answer.body != expected {
                            failures.push(format!("{answer:?}"));
                        }
                        *by_color.entry(answer.color().to_owned()).or_default() += 1;
                    }
                    Err(err) => failures.push(err.to_string()),
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            (by_color, failures)
        }));
    }

    for flip in 0..200 {
        let routes = if flip % 2 == 0 {
            green_routes.clone()
        } else {
            blue_routes.clone()
        };
        proxy.set_routes(routes);
        // Let some requests through on this table before flipping again.
        let seen = answered.load(Ordering::SeqCst);
        eventually("a response after the flip", || {
            answered.load(Ordering::SeqCst) > seen
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);

    let mut total: HashMap<String, usize> = HashMap::new();
    for client in clients {
        let (by_color, failures) = within("client", client).await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        for (color, count) in by_color {
            *total.entry(color).or_default() += count;
        }
    }
    assert!(total.get("blue").is_some_and(|n| *n > 0), "{total:?}");
    assert!(total.get("green").is_some_and(|n| *n > 0), "{total:?}");
    let stats_total: u64 = Color::ALL
        .iter()
        .map(|c| proxy.stats(*c).responses_2xx)
        .sum();
    assert_eq!(stats_total as usize, total.values().sum::<usize>());
    assert_eq!(proxy.in_flight(Color::Blue), 0);
    assert_eq!(proxy.in_flight(Color::Green), 0);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_requests_finish() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(teal_proxy::serve(
        listener,
        Arc::clone(&proxy),
        Role::Active,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut conn = Conn::open(addr).await;
    let held = tokio::spawn(async move { conn.get("/hold").await });
    gate.wait_arrived(1).await;

    stop.send(()).unwrap();
    // The listener is closed: new connections are refused.
    let mut refused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !refused && tokio::time::Instant::now() < deadline {
        refused = tokio::net::TcpStream::connect(addr).await.is_err();
        if !refused {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(refused, "still accepting after shutdown");
    assert!(!server.is_finished());

    gate.release(1);
    let answer = within("held answer", held).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "blue-1");
    within("server", server).await.unwrap().unwrap();
}

/// Serves `proxy` until the returned sender is used (or dropped).
async fn serve_until_stopped(
    proxy: &Arc<Proxy>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(teal_proxy::serve(
        listener,
        Arc::clone(proxy),
        Role::Active,
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop, server)
}

/// Sends one GET on a raw keep-alive connection and reads its answer (the demo
/// backends send a Content-Length); returns the head, lowercased, and the body.
async fn raw_get(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: teal.test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = within("an answer", stream.read(&mut chunk)).await.unwrap();
        assert!(read > 0, "closed before the answer ended: {buffer:?}");
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return (head, body.to_owned());
            }
        }
    }
}

#[tokio::test]
async fn at_shutdown_the_next_request_on_an_idle_keep_alive_connection_gets_connection_close() {
    use tokio::io::AsyncReadExt;
    let blue = backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let (addr, stop, server) = serve_until_stopped(&proxy).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (head, _) = raw_get(&mut stream).await;
    assert!(!head.contains("connection: close"), "{head}");

    stop.send(()).unwrap();
    // The connection is idle now; it is kept open for the request its client may be
    // sending at this very moment, which is answered, with `Connection: close`.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (head, body) = raw_get(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "blue-1");
    // Then closed cleanly: end of stream, not a reset.
    let mut rest = Vec::new();
    let read = within("the close", stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    within("server", server).await.unwrap().unwrap();
}

#[tokio::test]
async fn at_shutdown_an_idle_keep_alive_connection_is_closed_cleanly_after_the_linger() {
    use tokio::io::AsyncReadExt;
    let blue = backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let (addr, stop, server) = serve_until_stopped(&proxy).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw_get(&mut stream).await;

    let stopped = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let mut rest = Vec::new();
    let read = within("the close", stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    let waited = stopped.elapsed();
    assert!(
        waited >= teal_proxy::IDLE_LINGER - Duration::from_millis(50),
        "closed after {waited:?}, before the linger"
    );
    within("server", server).await.unwrap().unwrap();
}

mod support {
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
    use teal_proxy::{Backend, Proxy, ProxyOptions, Role, RouteTable};
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
    /// - every response echoes the request headers back as `echo-<name>`;
    /// - `/hold` waits until the gate is released;
    /// - `/hop` answers with a hop-by-hop header the proxy must drop;
    /// - `/stream` sends a first chunk, the rest once the gate opens;
    /// - `/events` is a server-sent event stream: one event at once, then one more
    ///   each time the gate opens, three in all;
    /// - `/upload` records each chunk of the request body as it arrives and answers
    ///   `received N` at its end (`/upload?count`: counts them only);
    /// - a request with `Upgrade` switches protocols: the backend then writes its name
    ///   and a newline, and echoes whatever it reads;
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
            let mut response =
                Response::new(Full::new(Bytes::from(format!("{name} failing"))).boxed());
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
            response.headers_mut().insert(UPGRADE, protocol);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
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
        for (header, value) in request.headers() {
            let echo = HeaderName::from_bytes(format!("echo-{header}").as_bytes()).unwrap();
            response.headers_mut().append(echo, value.clone());
        }
        if request.uri().path() == "/hop" {
            let headers = response.headers_mut();
            headers.insert("connection", HeaderValue::from_static("x-hop"));
            headers.insert("x-hop", HeaderValue::from_static("1"));
        }
        response
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
    pub async fn start(proxy: &Arc<Proxy>, role: Role) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(teal_proxy::serve(
            listener,
            Arc::clone(proxy),
            role,
            std::future::pending(),
        ));
        addr
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
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
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
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
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
}
