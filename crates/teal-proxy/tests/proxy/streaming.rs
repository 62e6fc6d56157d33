//! Bodies stream through without being buffered, both ways, and upstream connections
//! are kept and reused.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Body;
use teal_core::Color;
use teal_proxy::{Proxy, Role};

use super::support::*;

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_before_the_response_ends() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let response = within("response headers", conn.start("/events")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    for n in 1..=3 {
        if n > 1 {
            // The backend sends the next event only now: the previous one cannot
            // have waited for it.
            gate.wait_arrived(n - 1).await;
            gate.release(1);
        }
        let frame = within("an event", body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("data: {n}\n\n"));
        assert!(!body.is_end_stream());
    }
    assert!(within("the end", body.frame()).await.is_none());
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.bytes_out, 3 * "data: 1\n\n".len() as u64);
}

#[tokio::test]
async fn chunked_upload_reaches_the_instance_piece_by_piece() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut client = Raw::open(addr).await;
    client
        .write("POST /upload HTTP/1.1\r\nhost: shop.test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let pieces = ["first", "second", "third"];
    for (n, piece) in pieces.iter().enumerate() {
        client.chunk(piece).await;
        // The instance has this piece while the client still holds the next ones.
        eventually(&format!("{piece} at the instance"), || {
            gate.received().len() == n + 1
        })
        .await;
        assert_eq!(gate.received()[n], *piece);
    }
    client.write("0\r\n\r\n").await;
    let head = client.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let expected = format!("received {total}");
    assert_eq!(client.exactly(expected.len()).await, expected);
    assert_eq!(proxy.stats(Color::Blue).bytes_in, total as u64);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (blue, gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    for _ in 0..20 {
        assert_eq!(conn.get("/").await.body, "blue-1");
    }
    // A streamed body too: its connection comes back when the body ends.
    let response = within("response headers", conn.start("/stream")).await;
    gate.release(1);
    within("stream", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(conn.get("/").await.body, "blue-1");
    assert_eq!(gate.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_instance_closed_while_idle_is_not_used_again() {
    let blue = one_shot_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    for _ in 0..3 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.body, "blue-1");
        // Time for the proxy to see the close of the idle connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.stats(Color::Blue).proxy_errors, 0);
}

#[tokio::test]
async fn a_50_mb_upload_streams_through_in_bounded_memory() {
    let (blue, _gate) = gated_backend("blue-1").await;
    let proxy = Proxy::new("shop");
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let before = peak_rss();
    let (chunks, answer) = upload(addr, "/upload?count").await;
    let chunk = bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let total = 50 * 1024 * 1024;
    for _ in 0..total / chunk.len() {
        within("room for the next chunk", chunks.send(chunk.clone()))
            .await
            .unwrap();
    }
    drop(chunks);
    let answer = within("the answer", answer).await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, format!("received {total}"));
    assert_eq!(proxy.stats(Color::Blue).bytes_in, total as u64);
    // Client, proxy and instance all live in this process: had anyone buffered the
    // body, the peak would have grown by 50 MB.
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 16 * 1024 * 1024,
        "peak memory grew by {grown} bytes"
    );
}
