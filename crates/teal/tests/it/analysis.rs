//! Analysis end to end: real daemon, demo-apps, the builtin provider reading teal's
//! proxy, jobs as real commands, a web provider and webhooks against a local HTTP
//! server, and the prometheus provider against a real Prometheus.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use teal_core::Color;
use teal_core::analysis::Phase as AnalysisPhase;
use teal_core::api::AnalysisView;
use teal_core::rollout::Phase;

use crate::support::*;

/// A template with one builtin metric.
fn builtin_template(name: &str, measure: &str, condition: &str, count: u32) -> String {
    format!(
        r#"apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {name}
spec:
  metrics:
    - name: {measure}
      interval: 1s
      count: {count}
      successCondition: "{condition}"
      provider:
        builtin: {{measure: {measure}}}
"#
    )
}

/// When an answer came, its status (0: no answer) and color.
type Seen = (Instant, u16, Option<String>);

/// A client sending requests to `address` on one keep-alive connection until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(address: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let answers = answers.clone();
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let mut connection = Connection::open(address).await.unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match connection.get("/", None).await {
                            Ok(answer) => (answer.status, answer.color),
                            Err(_) => {
                                if let Ok(fresh) = Connection::open(address).await {
                                    connection = fresh;
                                }
                                (0, None)
                            }
                        };
                        answers
                            .lock()
                            .unwrap()
                            .push((Instant::now(), answer.0, answer.1));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
        };
        Client {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn answers(&self) -> Vec<Seen> {
        self.answers.lock().unwrap().clone()
    }

    fn stop(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.answers()
    }
}

fn analysis_runs(sandbox: &Sandbox, name: &str) -> AnalysisView {
    let out = sandbox.teal_ok(&["analysis", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn failing_preview_is_aborted_by_pre_promotion_analysis_while_users_see_no_error() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("gate", "v1");
    spec.replicas = 1;
    spec.documents = builtin_template("success", "success-rate", "result >= 0.95", 3);
    spec.strategy_extra = "      prePromotionAnalysis:\n        templates: [{templateName: success}]\n      loadTest: {requestsPerSecond: 40, concurrency: 2}\n".to_owned();
    let active = sandbox.go_live(&spec);
    // The first release is not analysed: nobody to protect yet.
    assert!(analysis_runs(&sandbox, "gate").runs.is_empty());

    let client = Client::start(active);
    eventually(Duration::from_secs(10), "the client's first answer", || {
        (!client.answers().is_empty()).then_some(())
    });
    spec.version = "v2";
    spec.extra_env = vec![("DEMO_FAIL_RATE", "0.5")];
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let applied = Instant::now();
    let aborted = sandbox.wait_for("gate", "v2 aborted by analysis", |r| {
        r.phase == Phase::Degraded
    });
    let aborted_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let answers = client.stop();

    assert!(
        aborted.message.contains("pre-promotion analysis Failed"),
        "{}",
        aborted.message
    );
    assert_eq!(aborted.active_color, Some(Color::Blue));
    // The client was answered throughout: before the new revision was applied and
    // after the abort.
    assert!(
        answers.iter().any(|(at, _, _)| *at <= applied)
            && answers.iter().any(|(at, _, _)| *at >= aborted_at),
        "the client kept sending: {} answers",
        answers.len()
    );
    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, status, color)| *status != 200 || color.as_deref() != Some("blue"))
        .collect();
    assert!(bad.is_empty(), "users saw {bad:?}");

    let runs = analysis_runs(&sandbox, "gate").runs;
    let run = runs.last().expect("a run");
    assert_eq!((run.revision, run.phase), (2, AnalysisPhase::Failed));
    let metric = &run.metrics[0];
    assert_eq!(metric.phase, AnalysisPhase::Failed);
    let value: f64 = metric.measurements[0]
        .value
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0.3..0.7).contains(&value),
        "about half the preview's answers failed: {value}"
    );
    let metrics = runtime().block_on(async {
        let mut connection = Connection::open(api_address(&sandbox)).await.unwrap();
        connection.get("/metrics", None).await.unwrap().body
    });
    for expected in [
        "teal_analysis_run_phase{rollout=\"gate\",kind=\"pre-promotion\",revision=\"2\",phase=\"Failed\"} 1",
        "teal_analysis_measurements{rollout=\"gate\",kind=\"pre-promotion\",revision=\"2\",metric=\"success-rate\",verdict=\"Failed\"} 1",
        "teal_rollout_aborts_total{rollout=\"gate\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    // People see the verdict and who decided.
    let text = sandbox.teal_ok(&["get", "gate"]);
    assert!(text.contains("pre-promotion of revision 2"), "{text}");
    assert!(text.contains("success-rate"), "{text}");
    let history = sandbox.teal_ok(&["history", "gate"]);
    assert!(history.contains("analysis"), "{history}");
    assert!(
        history.contains("revision 2 aborted: pre-promotion analysis Failed"),
        "{history}"
    );
}

#[test]
fn slow_preview_fails_a_latency_condition() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("slow", "v1");
    spec.replicas = 1;
    spec.documents = builtin_template("fast", "latency-p99", "result < 100", 2);
    spec.strategy_extra = "      prePromotionAnalysis:\n        templates: [{templateName: fast}]\n      loadTest: {requestsPerSecond: 20, concurrency: 4}\n".to_owned();
    sandbox.go_live(&spec);
    spec.version = "v2";
    spec.extra_env = vec![("DEMO_DELAY_MS", "300")];
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let aborted = sandbox.wait_for("slow", "v2 aborted", |r| r.phase == Phase::Degraded);
    assert!(
        aborted.message.contains("result < 100"),
        "{}",
        aborted.message
    );
    let run = analysis_runs(&sandbox, "slow").runs.pop().unwrap();
    let p99: f64 = run.metrics[0].measurements[0]
        .value
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(p99 >= 250.0, "p99 reflects the 300 ms delay: {p99}");
}

#[test]
fn no_traffic_is_inconclusive_and_waits_for_a_person() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("quiet", "v1");
    spec.replicas = 1;
    spec.auto_promotion = true;
    spec.documents = builtin_template("success", "success-rate", "result >= 0.95", 1);
    spec.strategy_extra =
        "      prePromotionAnalysis:\n        templates: [{templateName: success}]\n".to_owned();
    sandbox.go_live(&spec);
    spec.version = "v2";
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let held = sandbox.wait_for("quiet", "inconclusive", |r| {
        r.reason.as_deref() == Some("AnalysisInconclusive")
    });
    assert_eq!(held.phase, Phase::Paused);
    assert!(held.message.contains("no data"), "{}", held.message);
    // Even with auto-promotion, nothing moves by itself.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sandbox.get("quiet").active_revision, Some(1));
    // A person decides.
    sandbox.teal_ok(&["promote", "quiet", "--wait", "--timeout", "60s"]);
    assert_eq!(sandbox.get("quiet").active_revision, Some(2));
}

#[test]
fn breaking_after_the_switch_is_rolled_back_by_post_promotion_analysis() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("post", "v1");
    spec.replicas = 1;
    spec.auto_promotion = true;
    spec.documents = builtin_template("success", "success-rate", "result >= 0.9", 30);
    spec.strategy_extra =
        "      postPromotionAnalysis:\n        templates: [{templateName: success}]\n".to_owned();
    let active = sandbox.go_live(&spec);
    let client = Client::start(active);
    // v2 answers its first 10 requests, then fails every one.
    spec.version = "v2";
    spec.extra_env = vec![("DEMO_FAIL_RATE", "1"), ("DEMO_FAIL_AFTER", "10")];
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let rolled_back = sandbox.wait_for("post", "switched back", |r| {
        r.phase == Phase::Degraded && r.routes.active == Some(Color::Blue)
    });
    std::thread::sleep(Duration::from_millis(500));
    let answers = client.stop();
    assert!(
        rolled_back
            .message
            .contains("post-promotion analysis Failed"),
        "{}",
        rolled_back.message
    );
    assert_eq!(rolled_back.active_revision, Some(1));
    let first_error = answers
        .iter()
        .find(|(_, status, _)| *status == 500)
        .expect("users met v2's errors before the rollback")
        .0;
    let last_error = answers
        .iter()
        .rev()
        .find(|(_, status, _)| *status == 500)
        .unwrap()
        .0;
    // Measured every second: back on blue within about one interval of the errors.
    let exposed = last_error - first_error;
    assert!(exposed < Duration::from_secs(4), "errors for {exposed:?}");
    let (_, status, color) = answers.last().unwrap();
    assert_eq!((*status, color.as_deref()), (200, Some("blue")));
    let history = sandbox.teal_ok(&["history", "post"]);
    assert!(
        history.contains("switched users back to blue (revision 1)"),
        "{history}"
    );
}

#[test]
fn jobs_are_real_commands_judged_by_exit_code() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("jobs", "v1");
    spec.replicas = 1;
    spec.documents = r#"apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: smoke
spec:
  args:
    - name: expected
  metrics:
    - name: revision-is-expected
      provider:
        job: {command: [sh, -c, 'echo "checking {{args.rollout}} revision $TEAL_ARG_REVISION at {{args.preview-address}}"; test "{{args.revision}}" = "{{args.expected}}"']}
"#
    .to_owned();
    spec.strategy_extra = "      prePromotionAnalysis:\n        templates: [{templateName: smoke}]\n        args: [{name: expected, value: \"2\"}]\n".to_owned();
    sandbox.go_live(&spec);
    spec.version = "v2";
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let paused = sandbox.wait_for("jobs", "v2 passes", |r| {
        r.reason.as_deref() == Some("BlueGreenPause")
    });
    let run = paused.analysis.expect("the run is in the view");
    assert_eq!(run.phase, AnalysisPhase::Successful);
    let output = run.metrics[0].measurements[0].output.clone().unwrap();
    assert!(
        output.contains("checking jobs revision 2 at 127.0.0.1:"),
        "{output}"
    );

    // The same check expecting another revision fails, and says so.
    spec.version = "v3";
    spec.strategy_extra = spec.strategy_extra.replace("value: \"2\"", "value: \"9\"");
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let aborted = sandbox.wait_for("jobs", "v3 aborted", |r| r.phase == Phase::Degraded);
    assert!(
        aborted.message.contains("result == 0"),
        "{}",
        aborted.message
    );
    let run = aborted.analysis.unwrap();
    assert_eq!(run.revision, 3);
    assert_eq!(
        run.metrics[0].measurements[0].value.as_deref(),
        Some("1"),
        "test's exit code"
    );
}

#[test]
fn an_unknown_template_is_an_apply_error_that_changes_nothing() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("missing", "v1");
    spec.strategy_extra =
        "      prePromotionAnalysis:\n        templates: [{templateName: nope}]\n".to_owned();
    let out = sandbox.apply("spec.yaml", &spec.yaml());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AnalysisTemplate \"nope\", which is not applied"),
        "{stderr}"
    );
    let list = sandbox.teal_ok(&["list", "-o", "json"]);
    assert_eq!(list.trim(), "[]");
    // A condition that does not parse names its line.
    spec.strategy_extra.clear();
    spec.documents = builtin_template("bad", "success-rate", "result >=", 1);
    let yaml = spec.yaml();
    let line = yaml
        .lines()
        .position(|l| l.contains("successCondition"))
        .unwrap()
        + 1;
    let out = sandbox.apply("spec.yaml", &yaml);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("spec.yaml:{line}:")), "{stderr}");
    assert!(stderr.contains("successCondition"), "{stderr}");
}

/// A local HTTP server standing in for a health endpoint, webhooks and a chat hook.
struct Hooks {
    address: SocketAddr,
    confirm: Arc<AtomicBool>,
    rollback: Arc<AtomicBool>,
    notifications: Arc<Mutex<Vec<serde_json::Value>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Hooks {
    fn start() -> Hooks {
        use axum::routing::{get, post};
        let runtime = runtime();
        let confirm = Arc::new(AtomicBool::new(false));
        let rollback = Arc::new(AtomicBool::new(false));
        let notifications = Arc::new(Mutex::new(Vec::new()));
        let gate = |flag: Arc<AtomicBool>| {
            move || {
                let open = flag.load(Ordering::Relaxed);
                async move {
                    if open {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }
        };
        let received = notifications.clone();
        let app = axum::Router::new()
            .route(
                "/health",
                get(|| async {
                    axum::Json(serde_json::json!({"status": {"ok": true, "rate": 0.999}}))
                }),
            )
            .route("/confirm", post(gate(confirm.clone())))
            .route("/rollback", post(gate(rollback.clone())))
            .route(
                "/notify",
                post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let received = received.clone();
                    async move {
                        received.lock().unwrap().push(body);
                        "ok"
                    }
                }),
            );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Hooks {
            address,
            confirm,
            rollback,
            notifications,
            _runtime: runtime,
        }
    }
}

#[test]
fn web_metric_confirm_and_rollback_webhooks_and_notifications() {
    let sandbox = Sandbox::start();
    let hooks = Hooks::start();
    let mut spec = DemoSpec::new("hooked", "v1");
    spec.replicas = 1;
    spec.auto_promotion = true;
    spec.documents = format!(
        r#"apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: health
spec:
  metrics:
    - name: rate
      successCondition: "result >= 0.99"
      provider:
        web: {{url: "http://{hooks}/health", jsonPath: "{{$.status.rate}}"}}
---
apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: long
spec:
  metrics:
    - name: up
      interval: 1s
      successCondition: "result == 200"
      provider:
        web: {{url: "http://{hooks}/health"}}
"#,
        hooks = hooks.address
    );
    let strategy = |template: &str| {
        format!(
            "      prePromotionAnalysis:\n        templates: [{{templateName: {template}}}]\n\
             \x20     webhooks:\n\
             \x20       - {{name: qa, type: confirm-promotion, url: \"http://{hooks}/confirm\"}}\n\
             \x20       - {{name: pager, type: rollback, url: \"http://{hooks}/rollback\"}}\n\
             \x20     notifications:\n\
             \x20       - {{url: \"http://{hooks}/notify\"}}\n",
            hooks = hooks.address
        )
    };
    spec.strategy_extra = strategy("health");
    sandbox.go_live(&spec);

    // The web metric passes; auto-promotion then waits for the QA webhook.
    spec.version = "v2";
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let waiting = sandbox.wait_for("hooked", "waiting for the webhook", |r| {
        r.reason.as_deref() == Some("WaitingPromotion")
    });
    assert_eq!(waiting.active_revision, Some(1));
    let run = waiting.analysis.unwrap();
    assert_eq!(run.phase, AnalysisPhase::Successful);
    assert_eq!(
        run.metrics[0].measurements[0].value.as_deref(),
        Some("0.999")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sandbox.get("hooked").active_revision,
        Some(1),
        "still waits"
    );
    hooks.confirm.store(true, Ordering::Relaxed);
    let live = sandbox.wait_for("hooked", "v2 live", |r| {
        r.phase == Phase::Healthy && r.active_revision == Some(2)
    });
    let v2_checksum = live.status.stable.unwrap().template_hash;
    let history = sandbox.teal_ok(&["history", "hooked"]);
    assert!(
        history.contains("promotion of revision 2 confirmed by webhook"),
        "{history}"
    );

    // A long analysis of v3 is cut short by the rollback webhook.
    spec.version = "v3";
    spec.strategy_extra = strategy("long");
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    sandbox.wait_for("hooked", "v3 analysing", |r| {
        r.analysis
            .as_ref()
            .is_some_and(|a| a.revision == 3 && a.metrics[0].count >= 1)
    });
    hooks.rollback.store(true, Ordering::Relaxed);
    let aborted = sandbox.wait_for("hooked", "v3 aborted", |r| r.phase == Phase::Degraded);
    assert!(
        aborted
            .message
            .contains("rollback webhook \"pager\" answered 200"),
        "{}",
        aborted.message
    );
    assert_eq!(aborted.active_revision, Some(2));

    // Every phase change was posted, with the rollout, revision and template checksum.
    let posted = eventually(Duration::from_secs(5), "the Degraded notification", || {
        let posted = hooks.notifications.lock().unwrap().clone();
        posted
            .iter()
            .any(|n| n["phase"] == "Degraded")
            .then_some(posted)
    });
    let phases: Vec<&str> = posted.iter().filter_map(|n| n["phase"].as_str()).collect();
    for phase in ["Progressing", "Paused", "Healthy", "Degraded"] {
        assert!(phases.contains(&phase), "{phase} not in {phases:?}");
    }
    let paused = posted.iter().find(|n| n["phase"] == "Paused").unwrap();
    assert_eq!(paused["rollout"], "hooked");
    assert_eq!(paused["revision"], 2);
    assert_eq!(paused["reason"], "WaitingPromotion");
    assert_eq!(paused["checksum"].as_str(), Some(v2_checksum.as_str()));
}

/// A real Prometheus on loopback scraping the daemon's /metrics every second.
struct Prometheus {
    address: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(teal_api: SocketAddr) -> Prometheus {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus is not installed: scripts/test.sh installs Debian's prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: teal\n    static_configs: [{{targets: [\"{teal_api}\"]}}]\n"
            ),
        )
        .unwrap();
        // The address is free when chosen, but a process of another test may bind it
        // first: Prometheus then exits at once, and is started again on another.
        let log_path = dir.path().join("prometheus.log");
        for _ in 0..5 {
            let address = free_address();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut child = std::process::Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            if started(&mut child, address, &log_path) {
                return Prometheus {
                    address,
                    child,
                    _dir: dir,
                };
            }
        }
        panic!(
            "Prometheus exited at start five times:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    fn query(&self, query: &str) -> serde_json::Value {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let body = runtime().block_on(async {
            match Connection::open(self.address).await {
                Ok(mut connection) => connection.get(&path, None).await.map(|a| a.body),
                Err(error) => Err(error.to_string()),
            }
        });
        body.ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }
}

/// Waits until a Prometheus just started answers on `/-/ready`; false when it exited
/// first (its address was taken). Panics with its log when it neither serves nor exits
/// within 60 s.
fn started(child: &mut std::process::Child, address: SocketAddr, log: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let ready = runtime().block_on(async {
            match Connection::open(address).await {
                Ok(mut connection) => connection
                    .get("/-/ready", None)
                    .await
                    .is_ok_and(|answer| answer.status == 200),
                Err(_) => false,
            }
        });
        if ready {
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus is not ready after 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_provider_queries_a_real_prometheus_scraping_teal() {
    let sandbox = Sandbox::start();
    let prometheus = Prometheus::start(api_address(&sandbox));
    let mut spec = DemoSpec::new("promq", "v1");
    spec.replicas = 1;
    spec.documents = format!(
        r#"apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: ready-instances
spec:
  args:
    - name: series
      value: teal_instances_ready
  metrics:
    - name: ready
      successCondition: "len(result) == 1 && result[0] >= 1"
      consecutiveErrorLimit: 0
      provider:
        prometheus:
          address: http://{address}
          query: 'sum({{{{args.series}}}}{{rollout="{{{{args.rollout}}}}"}})'
---
apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: broken-query
spec:
  metrics:
    - name: broken
      consecutiveErrorLimit: 0
      provider:
        prometheus: {{address: "http://{address}", query: "sum(("}}
"#,
        address = prometheus.address
    );
    spec.strategy_extra =
        "      prePromotionAnalysis:\n        templates: [{templateName: ready-instances}]\n"
            .to_owned();
    sandbox.go_live(&spec);
    eventually(
        Duration::from_secs(60),
        "Prometheus has scraped teal",
        || {
            let answer = prometheus.query("teal_instances_ready{rollout=\"promq\"}");
            (answer["data"]["result"].as_array().map(Vec::len) >= Some(1)).then_some(())
        },
    );

    spec.version = "v2";
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let paused = sandbox.wait_for("promq", "v2 passes", |r| {
        r.reason.as_deref() == Some("BlueGreenPause")
    });
    let run = paused.analysis.unwrap();
    assert_eq!(run.phase, AnalysisPhase::Successful);
    let value = run.metrics[0].measurements[0].value.clone().unwrap();
    assert!(value.starts_with('['), "an instant vector: {value}");
    assert_eq!(
        run.metrics[0].measures,
        "sum(teal_instances_ready{rollout=\"promq\"})"
    );

    // A query Prometheus rejects is an Error, which aborts, naming Prometheus' reason.
    spec.version = "v3";
    spec.strategy_extra = spec
        .strategy_extra
        .replace("ready-instances", "broken-query");
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let aborted = sandbox.wait_for("promq", "v3 aborted", |r| r.phase == Phase::Degraded);
    assert!(
        aborted.message.contains("pre-promotion analysis Error"),
        "{}",
        aborted.message
    );
    assert!(aborted.message.contains("bad_data"), "{}", aborted.message);
}

#[test]
fn a_run_interrupted_by_kill_9_resumes_with_its_measurements() {
    let mut sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("resume", "v1");
    spec.replicas = 1;
    spec.documents = builtin_template("success", "success-rate", "result >= 0.95", 6);
    spec.strategy_extra = "      prePromotionAnalysis:\n        templates: [{templateName: success}]\n      loadTest: {requestsPerSecond: 20, concurrency: 2}\n".to_owned();
    sandbox.go_live(&spec);
    spec.version = "v2";
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let measured = sandbox.wait_for("resume", "two measurements", |r| {
        r.analysis
            .as_ref()
            .is_some_and(|a| a.revision == 2 && a.metrics[0].count >= 2)
    });
    let run = measured.analysis.unwrap();
    let before = run.metrics[0].count;

    sandbox.kill_daemon();
    sandbox.start_daemon();
    let paused = sandbox.wait_for("resume", "v2 passes after the restart", |r| {
        r.reason.as_deref() == Some("BlueGreenPause")
    });
    let resumed = paused.analysis.unwrap();
    assert_eq!(resumed.id, run.id, "the same run, not a new one");
    assert_eq!(resumed.phase, AnalysisPhase::Successful);
    assert_eq!(resumed.metrics[0].count, 6);
    assert!(
        resumed.metrics[0].measurements[..before as usize]
            .iter()
            .zip(&run.metrics[0].measurements)
            .all(|(a, b)| a.started_at_ms == b.started_at_ms),
        "the measurements before the restart are kept"
    );
    assert_eq!(analysis_runs(&sandbox, "resume").runs.len(), 1);
}
