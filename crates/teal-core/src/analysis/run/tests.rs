//! Judging measurements, metrics and runs: tables of (metric, measurements) → phase,
//! and when the next measurement is due.

use std::time::Duration;

use super::*;
use crate::analysis::expr::{Condition, Types};
use crate::analysis::template::{BuiltinMetric, Measure, Provider};

fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
    Metric {
        name: "rate".to_owned(),
        interval: Some(Duration::from_secs(10)),
        initial_delay: Duration::ZERO,
        count: Some(3),
        success_condition: success.map(|s| Condition::parse(s, Types::NUMBER).unwrap()),
        failure_condition: failure.map(|s| Condition::parse(s, Types::NUMBER).unwrap()),
        failure_limit: 0,
        inconclusive_limit: 0,
        consecutive_error_limit: 4,
        provider: Provider::Builtin(BuiltinMetric {
            measure: Measure::SuccessRate,
            color: None,
        }),
    }
}

fn value(n: f64) -> Measurement {
    Measurement::of(Value::Number(n))
}

#[test]
fn one_measurement_is_judged_as_argo_does() {
    let both = metric(Some("result >= 0.99"), Some("result < 0.9"));
    let table: &[(Metric, Measurement, Phase)] = &[
        (
            metric(Some("result >= 0.99"), None),
            value(0.995),
            Phase::Successful,
        ),
        (
            metric(Some("result >= 0.99"), None),
            value(0.5),
            Phase::Failed,
        ),
        (
            metric(None, Some("result < 0.9")),
            value(0.5),
            Phase::Failed,
        ),
        (
            metric(None, Some("result < 0.9")),
            value(0.95),
            Phase::Successful,
        ),
        (both.clone(), value(0.995), Phase::Successful),
        (both.clone(), value(0.5), Phase::Failed),
        (both.clone(), value(0.95), Phase::Inconclusive),
        (metric(None, None), value(0.1), Phase::Successful),
        // No traffic is never a pass.
        (
            metric(Some("result >= 0.99"), None),
            Measurement::no_data(),
            Phase::Inconclusive,
        ),
        (
            metric(Some("result >= 0.99"), None),
            Measurement::failed("refused"),
            Phase::Error,
        ),
    ];
    for (metric, measurement, expected) in table {
        let assessment = assess_measurement(metric, measurement);
        assert_eq!(
            assessment.phase, *expected,
            "{measurement:?}: {assessment:?}"
        );
        if *expected != Phase::Successful {
            assert!(assessment.message.is_some(), "{assessment:?} says why");
        }
    }
    let no_data = assess_measurement(&metric(Some("result > 0"), None), &Measurement::no_data());
    assert!(no_data.message.unwrap().contains("no data"));
}

/// Records `values` one interval apart and returns the metric's phase after each.
fn phases(metric: Metric, measurements: &[Measurement]) -> Vec<Phase> {
    let mut run = MetricRun::new(metric);
    measurements
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = i as u64 * 10_000;
            run.record(m, at, at + 5);
            run.phase
        })
        .collect()
}

#[test]
fn limits_decide_the_metric() {
    use Phase::*;
    let ok = || value(1.0);
    let bad = || value(0.5);
    let success = Some("result >= 0.99");
    // count 3: three good measurements pass.
    assert_eq!(
        phases(metric(success, None), &[ok(), ok(), ok()]),
        vec![Running, Running, Successful]
    );
    // failureLimit 0: the first failure fails.
    assert_eq!(
        phases(metric(success, None), &[ok(), bad()]),
        vec![Running, Failed]
    );
    // failureLimit 1: one failure is allowed.
    let mut tolerant = metric(success, None);
    tolerant.failure_limit = 1;
    assert_eq!(
        phases(tolerant, &[bad(), ok(), bad()]),
        vec![Running, Running, Failed]
    );
    // No data twice with inconclusiveLimit 1.
    let mut patient = metric(success, None);
    patient.inconclusive_limit = 1;
    assert_eq!(
        phases(patient, &[Measurement::no_data(), Measurement::no_data()]),
        vec![Running, Inconclusive]
    );
    // Errors: more than consecutiveErrorLimit (4) in a row is Error; a good value resets.
    let error = || Measurement::failed("connection refused");
    assert_eq!(
        phases(
            metric(success, None),
            &[error(), error(), error(), error(), ok(), error(), error()]
        ),
        vec![Running; 7]
    );
    assert_eq!(
        *phases(
            metric(success, None),
            &[error(), error(), error(), error(), error()]
        )
        .last()
        .unwrap(),
        Error
    );
}

#[test]
fn measurements_are_due_after_the_initial_delay_then_each_interval() {
    let mut m = metric(Some("result >= 0.99"), None);
    m.initial_delay = Duration::from_secs(5);
    // A built-in metric first needs one interval of traffic to measure.
    assert_eq!(MetricRun::new(m.clone()).due_at(1_000), Some(16_000));
    m.interval = None;
    assert_eq!(
        MetricRun::new(m.clone()).due_at(1_000),
        Some(16_000),
        "10 s window"
    );
    m.interval = Some(Duration::from_secs(10));
    // Other providers measure at once.
    m.provider = Provider::Job(crate::analysis::JobMetric {
        command: vec!["true".into()],
        timeout: Duration::from_secs(1),
    });
    let mut run = MetricRun::new(m);
    assert_eq!(run.due_at(1_000), Some(6_000));
    run.record(&value(1.0), 6_000, 6_200);
    assert_eq!(
        run.due_at(1_000),
        Some(16_200),
        "an interval after it finished"
    );
    run.record(&value(0.1), 16_200, 16_300);
    assert_eq!(run.phase, Phase::Failed);
    assert_eq!(run.due_at(1_000), None, "a completed metric is never due");
    // A late measurement after completion changes nothing.
    assert!(run.record(&value(1.0), 20_000, 20_001).is_none());
    assert_eq!((run.count, run.failed), (2, 1));
}

#[test]
fn history_keeps_the_latest_ten_and_counters_keep_counting() {
    let mut m = metric(Some("result >= 0.99"), None);
    m.count = None;
    let mut run = MetricRun::new(m);
    for i in 0..25u64 {
        run.record(&value(1.0), i * 10, i * 10 + 1);
    }
    assert_eq!(run.measurements.len(), MEASUREMENT_HISTORY_LIMIT);
    assert_eq!(run.measurements[0].started_at, 150);
    assert_eq!(
        (run.count, run.successful, run.phase),
        (25, 25, Phase::Running)
    );
    run.terminate();
    assert_eq!(run.phase, Phase::Successful);
    assert!(run.message.unwrap().contains("25 measurements"));
}

fn template(metrics: Vec<Metric>) -> AnalysisTemplateSpec {
    AnalysisTemplateSpec {
        name: "checks".to_owned(),
        spec: serde_json::json!({}),
        args: Vec::new(),
        metrics,
    }
}

#[test]
fn a_run_fails_as_soon_as_one_metric_fails_and_says_which() {
    let mut fast = metric(Some("result >= 0.99"), None);
    fast.name = "fast".to_owned();
    fast.count = Some(1);
    let slow = metric(Some("result >= 0.99"), None);
    let mut run = AnalysisRun::start(&template(vec![fast, slow]), &[], 0).unwrap();
    // Nothing measured yet: the run is Running, its metrics Pending.
    assert_eq!(run.phase(), Phase::Running);
    assert_eq!(run.metrics[0].phase, Phase::Pending);
    assert!(
        run.due(9_999).is_empty(),
        "builtin metrics wait one interval"
    );
    let due: Vec<&str> = run.due(10_000).iter().map(|m| m.name.as_str()).collect();
    assert_eq!(due, vec!["fast", "rate"]);
    assert_eq!(
        run.record("fast", &value(1.0), 10_000, 10_010),
        Ok(Phase::Running)
    );
    assert_eq!(
        run.next_measurement_at(10_010),
        Some(10_010),
        "rate is still due"
    );
    assert_eq!(
        run.record("rate", &value(0.2), 10_000, 10_010),
        Ok(Phase::Failed)
    );
    let message = run.message().unwrap();
    assert!(message.starts_with("metric \"rate\""), "{message}");
    assert!(message.contains("result >= 0.99"), "{message}");
    assert!(run.due(100_000).is_empty());
    assert_eq!(run.next_measurement_at(100_000), None);
    assert_eq!(
        run.record("nope", &value(1.0), 0, 1),
        Err(UnknownMetric("nope".to_owned()))
    );
    // Stored as JSON between measurements.
    let json = serde_json::to_string(&run).unwrap();
    let back: AnalysisRun = serde_json::from_str(&json).unwrap();
    assert_eq!(back, run);
}

#[test]
fn a_run_terminated_while_running_passes_and_args_are_resolved() {
    let mut m = metric(Some("result >= 0.99"), None);
    m.provider = Provider::Job(crate::analysis::JobMetric {
        command: vec![
            "curl".into(),
            "http://{{args.preview-address}}/{{args.path}}".into(),
        ],
        timeout: Duration::from_secs(5),
    });
    let mut spec = template(vec![m]);
    spec.args = vec![crate::analysis::Arg {
        name: "path".into(),
        value: Some("healthz".into()),
    }];
    let supplied = vec![("preview-address".to_owned(), "127.0.0.1:8081".to_owned())];
    let mut run = AnalysisRun::start(&spec, &supplied, 0).unwrap();
    let Provider::Job(job) = &run.metrics[0].metric.provider else {
        unreachable!()
    };
    assert_eq!(job.command[1], "http://127.0.0.1:8081/healthz");
    run.terminate();
    assert_eq!(run.phase(), Phase::Successful);
    // An arg without value fails the start, naming it.
    spec.args[0].value = None;
    let error = AnalysisRun::start(&spec, &supplied, 0).unwrap_err();
    assert!(error.to_string().contains("args.path"), "{error}");
}
