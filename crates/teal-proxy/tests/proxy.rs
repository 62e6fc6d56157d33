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
use teal_proxy::{ColorStats, Proxy, Role};

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
async fn a_color_counts_each_revision_it_serves_apart() {
    let blue_1 = backend("blue-1").await;
    let blue_3 = backend("blue-3").await;
    let proxy = Proxy::new("shop");
    assert_eq!(proxy.revision_stats(Color::Blue), None);
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue_1])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/").await.body, "blue-1");
    }
    let (revision, stats) = proxy.revision_stats(Color::Blue).unwrap();
    assert_eq!((revision, stats.requests, stats.responses_2xx), (1, 3, 3));

    // The same table again changes nothing; a new revision in blue starts from zero.
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue_1])), None));
    assert_eq!(proxy.revision_stats(Color::Blue).unwrap().1.requests, 3);
    proxy.set_routes(table(Some(be(Color::Blue, 3, &[blue_3])), None));
    assert_eq!(
        proxy.revision_stats(Color::Blue).unwrap(),
        (3, ColorStats::default())
    );
    for _ in 0..2 {
        assert_eq!(conn.get("/").await.body, "blue-3");
    }
    let (revision, stats) = proxy.revision_stats(Color::Blue).unwrap();
    assert_eq!((revision, stats.requests), (3, 2));
    assert_eq!(stats.latency_buckets.iter().sum::<u64>(), 2);
    // The color's own totals go on across revisions.
    assert_eq!(proxy.stats(Color::Blue).requests, 5);
    // Green was never routed to.
    assert_eq!(proxy.revision_stats(Color::Green), None);
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

mod support;
