//! The daemon's HTTP API as the CLI, the dashboard and scripts see it.

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::rollout::{Phase, Revision, Status};

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
    /// Where testers connect, if a preview listener is configured.
    pub preview_listen: Option<String>,
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
