//! Analysis on Kubernetes: the same AnalysisTemplates, conditions and judging as on one
//! machine (teal-core's [`AnalysisRun`]), driven by the reconcile loop. The run is kept
//! on the Rollout (annotation [`ANALYSIS_ANNOTATION`]) after every measurement, so a
//! controller that restarts, or another replica that takes the Lease, resumes it.
//!
//! Templates are `AnalysisTemplate` objects in the rollout's namespace, teal.dev or
//! argoproj.io (Argo's CRD), parsed by the same parser as `teal apply`. Measuring is
//! the caller's [`Measurer`]: the teal binary passes its prometheus and web providers.

use std::path::Path;

use futures_util::future::BoxFuture;
use kube::Client;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use teal_core::Color;

use k8s_openapi::api::batch::v1::Job;
use kube::api::DeleteParams;
use teal_core::analysis::{
    AnalysisRun, KubernetesJobMetric, Measurement, Metric, Phase as AnalysisPhase, Provider,
    TealArgs, Value,
};
use teal_core::rollout::{AnalysisKind, Event, Millis, Revision, Stage, Status};
use teal_core::spec::{AnalysisTemplateSpec, Document, parse_documents};

use crate::crd::{ROLLOUT_LABEL, RolloutSpec, create_params};

/// Where the current analysis run is kept on the Rollout (JSON).
pub const ANALYSIS_ANNOTATION: &str = "teal.dev/analysis";

/// Takes one measurement of a metric (a Prometheus query, a web request, ...).
pub trait Measurer: Send + Sync {
    /// Measures `metric` now.
    fn measure<'a>(&'a self, metric: &'a Metric) -> BoxFuture<'a, Measurement>;
}

/// A measurer that measures nothing: every metric is an error that says why. For a
/// controller built without providers.
pub struct NoProviders;

impl Measurer for NoProviders {
    fn measure<'a>(&'a self, metric: &'a Metric) -> BoxFuture<'a, Measurement> {
        Box::pin(async move {
            Measurement::failed(format!(
                "no {} provider in this controller",
                metric.provider.kind()
            ))
        })
    }
}

/// Which run the state machine waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunKey {
    /// Pre- or post-promotion.
    pub kind: AnalysisKind,
    /// The revision analysed.
    pub revision: Revision,
    /// When the state machine asked for it.
    pub since: Millis,
    /// The color it runs in.
    pub color: Color,
}

/// The run kept on the Rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    /// Which run.
    pub key: RunKey,
    /// The run; None when it could not start.
    pub run: Option<AnalysisRun>,
    /// Why it could not start (a missing template, a bad arg).
    pub error: Option<String>,
}

impl StoredRun {
    /// The run's phase (Error when it could not start).
    pub fn phase(&self) -> AnalysisPhase {
        match &self.run {
            Some(run) => run.phase(),
            None => AnalysisPhase::Error,
        }
    }

    /// What the state machine hears once the run is completed.
    fn completed_event(&self) -> Option<Event> {
        let phase = self.phase();
        phase.is_completed().then(|| Event::AnalysisCompleted {
            kind: self.key.kind,
            revision: self.key.revision,
            phase,
            message: self
                .error
                .clone()
                .or_else(|| self.run.as_ref().and_then(AnalysisRun::message))
                .unwrap_or_default(),
        })
    }
}

/// The run the state machine waits for in `state`, if any.
pub fn wanted(state: &Status) -> Option<RunKey> {
    match (&state.candidate, &state.post_analysis) {
        (Some(candidate), _) if candidate.stage == Stage::Analyzing => Some(RunKey {
            kind: AnalysisKind::PrePromotion,
            revision: candidate.slot.revision,
            since: candidate.stage_since,
            color: candidate.slot.color,
        }),
        (None, Some(post)) if post.hold.is_none() => state.stable.as_ref().map(|stable| RunKey {
            kind: AnalysisKind::PostPromotion,
            revision: post.revision,
            since: post.since,
            color: stable.color,
        }),
        _ => None,
    }
}

/// Where one reconcile leaves the analysis.
pub struct Progress {
    /// The run to keep (also kept, completed, for `teal get` once the state machine
    /// moved on).
    pub stored: Option<StoredRun>,
    /// The completed run's verdict for the state machine.
    pub event: Option<Event>,
    /// When the next measurement is due.
    pub next_at: Option<Millis>,
}

/// Starts, measures and judges the run `state` waits for. `owner` is the Rollout's
/// owner reference, for the Jobs a `job` metric creates.
#[allow(clippy::too_many_arguments)]
pub async fn advance(
    client: &Client,
    namespace: &str,
    rollout: &str,
    owner: &serde_json::Value,
    spec: &RolloutSpec,
    state: &Status,
    stored: Option<StoredRun>,
    measurer: &dyn Measurer,
    now: Millis,
) -> Progress {
    let Some(key) = wanted(state) else {
        return Progress {
            stored,
            event: None,
            next_at: None,
        };
    };
    let mut current = match stored.filter(|s| s.key == key) {
        Some(stored) => stored,
        None => match start(client, namespace, rollout, spec, key, now).await {
            Ok(run) => StoredRun {
                key,
                run: Some(run),
                error: None,
            },
            Err(error) => StoredRun {
                key,
                run: None,
                error: Some(error),
            },
        },
    };
    if let Some(run) = current.run.as_mut() {
        let due: Vec<Metric> = run.due(now).into_iter().cloned().collect();
        for metric in due {
            let measurement = match &metric.provider {
                Provider::KubernetesJob(job) => {
                    let number = run.metric(&metric.name).map_or(0, |m| m.count + m.errors) + 1;
                    let name = job_name(&[
                        rollout,
                        &key.revision.to_string(),
                        &metric.name,
                        &number.to_string(),
                    ]);
                    run_job(client, namespace, rollout, owner, &name, &metric.name, job).await
                }
                _ => measurer.measure(&metric).await,
            };
            tracing::info!(
                rollout,
                metric = metric.name,
                value = ?measurement.value,
                error = ?measurement.error,
                "measured"
            );
            let _ = run.record(&metric.name, &measurement, now, now);
        }
    }
    Progress {
        event: current.completed_event(),
        next_at: current
            .run
            .as_ref()
            .and_then(|run| run.next_measurement_at(now)),
        stored: Some(current),
    }
}

/// How often a running Job is looked at.
const JOB_POLL: Duration = Duration::from_millis(500);

/// A Job name from parts: lowercase letters, digits and dashes, at most 63 characters.
fn job_name(parts: &[&str]) -> String {
    let joined = parts.join("-").to_ascii_lowercase();
    let clean: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean
        .chars()
        .take(63)
        .collect::<String>()
        .trim_matches('-')
        .to_owned()
}

/// Runs Argo's `job` metric as a Kubernetes Job in the rollout's namespace and waits
/// for it: 0 when it succeeds, 1 when it fails (with the reason), an error after its
/// timeout (the Job is then deleted). A Job that already exists (a controller that
/// restarted mid-measurement) is waited for, not created again.
async fn run_job(
    client: &Client,
    namespace: &str,
    rollout: &str,
    owner: &serde_json::Value,
    name: &str,
    metric: &str,
    job: &KubernetesJobMetric,
) -> Measurement {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let mut metadata = json!({
        "name": name,
        "labels": {ROLLOUT_LABEL: rollout, "teal.dev/analysis-metric": job_name(&[metric])},
        "ownerReferences": [owner],
    });
    if let Some(labels) = job.metadata["labels"].as_object() {
        for (key, value) in labels {
            metadata["labels"][key] = value.clone();
        }
    }
    if let Some(annotations) = job.metadata["annotations"].as_object() {
        metadata["annotations"] = json!(annotations);
    }
    let object: Job = match serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": job.spec,
    })) {
        Ok(object) => object,
        Err(error) => return Measurement::failed(format!("job.spec is not a JobSpec: {error}")),
    };
    match jobs.create(&create_params(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Measurement::failed(format!("cannot create Job {name}: {error}")),
    }
    let deadline = tokio::time::Instant::now() + job.timeout;
    loop {
        match jobs.get_opt(name).await {
            Ok(Some(found)) => {
                let status = found.status.unwrap_or_default();
                let failed = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Failed" && c.status == "True");
                if status.succeeded.unwrap_or(0) > 0 {
                    return Measurement::of(Value::Number(0.0));
                }
                if let Some(condition) = failed {
                    let mut measurement = Measurement::of(Value::Number(1.0));
                    measurement.output = Some(format!(
                        "Job {name} failed: {}",
                        condition.message.or(condition.reason).unwrap_or_default()
                    ));
                    return measurement;
                }
            }
            Ok(None) => return Measurement::failed(format!("Job {name} was deleted")),
            Err(error) => tracing::warn!(job = name, %error, "cannot read the Job"),
        }
        if tokio::time::Instant::now() >= deadline {
            let background = DeleteParams::background();
            let _ = jobs.delete(name, &background).await;
            return Measurement::failed(format!(
                "Job {name} did not finish in {}s; deleted",
                job.timeout.as_secs()
            ));
        }
        tokio::time::sleep(JOB_POLL).await;
    }
}

fn analysis_template(group: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, "v1alpha1", "AnalysisTemplate"),
        "analysistemplates",
    )
}

/// Finds an AnalysisTemplate (teal.dev, then argoproj.io) and parses it with the
/// one-machine parser.
async fn template(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<AnalysisTemplateSpec, String> {
    for group in ["teal.dev", "argoproj.io"] {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &analysis_template(group));
        let found = match api.get_opt(name).await {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(error) => return Err(format!("AnalysisTemplate {name:?}: {error}")),
        };
        let Some(object) = found else { continue };
        let document = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": name},
            "spec": object.data["spec"],
        });
        let text = serde_saphyr::to_string(&document).map_err(|e| e.to_string())?;
        let file = format!("{group} AnalysisTemplate {namespace}/{name}");
        let documents =
            parse_documents(&file, &text, Path::new("/")).map_err(|errors| errors.to_string())?;
        return match documents.into_iter().next() {
            Some(Document::AnalysisTemplate(template)) => Ok(template),
            _ => Err(format!("{file} is not an AnalysisTemplate")),
        };
    }
    Err(format!(
        "AnalysisTemplate {name:?} does not exist in namespace {namespace:?}"
    ))
}

async fn start(
    client: &Client,
    namespace: &str,
    rollout: &str,
    spec: &RolloutSpec,
    key: RunKey,
    now: Millis,
) -> Result<AnalysisRun, String> {
    let bg = crate::spec_check::blue_green(spec)?;
    let analysis = match key.kind {
        AnalysisKind::PrePromotion => bg.pre_promotion_analysis.as_ref(),
        AnalysisKind::PostPromotion => bg.post_promotion_analysis.as_ref(),
    }
    .ok_or_else(|| format!("the spec no longer has {} analysis", key.kind))?;
    let mut templates = Vec::new();
    for reference in &analysis.templates {
        if reference.cluster_scope == Some(true) {
            return Err(format!(
                "ClusterAnalysisTemplate {:?}: cluster-scoped templates are not supported; use an AnalysisTemplate in namespace {namespace:?}",
                reference.template_name
            ));
        }
        templates.push(template(client, namespace, &reference.template_name).await?);
    }
    let combined = AnalysisTemplateSpec::combine(templates)?;
    let preview_address = bg
        .preview_service
        .as_ref()
        .map(|service| format!("{service}.{namespace}.svc.cluster.local"));
    let mut supplied = TealArgs {
        rollout: rollout.to_owned(),
        revision: key.revision,
        color: key.color,
        preview_address,
    }
    .pairs();
    for arg in &analysis.args {
        let value = arg.value.clone().ok_or_else(|| {
            format!(
                "analysis arg {:?} has no value (valueFrom is not supported)",
                arg.name
            )
        })?;
        supplied.push((arg.name.clone(), value));
    }
    AnalysisRun::start(&combined, &supplied, now).map_err(|error| error.to_string())
}
