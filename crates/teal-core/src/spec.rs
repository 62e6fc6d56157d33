//! Rollout and AnalysisTemplate specs: the validated types the rest of teal uses.
//!
//! Files are parsed in two stages (see [`parse`]): raw serde types that mirror the YAML
//! and reject unknown fields, then these validated types. Field names follow Argo
//! Rollouts' `blueGreen` strategy so manifests read the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::analysis::{Arg, Metric};

mod parse;
mod raw;

pub use parse::{SpecError, SpecErrors, parse_documents};

/// The `apiVersion` teal's own documents carry.
pub const API_VERSION: &str = "teal.dev/v1alpha1";

/// One document of a spec file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
// A file holds a handful of documents, parsed once per apply: boxing the Rollout would
// cost every user a `Box` for no measurable gain.
#[allow(clippy::large_enum_variant)]
pub enum Document {
    /// `kind: Rollout`.
    Rollout(RolloutSpec),
    /// `kind: AnalysisTemplate`; stored now, evaluated by the analysis engine.
    AnalysisTemplate(AnalysisTemplateSpec),
}

/// A validated `kind: Rollout`: one service under teal's control.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// `metadata.name`: a DNS-label-like name (lowercase letters, digits, `-`).
    pub name: String,
    /// `spec.replicas`: instances per color once promoted. Default 1.
    pub replicas: u32,
    /// `spec.template`: what one instance runs. Any change makes a new revision.
    pub template: Template,
    /// `spec.progressDeadlineSeconds`: how long a new revision may take to become
    /// ready before the rollout is Degraded (ProgressDeadlineExceeded). Default 600 s.
    pub progress_deadline: Duration,
    /// `spec.strategy.blueGreen`.
    pub strategy: BlueGreen,
}

/// `spec.template`: the process and how to tell it is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Template {
    /// `template.process`.
    pub process: Process,
    /// `template.readinessProbe`: gates traffic. Without one, an instance is ready as
    /// soon as its port accepts a TCP connection.
    pub readiness_probe: Option<Probe>,
    /// `template.livenessProbe`: restarts an instance that fails it. None by default.
    pub liveness_probe: Option<Probe>,
    /// `template.terminationGracePeriodSeconds`: SIGTERM, then SIGKILL after this.
    /// Default 30 s.
    pub termination_grace_period: Duration,
}

impl Template {
    /// A short, stable fingerprint of the template (like Argo's pod-template-hash):
    /// two templates with equal hashes run the same thing.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a template always serializes");
        let digest = Sha256::digest(&canonical);
        digest[..5].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `template.process`: a local command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    /// `command`: program and leading arguments; never empty. `$(PORT)` is replaced by
    /// the instance's port.
    pub command: Vec<String>,
    /// `args`: appended to `command`, with the same `$(PORT)` substitution.
    pub args: Vec<String>,
    /// `env`: extra environment (name, value), in file order. `PORT` is always set.
    pub env: Vec<EnvVar>,
    /// `workingDir`: the directory the process starts in; relative paths are taken
    /// from the directory of the spec file. Default: that directory.
    pub working_dir: Option<PathBuf>,
}

/// One `env` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A readiness or liveness probe (Kubernetes' fields and defaults).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Probe {
    /// What to check.
    pub action: ProbeAction,
    /// `initialDelaySeconds`: wait before the first check. Default 0.
    pub initial_delay: Duration,
    /// `periodSeconds`: time between checks. Default 10 s (Kubernetes' default).
    pub period: Duration,
    /// `timeoutSeconds`: a check slower than this fails. Default 1 s.
    pub timeout: Duration,
    /// `successThreshold`: consecutive passes to become ready. Default 1.
    pub success_threshold: u32,
    /// `failureThreshold`: consecutive failures to become not ready (or be restarted,
    /// for liveness). Default 3.
    pub failure_threshold: u32,
}

/// `httpGet` or `tcpSocket`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeAction {
    /// `httpGet: {path}`: a GET to the instance's port; 200..=399 passes.
    HttpGet {
        /// Request path, starting with `/`.
        path: String,
    },
    /// `tcpSocket: {}`: the instance's port accepts a connection.
    TcpSocket,
}

/// `spec.strategy.blueGreen`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlueGreen {
    /// `activeService.listen`: where users connect. Required.
    pub active_listen: SocketAddr,
    /// `previewService.listen`: where testers reach the candidate. Optional; must
    /// differ from the active address. Without a candidate it serves the active color,
    /// as Argo's preview Service does.
    pub preview_listen: Option<SocketAddr>,
    /// `activeService.tls`: the active address serves HTTPS with this certificate.
    /// None (the default): plain HTTP.
    #[serde(default)]
    pub active_tls: Option<TlsFiles>,
    /// `previewService.tls`: the preview address serves HTTPS with this certificate.
    /// None (the default): plain HTTP.
    #[serde(default)]
    pub preview_tls: Option<TlsFiles>,
    /// `previewMatch`: requests on the active listener that go to the candidate.
    pub preview_match: PreviewMatch,
    /// `autoPromotionEnabled`: promote without a person once the candidate is ready.
    /// Default true, as in Argo Rollouts.
    pub auto_promotion_enabled: bool,
    /// `autoPromotionSeconds`: with auto-promotion, wait this long in preview first.
    /// Default 0.
    pub auto_promotion_delay: Duration,
    /// `scaleDownDelaySeconds`: how long the old color stays warm after a switch.
    /// Default 30 s.
    pub scale_down_delay: Duration,
    /// `abortScaleDownDelaySeconds`: how long an aborted candidate keeps running.
    /// Default 30 s; `0` (None here) keeps it running until the next apply or retry.
    pub abort_scale_down_delay: Option<Duration>,
    /// `previewReplicaCount`: instances of the candidate before promotion. Default:
    /// `replicas`.
    pub preview_replica_count: Option<u32>,
    /// How long in-flight requests on the old color may take to finish after a switch
    /// before the old color is stopped anyway. teal's own field (`drainTimeoutSeconds`);
    /// default 30 s.
    pub drain_timeout: Duration,
    /// `prePromotionAnalysis`: run against the candidate before the switch; a failure
    /// aborts, so users never leave the stable color.
    #[serde(default)]
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    /// `postPromotionAnalysis`: run after the switch while the old color is warm; a
    /// failure switches back at once.
    #[serde(default)]
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    /// `loadTest`: traffic teal sends to the preview while pre-promotion analysis runs.
    #[serde(default)]
    pub load_test: Option<LoadTest>,
    /// `webhooks`: gates (Flagger's `confirm-promotion` and `rollback`).
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// `notifications`: where every phase change is posted.
    #[serde(default)]
    pub notifications: Vec<Notification>,
    /// `proxy`: limits and timeouts of teal's own proxy for this rollout. teal's own
    /// field; every setting left out keeps the proxy's default.
    #[serde(default)]
    pub proxy: ProxySettings,
}

/// `proxy` of `blueGreen`: what teal's proxy allows and how long it waits. None (the
/// default for each field) keeps the proxy's own default, named beside each field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProxySettings {
    /// `connectTimeout`: connecting to an instance; `502` after it. Proxy default 5 s.
    pub connect_timeout: Option<Duration>,
    /// `responseHeaderTimeout`: from sending a request to the response headers; `504`
    /// after it. Proxy default 60 s.
    pub response_header_timeout: Option<Duration>,
    /// `upstreamIdleTimeout`: longest pause inside a response body before it is cut.
    /// Proxy default 60 s.
    pub upstream_idle_timeout: Option<Duration>,
    /// `upgradedDrainTimeout`: how long WebSockets and other upgraded connections of a
    /// color being stopped may stay open before they are closed. Proxy default 5 min.
    pub upgraded_drain_timeout: Option<Duration>,
    /// `maxRequestHeaderBytes`: largest request head; `431` above it. Proxy default
    /// 32 KiB.
    pub max_request_header_bytes: Option<u64>,
    /// `maxRequestBodyBytes`: largest request body; `413` above it. Proxy default 1 GiB.
    pub max_request_body_bytes: Option<u64>,
    /// `passiveHealth.consecutiveFailures`: failures in a row that take an instance out
    /// of rotation; 0 turns passive health off. Proxy default 5.
    pub passive_health_failures: Option<u32>,
    /// `passiveHealth.cooldown`: how long such an instance stays out. Proxy default
    /// 10 s.
    pub passive_health_cooldown: Option<Duration>,
    /// `upstreamProtocol`: what the proxy speaks to the instances. Proxy default
    /// HTTP/1.1.
    pub upstream_protocol: Option<UpstreamProtocol>,
}

/// `upstreamProtocol` of `blueGreen.proxy`: how teal's proxy talks to instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// `http1`: HTTP/1.1 with keep-alive, whatever the client spoke.
    #[default]
    Http1,
    /// `h2c`: HTTP/2 in plain text (prior knowledge), one multiplexed connection per
    /// instance and proxy thread; what gRPC servers speak. Requests that upgrade
    /// (WebSocket) still go over HTTP/1.1.
    H2c,
}

/// `tls` of `activeService` / `previewService`: the PEM files a listener serves HTTPS
/// with (HTTP/2 or HTTP/1.1, by ALPN). The files are read again whenever they change,
/// so a renewed certificate needs no apply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TlsFiles {
    /// `certFile`: the certificate chain, the server's own certificate first. A relative
    /// path is taken from the directory of the spec file.
    pub cert_file: PathBuf,
    /// `keyFile`: the certificate's private key (PKCS#8, PKCS#1 or SEC1). A relative
    /// path is taken from the directory of the spec file.
    pub key_file: PathBuf,
}

/// `prePromotionAnalysis` / `postPromotionAnalysis`: which AnalysisTemplates to run
/// (they run together; the analysis fails when one does) and the args they get.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RolloutAnalysis {
    /// `templates[].templateName`: never empty.
    pub templates: Vec<String>,
    /// `args[]`: values for the templates' args, beside teal's standard ones.
    pub args: Vec<NameValue>,
}

/// `loadTest`: steady traffic to the preview route so built-in metrics have data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadTest {
    /// `requestsPerSecond`: the total rate.
    pub requests_per_second: u32,
    /// `concurrency`: connections used (each keeps one request in flight).
    pub concurrency: u32,
    /// `durationSeconds`: stop after this; None: until pre-promotion analysis ends.
    pub duration: Option<Duration>,
    /// `paths`: requested in turn; default `["/"]`.
    pub paths: Vec<String>,
    /// `headers`: sent with every request.
    pub headers: Vec<NameValue>,
}

/// `webhooks[]`: an HTTP gate, as in Flagger.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Webhook {
    /// `name`: shown in the status and history.
    pub name: String,
    /// `type`.
    pub kind: WebhookKind,
    /// `url`: `http://` or `https://`.
    pub url: String,
    /// `timeoutSeconds`: default 10.
    pub timeout: Duration,
}

/// What a webhook decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookKind {
    /// `confirm-promotion`: promotion waits until it answers 2xx.
    ConfirmPromotion,
    /// `rollback`: asked during analysis; a 2xx answer rolls back.
    Rollback,
}

/// `notifications[]`: a JSON POST for every phase change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notification {
    /// `url`: `http://` or `https://`.
    pub url: String,
    /// `format`: `json` (default) or `slack` (`{"text": ...}`).
    pub format: NotificationFormat,
}

/// The body of a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormat {
    /// teal's own JSON: rollout, revision, checksum, phase, reason.
    Json,
    /// A Slack-compatible `{"text": ...}`.
    Slack,
}

/// `previewMatch`: cookie and/or header that sends a request to the candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreviewMatch {
    /// `cookie: {name, value}`.
    pub cookie: Option<NameValue>,
    /// `header: {name, value}`; the name is compared case-insensitively.
    pub header: Option<NameValue>,
}

/// A name and the exact value it must have.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameValue {
    /// Cookie or header name.
    pub name: String,
    /// The value that matches.
    pub value: String,
}

/// A validated `kind: AnalysisTemplate`: its metrics and args typed (see
/// [`crate::analysis`]), and its `spec` also kept as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisTemplateSpec {
    /// `metadata.name`.
    pub name: String,
    /// `spec`, as JSON, as written.
    pub spec: serde_json::Value,
    /// `spec.args`: values the metrics' provider fields use as `{{args.NAME}}`.
    #[serde(default)]
    pub args: Vec<Arg>,
    /// `spec.metrics`: never empty once validated.
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

impl AnalysisTemplateSpec {
    /// Several templates as the one template of a run, as Argo merges them: every
    /// metric in order (a metric name in two templates is an error), each arg as its
    /// first template declares it.
    pub fn combine(templates: Vec<AnalysisTemplateSpec>) -> Result<AnalysisTemplateSpec, String> {
        let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
        let mut combined = AnalysisTemplateSpec {
            name: names.join(","),
            spec: serde_json::Value::Null,
            args: Vec::new(),
            metrics: Vec::new(),
        };
        for template in templates {
            for metric in template.metrics {
                if combined.metrics.iter().any(|m| m.name == metric.name) {
                    return Err(format!(
                        "metric \"{}\" is in more than one of the templates {}",
                        metric.name, combined.name
                    ));
                }
                combined.metrics.push(metric);
            }
            for arg in template.args {
                if !combined.args.iter().any(|a| a.name == arg.name) {
                    combined.args.push(arg);
                }
            }
        }
        Ok(combined)
    }
}

impl RolloutSpec {
    /// Instances the candidate runs before promotion.
    pub fn preview_replicas(&self) -> u32 {
        self.strategy
            .preview_replica_count
            .unwrap_or(self.replicas)
            .min(self.replicas)
    }
}
