//! What the daemon lets people and Prometheus see: /metrics, traffic, the event stream.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

fn api(sandbox: &Sandbox) -> SocketAddr {
    std::fs::read_to_string(sandbox.data_dir().join("api.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn get_text(address: SocketAddr, path: &str) -> String {
    let mut connection = Connection::open(address).await.unwrap();
    connection.get(path, None).await.unwrap().body
}

#[test]
fn metrics_and_traffic_count_what_the_proxy_served() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("meter", "v1");
    // One request in four fails: the success rate must say 0.75.
    spec.extra_env = vec![("DEMO_FAIL_RATE", "0.25")];
    spec.replicas = 1;
    sandbox.apply_ok("meter.yaml", &spec.yaml());
    let live = sandbox.wait_for("meter", "v1 live", |r| r.phase == Phase::Healthy);
    let active: SocketAddr = live.active_listen.parse().unwrap();

    let statuses = rt.block_on(async {
        let mut connection = Connection::open(active).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(connection.get("/", None).await.unwrap().status);
        }
        statuses
    });
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 10);

    let traffic = eventually(
        Duration::from_secs(15),
        "the summary counts the 40 requests",
        || {
            let view = sandbox.get("meter");
            let blue = view.traffic.into_iter().find(|t| t.color == Color::Blue)?;
            (blue.requests == 40).then_some(blue)
        },
    );
    assert_eq!((traffic.revision, traffic.errors), (1, 10));
    assert_eq!(traffic.success_rate, Some(0.75), "{traffic:?}");
    assert!(
        traffic.p99_ms.is_some_and(|p99| p99 > 0.0 && p99 < 1000.0),
        "{traffic:?}"
    );

    let metrics = rt.block_on(get_text(api(&sandbox), "/metrics"));
    for expected in [
        "# TYPE teal_proxy_requests_total counter",
        "teal_proxy_requests_total{rollout=\"meter\",color=\"blue\",revision=\"1\"} 40",
        "teal_proxy_responses_total{rollout=\"meter\",color=\"blue\",revision=\"1\",class=\"5xx\"} 10",
        "teal_proxy_responses_total{rollout=\"meter\",color=\"blue\",revision=\"1\",class=\"2xx\"} 30",
        "teal_proxy_response_seconds_count{rollout=\"meter\",color=\"blue\",revision=\"1\"} 40",
        "teal_instances_ready{rollout=\"meter\",color=\"blue\",revision=\"1\"} 1",
        "teal_rollout_phase{rollout=\"meter\",phase=\"Healthy\"} 1",
        "teal_rollout_switches_total{rollout=\"meter\"} 0",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected:?}:\n{metrics}"
        );
    }

    spec.version = "v2";
    spec.auto_promotion = true;
    sandbox.apply_ok("meter.yaml", &spec.yaml());
    sandbox.wait_for("meter", "v2 live", |r| r.active_revision == Some(2));
    let metrics = rt.block_on(get_text(api(&sandbox), "/metrics"));
    assert!(
        metrics.contains("teal_rollout_switches_total{rollout=\"meter\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teal_rollout_active_revision{rollout=\"meter\"} 2"),
        "{metrics}"
    );
    // Revision 2 runs in green and counts on its own series from its start; blue
    // still shows what revision 1 served.
    assert!(
        metrics.contains(
            "teal_proxy_requests_total{rollout=\"meter\",color=\"blue\",revision=\"1\"} 40"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("teal_proxy_in_flight{rollout=\"meter\",color=\"green\",revision=\"2\"} 0"),
        "{metrics}"
    );

    let history: teal_core::api::TrafficView = serde_json::from_str(
        &rt.block_on(get_text(api(&sandbox), "/api/v1/rollouts/meter/traffic")),
    )
    .unwrap();
    assert_eq!(history.interval_ms, 1000);
    // Windows are about a second (the first, from the proxy's start, may be shorter),
    // so the counts add up exactly while the rates only approximately.
    let served: u64 = history
        .samples
        .iter()
        .flat_map(|s| s.colors.iter())
        .filter(|c| c.color == Color::Blue)
        .map(|c| c.requests)
        .sum();
    assert_eq!(served, 40, "the history adds up to the 40 requests");
    assert!(
        history
            .samples
            .iter()
            .flat_map(|s| s.colors.iter())
            .all(|c| c.requests == 0 || c.requests_per_second >= c.requests as f64 * 0.5),
        "rates follow the counts: {history:?}"
    );
}

#[test]
fn the_event_stream_announces_changes_as_they_happen() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("news", "v1");
    sandbox.apply_ok("news.yaml", &spec.yaml());
    sandbox.wait_for("news", "v1 live", |r| r.phase == Phase::Healthy);

    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<String>();
    let address = api(&sandbox);
    rt.spawn(async move {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut request, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let response = request
            .send_request(
                hyper::Request::get("/api/v1/events")
                    .header("host", "teal")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                let _ = sender.send(String::from_utf8_lossy(data).into_owned());
            }
        }
    });

    let first =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), events.recv()).await });
    let first = first.expect("an event at once").unwrap();
    assert!(first.starts_with("event: rollouts\ndata: ["), "{first}");
    assert!(first.contains("\"name\":\"news\""), "{first}");

    spec.version = "v2";
    sandbox.apply_ok("news.yaml", &spec.yaml());
    let started = std::time::Instant::now();
    rt.block_on(async {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("events keep coming")
                .unwrap();
            if event.contains("\"preview_revision\":2") {
                return;
            }
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the change was announced promptly"
    );
}

#[test]
fn the_dashboard_is_served_from_the_binary_with_a_token_link() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let link = sandbox.teal_ok(&["dashboard"]);
    let token = std::fs::read_to_string(sandbox.data_dir().join("token")).unwrap();
    assert_eq!(
        link.trim(),
        format!("http://{}/#token={}", api(&sandbox), token.trim())
    );

    let page = rt.block_on(async {
        let mut connection = Connection::open(api(&sandbox)).await.unwrap();
        connection.get("/", None).await.unwrap()
    });
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    // Everything is embedded: no script, style or image comes from elsewhere.
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import url(http",
    ] {
        assert!(
            !page.body.contains(external),
            "external asset {external:?} in the page"
        );
    }
    assert!(
        !page.body.contains(token.trim()),
        "the page never embeds the token"
    );
}
