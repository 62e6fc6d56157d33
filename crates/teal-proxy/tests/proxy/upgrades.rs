//! Upgraded connections (WebSocket): tunnelled both ways, kept on the color they
//! started on across a switch, counted, and closed by a drain after its timeout.

use std::time::{Duration, Instant};

use teal_core::Color;
use teal_proxy::Role;

use super::support::*;

/// Opens an upgraded connection through the proxy, the way a WebSocket client
/// starts, and returns it with the backend's greeting (its name).
async fn websocket(addr: std::net::SocketAddr) -> (Raw, String) {
    let mut client = Raw::open(addr).await;
    client
        .write(
            "GET /chat HTTP/1.1\r\nhost: shop.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
    let head = client.head().await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-teal-color: "), "{head}");
    let greeting = client.exactly("blue-1\n".len()).await;
    (client, greeting.trim_end().to_owned())
}

async fn echo(client: &mut Raw, text: &str) -> String {
    client.write(text).await;
    client.exactly(text.len()).await
}

#[tokio::test]
async fn websocket_stays_on_its_color_across_a_switch_until_the_drain_closes_it() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = proxy_with(|options| options.upgraded_drain_timeout = Duration::from_millis(500));
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let (mut socket, served_by) = websocket(addr).await;
    assert_eq!(served_by, "blue-1");
    assert_eq!(echo(&mut socket, "hello").await, "hello");
    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.upgraded, 1);
    // The request itself is over; the tunnel is counted apart.
    assert_eq!(stats.in_flight, 0);

    proxy.set_routes(table(Some(be(Color::Green, 2, &[green])), None));
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.get("/").await.body, "green-1");
    // The tunnel is still to blue, and still works.
    assert_eq!(echo(&mut socket, "still there").await, "still there");
    assert_eq!(proxy.stats(Color::Green).upgraded, 0);

    let started = Instant::now();
    let drained = within("drain", proxy.drain(Color::Blue, Duration::from_secs(5))).await;
    assert!(
        !drained,
        "the tunnel had to be closed, so blue did not drain by itself"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "closed before the upgraded drain timeout: {:?}",
        started.elapsed()
    );
    // Closed cleanly: the client reads the end of the stream.
    assert_eq!(socket.rest().await, "");
    let stats = proxy.stats(Color::Blue);
    assert_eq!(stats.upgraded, 0);
    assert_eq!(stats.bytes_in, ("hello".len() + "still there".len()) as u64);
    assert_eq!(
        stats.bytes_out,
        ("blue-1\n".len() + "hello".len() + "still there".len()) as u64
    );
}

#[tokio::test]
async fn drain_waits_for_a_websocket_that_ends_by_itself() {
    let blue = backend("blue-1").await;
    let green = backend("green-1").await;
    let proxy = proxy_with(|options| options.upgraded_drain_timeout = Duration::from_secs(10));
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let (mut socket, _) = websocket(addr).await;
    assert_eq!(echo(&mut socket, "ping").await, "ping");
    proxy.set_routes(table(Some(be(Color::Green, 2, &[green])), None));

    let drain = tokio::spawn({
        let proxy = std::sync::Arc::clone(&proxy);
        async move { proxy.drain(Color::Blue, Duration::from_secs(10)).await }
    });
    let mut drain = drain;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut drain)
            .await
            .is_err(),
        "drain returned while a websocket was open"
    );
    drop(socket);
    assert!(within("drain", drain).await.unwrap());
    assert_eq!(proxy.stats(Color::Blue).upgraded, 0);
}

#[tokio::test]
async fn upgrade_refused_by_the_instance_is_an_ordinary_answer() {
    let (blue, gate) = gated_backend("blue-1").await;
    gate.fail(true);
    let proxy = proxy_with(|_| {});
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[blue])), None));
    let addr = start(&proxy, Role::Active).await;

    let mut client = Raw::open(addr).await;
    client
        .write("GET /chat HTTP/1.1\r\nhost: shop.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await;
    let head = client.head().await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert_eq!(proxy.stats(Color::Blue).upgraded, 0);
    eventually("in_flight(blue) == 0", || proxy.in_flight(Color::Blue) == 0).await;
}
