//! Limits and timeouts: each refusal names the limit, in `x-teal-reason` and in the
//! body.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use teal_core::Color;
use teal_proxy::{Proxy, Role};

use super::support::*;

#[tokio::test]
async fn oversized_request_head_is_a_431_that_names_the_limit() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let big = "x".repeat(40 * 1024);
    let answer = conn
        .send(Method::GET, "/", &[("x-big", &big)], "")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.headers["x-teal-reason"], "request-header-too-large");
    assert!(
        answer.body.contains("max_request_header_bytes"),
        "{}",
        answer.body
    );
    assert_eq!(gate.connections(), 0, "the instance saw the request");
    // The connection is still good for requests within the limit.
    assert_eq!(conn.get("/").await.body, "blue-1");
    let stats = proxy.stats(Color::Blue);
    assert_eq!((stats.rejected, stats.responses_4xx), (1, 1));
    assert_eq!(stats.proxy_errors, 0);
}

#[tokio::test]
async fn body_over_the_limit_is_a_413_by_its_length_or_once_streamed_past_it() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = proxy_with(|options| options.limits.max_request_body_bytes = 1024);
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    // Content-Length says too much: refused before any instance sees it.
    let mut conn = Conn::open(addr).await;
    let answer = conn
        .send(Method::POST, "/upload", &[], &"x".repeat(2048))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.headers["x-teal-reason"], "request-body-too-large");
    assert!(
        answer.body.contains("max_request_body_bytes"),
        "{}",
        answer.body
    );
    assert_eq!(gate.connections(), 0);

    // Within the limit: passes.
    let mut conn = Conn::open(addr).await;
    let answer = conn
        .send(Method::POST, "/upload", &[], &"x".repeat(1024))
        .await
        .unwrap();
    assert_eq!(answer.body, "received 1024");

    // Chunked, no length: cut when it passes the limit.
    let mut client = Raw::open(addr).await;
    client
        .write("POST /upload HTTP/1.1\r\nhost: shop.test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    for _ in 0..3 {
        client.chunk(&"y".repeat(512)).await;
    }
    client.write("0\r\n\r\n").await;
    let head = client.head().await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.contains("x-teal-reason: request-body-too-large"),
        "{head}"
    );
    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.rejected, 2);
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
}

#[tokio::test]
async fn connect_timeout_is_a_502_that_says_so() {
    let hole = blackhole().await;
    let proxy = proxy_with(|options| options.limits.connect_timeout = Duration::from_millis(200));
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[hole.addr])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let started = Instant::now();
    let answer = conn.get("/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["x-teal-reason"], "upstream-connect-timeout");
    assert!(answer.body.contains("connect timeout"), "{}", answer.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stats(Color::Blue).proxy_errors, 1);
}

#[tokio::test]
async fn an_instance_pausing_too_long_mid_body_has_its_response_cut() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = proxy_with(|options| {
        options.limits.upstream_idle_timeout = Duration::from_millis(200);
    });
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let response = within("response headers", conn.start("/stream")).await;
    let mut body = response.into_body();
    let first = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "blue-1:first;");
    // The backend holds the rest: after the idle timeout the proxy gives up.
    let rest = within("the cut", body.collect()).await;
    assert!(rest.is_err(), "the response was not cut");
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
    gate.release(1);

    // A fresh connection works; the idle timeout does not apply to waiting for the
    // head, nor to a body that keeps coming.
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.get("/").await.body, "blue-1");
}

#[tokio::test]
async fn slow_response_headers_are_a_504_that_names_the_timeout() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = proxy_with(|options| {
        options.limits.response_header_timeout = Duration::from_millis(200);
    });
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let answer = conn.get("/hold").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.headers["x-teal-reason"], "upstream-timeout");
    assert!(
        answer.body.contains("response header timeout"),
        "{}",
        answer.body
    );
    gate.release(1);
}
