//! What clients speak to the proxy: HTTP/2 (h2c by prior knowledge, and over TLS by
//! ALPN) beside HTTP/1.1, WebSockets over HTTP/2, and TLS terminated with certificates
//! rotated on disk; and what the proxy speaks to instances: HTTP/1.1, as most apps
//! do, or h2c (`upstreamProtocol`), as gRPC servers do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::{StatusCode, Version};
use teal_core::Color;
use teal_proxy::{
    Backend, ProxyOptions, Role, RouteTable, Tls, TlsError, TlsSetting, UpstreamProtocol,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

mod support;

use clients::*;
use support::*;

#[tokio::test]
async fn h2c_by_prior_knowledge_reaches_an_http1_backend() {
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;

    let mut client = Client::h2c(addr).await;
    let answer = client
        .get("/hello?x=1", &[("cookie", "a=1"), ("cookie", "b=2")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.body, "blue-1");
    assert_eq!(answer.header("x-teal-color"), "blue");
    // What the backend saw: HTTP/1.1, with the :authority as Host and the cookies in
    // one header, as HTTP/1.1 wants them.
    assert_eq!(answer.header("echo-version"), "HTTP/1.1");
    assert_eq!(answer.header("echo-path"), "/hello?x=1");
    assert_eq!(
        answer.header("echo-host"),
        format!("localhost:{}", addr.port())
    );
    assert_eq!(answer.header("echo-cookie"), "a=1; b=2");
    assert_eq!(answer.headers.get_all("echo-cookie").iter().count(), 1);
    assert_eq!(answer.header("echo-x-forwarded-proto"), "http");

    // HTTP/1.1 still works on the same port.
    let mut plain = Client::http1(addr).await;
    let answer = plain.get("/", &[]).await;
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.body, "blue-1");
}

#[tokio::test]
async fn h2_requests_get_the_same_header_and_body_limits_as_http1() {
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let mut options = proxy.options();
    options.limits.max_request_header_bytes = 4096;
    options.limits.max_request_body_bytes = 1000;
    proxy.set_options(options);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let big = "x".repeat(8192);

    for mut client in [Client::h2c(addr).await, Client::http1(addr).await] {
        let answer = client.get("/", &[("x-big", &big)]).await;
        assert_eq!(
            answer.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{:?}",
            answer.version
        );
        assert!(
            answer.body.contains("max_request_header_bytes"),
            "{}",
            answer.body
        );

        let answer = client
            .send(
                hyper::Method::POST,
                "/upload",
                &[],
                Bytes::from(vec![b'x'; 5000]),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{:?}",
            answer.version
        );
        assert!(
            answer.body.contains("max_request_body_bytes"),
            "{}",
            answer.body
        );

        // Within the limits the same connection still works.
        let answer = client
            .send(
                hyper::Method::POST,
                "/upload",
                &[],
                Bytes::from(vec![b'x'; 500]),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.version);
    }
}

/// Reads exactly `n` bytes of a tunnel.
async fn read_exactly(stream: &mut (impl AsyncRead + Unpin), n: usize) -> String {
    let mut bytes = vec![0u8; n];
    within("tunnel read", stream.read_exact(&mut bytes))
        .await
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_websocket_over_h2_reaches_an_http1_backend_and_stays_on_its_color() {
    let blue = backend("blue-1").await;
    let green = backend("green-2").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upgraded_drain_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    // One exchange first, so the client has the server's settings (which say it
    // takes extended CONNECT) before it opens the WebSocket.
    assert_eq!(client.get("/", &[]).await.body, "blue-1");

    let headers = [
        ("sec-websocket-version", "13"),
        ("origin", "http://shop.test"),
    ];
    let (answer, stream) = client
        .websocket("/chat?room=1", "websocket", &headers)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("x-teal-color"), "blue");
    // The backend got the HTTP/1.1 handshake (RFC 6455) with a key of its own...
    assert_eq!(answer.header("echo-method"), "GET");
    assert_eq!(answer.header("echo-version"), "HTTP/1.1");
    assert_eq!(answer.header("echo-path"), "/chat?room=1");
    assert_eq!(answer.header("echo-upgrade"), "websocket");
    assert_eq!(answer.header("echo-connection"), "upgrade");
    assert_eq!(answer.header("echo-sec-websocket-version"), "13");
    let key = answer.header("echo-sec-websocket-key").to_owned();
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap_or_else(|err| panic!("the key {key:?} is not base64: {err}"));
    assert_eq!(nonce.len(), 16, "{key}");
    // ...and the client none of what answered that key.
    assert_eq!(answer.header("sec-websocket-accept"), "");
    let mut socket = stream.expect("the WebSocket was accepted");
    assert_eq!(
        read_exactly(&mut socket, "blue-1\n".len()).await,
        "blue-1\n"
    );
    socket.write_all(b"hello").await.unwrap();
    assert_eq!(read_exactly(&mut socket, 5).await, "hello");
    let stats = proxy.stats(Color::Blue);
    assert_eq!((stats.upgraded, stats.in_flight), (1, 0));

    // A second WebSocket gets a key of its own.
    let (second, _second_socket) = client.websocket("/chat", "websocket", &headers).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_ne!(second.header("echo-sec-websocket-key"), key);

    // A switch: new requests on the same HTTP/2 connection go to green, the tunnels
    // stay on blue until its drain closes them.
    proxy.set_routes(RouteTable {
        active: Some(Backend {
            color: Color::Green,
            revision: 2,
            instances: vec![green],
        }),
        ..RouteTable::default()
    });
    assert_eq!(client.get("/", &[]).await.body, "green-2");
    socket.write_all(b"still blue").await.unwrap();
    assert_eq!(read_exactly(&mut socket, 10).await, "still blue");
    let drained = within("drain", proxy.drain(Color::Blue, Duration::from_secs(5))).await;
    assert!(!drained, "the tunnels had to be closed");
    // Closed cleanly: the client reads the end of its stream.
    let mut rest = Vec::new();
    within("end of the stream", socket.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(proxy.stats(Color::Blue).upgraded, 0);
    // The connection itself goes on.
    assert_eq!(client.get("/", &[]).await.body, "green-2");
}

#[tokio::test]
async fn h2_connects_teal_cannot_carry_are_refused_with_the_reason() {
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);

    let (answer, stream) = client.websocket("/", "connect-udp", &[]).await;
    assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        answer.header("x-teal-reason"),
        "connect-protocol-unsupported"
    );
    assert!(answer.body.contains("\"connect-udp\""), "{}", answer.body);
    assert!(stream.is_none());

    let answer = client
        .send(hyper::Method::CONNECT, "", &[], Bytes::new())
        .await;
    assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(answer.header("x-teal-reason"), "connect-unsupported");
    // Nothing reached the backend but the first GET, and the connection still works.
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_instance_that_does_not_switch_for_an_h2_websocket_is_a_502() {
    // The backend answers every request as an ordinary GET, upgrade or not.
    let plain = plain_backend("not a websocket server").await;
    let proxy = proxy_to(plain);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    let (answer, stream) = client
        .websocket("/chat", "websocket", &[("sec-websocket-version", "13")])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("x-teal-reason"), "websocket-not-switched");
    assert!(answer.body.contains("instead of 101"), "{}", answer.body);
    assert!(stream.is_none());
    // Counted once, as teal's 502: the first GET's 200 and this.
    let stats = proxy.stats(Color::Blue);
    assert_eq!(
        (
            stats.requests,
            stats.responses_2xx,
            stats.responses_5xx,
            stats.proxy_errors
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn with_upstream_h2c_a_grpc_call_reaches_an_h2c_instance_trailers_and_all() {
    let (blue, blue_connections) = h2c_backend("blue-1").await;
    let (green, _) = h2c_backend("green-2").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;

    let mut client = Client::h2c(addr).await;
    let call = [("te", "trailers"), ("content-type", "application/grpc")];
    let answer = client
        .send(
            hyper::Method::POST,
            "/shop.Cart/Add",
            &call,
            Bytes::from_static(b"item"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, "blue-1");
    assert_eq!(answer.header("x-teal-color"), "blue");
    // The trailers gRPC puts its status in came through.
    assert_eq!(answer.trailers.get("grpc-status").unwrap(), "0");
    // The instance was spoken to in HTTP/2, with the client's authority and the TE
    // gRPC servers insist on.
    assert_eq!(answer.header("echo-version"), "HTTP/2.0");
    assert_eq!(
        answer.header("echo-authority"),
        format!("localhost:{}", addr.port())
    );
    assert_eq!(answer.header("echo-path"), "/shop.Cart/Add");
    assert_eq!(answer.header("echo-te"), "trailers");

    // Requests at once share the one connection to the instance.
    let answers = client.concurrent(20, "/shop.Cart/List").await;
    assert!(answers.iter().all(|a| a.body == "blue-1"), "{answers:?}");
    assert_eq!(
        blue_connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // An HTTP/1.1 client reaches the same instance in HTTP/2.
    let mut plain = Client::http1(addr).await;
    let answer = plain.get("/", &[]).await;
    assert_eq!(answer.body, "blue-1");
    assert_eq!(answer.header("echo-version"), "HTTP/2.0");

    // A switch moves the next call on the same client connection to green.
    proxy.set_routes(RouteTable {
        active: Some(Backend {
            color: Color::Green,
            revision: 2,
            instances: vec![green],
        }),
        ..RouteTable::default()
    });
    let answer = client
        .send(hyper::Method::POST, "/shop.Cart/Add", &call, Bytes::new())
        .await;
    assert_eq!(answer.body, "green-2");
    assert_eq!(answer.trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn a_closed_h2c_connection_is_replaced_without_failing_a_request() {
    // The instance closes each connection (GOAWAY) after its first answer, as a
    // server that restarts or rotates its connections does.
    let (blue, connections, closed) = h2c_backend_closing_after_one("blue-1").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    for round in 1..=3 {
        let answer = client.get("/", &[]).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "blue-1"),
            "request {round}: {answer:?}"
        );
        // Once the instance has closed the connection, give the proxy a moment to
        // read that (a request already on its way when the GOAWAY comes is refused
        // by the instance, and is not what this test is about).
        within("the instance closes its connection", async {
            while closed.load(std::sync::atomic::Ordering::SeqCst) < round {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn requests_right_behind_an_h2c_connection_closing_all_succeed() {
    // Each connection answers one request and closes (GOAWAY); the next request comes
    // at once, so some meet a connection that is going away.
    let (blue, connections, _) = h2c_backend_closing_after_one("blue-1").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    let mut failed = Vec::new();
    for round in 0..30 {
        let answer = within("an answer", client.get("/", &[])).await;
        if answer.status != StatusCode::OK {
            failed.push((round, answer.status, answer.body));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    // The connections did close under it and were replaced.
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

/// Serves (plain, HTTP/1.1 and h2c) a proxy to `backend` that speaks `protocol` to
/// it and takes an instance out of rotation at its first failure, so that a failure
/// held against the instance shows in `ejected`.
async fn start_unforgiving(
    backend: SocketAddr,
    protocol: UpstreamProtocol,
) -> (Arc<teal_proxy::Proxy>, SocketAddr) {
    let proxy = proxy_to(backend);
    let mut options = ProxyOptions {
        upstream_protocol: protocol,
        ..ProxyOptions::default()
    };
    options.health.consecutive_failures = 1;
    proxy.set_options(options);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    (proxy, addr)
}

#[tokio::test]
async fn an_h2c_request_the_instance_did_not_process_is_sent_again() {
    let backend = RefusingH2cBackend::start("blue-1").await;
    let (proxy, addr) = start_unforgiving(backend.addr, UpstreamProtocol::H2c).await;
    let mut client = Client::h2c(addr).await;

    // Refused once (REFUSED_STREAM: the instance says it did not process it), as a
    // server at its stream limit or on its way out does: sent again, answered.
    backend.refuse_next();
    let answer = client.get("/", &[]).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "blue-1"),
        "{answer:?}"
    );
    assert_eq!(backend.counts(), (1, 1), "(refused, answered)");

    // A request with a body is not sent again (its body went with the first try):
    // the client gets a 502 that says why, and the instance saw it once.
    let answer = client
        .send(hyper::Method::PUT, "/refused", &[], Bytes::from("payload"))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert!(answer.body.contains("refused"), "{answer:?}");
    assert_eq!(backend.counts(), (2, 1));

    // Sent again once, not for ever.
    let answer = client.get("/refused", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(backend.counts(), (4, 1));

    // Turning requests away unprocessed is not failing: none of it was held against
    // the instance, which serves on.
    assert!(proxy.ejected().is_empty());
    assert_eq!(client.get("/", &[]).await.body, "blue-1");
}

/// A request queued behind an h2c instance's stream limit when that instance closes
/// the connection (here with a GOAWAY after the one it was serving) never reached it:
/// it is sent again on a new connection, and the instance is not blamed.
#[tokio::test]
async fn an_h2c_request_queued_behind_the_stream_limit_of_a_closing_connection_is_sent_again() {
    let backend = OneStreamH2cBackend::start("blue-1").await;
    let (proxy, addr) = start_unforgiving(backend.addr, UpstreamProtocol::H2c).await;
    // One client connection: its requests share the proxy's connection to the instance.
    let mut client = Client::h2c(addr).await;
    // The proxy's connection is open and knows the limit of one stream.
    assert_eq!(client.get("/", &[]).await.body, "blue-1");

    // The first is held by the instance a moment; the second waits behind it in the
    // proxy, unsent; then the instance answers the first and goes away.
    let (mut one, mut other) = (client.another_stream(), client.another_stream());
    let first = tokio::spawn(async move { one.get("/", &[]).await });
    // The instance holds it (its second request, on the proxy's first connection).
    backend.wait_requests(2).await;
    let second = tokio::spawn(async move { other.get("/", &[]).await });
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::OK, "blue-1")
    );
    assert_eq!(
        (second.status, second.body.as_str()),
        (StatusCode::OK, "blue-1"),
        "{second:?}"
    );
    assert_eq!(
        backend.connections(),
        2,
        "the second went on a new connection"
    );
    assert!(proxy.ejected().is_empty());

    // The same for a POST: hyper's error cannot rule out that it was sent an instant
    // before the connection failed, so it is not sent twice, but not blamed either.
    let (mut one, mut other) = (client.another_stream(), client.another_stream());
    let first = tokio::spawn(async move { one.get("/", &[]).await });
    // Held in turn (the second request on the proxy's second connection).
    backend.wait_requests(4).await;
    let second = tokio::spawn(async move {
        other
            .send(hyper::Method::POST, "/", &[], Bytes::new())
            .await
    });
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(second.status, StatusCode::BAD_GATEWAY, "{second:?}");
    assert!(second.body.contains("dispatch task is gone"), "{second:?}");
    assert_eq!(backend.connections(), 2, "not sent again");
    assert!(proxy.ejected().is_empty());
}

#[tokio::test]
async fn a_client_body_that_breaks_off_is_a_400_and_not_held_against_the_instance() {
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
        let blue = match protocol {
            UpstreamProtocol::Http1 => backend("blue-1").await,
            UpstreamProtocol::H2c => h2c_backend("blue-1").await.0,
        };
        let (proxy, addr) = start_unforgiving(blue, protocol).await;

        // The instance waits for the whole body; the client sends a chunk, then
        // something that is no chunk size.
        let mut raw = Raw::open(addr).await;
        raw.write("POST /upload HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        raw.chunk("hello").await;
        raw.write("ZZ\r\n").await;
        let head = raw.head().await;
        assert!(head.starts_with("HTTP/1.1 400"), "{protocol:?}: {head}");
        assert!(
            head.contains("x-teal-reason: client-body-failed"),
            "{protocol:?}: {head}"
        );

        assert!(proxy.ejected().is_empty(), "{protocol:?}");
        let stats = proxy.stats(Color::Blue);
        assert_eq!((stats.rejected, stats.proxy_errors), (1, 0), "{protocol:?}");
        let mut client = Client::http1(addr).await;
        assert_eq!(client.get("/", &[]).await.body, "blue-1", "{protocol:?}");
    }
}

#[tokio::test]
async fn h2c_requests_at_a_cold_start_wait_for_one_connection_instead_of_each_opening_one() {
    let (blue, connections) = h2c_backend("blue-1").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let client = Client::h2c(addr).await;
    // The first requests after a start, all at once.
    let answers = client.concurrent(20, "/shop.Cart/List").await;
    assert!(answers.iter().all(|a| a.body == "blue-1"), "{answers:?}");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "connections the instance accepted"
    );
}

#[tokio::test]
async fn h2c_requests_waiting_for_a_connect_that_times_out_fail_with_it() {
    // Connects to this address hang: each waiting request must not try again in
    // turn (20 of them, 300 ms each, would take 6 s).
    let hole = blackhole().await;
    let proxy = proxy_to(hole.addr);
    let mut options = ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    };
    options.limits.connect_timeout = Duration::from_millis(300);
    proxy.set_options(options);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let client = Client::h2c(addr).await;
    let started = std::time::Instant::now();
    let answers = client.concurrent(20, "/").await;
    let took = started.elapsed();
    assert!(
        answers.iter().all(|a| a.status == StatusCode::BAD_GATEWAY
            && a.header("x-teal-reason") == "upstream-connect-timeout"),
        "{answers:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn after_a_timeout_on_an_h2c_connection_the_next_request_gets_a_new_one() {
    let (blue, connections) = h2c_backend("blue-1").await;
    let proxy = proxy_to(blue);
    let mut options = ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    };
    options.limits.response_header_timeout = Duration::from_millis(300);
    proxy.set_options(options);
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    let mut client = Client::h2c(addr).await;
    assert_eq!(client.get("/", &[]).await.body, "blue-1");

    // An instance that stops answering on a connection may have lost it: teal stops
    // using that connection rather than send every later request into it.
    let answer = client.get("/hang", &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}");
    assert_eq!(client.get("/", &[]).await.body, "blue-1");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_host_that_is_no_authority_is_refused_rather_than_sent_as_a_path() {
    let (blue, _) = h2c_backend("blue-1").await;
    let proxy = proxy_to(blue);
    proxy.set_options(ProxyOptions {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    });
    let addr = start_tls(&proxy, Role::Active, TlsSetting::default()).await;
    for host in ["shop.test/admin?", "user@shop.test"] {
        let answer = raw(
            addr,
            &format!("GET /public HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{host}: {answer}");
        assert!(answer.contains("x-teal-reason: bad-host"), "{answer}");
    }
    // A host with a port goes through, as the :authority.
    let answer = raw(
        addr,
        "GET /public HTTP/1.1\r\nhost: shop.test:8080\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("echo-authority: shop.test:8080"),
        "{answer}"
    );
    assert!(answer.contains("echo-path: /public"), "{answer}");
}

#[tokio::test]
async fn https_request_is_answered_through_the_proxy() {
    let ca = Ca::new();
    let files = CertFiles::new(&ca.issue("first"));
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, files.setting()).await;

    let mut client = Client::tls(addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let answer = client.get("/", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.body, "blue-1");
    assert_eq!(
        answer.header("echo-host"),
        format!("localhost:{}", addr.port())
    );
    assert_eq!(answer.header("echo-x-forwarded-proto"), "https");

    // A client that offers no ALPN at all gets HTTP/1.1 too.
    let mut client = Client::tls(addr, &ca, &[]).await;
    assert_eq!(client.alpn, None);
    assert_eq!(client.get("/", &[]).await.body, "blue-1");
}

#[tokio::test]
async fn h2_is_chosen_by_alpn_and_reaches_an_http1_backend() {
    let ca = Ca::new();
    let files = CertFiles::new(&ca.issue("first"));
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, files.setting()).await;

    let mut client = Client::tls(addr, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
    // Several requests on the one connection, all answered.
    for _ in 0..3 {
        let answer = client.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.version, Version::HTTP_2);
        assert_eq!(answer.body, "blue-1");
        assert_eq!(answer.header("echo-version"), "HTTP/1.1");
        assert_eq!(
            answer.header("echo-host"),
            format!("localhost:{}", addr.port())
        );
        assert_eq!(answer.header("echo-x-forwarded-proto"), "https");
    }
    assert_eq!(proxy.stats(Color::Blue).responses_2xx, 3);

    // A WebSocket on the same connection, as a browser opens one over HTTP/2.
    let (answer, stream) = client
        .websocket("/chat", "websocket", &[("sec-websocket-version", "13")])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("echo-x-forwarded-proto"), "https");
    let mut socket = stream.expect("the WebSocket was accepted");
    assert_eq!(
        read_exactly(&mut socket, "blue-1\n".len()).await,
        "blue-1\n"
    );
    socket.write_all(b"over tls").await.unwrap();
    assert_eq!(read_exactly(&mut socket, 8).await, "over tls");
    assert_eq!(proxy.stats(Color::Blue).upgraded, 1);
}

#[tokio::test]
async fn rotated_certificate_is_presented_to_new_connections_while_open_ones_go_on() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let files = CertFiles::new(&first);
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, files.setting()).await;

    let mut old_h1 = Client::tls(addr, &ca, &[b"http/1.1"]).await;
    let mut old_h2 = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(old_h1.peer_certificate, first.der);
    assert_eq!(old_h1.get("/", &[]).await.body, "blue-1");
    assert_eq!(old_h2.get("/", &[]).await.body, "blue-1");

    files.install(&second);
    let mut new = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(
        new.peer_certificate, second.der,
        "new handshakes get the new certificate"
    );
    assert_eq!(new.get("/", &[]).await.body, "blue-1");

    // The connections opened before the rotation are untouched.
    assert_eq!(old_h1.get("/", &[]).await.status, StatusCode::OK);
    assert_eq!(old_h2.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn certificate_files_that_do_not_load_leave_the_previous_certificate_in_place() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let files = CertFiles::new(&first);
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let addr = start_tls(&proxy, Role::Active, files.setting()).await;

    // Half a rotation: the new certificate, the old key.
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    let mut client = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(client.peer_certificate, first.der);
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);

    // Not PEM at all.
    std::fs::write(&files.cert, "not a certificate\n").unwrap();
    let mut client = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(client.peer_certificate, first.der);
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);

    // The rotation completed: the new pair is served.
    files.install(&second);
    let client = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(client.peer_certificate, second.der);
}

#[tokio::test]
async fn loading_refuses_missing_files_and_keys_of_other_certificates() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let files = CertFiles::new(&first);

    let missing = Tls::load(files.dir.path().join("nope.pem"), &files.key).unwrap_err();
    assert!(matches!(missing, TlsError::Read { .. }), "{missing:?}");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");

    std::fs::write(&files.key, &second.key_pem).unwrap();
    let mismatch = Tls::load(&files.cert, &files.key).unwrap_err();
    assert!(
        matches!(mismatch, TlsError::Mismatch { .. }),
        "{mismatch:?}"
    );

    std::fs::write(&files.key, &first.cert_pem).unwrap();
    let no_key = Tls::load(&files.cert, &files.key).unwrap_err();
    assert!(matches!(no_key, TlsError::Key { .. }), "{no_key:?}");

    std::fs::write(&files.cert, &first.key_pem).unwrap();
    let no_cert = Tls::load(&files.cert, &files.key).unwrap_err();
    assert!(
        matches!(no_cert, TlsError::Certificate { .. }),
        "{no_cert:?}"
    );

    // One file holding both is fine.
    std::fs::write(&files.cert, format!("{}{}", first.cert_pem, first.key_pem)).unwrap();
    Tls::load(&files.cert, &files.cert).unwrap();
}

#[tokio::test]
async fn tls_can_be_switched_on_for_new_connections_of_a_serving_listener() {
    let ca = Ca::new();
    let files = CertFiles::new(&ca.issue("first"));
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let setting = TlsSetting::default();
    let addr = start_tls(&proxy, Role::Active, setting.clone()).await;

    let mut plain = Client::http1(addr).await;
    assert_eq!(plain.get("/", &[]).await.body, "blue-1");

    setting.set(Some(Tls::load(&files.cert, &files.key).unwrap()));
    let mut secure = Client::tls(addr, &ca, &[b"h2"]).await;
    assert_eq!(secure.get("/", &[]).await.body, "blue-1");
    // The plain connection opened before keeps working.
    assert_eq!(plain.get("/", &[]).await.body, "blue-1");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_h2_request_finish() {
    let ca = Ca::new();
    let files = CertFiles::new(&ca.issue("first"));
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = proxy_to(blue);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(teal_proxy::serve_tls(
        listener,
        Arc::clone(&proxy),
        Role::Active,
        files.setting(),
        async {
            let _ = stopped.await;
        },
    ));

    let mut client = Client::tls(addr, &ca, &[b"h2"]).await;
    let held = tokio::spawn(async move { client.get("/hold", &[]).await });
    gate.wait_arrived(1).await;
    stop.send(()).unwrap();
    // Shutdown waits for the request, which is still being served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!server.is_finished());
    gate.release(1);
    let answer = held.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "blue-1");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once the request is done")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_tls_handshake_under_way_at_shutdown_is_finished_and_its_request_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let files = CertFiles::new(&ca.issue("first"));
    let blue = backend("blue-1").await;
    let proxy = proxy_to(blue);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(teal_proxy::serve_tls(
        listener,
        Arc::clone(&proxy),
        Role::Active,
        files.setting(),
        async {
            let _ = stopped.await;
        },
    ));

    // The client sends its hello at once and the rest of its handshake only later:
    // the shutdown comes while the server is in the middle of the handshake.
    let (hello_sent, hello) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = SlowAfterFirstWrite::new(stream, hello_sent, Duration::from_millis(500));
        let mut tls = ca
            .connector(&[b"http/1.1"])
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                stream,
            )
            .await
            .expect("the handshake is finished");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).to_ascii_lowercase()
    });
    hello.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("the client is answered")
        .unwrap();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("blue-1"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}

/// A stream whose writes after the first wait `delay` once; says when the first write
/// (a TLS client's hello) went out.
struct SlowAfterFirstWrite {
    inner: tokio::net::TcpStream,
    first_sent: Option<tokio::sync::oneshot::Sender<()>>,
    delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    duration: Duration,
}

impl SlowAfterFirstWrite {
    fn new(
        inner: tokio::net::TcpStream,
        first_sent: tokio::sync::oneshot::Sender<()>,
        duration: Duration,
    ) -> Self {
        SlowAfterFirstWrite {
            inner,
            first_sent: Some(first_sent),
            delay: None,
            duration,
        }
    }
}

impl tokio::io::AsyncRead for SlowAfterFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SlowAfterFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.first_sent.is_none() {
            let duration = self.duration;
            let delay = self
                .delay
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(duration)));
            std::task::ready!(delay.as_mut().poll(cx));
        }
        let written = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if let Some(first_sent) = self.first_sent.take() {
            let _ = first_sent.send(());
        }
        std::task::Poll::Ready(Ok(written))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

mod clients {
    //! What only these tests need: TLS certificates, HTTP/1.1 and HTTP/2 clients (plain
    //! and TLS), and HTTP/2 backends.

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::client::conn::{http1, http2};
    use hyper::ext::Protocol;
    use hyper::header::{HOST, HeaderName, HeaderValue};
    use hyper::rt::{Read, Write};
    use hyper::service::service_fn;
    use hyper::upgrade::Upgraded;
    use hyper::{HeaderMap, Request, Response, StatusCode, Version};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use teal_proxy::{Tls, TlsSetting};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsConnector;

    /// A test certificate authority the clients trust.
    pub struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    /// A server certificate for `localhost` and its key.
    pub struct Leaf {
        pub cert_pem: String,
        pub key_pem: String,
        pub der: CertificateDer<'static>,
    }

    impl Ca {
        /// A TLS client that trusts this CA and offers `alpn`.
        pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.der.clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        }

        pub fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "teal test CA");
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca {
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A certificate for `localhost`, told apart from others by its common name.
        pub fn issue(&self, name: &str) -> Leaf {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }
    }

    /// `cert.pem` and `key.pem` in a temporary directory.
    pub struct CertFiles {
        pub dir: tempfile::TempDir,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    impl CertFiles {
        pub fn new(leaf: &Leaf) -> CertFiles {
            let dir = tempfile::tempdir().unwrap();
            let files = CertFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                dir,
            };
            files.install(leaf);
            files
        }

        /// Replaces both files the way certificate tools do: written aside, then
        /// renamed into place.
        pub fn install(&self, leaf: &Leaf) {
            for (path, text) in [(&self.cert, &leaf.cert_pem), (&self.key, &leaf.key_pem)] {
                let aside = path.with_extension("new");
                std::fs::write(&aside, text).unwrap();
                std::fs::rename(&aside, path).unwrap();
            }
        }

        /// A listener setting serving these files.
        pub fn setting(&self) -> TlsSetting {
            TlsSetting::new(Some(Tls::load(&self.cert, &self.key).unwrap()))
        }
    }

    /// A backend that answers every request `200` with its text, upgrade or not.
    pub async fn plain_backend(text: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(move |_request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        text.as_bytes(),
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    /// One answer, body collected.
    #[derive(Debug)]
    pub struct Answer {
        pub status: StatusCode,
        pub version: Version,
        pub headers: HeaderMap,
        pub body: String,
        /// Trailer fields after the body (empty when none came).
        pub trailers: HeaderMap,
    }

    impl Answer {
        pub fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .map(|v| v.to_str().unwrap())
                .unwrap_or("")
        }
    }

    enum Sender {
        Http1(http1::SendRequest<Full<Bytes>>),
        Http2(http2::SendRequest<Full<Bytes>>),
    }

    /// One client connection, HTTP/1.1 or HTTP/2, plain or TLS; every request goes
    /// over it. Closed when dropped.
    pub struct Client {
        sender: Sender,
        /// `scheme://localhost:port`, for the URI (HTTP/2) or Host header (HTTP/1.1).
        scheme: &'static str,
        authority: String,
        task: JoinHandle<()>,
        /// The protocol the server picked in ALPN.
        pub alpn: Option<Vec<u8>>,
        /// The certificate the server presented (empty for plain connections).
        pub peer_certificate: CertificateDer<'static>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Client {
        /// A handle for more requests on this HTTP/2 connection, concurrent with its
        /// others; the connection lives as long as `self`.
        pub fn another_stream(&self) -> Client {
            let Sender::Http2(sender) = &self.sender else {
                panic!("concurrent requests need HTTP/2");
            };
            Client {
                sender: Sender::Http2(sender.clone()),
                scheme: self.scheme,
                authority: self.authority.clone(),
                task: tokio::spawn(async {}),
                alpn: self.alpn.clone(),
                peer_certificate: self.peer_certificate.clone(),
            }
        }

        /// Plain HTTP/1.1.
        pub async fn http1(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).await.unwrap();
            Client::handshake(TokioIo::new(stream), false, "http", addr).await
        }

        /// Plain HTTP/2 with prior knowledge.
        pub async fn h2c(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).await.unwrap();
            Client::handshake(TokioIo::new(stream), true, "http", addr).await
        }

        /// TLS to `localhost`, trusting `ca`, offering `alpn`; speaks HTTP/2 when the
        /// server picks `h2`.
        pub async fn tls(addr: SocketAddr, ca: &Ca, alpn: &[&[u8]]) -> Client {
            let stream = TcpStream::connect(addr).await.unwrap();
            let stream = ca
                .connector(alpn)
                .connect(ServerName::try_from("localhost").unwrap(), stream)
                .await
                .unwrap();
            let session = stream.get_ref().1;
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            let peer_certificate = session.peer_certificates().unwrap()[0].clone();
            let h2 = alpn.as_deref() == Some(b"h2");
            let mut client = Client::handshake(TokioIo::new(stream), h2, "https", addr).await;
            client.alpn = alpn;
            client.peer_certificate = peer_certificate;
            client
        }

        async fn handshake<I>(io: I, h2: bool, scheme: &'static str, addr: SocketAddr) -> Client
        where
            I: Read + Write + Unpin + Send + 'static,
        {
            let (sender, task) = if h2 {
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), io).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (Sender::Http2(sender), task)
            } else {
                let (sender, connection) = http1::handshake(io).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (Sender::Http1(sender), task)
            };
            Client {
                sender,
                scheme,
                authority: format!("localhost:{}", addr.port()),
                task,
                alpn: None,
                peer_certificate: CertificateDer::from(Vec::new()),
            }
        }

        /// Opens a WebSocket over HTTP/2 (RFC 8441: CONNECT with `:protocol
        /// websocket`); the answer (no body), and the stream when it was accepted.
        pub async fn websocket(
            &mut self,
            path: &str,
            protocol: &'static str,
            headers: &[(&str, &str)],
        ) -> (Answer, Option<TokioIo<Upgraded>>) {
            let Sender::Http2(sender) = &mut self.sender else {
                panic!("WebSockets over HTTP/2 need an HTTP/2 client");
            };
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.method_mut() = hyper::Method::CONNECT;
            *request.version_mut() = Version::HTTP_2;
            *request.uri_mut() = format!("{}://{}{path}", self.scheme, self.authority)
                .parse()
                .unwrap();
            request
                .extensions_mut()
                .insert(Protocol::from_static(protocol));
            for (name, value) in headers {
                request.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            sender.ready().await.unwrap();
            let mut response = sender.send_request(request).await.unwrap();
            let stream = if response.status() == StatusCode::OK {
                Some(TokioIo::new(
                    hyper::upgrade::on(&mut response).await.unwrap(),
                ))
            } else {
                None
            };
            (Answer::read(response).await, stream)
        }

        /// A GET with extra headers (repeated names are sent as repeated headers).
        pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
            self.send(hyper::Method::GET, path, headers, Bytes::new())
                .await
        }

        /// A request with extra headers and a body.
        pub async fn send(
            &mut self,
            method: hyper::Method,
            path: &str,
            headers: &[(&str, &str)],
            body: Bytes,
        ) -> Answer {
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = method;
            for (name, value) in headers {
                request.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let response = match &mut self.sender {
                Sender::Http1(sender) => {
                    *request.uri_mut() = path.parse().unwrap();
                    request
                        .headers_mut()
                        .insert(HOST, HeaderValue::from_str(&self.authority).unwrap());
                    sender.ready().await.unwrap();
                    sender.send_request(request).await.unwrap()
                }
                Sender::Http2(sender) => {
                    *request.uri_mut() = format!("{}://{}{path}", self.scheme, self.authority)
                        .parse()
                        .unwrap();
                    *request.version_mut() = Version::HTTP_2;
                    sender.ready().await.unwrap();
                    sender.send_request(request).await.unwrap()
                }
            };
            Answer::read(response).await
        }

        /// `n` requests sent at once on this HTTP/2 connection, bodies collected.
        pub async fn concurrent(&self, n: usize, path: &str) -> Vec<Answer> {
            let Sender::Http2(sender) = &self.sender else {
                panic!("concurrent requests need an HTTP/2 client");
            };
            let uri = format!("{}://{}{path}", self.scheme, self.authority);
            let calls: Vec<_> = (0..n)
                .map(|_| {
                    let mut sender = sender.clone();
                    let request = Request::post(&uri)
                        .version(Version::HTTP_2)
                        .header("te", "trailers")
                        .body(Full::new(Bytes::from_static(b"item")))
                        .unwrap();
                    tokio::spawn(async move {
                        let response = sender.send_request(request).await.unwrap();
                        Answer::read(response).await
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap());
            }
            answers
        }
    }

    impl Answer {
        async fn read(response: Response<Incoming>) -> Answer {
            let (parts, body) = response.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let body = collected.to_bytes();
            Answer {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                trailers,
            }
        }
    }

    /// An h2c backend that allows one stream at a time (SETTINGS_MAX_CONCURRENT_STREAMS
    /// 1). On each connection it answers the first request at once; it holds the
    /// second, shuts the connection down (GOAWAY) 300 ms later, and answers it 300 ms
    /// after that.
    pub struct OneStreamH2cBackend {
        pub addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    impl OneStreamH2cBackend {
        pub async fn start(name: &'static str) -> OneStreamH2cBackend {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = OneStreamH2cBackend {
                addr: listener.local_addr().unwrap(),
                connections: Arc::default(),
                requests: Arc::default(),
            };
            let connections = Arc::clone(&backend.connections);
            let received = Arc::clone(&backend.requests);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let received = Arc::clone(&received);
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::Builder::new()
                            .max_concurrent_streams(1)
                            .handshake::<_, Bytes>(stream)
                            .await
                        else {
                            return;
                        };
                        let mut requests = 0;
                        let shut_down = Arc::new(tokio::sync::Notify::new());
                        loop {
                            let (_request, mut respond) = tokio::select! {
                                next = connection.accept() => match next {
                                    Some(Ok(stream)) => stream,
                                    _ => break,
                                },
                                // GOAWAY, and after a PING round trip the final
                                // GOAWAY that names the held stream as the last: a
                                // stream opened later is not taken.
                                () = shut_down.notified() => {
                                    connection.graceful_shutdown();
                                    continue;
                                }
                            };
                            requests += 1;
                            received.fetch_add(1, Ordering::SeqCst);
                            let hold = requests > 1;
                            let shut_down = Arc::clone(&shut_down);
                            tokio::spawn(async move {
                                if hold {
                                    // Time for the proxy to queue the next request
                                    // behind this one.
                                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                    shut_down.notify_one();
                                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                }
                                if let Ok(mut body) =
                                    respond.send_response(Response::new(()), false)
                                {
                                    let _ = body.send_data(Bytes::from(name), true);
                                }
                            });
                        }
                    });
                }
            });
            backend
        }

        /// Connections it accepted.
        pub fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        /// Requests it received, on every connection.
        pub fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// Waits until it has received `count` requests in all.
        pub async fn wait_requests(&self, count: usize) {
            while self.requests() < count {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    /// An h2c instance on the h2 crate, which (unlike hyper's server) can say why it
    /// resets a stream: it refuses with REFUSED_STREAM the stream after
    /// [`refuse_next`](Self::refuse_next) and every stream for `/refused`, and answers
    /// the others with its name.
    pub struct RefusingH2cBackend {
        pub addr: SocketAddr,
        refuse_next: Arc<AtomicBool>,
        refused: Arc<AtomicUsize>,
        answered: Arc<AtomicUsize>,
    }

    impl RefusingH2cBackend {
        pub async fn start(name: &'static str) -> RefusingH2cBackend {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = RefusingH2cBackend {
                addr: listener.local_addr().unwrap(),
                refuse_next: Arc::default(),
                refused: Arc::default(),
                answered: Arc::default(),
            };
            let (refuse_next, refused, answered) = (
                Arc::clone(&backend.refuse_next),
                Arc::clone(&backend.refused),
                Arc::clone(&backend.answered),
            );
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (refuse_next, refused, answered) = (
                        Arc::clone(&refuse_next),
                        Arc::clone(&refused),
                        Arc::clone(&answered),
                    );
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::handshake(stream).await else {
                            return;
                        };
                        while let Some(Ok((request, mut respond))) = connection.accept().await {
                            if request.uri().path() == "/refused"
                                || refuse_next.swap(false, Ordering::SeqCst)
                            {
                                refused.fetch_add(1, Ordering::SeqCst);
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                                continue;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            if let Ok(mut body) = respond.send_response(Response::new(()), false) {
                                let _ = body.send_data(Bytes::from(name), true);
                            }
                        }
                    });
                }
            });
            backend
        }

        pub fn refuse_next(&self) {
            self.refuse_next.store(true, Ordering::SeqCst);
        }

        /// (streams refused, streams answered)
        pub fn counts(&self) -> (usize, usize) {
            (
                self.refused.load(Ordering::SeqCst),
                self.answered.load(Ordering::SeqCst),
            )
        }
    }

    /// Like [`h2c_backend`], but each connection is closed (GOAWAY, then the end of
    /// the connection) once it has answered one request.
    pub async fn h2c_backend_closing_after_one(
        name: &'static str,
    ) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let ended = Arc::clone(&closed);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let answered = Arc::new(tokio::sync::Notify::new());
                let notify = Arc::clone(&answered);
                let service = service_fn(move |_request: Request<Incoming>| {
                    notify.notify_one();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name)))) }
                });
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = answered.notified() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, connections, closed)
    }

    /// An HTTP/2-only (h2c) backend, as gRPC servers are: answers every request with
    /// its name and the trailer `grpc-status: 0`, and tells in `echo-*` headers the
    /// version, `:authority`, path and `te` it received; `/hang` is never answered.
    /// The count is of the connections it accepted.
    pub async fn h2c_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |request: Request<Incoming>| async move {
                    if request.uri().path() == "/hang" {
                        // Never answers (the stream stays open).
                        std::future::pending::<()>().await;
                    }
                    if request.uri().path() == "/upload" {
                        // Answers once the whole body is in, with its length.
                        let body = request.into_body().collect().await;
                        let text =
                            body.map_or("broken".to_owned(), |b| b.to_bytes().len().to_string());
                        return Ok(Response::new(BoxBody::new(Full::new(Bytes::from(text)))));
                    }
                    let echoed = [
                        ("echo-version", format!("{:?}", request.version())),
                        (
                            "echo-authority",
                            request
                                .uri()
                                .authority()
                                .map_or(String::new(), |a| a.to_string()),
                        ),
                        ("echo-path", request.uri().path().to_owned()),
                        (
                            "echo-te",
                            request
                                .headers()
                                .get("te")
                                .map_or(String::new(), |te| te.to_str().unwrap().to_owned()),
                        ),
                    ];
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let body = Full::new(Bytes::from_static(name.as_bytes()))
                        .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
                    let mut response = Response::new(BoxBody::new(body));
                    for (header, value) in echoed {
                        response
                            .headers_mut()
                            .insert(header, HeaderValue::from_str(&value).unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, connections)
    }
}
