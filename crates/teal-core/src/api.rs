//! The daemon's HTTP API as the CLI, the dashboard and scripts see it.

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::analysis::{AnalysisRun, Phase as AnalysisPhase};
use crate::rollout::{AnalysisKind, Phase, Revision, Status};

/// `POST /api/v1/apply`: a spec file as text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The file's name, for error messages.
    pub file: String,
    /// Its contents.
    pub text: String,
    /// Its directory, absolute; relative `workingDir`s are resolved against it.
    pub base_dir: String,
}

/// What apply did to each document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// One line per document, in file order.
    pub results: Vec<ApplyResult>,
}

/// What apply did to one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// `Rollout` or `AnalysisTemplate`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `created`, `configured` (settings changed, same template), `unchanged`, or
    /// `revision N` (a new revision started).
    pub outcome: String,
    /// The newest revision after the apply (rollouts only).
    pub revision: Option<Revision>,
}

/// `POST /api/v1/rollouts/{name}/promote`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// Refuse unless this revision is the one in preview.
    pub revision: Option<Revision>,
}

/// `POST /api/v1/rollouts/{name}/undo`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UndoRequest {
    /// The revision whose template to release again; default: the one before the
    /// active revision.
    pub to_revision: Option<Revision>,
}

/// The answer to every mutating call on one rollout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommandResponse {
    /// What happened, in one sentence per change.
    pub notes: Vec<String>,
    /// The rollout afterwards.
    pub rollout: RolloutView,
}

/// Any error: one sentence, and details (such as every spec error) when there are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// One line per problem, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// A rollout as people see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutView {
    /// `metadata.name`.
    pub name: String,
    /// Argo's phase.
    pub phase: Phase,
    /// Argo's reason for the phase, e.g. `BlueGreenPause`.
    pub reason: Option<String>,
    /// One sentence on what is happening and what, if anything, to do.
    pub message: String,
    /// The newest revision.
    pub revision: Revision,
    /// The color users are on.
    pub active_color: Option<Color>,
    /// The revision users are on.
    pub active_revision: Option<Revision>,
    /// The revision in preview.
    pub preview_revision: Option<Revision>,
    /// Where users connect.
    pub active_listen: String,
    /// The active listener terminates TLS: users connect with `https://`. False (also
    /// when an older daemon leaves it out): plain `http://`.
    #[serde(default)]
    pub active_tls: bool,
    /// Where testers connect, if a preview listener is configured.
    pub preview_listen: Option<String>,
    /// The preview listener terminates TLS (`https://`). Default false.
    #[serde(default)]
    pub preview_tls: bool,
    /// How requests on the active listener reach the preview, e.g. `cookie test=true`.
    pub preview_match: Vec<String>,
    /// Where the proxy sends each route right now. It follows the status within a
    /// reconcile pass, so scripts that must know users moved wait for this.
    pub routes: RoutesView,
    /// Both colors, blue first; a color that runs nothing is left out.
    pub colors: Vec<ColorView>,
    /// When the status last changed (ms since the epoch).
    pub updated_at_ms: u64,
    /// Traffic per color over the last 10 seconds, as teal's proxy measured it.
    pub traffic: Vec<ColorTraffic>,
    /// The state machine's status as stored.
    pub status: Status,
    /// The latest analysis run of the newest revision, if it had one.
    #[serde(default)]
    pub analysis: Option<AnalysisRunView>,
}

impl RolloutView {
    /// The URL users connect to: `https://ADDRESS` when the active listener
    /// terminates TLS, else `http://ADDRESS`.
    pub fn active_url(&self) -> String {
        url(self.active_tls, &self.active_listen)
    }

    /// The URL testers connect to, when a preview listener is configured.
    pub fn preview_url(&self) -> Option<String> {
        self.preview_listen
            .as_deref()
            .map(|address| url(self.preview_tls, address))
    }
}

fn url(tls: bool, address: &str) -> String {
    format!("{}://{address}", if tls { "https" } else { "http" })
}

/// `GET /api/v1/rollouts/{name}/analysis[?revision=N]`: runs, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnalysisView {
    /// The runs.
    pub runs: Vec<AnalysisRunView>,
}

/// One analysis run as people see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnalysisRunView {
    /// Its id, in the order runs started.
    pub id: i64,
    /// Pre- or post-promotion.
    pub kind: AnalysisKind,
    /// The revision analysed.
    pub revision: Revision,
    /// The templates it runs, comma-separated.
    pub templates: String,
    /// Running, Successful, Failed, Error or Inconclusive.
    pub phase: AnalysisPhase,
    /// Why, for anything but success.
    pub message: Option<String>,
    /// When it started (ms since the epoch).
    pub started_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
    /// Every metric with its latest measurements.
    pub metrics: Vec<MetricView>,
}

/// One metric of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricView {
    /// The metric's name.
    pub name: String,
    /// `builtin`, `prometheus`, `web` or `job`.
    pub provider: String,
    /// What is measured, in a few words (the built-in measure, the query, the URL or
    /// the command).
    pub measures: String,
    /// `successCondition`.
    pub success_condition: Option<String>,
    /// `failureCondition`.
    pub failure_condition: Option<String>,
    /// Pending, Running or final.
    pub phase: AnalysisPhase,
    /// Why.
    pub message: Option<String>,
    /// Measurements that were not errors.
    pub count: u32,
    /// Successful measurements.
    pub successful: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Errors.
    pub errors: u32,
    /// The latest measurements, oldest first.
    pub measurements: Vec<MeasurementView>,
}

/// One measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeasurementView {
    /// Its verdict.
    pub phase: AnalysisPhase,
    /// The value, as text (`0.99`, `[1, 2]`), if one was measured.
    pub value: Option<String>,
    /// Why, for anything but success.
    pub message: Option<String>,
    /// What a job printed (its end).
    pub output: Option<String>,
    /// When it started.
    pub started_at_ms: u64,
    /// When it finished.
    pub finished_at_ms: u64,
}

impl AnalysisRunView {
    /// The view of a run.
    pub fn new(
        id: i64,
        kind: AnalysisKind,
        revision: Revision,
        run: &AnalysisRun,
        updated_at_ms: u64,
    ) -> Self {
        use crate::analysis::Provider;
        AnalysisRunView {
            id,
            kind,
            revision,
            templates: run.template.clone(),
            phase: run.phase(),
            message: run.message(),
            started_at_ms: run.started_at,
            updated_at_ms,
            metrics: run
                .metrics
                .iter()
                .map(|metric| MetricView {
                    name: metric.metric.name.clone(),
                    provider: metric.metric.provider.kind().to_owned(),
                    measures: match &metric.metric.provider {
                        Provider::Builtin(builtin) => match builtin.color {
                            Some(service) => {
                                format!("{} ({service:?})", builtin.measure).to_lowercase()
                            }
                            None => builtin.measure.to_string(),
                        },
                        Provider::Prometheus(prometheus) => prometheus.query.clone(),
                        Provider::Web(web) => web.url.clone(),
                        Provider::Job(job) => job.command.join(" "),
                        Provider::KubernetesJob(_) => "a Kubernetes Job".to_owned(),
                    },
                    success_condition: metric
                        .metric
                        .success_condition
                        .as_ref()
                        .map(|c| c.source().to_owned()),
                    failure_condition: metric
                        .metric
                        .failure_condition
                        .as_ref()
                        .map(|c| c.source().to_owned()),
                    phase: metric.phase,
                    message: metric.message.clone(),
                    count: metric.count,
                    successful: metric.successful,
                    failed: metric.failed,
                    inconclusive: metric.inconclusive,
                    errors: metric.errors,
                    measurements: metric
                        .measurements
                        .iter()
                        .map(|m| MeasurementView {
                            phase: m.phase,
                            value: m.value.as_ref().map(ToString::to_string),
                            message: m.message.clone(),
                            output: m.output.clone(),
                            started_at_ms: m.started_at,
                            finished_at_ms: m.finished_at,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The colors the proxy routes to now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesView {
    /// The users' route.
    pub active: Option<Color>,
    /// The testers' route; None: they get the active color.
    pub preview: Option<Color>,
}

impl RoutesView {
    /// The color testers reach.
    pub fn effective_preview(&self) -> Option<Color> {
        self.preview.or(self.active)
    }
}

/// What one color runs and which routes send traffic to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColorView {
    /// The color.
    pub color: Color,
    /// The revision it runs.
    pub revision: Revision,
    /// `active`, `preview`, `warm` (old color kept for an instant undo), `aborted`.
    pub role: String,
    /// Wanted instances.
    pub replicas: u32,
    /// Ready instances.
    pub ready: u32,
    /// Its instances.
    pub instances: Vec<InstanceView>,
}

/// One instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceView {
    /// e.g. `shop-green-r2-1`.
    pub id: String,
    /// Where it listens.
    pub addr: String,
    /// Its process, when running.
    pub pid: Option<u32>,
    /// Passing its readiness probe.
    pub ready: bool,
    /// Restarts after crashes or liveness failures.
    pub restarts: u32,
    /// Why it is not ready or last restarted.
    pub problem: Option<String>,
}

/// A revision of a rollout's template.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevisionView {
    /// Its number.
    pub revision: Revision,
    /// Its template's fingerprint.
    pub template_hash: String,
    /// When it was recorded.
    pub created_at_ms: u64,
    /// `apply`, or `undo to revision N`.
    pub source: String,
    /// The command it runs.
    pub command: Vec<String>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    pub at_ms: u64,
    /// The rollout.
    pub rollout: String,
    /// What caused it: `apply`, `promote`, `abort`, `retry`, `undo`, `delete`, or
    /// `reconciler` for what teal did by itself.
    pub cause: String,
    /// What happened.
    pub message: String,
}

/// `GET /api/v1/rollouts/{name}/history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryView {
    /// Revisions, oldest first.
    pub revisions: Vec<RevisionView>,
    /// Events, oldest first.
    pub events: Vec<HistoryEntry>,
}

/// Traffic one color served over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColorTraffic {
    /// The color.
    pub color: Color,
    /// The revision it served (0 when it was not routed).
    pub revision: Revision,
    /// Requests routed to the color in the window.
    pub requests: u64,
    /// Of its responses, how many were 5xx.
    pub errors: u64,
    /// Requests per second over the window.
    pub requests_per_second: f64,
    /// Share of responses that were not 5xx; None without responses.
    pub success_rate: Option<f64>,
    /// 99th percentile of the time to the response head, in ms; None without
    /// responses.
    pub p99_ms: Option<f64>,
    /// Requests in flight at the end of the window.
    pub in_flight: u64,
}

/// One point of the traffic history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficSample {
    /// End of the sample's window (ms since the epoch).
    pub at_ms: u64,
    /// One entry per color that served or was routed.
    pub colors: Vec<ColorTraffic>,
}

/// `GET /api/v1/rollouts/{name}/traffic`: the last minutes, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficView {
    /// The length of each sample's window.
    pub interval_ms: u64,
    /// The samples.
    pub samples: Vec<TrafficSample>,
}
