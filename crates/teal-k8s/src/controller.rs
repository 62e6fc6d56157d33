//! The controller's I/O: read a Rollout and its ReplicaSets and routes, run the plan,
//! make its writes, publish the status and events. Every decision is in
//! [`crate::plan`]; this module only talks to the API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PostParams};
use kube::core::DynamicObject;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde_json::json;
use teal_core::Color;
use teal_core::rollout::{Millis, Status};

use crate::analysis::{self, ANALYSIS_ANNOTATION, Measurer, StoredRun};
use crate::crd::{
    AnyRollout, COLOR_LABEL, FIELD_MANAGER, Flavor, HASH_LABEL, REVISION_ANNOTATION, ROLLOUT_LABEL,
    STATE_ANNOTATION, TEMPLATE_ANNOTATION, annotation, create_params, merge_params,
};
use crate::plan::{self, Action, Observed, Plan, ReplicaSetView};
use crate::routes::Routers;
use crate::{Error, spec_check};

/// The finalizer teal puts on Rollouts, so Services are handed back on delete.
pub const FINALIZER: &str = "teal.dev/cleanup";
/// Attempts of one reconcile when the Rollout changed under it (409 Conflict).
const CONFLICT_ATTEMPTS: usize = 5;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// What the controller needs to talk to the cluster.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Takes analysis measurements.
    pub measurer: Arc<dyn Measurer>,
}

impl Context {
    /// A context for `client`, reporting events as `instance`, measuring with
    /// `measurer`.
    pub fn new(client: Client, instance: &str, measurer: Arc<dyn Measurer>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(instance.to_owned()),
            },
        );
        Context {
            client,
            recorder,
            measurer,
        }
    }
}

fn rollouts(client: &Client, flavor: Flavor, namespace: &str) -> Api<AnyRollout> {
    Api::namespaced_with(client.clone(), namespace, &flavor.api_resource())
}

/// Reconciles one Rollout once at time `now`; returns when to look again. A Rollout
/// changed by someone else meanwhile (409) is read again and decided again.
pub async fn reconcile(
    context: &Context,
    flavor: Flavor,
    namespace: &str,
    name: &str,
    now: Millis,
) -> Result<Option<Duration>, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match reconcile_attempt(context, flavor, namespace, name, now).await {
            Err(Error::Kube(kube::Error::Api(status)))
                if status.code == 409 && attempt < CONFLICT_ATTEMPTS =>
            {
                tracing::debug!(rollout = name, "conflict, reading again");
            }
            other => return other,
        }
    }
}

async fn reconcile_attempt(
    context: &Context,
    flavor: Flavor,
    namespace: &str,
    name: &str,
    now: Millis,
) -> Result<Option<Duration>, Error> {
    let client = &context.client;
    let api = rollouts(client, flavor, namespace);
    // Read untyped first: the spec as written shows the fields teal does not read, and
    // a spec that does not parse still gets a status saying why.
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &flavor.api_resource());
    let Some(object) = dynamic.get_opt(name).await? else {
        return Ok(None);
    };
    let raw_spec = object.data["spec"].clone();
    let rollout: AnyRollout = match serde_json::to_value(&object).and_then(serde_json::from_value) {
        Ok(rollout) => rollout,
        Err(error) => {
            let message = format!("InvalidSpec: the Rollout does not parse: {error}");
            let patch = json!({"status": {
                "phase": "Degraded",
                "message": message,
                "observedGeneration": object.metadata.generation.map(|g| g.to_string()),
            }});
            if object.data["status"]["message"] != json!(message) {
                api.patch_status(name, &merge_params(), &Patch::Merge(&patch))
                    .await?;
            }
            return Ok(None);
        }
    };
    if rollout.metadata.deletion_timestamp.is_some() {
        release(client, &api, &rollout).await?;
        return Ok(None);
    }
    let replica_sets = owned_replica_sets(client, namespace, &rollout).await?;
    let views: Vec<ReplicaSetView> = replica_sets.iter().map(view_of).collect();
    let routers = Routers {
        client,
        namespace,
        rollout: name,
        spec: &rollout.spec,
    };
    let valid = spec_check::validate(&rollout.spec).is_ok();
    let routes = if valid {
        routers.observe(&views).await?
    } else {
        Default::default()
    };
    let state: Option<Status> = annotation(&rollout, STATE_ANNOTATION);
    let stored_run: Option<StoredRun> = annotation(&rollout, ANALYSIS_ANNOTATION);
    let progress = if valid {
        analysis::advance(
            client,
            namespace,
            name,
            &owner_reference(flavor, &rollout),
            &rollout.spec,
            &state.clone().unwrap_or_default(),
            stored_run,
            context.measurer.as_ref(),
            now,
        )
        .await
    } else {
        analysis::Progress {
            stored: stored_run,
            event: None,
            next_at: None,
        }
    };
    let observed = Observed {
        name: name.to_owned(),
        spec: rollout.spec.clone(),
        raw_spec,
        generation: rollout.metadata.generation,
        status: rollout.status.clone().unwrap_or_default(),
        state,
        replica_sets: views,
        routes,
        analysis_events: progress.event.into_iter().collect(),
        now,
    };
    let plan = plan::plan(&observed);
    execute(
        context,
        flavor,
        namespace,
        &rollout,
        &routers,
        &plan,
        &progress.stored,
    )
    .await?;
    // A run the new state waits for starts at once; otherwise look again when a
    // measurement is due or time alone changes something.
    let wanted = analysis::wanted(&plan.state);
    let stored = progress.stored.as_ref().map(|s| s.key);
    let starts_now = wanted.is_some_and(|key| stored != Some(key));
    let measure_at = progress
        .next_at
        .filter(|_| wanted == stored)
        .map(|at| Duration::from_millis(at.saturating_sub(now)));
    let wakes = [
        plan.requeue_after,
        measure_at,
        starts_now.then_some(Duration::ZERO),
    ];
    Ok(wakes.into_iter().flatten().min())
}

/// The ReplicaSets `rollout` owns (selected by its labels, kept by owner reference).
pub(crate) async fn owned_replica_sets(
    client: &Client,
    namespace: &str,
    rollout: &AnyRollout,
) -> Result<Vec<ReplicaSet>, Error> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let labels = rollout
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let uid = rollout.metadata.uid.clone().unwrap_or_default();
    let list = api.list(&ListParams::default().labels(&labels)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|owner| owner.uid == uid && owner.kind == "Rollout")
        })
        .collect())
}

fn view_of(rs: &ReplicaSet) -> ReplicaSetView {
    let status = rs.status.clone().unwrap_or_default();
    ReplicaSetView {
        name: rs.name_any(),
        hash: rs.labels().get(HASH_LABEL).cloned().unwrap_or_default(),
        color: rs
            .labels()
            .get(COLOR_LABEL)
            .and_then(|c| c.parse::<Color>().ok()),
        revision: rs
            .annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok()),
        replicas: rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32,
        available: status.available_replicas.unwrap_or(0).max(0) as u32,
        ready: status.ready_replicas.unwrap_or(0).max(0) as u32,
        problem: status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .and_then(|c| c.message),
    }
}

async fn execute(
    context: &Context,
    flavor: Flavor,
    namespace: &str,
    rollout: &AnyRollout,
    routers: &Routers<'_>,
    plan: &Plan,
    run: &Option<StoredRun>,
) -> Result<(), Error> {
    let client = &context.client;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let running: BTreeMap<Color, String> = Color::ALL
        .into_iter()
        .filter_map(|color| {
            plan.desired
                .deployment(color)
                .map(|d| (color, d.template_hash.clone()))
        })
        .collect();
    for action in &plan.actions {
        tracing::info!(rollout = rollout.name_any(), ?action, "acting");
        match action {
            Action::CreateReplicaSet {
                name,
                hash,
                color,
                revision,
                replicas,
            } => {
                let rs = replica_set(flavor, rollout, name, hash, *color, *revision, *replicas)?;
                replica_sets.create(&create_params(), &rs).await?;
            }
            Action::UpdateReplicaSet {
                name,
                color,
                replicas,
                revision,
            } => {
                let mut patch = json!({});
                if let Some(color) = color {
                    let label = color.map(|c| c.as_str());
                    patch["metadata"]["labels"] = json!({ COLOR_LABEL: label });
                    patch["spec"]["template"]["metadata"]["labels"] = json!({ COLOR_LABEL: label });
                }
                if let Some(replicas) = replicas {
                    patch["spec"]["replicas"] = json!(replicas);
                }
                if let Some(revision) = revision {
                    patch["metadata"]["annotations"] =
                        json!({ REVISION_ANNOTATION: revision.to_string() });
                }
                replica_sets
                    .patch(name, &merge_params(), &Patch::Merge(&patch))
                    .await?;
            }
            Action::DeleteReplicaSet { name } => {
                replica_sets.delete(name, &DeleteParams::default()).await?;
            }
            Action::Route { active, preview } => {
                routers
                    .point(active.as_ref(), preview.as_ref(), &running)
                    .await?;
                let roles = |color: Color| {
                    if active.as_ref().is_some_and(|(c, _)| *c == color) {
                        Some(Role::Active)
                    } else if preview.as_ref().is_some_and(|(c, _)| *c == color) {
                        Some(Role::Preview)
                    } else {
                        None
                    }
                };
                label_roles(client, namespace, rollout, &running, roles).await?;
            }
        }
    }

    // The status first: if the state annotation below fails, the next reconcile
    // decides again from a status that already says what happened.
    let api = rollouts(client, flavor, namespace);
    let name = rollout.name_any();
    let mut updated = rollout.clone();
    updated.status = Some(plan.status.clone());
    let written = if rollout.status.as_ref() != Some(&plan.status) {
        api.replace_status(&name, &PostParams::default(), &updated)
            .await?
    } else {
        updated
    };
    let state = serde_json::to_string(&plan.state).expect("a status always serializes");
    let mut finalizers = rollout.finalizers().to_vec();
    let needs_finalizer = !finalizers.iter().any(|f| f == FINALIZER);
    if needs_finalizer {
        finalizers.push(FINALIZER.to_owned());
    }
    let run = run
        .as_ref()
        .map(|run| serde_json::to_string(run).expect("a run always serializes"));
    if rollout.annotations().get(STATE_ANNOTATION) != Some(&state)
        || rollout.annotations().get(ANALYSIS_ANNOTATION) != run.as_ref()
        || needs_finalizer
    {
        let patch = json!({
            "metadata": {
                "resourceVersion": written.resource_version(),
                "finalizers": finalizers,
                "annotations": {
                    STATE_ANNOTATION: state,
                    REVISION_ANNOTATION: plan.state.revision.to_string(),
                    ANALYSIS_ANNOTATION: run,
                },
            }
        });
        api.patch(&name, &merge_params(), &Patch::Merge(&patch))
            .await?;
    }

    let reference = object_reference(flavor, rollout);
    for notice in &plan.notices {
        let event = KubeEvent {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.clone(),
            note: Some(notice.note.clone()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            // An event is a courtesy; the status already says what happened.
            tracing::warn!(rollout = name, %error, "could not publish an event");
        }
    }
    Ok(())
}

fn object_reference(flavor: Flavor, rollout: &AnyRollout) -> ObjectReference {
    ObjectReference {
        api_version: Some(flavor.api_version()),
        kind: Some("Rollout".to_owned()),
        name: rollout.metadata.name.clone(),
        namespace: rollout.metadata.namespace.clone(),
        uid: rollout.metadata.uid.clone(),
        resource_version: rollout.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// What a color is to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Active,
    Preview,
}

/// `activeMetadata` / `previewMetadata`: the labels and annotations of a role go on
/// the pods of the color that has it (their ReplicaSet's template for pods to come,
/// and the pods already running), and come off a color that lost it.
async fn label_roles(
    client: &Client,
    namespace: &str,
    rollout: &AnyRollout,
    running: &BTreeMap<Color, String>,
    role_of: impl Fn(Color) -> Option<Role>,
) -> Result<(), Error> {
    let Ok(bg) = spec_check::blue_green(&rollout.spec) else {
        return Ok(());
    };
    if bg.active_metadata.is_none() && bg.preview_metadata.is_none() {
        return Ok(());
    }
    let empty = crate::crd::PodMetadata::default();
    let active = bg.active_metadata.as_ref().unwrap_or(&empty);
    let preview = bg.preview_metadata.as_ref().unwrap_or(&empty);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    for (color, hash) in running {
        let wanted = match role_of(*color) {
            Some(Role::Active) => active,
            Some(Role::Preview) => preview,
            None => &empty,
        };
        // Keys of either role that this color should not carry are removed (null).
        let mut labels = serde_json::Map::new();
        let mut annotations = serde_json::Map::new();
        for meta in [active, preview] {
            for key in meta.labels.keys() {
                labels.insert(key.clone(), serde_json::Value::Null);
            }
            for key in meta.annotations.keys() {
                annotations.insert(key.clone(), serde_json::Value::Null);
            }
        }
        for (key, value) in &wanted.labels {
            labels.insert(key.clone(), json!(value));
        }
        for (key, value) in &wanted.annotations {
            annotations.insert(key.clone(), json!(value));
        }
        let metadata = json!({"labels": labels, "annotations": annotations});
        let owned = replica_sets
            .list(&ListParams::default().labels(&format!("{HASH_LABEL}={hash}")))
            .await?;
        for rs in owned.items {
            let patch = json!({"spec": {"template": {"metadata": metadata}}});
            replica_sets
                .patch(&rs.name_any(), &merge_params(), &Patch::Merge(&patch))
                .await?;
        }
        let running_pods = pods
            .list(&ListParams::default().labels(&format!("{HASH_LABEL}={hash}")))
            .await?;
        for pod in running_pods.items {
            let patch = json!({"metadata": metadata});
            pods.patch(&pod.name_any(), &merge_params(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

/// The Rollout as the owner of what teal creates for it (ReplicaSets, Jobs), so
/// Kubernetes deletes them with it.
fn owner_reference(flavor: Flavor, rollout: &AnyRollout) -> serde_json::Value {
    json!({
        "apiVersion": flavor.api_version(),
        "kind": "Rollout",
        "name": rollout.name_any(),
        "uid": rollout.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The ReplicaSet of one revision: the rollout's pod template, labelled with its hash
/// and color, owned by the Rollout.
fn replica_set(
    flavor: Flavor,
    rollout: &AnyRollout,
    name: &str,
    hash: &str,
    color: Color,
    revision: u64,
    replicas: u32,
) -> Result<ReplicaSet, Error> {
    let spec = &rollout.spec;
    let mut template = serde_json::to_value(&spec.template)?;
    let mut pod_labels: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
    pod_labels.insert(HASH_LABEL.to_owned(), hash.to_owned());
    pod_labels.insert(COLOR_LABEL.to_owned(), color.as_str().to_owned());
    template["metadata"]["labels"] = json!(pod_labels);
    let mut labels = pod_labels.clone();
    labels.insert(ROLLOUT_LABEL.to_owned(), rollout.name_any());
    let mut selector = spec.selector.match_labels.clone().unwrap_or_default();
    selector.insert(HASH_LABEL.to_owned(), hash.to_owned());
    let owner = owner_reference(flavor, rollout);
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": rollout.namespace(),
            "labels": labels,
            "annotations": {
                REVISION_ANNOTATION: revision.to_string(),
                TEMPLATE_ANNOTATION: serde_json::to_string(&spec.template)?,
            },
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }))?)
}

/// On delete: the Services stop being marked as managed, and the finalizer goes.
/// ReplicaSets are removed by Kubernetes through their owner references.
async fn release(
    client: &Client,
    api: &Api<AnyRollout>,
    rollout: &AnyRollout,
) -> Result<(), Error> {
    if let Ok(bg) = spec_check::blue_green(&rollout.spec) {
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), &rollout.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"annotations": {crate::crd::MANAGED_BY_ANNOTATION: null}}});
        for service in std::iter::once(&bg.active_service).chain(bg.preview_service.as_ref()) {
            if services.get_opt(service).await?.is_some() {
                services
                    .patch(service, &merge_params(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }
    let finalizers: Vec<&String> = rollout
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    if finalizers.len() != rollout.finalizers().len() {
        let patch = json!({"metadata": {"finalizers": finalizers}});
        api.patch(&rollout.name_any(), &merge_params(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
