//! AnalysisTemplates and a rollout's analysis fields: typed values, defaults, and
//! located errors (a bad condition is an apply error naming its line).

use std::time::Duration;

use super::{MINIMAL, assert_error, errors, minimal_with, one_error, parse, rollout};
use crate::analysis::{
    Arg, Header, HttpMethod, JobMetric, Measure, Provider, Service, Value, WebMetric,
};
use crate::spec::{
    AnalysisTemplateSpec, Document, LoadTest, NameValue, Notification, NotificationFormat,
    RolloutAnalysis, Webhook, WebhookKind,
};

fn template(text: &str) -> AnalysisTemplateSpec {
    let documents = parse(text).unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"));
    match documents.as_slice() {
        [Document::AnalysisTemplate(spec)] => spec.clone(),
        other => panic!("expected one AnalysisTemplate, got {other:#?}"),
    }
}

/// A template whose `spec:` is `spec` (already indented by two spaces). Lines: 1
/// apiVersion, 2 kind, 3 metadata, 4 name, 5 spec, then `spec` from line 6.
fn with_spec(spec: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata:\n  name: checks\n\
         spec:\n{spec}"
    )
}

#[test]
fn every_provider_is_typed_with_argo_defaults() {
    let spec = template(&with_spec(
        r#"  args:
    - name: job
      value: shop
    - name: threshold
  metrics:
    - name: errors
      interval: 30s
      count: 3
      failureLimit: 1
      failureCondition: "result > 5"
      provider:
        builtin: {measure: error-count, color: active}
    - name: p99
      successCondition: "result[0] < 500"
      provider:
        prometheus:
          address: http://127.0.0.1:9090
          query: 'histogram_quantile(0.99, rate(x{job="{{args.job}}"}[1m]))'
          headers: [{key: X-Scope, value: "{{args.rollout}}"}]
    - name: ready
      initialDelay: 1m30s
      successCondition: "result == true"
      provider:
        web:
          url: "http://{{args.preview-address}}/ready"
          method: POST
          body: '{"revision": "{{args.revision}}"}'
          timeoutSeconds: 5
          jsonPath: "{$.ok}"
    - name: smoke
      provider:
        job: {command: [curl, -fsS, "http://{{args.preview-address}}/"]}
"#,
    ));
    assert_eq!(
        spec.args,
        vec![
            Arg {
                name: "job".to_owned(),
                value: Some("shop".to_owned())
            },
            Arg {
                name: "threshold".to_owned(),
                value: None
            },
        ]
    );
    let [errors, p99, ready, smoke] = spec.metrics.as_slice() else {
        panic!("{:#?}", spec.metrics);
    };
    assert_eq!(errors.interval, Some(Duration::from_secs(30)));
    assert_eq!((errors.count, errors.failure_limit), (Some(3), 1));
    assert_eq!(errors.consecutive_error_limit, 4, "Argo's default");
    assert_eq!(
        errors.provider,
        Provider::Builtin(crate::analysis::BuiltinMetric {
            measure: Measure::ErrorCount,
            color: Some(Service::Active),
        })
    );
    // Without interval, measured once.
    assert_eq!((p99.interval, p99.count), (None, Some(1)));
    let Provider::Prometheus(prometheus) = &p99.provider else {
        panic!("{p99:#?}");
    };
    assert_eq!(prometheus.timeout, Duration::from_secs(30));
    assert_eq!(
        prometheus.headers,
        vec![Header {
            key: "X-Scope".to_owned(),
            value: "{{args.rollout}}".to_owned()
        }]
    );
    assert_eq!(ready.initial_delay, Duration::from_secs(90));
    assert_eq!(
        ready.provider,
        Provider::Web(WebMetric {
            url: "http://{{args.preview-address}}/ready".to_owned(),
            method: HttpMethod::Post,
            headers: Vec::new(),
            body: Some("{\"revision\": \"{{args.revision}}\"}".to_owned()),
            timeout: Duration::from_secs(5),
            json_path: Some("{$.ok}".to_owned()),
        })
    );
    assert_eq!(
        smoke.provider,
        Provider::Job(JobMetric {
            command: vec![
                "curl".to_owned(),
                "-fsS".to_owned(),
                "http://{{args.preview-address}}/".to_owned()
            ],
            timeout: Duration::from_secs(300),
        })
    );
    // A job without conditions passes when it exits 0.
    let condition = smoke.success_condition.as_ref().expect("default condition");
    assert_eq!(condition.source(), "result == 0");
    assert_eq!(condition.evaluate(&Value::Number(0.0)), Ok(true));
    assert_eq!(condition.evaluate(&Value::Number(1.0)), Ok(false));
}

#[test]
fn a_condition_that_does_not_parse_or_type_check_is_located() {
    let all = errors(&with_spec(
        r#"  metrics:
    - name: rate
      successCondition: "result >= "
      provider: {builtin: {measure: success-rate}}
    - name: rate2
      successCondition: "result"
      provider: {builtin: {measure: success-rate}}
"#,
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        8,
        25,
        "spec.metrics[0].successCondition",
        "in \"result >= \" at column",
    );
    assert_error(
        &all[1],
        11,
        25,
        "spec.metrics[1].successCondition",
        "true or false",
    );
}

#[test]
fn provider_problems_are_all_reported() {
    let all = errors(&with_spec(
        r#"  metrics:
    - name: none
      provider: {}
    - name: two
      provider: {builtin: {measure: request-count}, job: {command: ["true"]}}
    - name: measure
      provider: {builtin: {measure: throughput}}
    - name: url
      provider: {web: {url: "ftp://x"}}
    - name: arg
      provider: {job: {command: [echo, "{{args.nope}}"]}}
    - name: json
      provider: {web: {url: "http://x/", jsonPath: "{data.ok}"}}
    - name: again
      count: 3
      provider: {job: {command: []}}
    - name: again
      provider: {web: {url: "http://x/", body: "{}"}}
"#,
    ));
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "spec.metrics[0].provider",
            "spec.metrics[1].provider",
            "spec.metrics[2].provider.builtin.measure",
            "spec.metrics[3].provider.web.url",
            "spec.metrics[4].provider.job.command[1]",
            "spec.metrics[5].provider.web.jsonPath",
            "spec.metrics[6].count",
            "spec.metrics[6].provider.job.command",
            "spec.metrics[7].name",
            "spec.metrics[7].provider.web.body",
        ],
        "{all:#?}"
    );
    assert!(all[0].message.contains("found none"), "{all:#?}");
    assert!(all[1].message.contains("builtin and job"), "{all:#?}");
    assert!(all[2].message.contains("success-rate"), "{all:#?}");
    assert!(all[4].message.contains("{{args.nope}}"), "{all:#?}");
    assert!(all[6].message.contains("needs an interval"), "{all:#?}");
    assert!(all[8].message.contains("defined twice"), "{all:#?}");
    assert!(all[9].message.contains("POST or PUT"), "{all:#?}");
}

#[test]
fn a_template_needs_metrics_and_rejects_unknown_fields() {
    let error = one_error(&with_spec("  args: []\n"));
    assert_error(
        &error,
        6,
        3,
        "spec.metrics",
        "missing required field \"metrics\"",
    );
    let error = one_error(&with_spec(
        "  metrics:\n    - name: a\n      intervall: 5s\n      provider: {job: {command: [\"true\"]}}\n",
    ));
    assert_eq!(error.line, Some(8), "{error:#?}");
    assert!(error.message.contains("intervall"), "{error:#?}");
}

#[test]
fn rollout_analysis_load_test_webhooks_and_notifications() {
    let spec = rollout(&minimal_with(
        11,
        r#"      prePromotionAnalysis:
        templates: [{templateName: rate}, {templateName: smoke}]
        args: [{name: job, value: shop}]
      postPromotionAnalysis:
        templates: [{templateName: rate}]
      loadTest: {requestsPerSecond: 50, concurrency: 2, paths: [/, /cart], headers: [{name: X-Load, value: "1"}]}
      webhooks:
        - {name: qa, type: confirm-promotion, url: "http://127.0.0.1:9/ok"}
        - {name: pager, type: rollback, url: "http://127.0.0.1:9/roll", timeoutSeconds: 3}
      notifications:
        - {url: "http://127.0.0.1:9/hook"}
        - {url: "https://hooks.example/slack", format: slack}"#,
    ));
    let blue_green = spec.strategy;
    assert_eq!(
        blue_green.pre_promotion_analysis,
        Some(RolloutAnalysis {
            templates: vec!["rate".to_owned(), "smoke".to_owned()],
            args: vec![NameValue {
                name: "job".to_owned(),
                value: "shop".to_owned()
            }],
        })
    );
    assert_eq!(
        blue_green.post_promotion_analysis.map(|a| a.templates),
        Some(vec!["rate".to_owned()])
    );
    assert_eq!(
        blue_green.load_test,
        Some(LoadTest {
            requests_per_second: 50,
            concurrency: 2,
            duration: None,
            paths: vec!["/".to_owned(), "/cart".to_owned()],
            headers: vec![NameValue {
                name: "X-Load".to_owned(),
                value: "1".to_owned()
            }],
        })
    );
    assert_eq!(
        blue_green.webhooks,
        vec![
            Webhook {
                name: "qa".to_owned(),
                kind: WebhookKind::ConfirmPromotion,
                url: "http://127.0.0.1:9/ok".to_owned(),
                timeout: Duration::from_secs(10),
            },
            Webhook {
                name: "pager".to_owned(),
                kind: WebhookKind::Rollback,
                url: "http://127.0.0.1:9/roll".to_owned(),
                timeout: Duration::from_secs(3),
            },
        ]
    );
    assert_eq!(
        blue_green.notifications,
        vec![
            Notification {
                url: "http://127.0.0.1:9/hook".to_owned(),
                format: NotificationFormat::Json,
            },
            Notification {
                url: "https://hooks.example/slack".to_owned(),
                format: NotificationFormat::Slack,
            },
        ]
    );
}

#[test]
fn rollout_analysis_errors_are_located() {
    let all = errors(&minimal_with(
        11,
        r#"      prePromotionAnalysis:
        templates: []
      loadTest: {requestsPerSecond: 0, paths: [cart]}
      webhooks:
        - {name: qa, type: confirm, url: "http://127.0.0.1:9/ok"}"#,
    ));
    let found: Vec<(Option<u64>, &str)> = all.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (
                Some(13),
                "spec.strategy.blueGreen.prePromotionAnalysis.templates"
            ),
            (
                Some(14),
                "spec.strategy.blueGreen.loadTest.requestsPerSecond"
            ),
            (Some(14), "spec.strategy.blueGreen.loadTest.paths[0]"),
            (Some(16), "spec.strategy.blueGreen.webhooks[0].type"),
        ],
        "{all:#?}"
    );
    // A load test without pre-promotion analysis has nothing to feed.
    let error = one_error(&minimal_with(11, "      loadTest: {requestsPerSecond: 5}"));
    assert!(error.message.contains("prePromotionAnalysis"), "{error:#?}");
    assert!(MINIMAL.contains("activeService"));
}

#[test]
fn an_argo_kubernetes_job_is_typed_and_its_shape_is_checked() {
    let parsed = template(&with_spec(
        r#"  args:
    - name: url
  metrics:
    - name: smoke
      provider:
        job:
          metadata:
            labels: {team: shop}
          spec:
            backoffLimit: 1
            template:
              spec:
                restartPolicy: Never
                containers:
                - name: smoke
                  image: curlimages/curl
                  command: [curl, -fsS, "{{args.url}}"]
"#,
    ));
    let smoke = &parsed.metrics[0];
    let Provider::KubernetesJob(job) = &smoke.provider else {
        panic!("expected a Kubernetes Job, got {:?}", smoke.provider);
    };
    assert_eq!(job.spec["backoffLimit"], 1);
    assert_eq!(job.metadata["labels"]["team"], "shop");
    assert_eq!(job.timeout, Duration::from_secs(300));
    assert_eq!(
        smoke.success_condition.as_ref().map(|c| c.source()),
        Some("result == 0"),
        "a Job passes when it succeeds"
    );
    let resolved = smoke
        .resolve(
            &crate::analysis::ArgValues::resolve(
                &parsed.args,
                &[("url".to_owned(), "http://shop-preview/".to_owned())],
            )
            .unwrap(),
        )
        .unwrap();
    let Provider::KubernetesJob(job) = resolved.provider else {
        unreachable!()
    };
    assert_eq!(
        job.spec["template"]["spec"]["containers"][0]["command"][2],
        "http://shop-preview/"
    );

    let all = errors(&with_spec(
        r#"  metrics:
    - name: both
      provider: {job: {command: ["true"], spec: {template: {}}}}
    - name: neither
      provider: {job: {timeoutSeconds: 5}}
    - name: shape
      provider: {job: {spec: [1, 2]}}
"#,
    ));
    let found: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{all:#?}");
    assert_eq!(found[0].0, "spec.metrics[0].provider.job.spec");
    assert!(found[0].1.contains("not both"), "{all:#?}");
    assert_eq!(found[1].0, "spec.metrics[1].provider.job");
    assert!(
        found[1].1.contains("command (a local command) or spec"),
        "{all:#?}"
    );
    assert_eq!(found[2].0, "spec.metrics[2].provider.job.spec");
}

#[test]
fn templates_combine_in_order_and_a_metric_named_twice_is_refused() {
    let first = template(&with_spec(
        "  args:\n    - name: a\n      value: one\n  metrics:\n    - name: first\n      provider: {job: {command: [\"true\"]}}\n",
    ));
    let mut second = template(&with_spec(
        "  args:\n    - name: a\n      value: two\n    - name: b\n  metrics:\n    - name: second\n      provider: {job: {command: [\"true\"]}}\n",
    ));
    second.name = "other".to_owned();
    let combined = AnalysisTemplateSpec::combine(vec![first.clone(), second.clone()]).unwrap();
    assert_eq!(combined.name, "checks,other");
    let metrics: Vec<&str> = combined.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(metrics, ["first", "second"]);
    let args: Vec<(&str, Option<&str>)> = combined
        .args
        .iter()
        .map(|a| (a.name.as_str(), a.value.as_deref()))
        .collect();
    assert_eq!(
        args,
        [("a", Some("one")), ("b", None)],
        "the first template's arg wins"
    );
    let error = AnalysisTemplateSpec::combine(vec![first.clone(), first]).unwrap_err();
    assert!(
        error.contains("metric \"first\" is in more than one of the templates checks,checks"),
        "{error}"
    );
}
