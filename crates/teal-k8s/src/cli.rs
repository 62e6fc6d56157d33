//! The CLI's verbs against a cluster, as `kubectl argo rollouts` does them: each is a
//! patch of the Rollout (its status for promote, abort and retry; its template for
//! undo) that the controller acts on. Before writing, the verb is checked with the
//! state machine itself, so a stale or impossible command is refused with the same
//! words as on one machine; the write carries the resourceVersion it checked, so a
//! Rollout that changed meanwhile is not overwritten.

use std::fmt::Write as _;
use std::path::Path;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use teal_core::rollout::{Event, Revision, Stage, Status};

use crate::analysis::{ANALYSIS_ANNOTATION, StoredRun};
use crate::controller::owned_replica_sets;
use crate::crd::{
    AnyRollout, COLOR_LABEL, Flavor, HASH_LABEL, REVISION_ANNOTATION, STATE_ANNOTATION,
    TEMPLATE_ANNOTATION, annotation,
};
use crate::spec_check;

/// A client for the cluster a kubeconfig names; the namespace is `namespace`, else
/// the context's, else `default`.
pub async fn connect(
    kubeconfig: &Path,
    context: Option<String>,
    namespace: Option<String>,
) -> anyhow::Result<(Client, String)> {
    let file = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", kubeconfig.display()))?;
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", kubeconfig.display()))?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

/// A Rollout found in the cluster, with its flavor.
pub struct Found {
    /// Which group it belongs to.
    pub flavor: Flavor,
    /// The object.
    pub rollout: AnyRollout,
}

impl Found {
    /// teal's state, from the annotation the controller writes.
    pub fn state(&self) -> Status {
        annotation(&self.rollout, STATE_ANNOTATION).unwrap_or_default()
    }
}

/// Finds Rollout `name` (teal.dev first, then argoproj.io).
pub async fn find(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Found> {
    find_in(client, namespace, name, None).await
}

/// Like [`find`], looking in the `known` group first (where it was last found): one
/// read instead of two for an argoproj.io Rollout. Looks in both when it is not there.
pub async fn find_in(
    client: &Client,
    namespace: &str,
    name: &str,
    known: Option<Flavor>,
) -> anyhow::Result<Found> {
    if let Some(flavor) = known {
        let api: Api<AnyRollout> =
            Api::namespaced_with(client.clone(), namespace, &flavor.api_resource());
        if let Ok(Some(rollout)) = api.get_opt(name).await {
            return Ok(Found { flavor, rollout });
        }
    }
    for flavor in Flavor::ALL {
        let api: Api<AnyRollout> =
            Api::namespaced_with(client.clone(), namespace, &flavor.api_resource());
        match api.get_opt(name).await {
            Ok(Some(rollout)) => return Ok(Found { flavor, rollout }),
            Ok(None) => {}
            // The group's CRD is not installed: look in the other one.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!(
        "no Rollout {name:?} in namespace {namespace:?} (looked for teal.dev and argoproj.io Rollouts)"
    )
}

/// One line of `teal list`.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Its name.
    pub name: String,
    /// `teal.dev/v1alpha1` or `argoproj.io/v1alpha1`.
    pub api_version: String,
    /// Argo's phase.
    pub phase: String,
    /// The newest revision.
    pub revision: Revision,
    /// The hash users are on.
    pub active: String,
    /// The hash testers are on.
    pub preview: String,
    /// The hash of the spec's template.
    pub current: String,
    /// The status message.
    pub message: String,
}

fn summary(flavor: Flavor, rollout: &AnyRollout) -> Summary {
    let status = rollout.status.clone().unwrap_or_default();
    Summary {
        name: rollout.name_any(),
        api_version: flavor.api_version(),
        phase: status.phase.unwrap_or_default(),
        revision: rollout
            .annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        active: status.blue_green.active_selector.unwrap_or_default(),
        preview: status.blue_green.preview_selector.unwrap_or_default(),
        current: status.current_pod_hash.unwrap_or_default(),
        message: status.message.unwrap_or_default(),
    }
}

/// Every Rollout of both groups in the namespace.
pub async fn list(client: &Client, namespace: &str) -> anyhow::Result<Vec<Summary>> {
    let mut found = Vec::new();
    for flavor in Flavor::ALL {
        let api: Api<AnyRollout> =
            Api::namespaced_with(client.clone(), namespace, &flavor.api_resource());
        match api.list(&ListParams::default()).await {
            Ok(list) => found.extend(list.items.iter().map(|r| summary(flavor, r))),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(found)
}

/// `teal list` as text.
pub fn render_list(rollouts: &[Summary]) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:>8} {:<12} {:<12} {}\n",
        "NAME", "PHASE", "REVISION", "ACTIVE", "PREVIEW", "MESSAGE"
    );
    for r in rollouts {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:>8} {:<12} {:<12} {}",
            r.name, r.phase, r.revision, r.active, r.preview, r.message
        );
    }
    out
}

/// One ReplicaSet in `teal get`.
#[derive(Debug, Serialize)]
pub struct RevisionLine {
    /// Its revision.
    pub revision: Option<Revision>,
    /// Its pod-template hash.
    pub hash: String,
    /// Its color, while it runs.
    pub color: Option<String>,
    /// Desired pods.
    pub replicas: i32,
    /// Available pods.
    pub available: i32,
    /// Where the routes send users and testers.
    pub role: String,
}

/// Everything `teal get` shows.
#[derive(Debug, Serialize)]
pub struct Details {
    /// The summary line.
    #[serde(flatten)]
    pub summary: Summary,
    /// Its ReplicaSets, newest first.
    pub revisions: Vec<RevisionLine>,
    /// Conditions: type, status, message.
    pub conditions: Vec<Value>,
    /// The current (or last) analysis run, as the controller keeps it.
    pub analysis: Option<StoredRun>,
}

/// `teal get NAME` against the cluster.
pub async fn get(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Details> {
    let found = find(client, namespace, name).await?;
    let status = found.rollout.status.clone().unwrap_or_default();
    let mut revisions: Vec<RevisionLine> = owned_replica_sets(client, namespace, &found.rollout)
        .await?
        .into_iter()
        .map(|rs| {
            let hash = rs.labels().get(HASH_LABEL).cloned().unwrap_or_default();
            let mut roles = Vec::new();
            if status.blue_green.active_selector.as_deref() == Some(hash.as_str()) {
                roles.push("active");
            }
            if status.blue_green.preview_selector.as_deref() == Some(hash.as_str())
                && status.blue_green.active_selector != status.blue_green.preview_selector
            {
                roles.push("preview");
            }
            RevisionLine {
                revision: rs
                    .annotations()
                    .get(REVISION_ANNOTATION)
                    .and_then(|r| r.parse().ok()),
                color: rs.labels().get(COLOR_LABEL).cloned(),
                replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                available: rs
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
                role: roles.join(","),
                hash,
            }
        })
        .collect();
    revisions.sort_by_key(|r| std::cmp::Reverse(r.revision));
    Ok(Details {
        summary: summary(found.flavor, &found.rollout),
        revisions,
        analysis: annotation(&found.rollout, ANALYSIS_ANNOTATION),
        conditions: status
            .conditions
            .iter()
            .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message}))
            .collect(),
    })
}

/// `teal get` as text.
pub fn render_details(details: &Details) -> String {
    let s = &details.summary;
    let mut out = String::new();
    let _ = writeln!(out, "Name:      {} ({})", s.name, s.api_version);
    let _ = writeln!(out, "Phase:     {}", s.phase);
    let _ = writeln!(out, "Message:   {}", s.message);
    let _ = writeln!(out, "Revision:  {}", s.revision);
    let _ = writeln!(out, "Active:    {}", s.active);
    let _ = writeln!(out, "Preview:   {}", s.preview);
    let _ = writeln!(out, "\nREVISION  HASH        COLOR  PODS   ROLE");
    for r in &details.revisions {
        let _ = writeln!(
            out,
            "{:<9} {:<11} {:<6} {:<6} {}",
            r.revision.map_or("-".to_owned(), |v| v.to_string()),
            r.hash,
            r.color.as_deref().unwrap_or("-"),
            format!("{}/{}", r.available, r.replicas),
            r.role
        );
    }
    if let Some(stored) = &details.analysis {
        let _ = writeln!(
            out,
            "\nAnalysis:  {} of revision {}: {}",
            stored.key.kind,
            stored.key.revision,
            stored.phase().as_str()
        );
        if let Some(error) = &stored.error {
            let _ = writeln!(out, "  {error}");
        }
        for metric in stored.run.iter().flat_map(|run| &run.metrics) {
            let last = metric
                .measurements
                .last()
                .map(|m| match (&m.value, &m.message) {
                    (_, Some(message)) => message.clone(),
                    (Some(value), None) => format!("{value:?}"),
                    (None, None) => "no data".to_owned(),
                })
                .unwrap_or_else(|| "not measured yet".to_owned());
            let _ = writeln!(
                out,
                "  {:<20} {:<12} {} measured, {} failed; last: {last}",
                metric.metric.name,
                metric.phase.as_str(),
                metric.count,
                metric.failed
            );
        }
    }
    for c in &details.conditions {
        if c["status"] == "True" && c["type"] != "Progressing" {
            let _ = writeln!(
                out,
                "\n{}: {}",
                c["type"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            );
        }
    }
    out
}

/// Checks a verb with the state machine: the refusal, if any, in its own words.
fn check(found: &Found, event: Event) -> anyhow::Result<Status> {
    let state = found.state();
    let policy = spec_check::policy(&found.rollout.spec);
    let now = crate::controller::now_millis();
    let transition = state
        .on(event, &policy, now)
        .map_err(|refusal| anyhow::anyhow!("{}: {refusal}", found.rollout.name_any()))?;
    Ok(transition.status)
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    found: &Found,
    status: Value,
) -> anyhow::Result<()> {
    let api: Api<AnyRollout> =
        Api::namespaced_with(client.clone(), namespace, &found.flavor.api_resource());
    let patch = json!({
        "metadata": {"resourceVersion": found.rollout.resource_version()},
        "status": status,
    });
    api.patch_status(
        &found.rollout.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|error| match error {
        kube::Error::Api(status) if status.code == 409 => anyhow::anyhow!(
            "{} changed while the command ran; look at it again (teal get) and repeat",
            found.rollout.name_any()
        ),
        other => other.into(),
    })?;
    Ok(())
}

/// `teal promote NAME [--revision N]`: clears the pause (as `kubectl argo rollouts
/// promote` does), or asks for promotion once ready.
pub async fn promote(
    client: &Client,
    namespace: &str,
    name: &str,
    expected_revision: Option<Revision>,
) -> anyhow::Result<String> {
    let found = find(client, namespace, name).await?;
    check(&found, Event::PromoteRequested { expected_revision })?;
    let state = found.state();
    let paused = state
        .candidate
        .as_ref()
        .is_some_and(|c| c.stage == Stage::Paused)
        || state
            .post_analysis
            .as_ref()
            .is_some_and(|p| p.hold.is_some());
    let status = if paused {
        json!({"pauseConditions": null})
    } else {
        json!({"promoteFull": true})
    };
    patch_status(client, namespace, &found, status).await?;
    let revision = state
        .candidate
        .map(|c| c.slot.revision)
        .or(state.post_analysis.map(|p| p.revision))
        .unwrap_or(state.revision);
    Ok(format!("{name}: promote of revision {revision} requested"))
}

/// `teal abort NAME`: sets `status.abort`.
pub async fn abort(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let found = find(client, namespace, name).await?;
    check(
        &found,
        Event::AbortRequested {
            reason: "aborted by a person".to_owned(),
        },
    )?;
    patch_status(client, namespace, &found, json!({"abort": true})).await?;
    Ok(format!(
        "{name}: abort requested; users stay on the stable revision"
    ))
}

/// `teal retry NAME`: clears `status.abort`.
pub async fn retry(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let found = find(client, namespace, name).await?;
    check(&found, Event::RetryRequested)?;
    patch_status(client, namespace, &found, json!({"abort": false})).await?;
    Ok(format!("{name}: retry requested"))
}

/// `teal undo NAME [--to-revision N]`: copies the template of an older ReplicaSet
/// back into the spec, as `kubectl argo rollouts undo` does; the controller switches
/// back at once while that color is still warm.
pub async fn undo(
    client: &Client,
    namespace: &str,
    name: &str,
    to_revision: Option<Revision>,
) -> anyhow::Result<String> {
    let found = find(client, namespace, name).await?;
    let current = found.state().revision;
    let owned = owned_replica_sets(client, namespace, &found.rollout).await?;
    let revision_of = |rs: &ReplicaSet| -> Option<Revision> {
        rs.annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
    };
    let target = match to_revision {
        Some(wanted) => owned
            .iter()
            .find(|rs| revision_of(rs) == Some(wanted))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{name}: no ReplicaSet of revision {wanted} is kept (revisionHistoryLimit)"
                )
            })?,
        None => owned
            .iter()
            .filter(|rs| revision_of(rs).is_some_and(|r| r < current))
            .max_by_key(|rs| revision_of(rs))
            .ok_or_else(|| anyhow::anyhow!("{name}: no earlier revision to go back to"))?,
    };
    let template = match target.annotations().get(TEMPLATE_ANNOTATION) {
        Some(original) => serde_json::from_str(original)?,
        None => {
            // A ReplicaSet teal did not create: its template, without the labels a
            // controller adds.
            let mut template = target
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(HASH_LABEL);
                labels.remove(COLOR_LABEL);
            }
            template
        }
    };
    let api: Api<AnyRollout> =
        Api::namespaced_with(client.clone(), namespace, &found.flavor.api_resource());
    // A whole replace, not a merge: fields the newer template added must go. It
    // carries the resourceVersion read above, so a concurrent change gets a 409.
    let mut rollout = found.rollout.clone();
    rollout.spec.template = template;
    api.replace(name, &PostParams::default(), &rollout).await?;
    Ok(format!(
        "{name}: template of revision {} restored",
        revision_of(target).unwrap_or(0)
    ))
}
