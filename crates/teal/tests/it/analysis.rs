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

/// A client sending requests to `address` on one keep-alive connection until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, u16, Option<String>)>>>,
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

    fn answers(&self) -> Vec<(Instant, u16, Option<String>)> {
        self.answers.lock().unwrap().clone()
    }

    fn stop(mut self) -> Vec<(Instant, u16, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.answers()
    }
}

fn analysis_runs(sandbox: &Sandbox, name: &str) -> AnalysisView {
    let out = sandbox.teal_ok(&["analysis", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

fn live_on_blue(sandbox: &Sandbox, spec: &DemoSpec) -> SocketAddr {
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let live = sandbox.wait_for(spec.name, "v1 live", |r| r.phase == Phase::Healthy);
    live.active_listen.parse().unwrap()
}

#[test]
fn failing_preview_is_aborted_by_pre_promotion_analysis_while_users_see_no_error() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("gate", "v1");
    spec.replicas = 1;
    spec.documents = builtin_template("success", "success-rate", "result >= 0.95", 3);
    spec.strategy_extra = "      prePromotionAnalysis:\n        templates: [{templateName: success}]\n      loadTest: {requestsPerSecond: 40, concurrency: 2}\n".to_owned();
    let active = live_on_blue(&sandbox, &spec);
    // The first release is not analysed: nobody to protect yet.
    assert!(analysis_runs(&sandbox, "gate").runs.is_empty());

    let client = Client::start(active);
    spec.version = "v2";
    spec.extra_env = vec![("DEMO_FAIL_RATE", "0.5")];
    sandbox.apply_ok("spec.yaml", &spec.yaml());
    let aborted = sandbox.wait_for("gate", "v2 aborted by analysis", |r| {
        r.phase == Phase::Degraded
    });
    let answers = client.stop();

    assert!(
        aborted.message.contains("pre-promotion analysis Failed"),
        "{}",
        aborted.message
    );
    assert_eq!(aborted.active_color, Some(Color::Blue));
    assert!(
        answers.len() > 20,
        "the client kept sending: {}",
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
    live_on_blue(&sandbox, &spec);
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
    live_on_blue(&sandbox, &spec);
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
    let active = live_on_blue(&sandbox, &spec);
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
    live_on_blue(&sandbox, &spec);
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
