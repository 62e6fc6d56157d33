//! `teal controller`: watch Rollouts of both groups and their ReplicaSets, reconcile
//! each change, while this replica holds the leader Lease.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::Error;
use crate::analysis::Measurer;
use crate::controller::{self, Context, now_millis};
use crate::crd::{AnyRollout, Flavor, ROLLOUT_LABEL};
use crate::lease::LeaseLock;

/// The longest a Rollout goes without a reconcile (Services are not watched).
const RESYNC: Duration = Duration::from_secs(60);
/// After a failed reconcile.
const RETRY: Duration = Duration::from_secs(5);

/// How `teal controller` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only this namespace; None: all.
    pub namespace: Option<String>,
    /// This replica's name in the Lease and in events (the pod name).
    pub identity: String,
    /// Where the Lease lives.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long leadership lasts without renewal.
    pub lease_duration: Duration,
}

/// Runs until Ctrl-C (or SIGTERM's default): waits for leadership, then reconciles;
/// steps down (and stops reconciling) when a renewal fails.
pub async fn run(
    client: Client,
    options: Options,
    measurer: Arc<dyn Measurer>,
) -> anyhow::Result<()> {
    run_until(client, options, measurer, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Aborts a task when dropped: the reconcilers never outlive the leadership (or the
/// process's main task) they ran under.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Like [`run`], until `shutdown` completes; then gives the Lease up so another
/// replica takes over at once.
pub async fn run_until(
    client: Client,
    options: Options,
    measurer: Arc<dyn Measurer>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let lock = LeaseLock::new(
        client.clone(),
        &options.lease_namespace,
        &options.lease_name,
        &options.identity,
        options.lease_duration,
    );
    let renew_every = options.lease_duration / 3;
    loop {
        let leading = match lock.try_acquire_or_renew(now_millis()).await {
            Ok(leading) => leading,
            Err(error) => {
                tracing::warn!(%error, "leader election failed");
                false
            }
        };
        if !leading {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(renew_every) => continue,
            }
        }
        tracing::info!(identity = options.identity, "leading: reconciling rollouts");
        let controllers = AbortOnDrop(tokio::spawn(reconcile_all(
            client.clone(),
            options.clone(),
            measurer.clone(),
        )));
        let stepped_down = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                _ = tokio::time::sleep(renew_every) => {}
            }
            match lock.try_acquire_or_renew(now_millis()).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break true,
            }
        };
        drop(controllers);
        if !stepped_down {
            let _ = lock.release().await;
            return Ok(());
        }
        tracing::warn!("lost the leader Lease: stopped reconciling");
    }
}

/// The controllers of both Rollout groups; a group whose CRD is not installed is
/// skipped with a log line.
async fn reconcile_all(client: Client, options: Options, measurer: Arc<dyn Measurer>) {
    let context = Arc::new(Context::new(client.clone(), &options.identity, measurer));
    let mut tasks = Vec::new();
    for flavor in Flavor::ALL {
        let resource = flavor.api_resource();
        let api: Api<AnyRollout> = match &options.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        if let Err(error) = api.list(&ListParams::default().limit(1)).await {
            tracing::info!(
                group = resource.group,
                %error,
                "not watching this Rollout group (is its CRD installed?)"
            );
            continue;
        }
        let replica_sets: Api<ReplicaSet> = match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let context = context.clone();
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            Controller::new_with(api, watcher::Config::default(), resource)
                .owns_with(
                    replica_sets,
                    (),
                    watcher::Config::default().labels(ROLLOUT_LABEL),
                )
                .run(
                    move |rollout, context| reconcile(rollout, context, flavor),
                    |_, error, _| {
                        tracing::warn!(%error, "reconcile failed");
                        Action::requeue(RETRY)
                    },
                    context,
                )
                .for_each(|_| async {})
                .await;
        })));
    }
    for task in &mut tasks {
        let _ = (&mut task.0).await;
    }
}

async fn reconcile(
    rollout: Arc<AnyRollout>,
    context: Arc<Context>,
    flavor: Flavor,
) -> Result<Action, Error> {
    let namespace = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    match controller::reconcile(&context, flavor, &namespace, &name, now_millis()).await {
        Ok(requeue) => Ok(Action::requeue(requeue.map_or(RESYNC, |r| r.min(RESYNC)))),
        Err(error @ (Error::Missing(_) | Error::Invalid(_))) => {
            report_invalid(&context, flavor, &rollout, &error).await;
            Err(error)
        }
        Err(error) => Err(error),
    }
}

/// A spec naming objects that do not exist is an InvalidSpec, as in Argo: the status
/// says so; nothing running is touched.
async fn report_invalid(context: &Context, flavor: Flavor, rollout: &AnyRollout, error: &Error) {
    let api: Api<AnyRollout> = Api::namespaced_with(
        context.client.clone(),
        &rollout.namespace().unwrap_or_default(),
        &flavor.api_resource(),
    );
    let message = format!("InvalidSpec: {error}");
    if rollout.status.as_ref().and_then(|s| s.message.as_deref()) == Some(message.as_str()) {
        return;
    }
    let patch = json!({"status": {"phase": "Degraded", "message": message}});
    if let Err(error) = api
        .patch_status(
            &rollout.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(%error, "could not write the status");
    }
}
