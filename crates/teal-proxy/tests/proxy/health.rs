//! Passive health: an instance that keeps failing is taken out of rotation for a
//! cooldown, and the others take its traffic.

use std::collections::HashMap;
use std::time::Duration;

use hyper::StatusCode;
use teal_core::Color;
use teal_proxy::Role;

use super::support::*;

#[tokio::test]
async fn an_instance_that_starts_failing_is_ejected_and_the_other_takes_the_traffic() {
    let (good, _) = gated_backend("blue-good").await;
    let (bad, bad_gate) = gated_backend("blue-bad").await;
    let proxy = proxy_with(|options| {
        options.health.consecutive_failures = 3;
        options.health.cooldown = Duration::from_millis(500);
    });
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[good, bad])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..4 {
        *served.entry(conn.get("/").await.body).or_default() += 1;
    }
    assert_eq!(served["blue-bad"], 2, "{served:?}");

    bad_gate.fail(true);
    let mut failures = 0;
    for _ in 0..6 {
        if conn.get("/").await.status == StatusCode::INTERNAL_SERVER_ERROR {
            failures += 1;
        }
    }
    // Round-robin gave the bad instance every other request until its third failure.
    assert_eq!(failures, 3);
    assert_eq!(proxy.ejected(), vec![bad]);
    assert_eq!(proxy.stats(Color::Blue).ejections, 1);
    for _ in 0..10 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "blue-good");
    }

    // Healthy again: after the cooldown it gets its share back.
    bad_gate.fail(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..4 {
        *served.entry(conn.get("/").await.body).or_default() += 1;
    }
    assert_eq!(served.get("blue-bad"), Some(&2), "{served:?}");
    assert!(proxy.ejected().is_empty());
}

#[tokio::test]
async fn when_every_instance_is_ejected_requests_still_reach_them() {
    let (only, gate) = gated_backend("blue-1").await;
    let proxy = proxy_with(|options| options.health.consecutive_failures = 2);
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[only])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    gate.fail(true);
    for _ in 0..3 {
        assert_eq!(
            conn.get("/").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(proxy.ejected(), vec![only]);
    gate.fail(false);
    // Ejected, but the only one: better it than a 503.
    let answer = conn.get("/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "blue-1");
    assert_eq!(proxy.stats(Color::Blue).proxy_errors, 0);
}

#[tokio::test]
async fn a_refused_connect_counts_toward_ejection() {
    let dead = dead_addr().await;
    let (live, _) = gated_backend("blue-live").await;
    let proxy = proxy_with(|options| options.health.consecutive_failures = 2);
    proxy.set_routes(table(Some(be(Color::Blue, 1, &[dead, live])), None));
    let addr = start(&proxy, Role::Active).await;
    let mut conn = Conn::open(addr).await;

    for _ in 0..8 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "blue-live");
    }
    assert_eq!(proxy.ejected(), vec![dead]);
}
