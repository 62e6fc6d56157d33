//! Tests of spec parsing: validated values, defaults, and the exact place and wording
//! of errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{SpecError, SpecErrors, parse_documents};
use crate::analysis::{BuiltinMetric, Condition, Measure, Metric, Provider, Types};
use crate::spec::{
    AnalysisTemplateSpec, BlueGreen, Document, EnvVar, NameValue, PreviewMatch, Probe, ProbeAction,
    Process, ProxySettings, RolloutSpec, Template, TlsFiles, UpstreamProtocol,
};

mod analysis;

const FILE: &str = "shop.yaml";
const BASE: &str = "/srv/shop";

/// The smallest valid Rollout. Lines: 1 apiVersion, 2 kind, 3 metadata, 4 name, 5 spec,
/// 6 template, 7 process, 8 command, 9 strategy, 10 blueGreen, 11 activeService.
const MINIMAL: &str = "\
apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: shop
spec:
  template:
    process:
      command: [./shop]
  strategy:
    blueGreen:
      activeService: {listen: \"127.0.0.1:8080\"}
";

/// The example from the format description.
const EXAMPLE: &str = r#"apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: shop
spec:
  replicas: 2
  progressDeadlineSeconds: 600
  template:
    process:
      command: ["./shop-server", "--port", "$(PORT)"]
      args: ["--verbose"]
      env:
        - {name: DATABASE_URL, value: "postgres://db/shop"}
      workingDir: ./app
    readinessProbe:
      httpGet: {path: /ready}
      initialDelaySeconds: 0
      periodSeconds: 1
      timeoutSeconds: 1
      successThreshold: 1
      failureThreshold: 3
    livenessProbe:
      tcpSocket: {}
    terminationGracePeriodSeconds: 30
  strategy:
    blueGreen:
      activeService: {listen: "0.0.0.0:8080"}
      previewService: {listen: "127.0.0.1:8081"}
      previewMatch: {cookie: {name: test, value: "true"}, header: {name: X-Preview, value: "1"}}
      autoPromotionEnabled: false
      autoPromotionSeconds: 0
      scaleDownDelaySeconds: 30
      abortScaleDownDelaySeconds: 30
      previewReplicaCount: 1
      drainTimeoutSeconds: 30
---
apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  metrics:
    - name: success-rate
      interval: 10s
      successCondition: "result >= 0.99"
      provider:
        builtin: {measure: success-rate}
"#;

fn parse(text: &str) -> Result<Vec<Document>, SpecErrors> {
    parse_documents(FILE, text, Path::new(BASE))
}

fn errors(text: &str) -> Vec<SpecError> {
    match parse(text) {
        Ok(documents) => panic!("expected errors, parsed {documents:#?}"),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "SpecErrors must never be empty");
            errors.0
        }
    }
}

fn one_error(text: &str) -> SpecError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.remove(0)
}

fn rollout(text: &str) -> RolloutSpec {
    let documents = parse(text).unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"));
    match documents.as_slice() {
        [Document::Rollout(spec)] => spec.clone(),
        other => panic!("expected one Rollout, got {other:#?}"),
    }
}

/// MINIMAL with `extra` inserted (already indented) after line `after`.
fn minimal_with(after: usize, extra: &str) -> String {
    let mut lines: Vec<&str> = MINIMAL.lines().collect();
    let extra: Vec<&str> = extra.lines().collect();
    lines.splice(after..after, extra);
    lines.join("\n") + "\n"
}

/// Asserts where an error is and what it says.
#[track_caller]
fn assert_error(error: &SpecError, line: u64, column: u64, path: &str, message: &str) {
    assert_eq!(error.file, FILE, "{error:#?}");
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (Some(line), Some(column), path),
        "{error:#?}"
    );
    assert!(
        error.message.contains(message),
        "message {:?} does not contain {message:?}",
        error.message
    );
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn full_example_parses_to_the_expected_values() {
    let documents = parse(EXAMPLE).unwrap_or_else(|errors| panic!("{errors}"));
    let expected_rollout = RolloutSpec {
        name: "shop".to_owned(),
        replicas: 2,
        template: Template {
            process: Process {
                command: vec![
                    "./shop-server".to_owned(),
                    "--port".to_owned(),
                    "$(PORT)".to_owned(),
                ],
                args: vec!["--verbose".to_owned()],
                env: vec![EnvVar {
                    name: "DATABASE_URL".to_owned(),
                    value: "postgres://db/shop".to_owned(),
                }],
                working_dir: Some(PathBuf::from("/srv/shop/app")),
            },
            readiness_probe: Some(Probe {
                action: ProbeAction::HttpGet {
                    path: "/ready".to_owned(),
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }),
            liveness_probe: Some(Probe {
                action: ProbeAction::TcpSocket,
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }),
            termination_grace_period: Duration::from_secs(30),
        },
        progress_deadline: Duration::from_secs(600),
        strategy: BlueGreen {
            active_listen: addr("0.0.0.0:8080"),
            preview_listen: Some(addr("127.0.0.1:8081")),
            active_tls: None,
            preview_tls: None,
            preview_match: PreviewMatch {
                cookie: Some(NameValue {
                    name: "test".to_owned(),
                    value: "true".to_owned(),
                }),
                header: Some(NameValue {
                    name: "X-Preview".to_owned(),
                    value: "1".to_owned(),
                }),
            },
            auto_promotion_enabled: false,
            auto_promotion_delay: Duration::ZERO,
            scale_down_delay: Duration::from_secs(30),
            abort_scale_down_delay: Some(Duration::from_secs(30)),
            preview_replica_count: Some(1),
            drain_timeout: Duration::from_secs(30),
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            load_test: None,
            webhooks: Vec::new(),
            notifications: Vec::new(),
            proxy: ProxySettings::default(),
        },
    };
    let expected_template = AnalysisTemplateSpec {
        name: "success-rate".to_owned(),
        spec: serde_json::json!({
            "metrics": [{
                "name": "success-rate",
                "interval": "10s",
                "successCondition": "result >= 0.99",
                "provider": {"builtin": {"measure": "success-rate"}},
            }]
        }),
        args: Vec::new(),
        metrics: vec![Metric {
            name: "success-rate".to_owned(),
            interval: Some(Duration::from_secs(10)),
            initial_delay: Duration::ZERO,
            count: None,
            success_condition: Some(Condition::parse("result >= 0.99", Types::NUMBER).unwrap()),
            failure_condition: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            provider: Provider::Builtin(BuiltinMetric {
                measure: Measure::SuccessRate,
                color: None,
            }),
        }],
    };
    assert_eq!(
        documents,
        vec![
            Document::Rollout(expected_rollout),
            Document::AnalysisTemplate(expected_template),
        ]
    );
}

#[test]
fn defaults_are_applied() {
    let spec = rollout(MINIMAL);
    assert_eq!(spec.name, "shop");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.progress_deadline, Duration::from_secs(600));
    assert_eq!(
        spec.template,
        Template {
            process: Process {
                command: vec!["./shop".to_owned()],
                args: Vec::new(),
                env: Vec::new(),
                working_dir: Some(PathBuf::from(BASE)),
            },
            readiness_probe: None,
            liveness_probe: None,
            termination_grace_period: Duration::from_secs(30),
        }
    );
    assert_eq!(
        spec.strategy,
        BlueGreen {
            active_listen: addr("127.0.0.1:8080"),
            preview_listen: None,
            active_tls: None,
            preview_tls: None,
            preview_match: PreviewMatch::default(),
            auto_promotion_enabled: true,
            auto_promotion_delay: Duration::ZERO,
            scale_down_delay: Duration::from_secs(30),
            abort_scale_down_delay: Some(Duration::from_secs(30)),
            preview_replica_count: None,
            drain_timeout: Duration::from_secs(30),
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            load_test: None,
            webhooks: Vec::new(),
            notifications: Vec::new(),
            proxy: ProxySettings::default(),
        }
    );
    assert_eq!(spec.preview_replicas(), 1);
}

#[test]
fn probe_defaults_follow_kubernetes() {
    let text = minimal_with(
        8,
        "    readinessProbe:\n      httpGet: {}\n    livenessProbe:\n      tcpSocket: {}",
    );
    let template = rollout(&text).template;
    let expected = |action| Probe {
        action,
        initial_delay: Duration::ZERO,
        period: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 3,
    };
    assert_eq!(
        template.readiness_probe,
        Some(expected(ProbeAction::HttpGet {
            path: "/".to_owned()
        }))
    );
    assert_eq!(
        template.liveness_probe,
        Some(expected(ProbeAction::TcpSocket))
    );
}

#[test]
fn argo_api_version_is_accepted() {
    let text = MINIMAL.replace("teal.dev/v1alpha1", "argoproj.io/v1alpha1");
    assert_eq!(rollout(&text).name, "shop");
}

#[test]
fn labels_and_annotations_are_accepted_and_ignored() {
    let text = minimal_with(
        4,
        "  labels: {app: shop}\n  annotations:\n    note: [anything, 1]",
    );
    assert_eq!(rollout(&text).name, "shop");
}

#[test]
fn unknown_field_is_rejected_with_its_path_and_position() {
    let error = one_error(&minimal_with(5, "  replica: 2"));
    assert_error(
        &error,
        6,
        3,
        "spec.replica",
        "unknown field \"replica\", expected one of: replicas, progressDeadlineSeconds, \
         template, strategy",
    );
}

#[test]
fn unknown_field_inside_a_probe_is_rejected() {
    let text = minimal_with(8, "    readinessProbe:\n      tcpSocket: {port: 80}");
    let error = one_error(&text);
    assert_error(
        &error,
        10,
        19,
        "spec.template.readinessProbe.tcpSocket.port",
        "unknown field \"port\", this mapping takes no fields",
    );
}

#[test]
fn unknown_field_named_value_keeps_its_name_in_the_path() {
    let text = minimal_with(8, "    livenessProbe:\n      httpGet: {value: 1}");
    let error = one_error(&text);
    assert_error(
        &error,
        10,
        17,
        "spec.template.livenessProbe.httpGet.value",
        "unknown field \"value\", expected one of: path",
    );
}

#[test]
fn unknown_top_level_field_is_rejected() {
    let error = one_error(&format!("{MINIMAL}status: {{}}\n"));
    assert_error(
        &error,
        12,
        1,
        "status",
        "unknown field \"status\", expected one of: apiVersion, kind, metadata, spec",
    );
}

#[test]
fn env_value_that_is_not_a_string_is_rejected() {
    let text = minimal_with(
        8,
        "      env:\n        - {name: A, value: x}\n        - {name: B, value: 3}",
    );
    let error = one_error(&text);
    assert_error(
        &error,
        11,
        28,
        "spec.template.process.env[1].value",
        "expected a string, found 3; quote it: \"3\"",
    );
}

#[test]
fn env_value_that_is_a_mapping_is_rejected() {
    let text = minimal_with(8, "      env:\n        - name: A\n          value: {a: b}");
    let error = one_error(&text);
    assert_error(
        &error,
        11,
        18,
        "spec.template.process.env[0].value",
        "expected a string, found a mapping",
    );
}

#[test]
fn missing_env_value_is_rejected() {
    let text = minimal_with(8, "      env:\n        - name: A");
    let error = one_error(&text);
    assert_error(
        &error,
        10,
        11,
        "spec.template.process.env[0].value",
        "missing required field \"value\"",
    );
}

#[test]
fn duplicate_env_names_are_rejected() {
    let text = minimal_with(
        8,
        "      env:\n        - {name: A, value: x}\n        - {name: A, value: z}",
    );
    let error = one_error(&text);
    assert_error(
        &error,
        11,
        18,
        "spec.template.process.env[1].name",
        "duplicate env name \"A\", already set at line 10",
    );
}

#[test]
fn port_in_env_is_rejected() {
    let text = minimal_with(8, "      env:\n        - {name: PORT, value: \"80\"}");
    let error = one_error(&text);
    assert_error(
        &error,
        10,
        18,
        "spec.template.process.env[0].name",
        "PORT is set by teal",
    );
}

#[test]
fn a_number_where_a_number_belongs_is_checked_with_its_position() {
    let error = one_error(&minimal_with(5, "  replicas: many"));
    assert_error(
        &error,
        6,
        13,
        "spec.replicas",
        "expected a whole number, found \"many\"",
    );
}

#[test]
fn replicas_out_of_range_are_rejected() {
    let error = one_error(&minimal_with(5, "  replicas: 0"));
    assert_error(
        &error,
        6,
        13,
        "spec.replicas",
        "expected a whole number from 1 to 100, found 0",
    );
    let error = one_error(&minimal_with(5, "  replicas: 101"));
    assert_error(
        &error,
        6,
        13,
        "spec.replicas",
        "expected a whole number from 1 to 100, found 101",
    );
}

#[test]
fn unquoted_number_in_command_is_rejected() {
    let error = one_error(&MINIMAL.replace("[./shop]", "[./shop, 8080]"));
    assert_error(
        &error,
        8,
        25,
        "spec.template.process.command[1]",
        "expected a string, found 8080; quote it: \"8080\"",
    );
}

#[test]
fn empty_command_is_rejected() {
    let error = one_error(&MINIMAL.replace("[./shop]", "[]"));
    assert_error(
        &error,
        8,
        16,
        "spec.template.process.command",
        "expected at least one element",
    );
    let error = one_error(&MINIMAL.replace("[./shop]", "[\"\", x]"));
    assert_error(
        &error,
        8,
        17,
        "spec.template.process.command[0]",
        "expected the program to run, found an empty string",
    );
}

#[test]
fn several_errors_in_several_documents_are_all_reported() {
    // Document 1 (lines 1-11): two stage-two errors. Document 2 (12-23): a stage-one
    // error. Document 3 (24-34): valid. Document 4 (35-37): unknown kind.
    let first = MINIMAL
        .replace("name: shop", "name: Shop")
        .replace("127.0.0.1:8080", "nope");
    let second = MINIMAL
        .replace("name: shop", "name: cart")
        .replace("      command", "      commands");
    let third = MINIMAL.replace("name: shop", "name: ok");
    let text = format!(
        "{first}---\n{second}---\n{third}---\napiVersion: teal.dev/v1alpha1\nkind: Deployment\n"
    );
    let all = errors(&text);
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_error(&all[0], 4, 9, "metadata.name", "found \"Shop\"");
    assert_error(
        &all[1],
        11,
        31,
        "spec.strategy.blueGreen.activeService.listen",
        "expected an address like 127.0.0.1:8080, found \"nope\"",
    );
    assert_error(
        &all[2],
        20,
        7,
        "spec.template.process.commands",
        "unknown field \"commands\", expected one of: command, args, env, workingDir",
    );
    assert_error(
        &all[3],
        38,
        7,
        "kind",
        "unknown kind \"Deployment\", expected Rollout or AnalysisTemplate",
    );
}

#[test]
fn bad_listen_address_is_rejected() {
    let error = one_error(&MINIMAL.replace("127.0.0.1:8080", "nope"));
    assert_error(
        &error,
        11,
        31,
        "spec.strategy.blueGreen.activeService.listen",
        "expected an address like 127.0.0.1:8080, found \"nope\"",
    );
    // A port is required.
    let error = one_error(&MINIMAL.replace("127.0.0.1:8080", "127.0.0.1"));
    assert!(error.message.contains("found \"127.0.0.1\""), "{error:#?}");
}

#[test]
fn localhost_and_ipv6_addresses_are_accepted() {
    let spec = rollout(&MINIMAL.replace("127.0.0.1:8080", "localhost:8080"));
    assert_eq!(spec.strategy.active_listen, addr("127.0.0.1:8080"));
    let spec = rollout(&MINIMAL.replace("127.0.0.1:8080", "[::1]:8080"));
    assert_eq!(spec.strategy.active_listen, addr("[::1]:8080"));
}

#[test]
fn missing_active_service_is_rejected() {
    let text = MINIMAL.replace(
        "      activeService: {listen: \"127.0.0.1:8080\"}",
        "      previewService: {listen: \"127.0.0.1:8081\"}\n      scaleDownDelaySeconds: -1",
    );
    // Reported at the blueGreen mapping, together with the other problems in it.
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        11,
        7,
        "spec.strategy.blueGreen.activeService",
        "missing required field \"activeService\"",
    );
    assert_error(
        &all[1],
        12,
        30,
        "spec.strategy.blueGreen.scaleDownDelaySeconds",
        "expected a whole number of at least 0, found -1",
    );
}

#[test]
fn missing_required_field_names_the_field() {
    let text = MINIMAL.replace(
        "    process:\n      command: [./shop]\n",
        "    process: {}\n",
    );
    let error = one_error(&text);
    assert_eq!(error.path, "spec.template.process.command", "{error:#?}");
    assert_eq!(error.message, "missing required field \"command\"");
    assert_eq!(error.line, Some(7), "{error:#?}");
}

#[test]
fn missing_api_version_is_reported_once() {
    let error = one_error(&MINIMAL.replace("apiVersion: teal.dev/v1alpha1\n", ""));
    assert_error(
        &error,
        1,
        1,
        "apiVersion",
        "missing required field \"apiVersion\", expected \"teal.dev/v1alpha1\"",
    );
}

#[test]
fn type_error_in_a_name_names_the_field() {
    let error = one_error(&MINIMAL.replace("name: shop", "name: 5"));
    assert_error(
        &error,
        4,
        9,
        "metadata.name",
        "expected a string, found 5; quote it: \"5\"",
    );
}

#[test]
fn errors_in_free_form_parts_keep_their_keys() {
    // A `value` key under labels is the user's own, not saphyr's Spanned wrapper.
    let error = one_error(&minimal_with(4, "  labels:\n    value: [1, 2"));
    assert_eq!(error.path, "metadata.labels.value", "{error:#?}");
    assert!(error.message.starts_with("invalid YAML: "), "{error:#?}");
}

#[test]
fn preview_address_must_differ_from_active() {
    let text = minimal_with(11, "      previewService: {listen: \"127.0.0.1:8080\"}");
    let error = one_error(&text);
    assert_error(
        &error,
        12,
        32,
        "spec.strategy.blueGreen.previewService.listen",
        "expected an address other than activeService.listen (127.0.0.1:8080), found \
         127.0.0.1:8080",
    );
    // A wildcard active address takes the port on every interface.
    let text = MINIMAL.replace("127.0.0.1:8080", "0.0.0.0:8080")
        + "      previewService: {listen: \"127.0.0.1:8080\"}\n";
    let error = one_error(&text);
    assert_eq!(error.line, Some(12));
    // Different ports are fine.
    let text = minimal_with(11, "      previewService: {listen: \"127.0.0.1:8081\"}");
    assert_eq!(
        rollout(&text).strategy.preview_listen,
        Some(addr("127.0.0.1:8081"))
    );
}

#[test]
fn probe_with_both_http_get_and_tcp_socket_is_rejected() {
    let text = minimal_with(
        8,
        "    readinessProbe:\n      httpGet: {path: /ready}\n      tcpSocket: {}",
    );
    let error = one_error(&text);
    assert_error(
        &error,
        11,
        18,
        "spec.template.readinessProbe",
        "expected exactly one of httpGet or tcpSocket, found both",
    );
}

#[test]
fn probe_without_an_action_is_rejected() {
    let text = minimal_with(8, "    livenessProbe:\n      periodSeconds: 5");
    let error = one_error(&text);
    assert_error(
        &error,
        10,
        7,
        "spec.template.livenessProbe",
        "expected one of httpGet or tcpSocket, found neither",
    );
}

#[test]
fn probe_fields_are_checked() {
    let text = minimal_with(
        8,
        "    readinessProbe:\n      httpGet: {path: ready}\n      periodSeconds: 0\n      \
         failureThreshold: -1",
    );
    let all = errors(&text);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_error(
        &all[0],
        10,
        23,
        "spec.template.readinessProbe.httpGet.path",
        "expected a path starting with '/', found \"ready\"",
    );
    assert_error(
        &all[1],
        11,
        22,
        "spec.template.readinessProbe.periodSeconds",
        "expected a whole number of at least 1, found 0",
    );
    assert_error(
        &all[2],
        12,
        25,
        "spec.template.readinessProbe.failureThreshold",
        "expected a whole number of at least 1, found -1",
    );
}

#[test]
fn relative_working_dir_is_resolved_against_the_base_dir() {
    let text = minimal_with(8, "      workingDir: ./app/bin");
    let process = rollout(&text).template.process;
    assert_eq!(
        process.working_dir,
        Some(PathBuf::from("/srv/shop/app/bin"))
    );

    let text = minimal_with(8, "      workingDir: ../shared");
    let process = rollout(&text).template.process;
    assert_eq!(
        process.working_dir,
        Some(PathBuf::from("/srv/shop/../shared"))
    );

    let text = minimal_with(8, "      workingDir: /opt/shop");
    let process = rollout(&text).template.process;
    assert_eq!(process.working_dir, Some(PathBuf::from("/opt/shop")));
}

#[test]
fn tls_files_are_read_and_resolved_against_the_base_dir() {
    let text = MINIMAL.replace(
        "      activeService: {listen: \"127.0.0.1:8080\"}",
        "      activeService:\n        listen: \"127.0.0.1:8443\"\n        tls: {certFile: tls/cert.pem, keyFile: /etc/teal/key.pem}\n      previewService:\n        listen: \"127.0.0.1:8444\"\n        tls: {certFile: ./preview.pem, keyFile: ./preview.pem}",
    );
    let strategy = rollout(&text).strategy;
    assert_eq!(
        strategy.active_tls,
        Some(TlsFiles {
            cert_file: PathBuf::from("/srv/shop/tls/cert.pem"),
            key_file: PathBuf::from("/etc/teal/key.pem"),
        })
    );
    assert_eq!(
        strategy.preview_tls,
        Some(TlsFiles {
            cert_file: PathBuf::from("/srv/shop/preview.pem"),
            key_file: PathBuf::from("/srv/shop/preview.pem"),
        })
    );
    // Without `tls`, both listeners are plain HTTP.
    assert_eq!(rollout(MINIMAL).strategy.active_tls, None);
    assert_eq!(rollout(MINIMAL).strategy.preview_tls, None);
}

#[test]
fn tls_without_a_key_file_is_rejected_at_the_tls_mapping() {
    let text = MINIMAL.replace(
        "      activeService: {listen: \"127.0.0.1:8080\"}",
        "      activeService:\n        listen: \"127.0.0.1:8443\"\n        tls: {certFile: cert.pem}",
    );
    assert_error(
        &one_error(&text),
        13,
        14,
        "spec.strategy.blueGreen.activeService.tls.keyFile",
        "missing required field \"keyFile\", expected the path of the PEM private key",
    );
}

#[test]
fn tls_file_errors_are_all_reported() {
    let text = MINIMAL.replace(
        "      activeService: {listen: \"127.0.0.1:8080\"}",
        "      activeService:\n        listen: \"127.0.0.1:8443\"\n        tls: {certFile: \"\", keyFile: key.pem}\n      previewService:\n        listen: \"127.0.0.1:8444\"\n        tls:\n          keyFile: key.pem",
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        13,
        25,
        "spec.strategy.blueGreen.activeService.tls.certFile",
        "expected the path of the PEM certificate chain, found an empty string",
    );
    assert_error(
        &all[1],
        17,
        11,
        "spec.strategy.blueGreen.previewService.tls.certFile",
        "missing required field \"certFile\"",
    );
}

#[test]
fn unknown_field_in_tls_is_rejected() {
    let text = MINIMAL.replace(
        "      activeService: {listen: \"127.0.0.1:8080\"}",
        "      activeService:\n        listen: \"127.0.0.1:8443\"\n        tls: {certFile: c.pem, keyFile: k.pem, caFile: ca.pem}",
    );
    let error = one_error(&text);
    assert_eq!(
        error.path, "spec.strategy.blueGreen.activeService.tls.caFile",
        "{error:#?}"
    );
    assert!(
        error.message.contains("expected one of: certFile, keyFile"),
        "{error:#?}"
    );
}

#[test]
fn abort_scale_down_delay_zero_means_never() {
    let text = minimal_with(11, "      abortScaleDownDelaySeconds: 0");
    assert_eq!(rollout(&text).strategy.abort_scale_down_delay, None);
    let text = minimal_with(11, "      abortScaleDownDelaySeconds: 45");
    assert_eq!(
        rollout(&text).strategy.abort_scale_down_delay,
        Some(Duration::from_secs(45))
    );
}

#[test]
fn preview_replica_count_must_be_within_replicas() {
    let text = minimal_with(5, "  replicas: 3") + "      previewReplicaCount: 4\n";
    let error = one_error(&text);
    assert_error(
        &error,
        13,
        28,
        "spec.strategy.blueGreen.previewReplicaCount",
        "expected a whole number from 1 to 3, found 4",
    );
    let text = minimal_with(5, "  replicas: 3") + "      previewReplicaCount: 0\n";
    assert_eq!(one_error(&text).line, Some(13));
    let text = minimal_with(5, "  replicas: 3") + "      previewReplicaCount: 2\n";
    let spec = rollout(&text);
    assert_eq!(spec.strategy.preview_replica_count, Some(2));
    assert_eq!(spec.preview_replicas(), 2);
}

#[test]
fn preview_match_names_are_checked() {
    let text = minimal_with(
        11,
        "      previewMatch:\n        cookie: {name: \"\", value: x}\n        header: {name: \
         \"X Preview\", value: \"1\"}",
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        13,
        24,
        "spec.strategy.blueGreen.previewMatch.cookie.name",
        "expected a non-empty name",
    );
    assert_error(
        &all[1],
        14,
        24,
        "spec.strategy.blueGreen.previewMatch.header.name",
        "found \"X Preview\"",
    );
}

#[test]
fn preview_match_value_type_error_names_the_value() {
    let text = minimal_with(
        11,
        "      previewMatch:\n        header: {name: X-Test, value: [1]}",
    );
    let error = one_error(&text);
    assert_error(
        &error,
        13,
        39,
        "spec.strategy.blueGreen.previewMatch.header.value",
        "expected a string, found a list",
    );
}

#[test]
fn names_are_checked() {
    for bad in ["Shop", "-shop", "shop-", "sh_op", "\"\""] {
        let error = one_error(&MINIMAL.replace("name: shop", &format!("name: {bad}")));
        assert_error(
            &error,
            4,
            9,
            "metadata.name",
            "expected a name of 1 to 63 lowercase letters, digits and '-'",
        );
    }
    let long = "a".repeat(64);
    let error = one_error(&MINIMAL.replace("name: shop", &format!("name: {long}")));
    assert_eq!(error.path, "metadata.name");
    let just_right = "a".repeat(63);
    assert_eq!(
        rollout(&MINIMAL.replace("name: shop", &format!("name: {just_right}"))).name,
        just_right
    );
}

#[test]
fn wrong_api_version_is_rejected() {
    let error = one_error(&MINIMAL.replace("teal.dev/v1alpha1", "apps/v1"));
    assert_error(
        &error,
        1,
        13,
        "apiVersion",
        "expected \"teal.dev/v1alpha1\" (or \"argoproj.io/v1alpha1\"), found \"apps/v1\"",
    );
}

#[test]
fn missing_kind_is_rejected() {
    let error = one_error(&MINIMAL.replace("kind: Rollout\n", ""));
    assert_error(
        &error,
        1,
        1,
        "kind",
        "missing required field \"kind\", expected Rollout or AnalysisTemplate",
    );
}

#[test]
fn duplicate_kind_and_name_in_one_file_is_rejected() {
    let text = format!("{MINIMAL}---\n{MINIMAL}");
    let error = one_error(&text);
    assert_error(
        &error,
        16,
        9,
        "metadata.name",
        "duplicate Rollout \"shop\": a Rollout with this name is already defined at line 4",
    );
    // The same name for different kinds is fine.
    let template = "apiVersion: teal.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata:\n  name: \
                    shop\nspec:\n  metrics: [{name: up, provider: {job: {command: [\"true\"]}}}]\n";
    let documents = parse(&format!("{MINIMAL}---\n{template}")).expect("valid");
    assert_eq!(documents.len(), 2);
}

#[test]
fn analysis_template_spec_must_be_a_mapping() {
    let text = "apiVersion: teal.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata:\n  name: \
                rate\nspec: [1, 2]\n";
    let error = one_error(text);
    assert_error(&error, 5, 7, "spec", "expected a mapping");
}

#[test]
fn analysis_template_name_is_checked() {
    let text = "apiVersion: teal.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata:\n  name: \
                Rate\nspec:\n  metrics: [{name: up, provider: {job: {command: [\"true\"]}}}]\n";
    let error = one_error(text);
    assert_error(&error, 4, 9, "metadata.name", "found \"Rate\"");
}

#[test]
fn yaml_syntax_error_is_located_and_other_documents_are_still_checked() {
    // Line 3 is indented less than its sibling: not valid YAML.
    let broken = "apiVersion: teal.dev/v1alpha1\nkind: Rollout\n metadata: {}\nspec: {}\n";
    let second = MINIMAL.replace("127.0.0.1:8080", "nope");
    let all = errors(&format!("{broken}---\n{second}"));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].line, all[0].column),
        (Some(3), Some(10)),
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "invalid YAML: mapping values are not allowed in this context"
    );
    assert!(all[0].message.starts_with("invalid YAML: "), "{all:#?}");
    assert_error(
        &all[1],
        16,
        31,
        "spec.strategy.blueGreen.activeService.listen",
        "found \"nope\"",
    );
}

#[test]
fn unclosed_quote_is_located() {
    // The quote is never closed: the scalar runs to the end of the file.
    let error = one_error(&MINIMAL.replace("127.0.0.1:8080\"}", "127.0.0.1:8080}"));
    assert_eq!(error.line, Some(11), "{error:#?}");
    assert!(error.message.starts_with("invalid YAML: "), "{error:#?}");
}

#[test]
fn duplicate_yaml_key_is_rejected() {
    let error = one_error(&minimal_with(4, "  name: other"));
    assert_error(&error, 5, 3, "metadata", "duplicate key \"name\"");
}

#[test]
fn documents_without_content_are_skipped() {
    assert_eq!(parse("").expect("empty file"), Vec::new());
    assert_eq!(
        parse("# nothing here\n---\n---\n").expect("comments"),
        Vec::new()
    );
    let text = format!("---\n# leading marker\n{MINIMAL}---\n");
    assert_eq!(rollout(&text).name, "shop");
}

#[test]
fn a_document_that_is_not_a_mapping_is_rejected() {
    let error = one_error("- a\n- b\n");
    assert_eq!((error.line, error.column), (Some(1), Some(1)), "{error:#?}");
    assert!(error.message.contains("expected a mapping"), "{error:#?}");
}

#[test]
fn windows_line_endings_are_accepted() {
    let text = format!("{MINIMAL}---\n{}", MINIMAL.replace("name: shop", "name: b"));
    let documents = parse(&text.replace('\n', "\r\n")).expect("CRLF file");
    assert_eq!(documents.len(), 2);
}

#[test]
fn errors_display_file_line_column_path_and_message() {
    let error = one_error(&MINIMAL.replace("127.0.0.1:8080", "nope"));
    assert_eq!(
        error.to_string(),
        "shop.yaml:11:31: spec.strategy.blueGreen.activeService.listen: expected an address \
         like 127.0.0.1:8080, found \"nope\""
    );
}

#[test]
fn template_hash_is_equal_for_equal_templates_and_changes_with_the_command() {
    let a = rollout(MINIMAL).template;
    let b = rollout(&MINIMAL.replace("name: shop", "name: other")).template;
    assert_eq!(a, b);
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 10);

    let changed = rollout(&MINIMAL.replace("[./shop]", "[./shop, --fast]")).template;
    assert_ne!(a.hash(), changed.hash());
    let mut args_changed = a.clone();
    args_changed.process.args.push("--fast".to_owned());
    assert_ne!(a.hash(), args_changed.hash());
}

#[test]
fn directives_stay_with_their_document() {
    let second = MINIMAL.replace("name: shop", "name: b");
    let text = format!("%YAML 1.2\n---\n{MINIMAL}...\n%YAML 1.2\n---\n{second}");
    let documents = parse(&text).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(documents.len(), 2);
    // Line numbers still count from the top of the file.
    let broken = second.replace("127.0.0.1:8080", "nope");
    let error = one_error(&format!(
        "%YAML 1.2\n---\n{MINIMAL}...\n%YAML 1.2\n---\n{broken}"
    ));
    assert_eq!(error.line, Some(27), "{error:#?}");
}

#[test]
fn proxy_settings_are_read_and_left_out_ones_stay_none() {
    let spec = rollout(&minimal_with(
        11,
        "      proxy:\n        connectTimeout: 250ms\n        upgradedDrainTimeout: 1m30s\n        maxRequestBodyBytes: 1024\n        passiveHealth: {consecutiveFailures: 0}\n        upstreamProtocol: h2c\n",
    ));
    assert_eq!(
        spec.strategy.proxy,
        ProxySettings {
            connect_timeout: Some(Duration::from_millis(250)),
            upgraded_drain_timeout: Some(Duration::from_secs(90)),
            max_request_body_bytes: Some(1024),
            passive_health_failures: Some(0),
            upstream_protocol: Some(UpstreamProtocol::H2c),
            ..ProxySettings::default()
        }
    );
    assert_eq!(rollout(MINIMAL).strategy.proxy, ProxySettings::default());
}

#[test]
fn bad_proxy_settings_are_all_reported_where_they_are() {
    let all = errors(&minimal_with(
        11,
        "      proxy:\n        connectTimeout: 0s\n        responseHeaderTimeout: soon\n        maxRequestHeaderBytes: 10\n        passiveHealth: {cooldown: -1s}\n        upstreamProtocol: http2\n",
    ));
    assert_eq!(all.len(), 5, "{all:#?}");
    let path = "spec.strategy.blueGreen.proxy";
    assert_error(
        &all[0],
        13,
        25,
        &format!("{path}.connectTimeout"),
        "expected a duration of at least 1ms, found \"0s\"",
    );
    assert_error(
        &all[1],
        14,
        32,
        &format!("{path}.responseHeaderTimeout"),
        "expected a duration such as \"30s\"",
    );
    assert_error(
        &all[2],
        15,
        32,
        &format!("{path}.maxRequestHeaderBytes"),
        "expected a whole number of at least 64, found 10",
    );
    assert_error(
        &all[3],
        16,
        35,
        &format!("{path}.passiveHealth.cooldown"),
        "expected a duration",
    );
    assert_error(
        &all[4],
        17,
        27,
        &format!("{path}.upstreamProtocol"),
        "expected http1 or h2c, found \"http2\"",
    );
}

#[test]
fn unknown_proxy_setting_is_rejected() {
    let error = one_error(&minimal_with(11, "      proxy: {maxBodySize: 10}\n"));
    assert!(error.path.contains("proxy"), "{error:#?}");
    assert!(error.message.contains("maxBodySize"), "{error:#?}");
}
