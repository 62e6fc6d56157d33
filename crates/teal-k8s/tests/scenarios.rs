//! The controller against a fake API server: each scenario loads manifests, runs
//! reconciles at chosen times, plays a person (`kubectl argo rollouts promote` is a
//! status patch) or the kubelet (pods become available), and asserts the requests the
//! controller made and the objects they left.

mod fake;

use std::time::Duration;

use fake::FakeApi;
use serde_json::{Value, json};
use std::sync::Arc;

use teal_k8s::analysis::{Measurer, NoProviders};
use teal_k8s::controller::{self, Context};
use teal_k8s::crd::Flavor;
use teal_k8s::lease::LeaseLock;

const T0: u64 = 1_800_000_000_000;
const SECOND: u64 = 1000;

fn plural(kind: &str) -> &'static str {
    match kind {
        "Rollout" => "rollouts",
        "Service" => "services",
        "VirtualService" => "virtualservices",
        "DestinationRule" => "destinationrules",
        "HTTPRoute" => "httproutes",
        "AnalysisTemplate" => "analysistemplates",
        "Job" => "jobs",
        "Pod" => "pods",
        other => panic!("no plural for {other}"),
    }
}

/// A manifest file of tests/manifests.
fn manifest(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/manifests/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|error| panic!("tests/manifests/{file}: {error}"))
}

/// The rules deploy/kubernetes/rbac.yaml grants the controller: every scenario runs
/// with them, so a call they do not allow fails the scenario with a 403.
fn controller_rules() -> Vec<fake::Rule> {
    rules_of("rbac.yaml")
}

/// The rules deploy/kubernetes/gateway.yaml grants `teal gateway`.
fn gateway_rules() -> Vec<fake::Rule> {
    rules_of("gateway.yaml")
}

fn rules_of(file: &str) -> Vec<fake::Rule> {
    let text = std::fs::read_to_string(format!(
        "{}/../../deploy/kubernetes/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let documents: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|d| d["rules"].as_array().unwrap().clone())
        .map(|rule| serde_json::from_value(rule).unwrap())
        .collect()
}

struct Harness {
    fake: FakeApi,
    context: Context,
    flavor: Flavor,
    name: String,
}

impl Harness {
    /// Loads a manifest file of tests/manifests into a fresh fake cluster.
    fn new(file: &str) -> Harness {
        Harness::from_yaml(&manifest(file))
    }

    fn from_yaml(text: &str) -> Harness {
        Harness::with_measurer(text, Arc::new(NoProviders))
    }

    fn with_measurer(text: &str, measurer: Arc<dyn Measurer>) -> Harness {
        let documents: Vec<Value> = serde_saphyr::from_str_multiple(text).unwrap();
        let fake = FakeApi::default();
        let mut rollout = None;
        for document in documents {
            let kind = document["kind"].as_str().unwrap();
            if kind == "Rollout" {
                rollout = Some(document.clone());
            }
            fake.insert(plural(kind), document);
        }
        let rollout = rollout.expect("a Rollout in the manifests");
        let flavor = if rollout["apiVersion"] == "argoproj.io/v1alpha1" {
            Flavor::Argo
        } else {
            Flavor::Teal
        };
        Harness {
            context: Context::new(
                fake.client_with_rules(controller_rules()),
                "teal-controller-0",
                measurer,
            ),
            fake,
            flavor,
            name: rollout["metadata"]["name"].as_str().unwrap().to_owned(),
        }
    }

    async fn try_reconcile(&self, at: u64) -> Result<Option<Duration>, teal_k8s::Error> {
        controller::reconcile(&self.context, self.flavor, "default", &self.name, at).await
    }

    /// One reconcile at `at`; returns the writes it made.
    async fn reconcile(&self, at: u64) -> Vec<String> {
        self.fake.clear_calls();
        self.try_reconcile(at).await.expect("reconcile");
        self.fake.writes()
    }

    fn rollout(&self) -> Value {
        self.fake.get("rollouts", &self.name).unwrap()
    }

    fn status(&self) -> Value {
        self.rollout()["status"].clone()
    }

    fn phase(&self) -> String {
        self.status()["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn selector(&self, service: &str) -> String {
        self.fake.get("services", service).unwrap()["spec"]["selector"]
            ["rollouts-pod-template-hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn replica_set(&self, hash: &str) -> Value {
        self.fake
            .get("replicasets", &format!("{}-{hash}", self.name))
            .unwrap_or_else(|| panic!("no ReplicaSet for {hash}"))
    }

    fn replicas(&self, hash: &str) -> i64 {
        self.replica_set(hash)["spec"]["replicas"].as_i64().unwrap()
    }

    /// A new image: a new revision.
    fn set_image(&self, image: &str) {
        let mut template = self.rollout()["spec"]["template"].clone();
        template["spec"]["containers"][0]["image"] = json!(image);
        self.fake.edit(
            "rollouts",
            &self.name,
            json!({"spec": {"template": template}}),
        );
    }

    /// `kubectl argo rollouts promote`: clears the pause conditions.
    fn promote(&self) {
        self.fake.edit(
            "rollouts",
            &self.name,
            json!({"status": {"pauseConditions": null}, "spec": {"paused": false}}),
        );
    }

    fn hashes(&self) -> (String, String) {
        let status = self.status();
        (
            status["stableRS"].as_str().unwrap_or_default().to_owned(),
            status["currentPodHash"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    fn events(&self) -> Vec<String> {
        self.fake
            .all("events")
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["reason"].as_str().unwrap_or_default(),
                    e["note"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Runs the Argo example up to a paused preview of revision 2; returns (v1, v2) hashes.
async fn to_paused_preview(h: &Harness) -> (String, String) {
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    let (v1, _) = h.hashes();
    h.set_image("argoproj/rollouts-demo:green");
    h.reconcile(T0 + 2 * SECOND).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + 3 * SECOND).await;
    let (_, v2) = h.hashes();
    assert_eq!(h.phase(), "Paused");
    (v1, v2)
}

#[tokio::test]
async fn an_argo_manifest_goes_through_first_deploy_preview_promotion_and_scale_down() {
    let h = Harness::new("argo-bluegreen.yaml");
    let rs = |hash: &str| format!("replicasets/rollout-bluegreen-{hash}");

    // First deploy: a ReplicaSet, no route until its pods are available.
    let writes = h.reconcile(T0).await;
    let v1 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
    assert_eq!(
        writes,
        vec![
            "POST replicasets".to_owned(),
            "PUT rollouts/rollout-bluegreen/status".to_owned(),
            "PATCH rollouts/rollout-bluegreen".to_owned(),
        ]
    );
    let created = h.replica_set(&v1);
    assert_eq!(created["spec"]["replicas"], 2);
    assert_eq!(
        created["metadata"]["labels"]["rollouts-pod-template-hash"],
        v1.as_str()
    );
    assert_eq!(
        created["spec"]["template"]["metadata"]["labels"]["app"],
        "rollout-bluegreen"
    );
    assert_eq!(created["metadata"]["ownerReferences"][0]["kind"], "Rollout");
    assert_eq!(
        created["metadata"]["annotations"]["rollout.argoproj.io/revision"],
        "1"
    );
    assert_eq!(h.phase(), "Progressing");
    assert_eq!(h.selector("rollout-bluegreen-active"), "");
    assert_eq!(
        h.rollout()["metadata"]["finalizers"],
        json!(["teal.dev/cleanup"])
    );

    h.fake.make_pods_available();
    let writes = h.reconcile(T0 + SECOND).await;
    assert!(
        writes.contains(&"APPLY(teal-controller) services/rollout-bluegreen-active".to_owned()),
        "{writes:?}"
    );
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);
    assert_eq!(h.selector("rollout-bluegreen-preview"), v1);
    assert_eq!(h.phase(), "Healthy");
    assert_eq!(h.status()["stableRS"], v1.as_str());
    assert_eq!(h.status()["blueGreen"]["activeSelector"], v1.as_str());
    assert_eq!(h.status()["observedGeneration"], "1");

    // Nothing changed: a reconcile writes nothing.
    assert_eq!(h.reconcile(T0 + 2 * SECOND).await, Vec::<String>::new());

    // A new image: a second ReplicaSet in the other color, previewed, users stay.
    h.set_image("argoproj/rollouts-demo:green");
    let writes = h.reconcile(T0 + 3 * SECOND).await;
    let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(
        writes[..2],
        [
            "POST replicasets".to_owned(),
            "APPLY(teal-controller) services/rollout-bluegreen-preview".to_owned()
        ]
    );
    assert_eq!(
        h.replica_set(&v2)["metadata"]["labels"]["teal.dev/color"],
        "green"
    );
    assert_eq!(
        h.replica_set(&v1)["metadata"]["labels"]["teal.dev/color"],
        "blue"
    );
    assert_eq!(h.selector("rollout-bluegreen-preview"), v2);
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);

    // Available, autoPromotionEnabled false: paused as Argo pauses.
    h.fake.make_pods_available();
    h.reconcile(T0 + 4 * SECOND).await;
    let status = h.status();
    assert_eq!(h.phase(), "Paused");
    assert_eq!(status["pauseConditions"][0]["reason"], "BlueGreenPause");
    assert_eq!(status["controllerPause"], true);
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);

    // kubectl argo rollouts promote: the active Service switches.
    h.promote();
    let writes = h.reconcile(T0 + 5 * SECOND).await;
    assert!(
        writes.contains(&"APPLY(teal-controller) services/rollout-bluegreen-active".to_owned()),
        "{writes:?}"
    );
    assert_eq!(h.selector("rollout-bluegreen-active"), v2);
    assert_eq!(h.selector("rollout-bluegreen-preview"), v2);
    assert_eq!(h.phase(), "Healthy");
    assert_eq!(h.status()["stableRS"], v2.as_str());
    assert_eq!(h.status()["pauseConditions"], json!([]));

    // The old color stays warm for scaleDownDelaySeconds (30), then scales to zero.
    h.reconcile(T0 + 34 * SECOND).await;
    assert_eq!(h.replicas(&v1), 2);
    let writes = h.reconcile(T0 + 36 * SECOND).await;
    assert!(writes.contains(&format!("PATCH {}", rs(&v1))), "{writes:?}");
    assert_eq!(h.replicas(&v1), 0);
    assert!(h.replica_set(&v1)["metadata"]["labels"]["teal.dev/color"].is_null());
    assert_eq!(h.replicas(&v2), 2);

    let events = h.events();
    assert!(
        events.iter().any(|e| e.starts_with("RolloutPaused")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("RolloutPromoted")),
        "{events:?}"
    );
}

#[tokio::test]
async fn abort_sends_testers_back_and_retry_releases_again() {
    let h = Harness::new("argo-bluegreen.yaml");
    let (v1, v2) = to_paused_preview(&h).await;

    // kubectl argo rollouts abort
    h.fake
        .edit("rollouts", &h.name, json!({"status": {"abort": true}}));
    h.reconcile(T0 + 4 * SECOND).await;
    assert_eq!(h.phase(), "Degraded");
    assert!(
        h.status()["message"].as_str().unwrap().contains("aborted"),
        "{}",
        h.status()["message"]
    );
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);
    assert_eq!(h.selector("rollout-bluegreen-preview"), v1);
    assert_eq!(h.status()["abort"], true);
    // abortScaleDownDelaySeconds (30): the aborted pods go after it.
    assert_eq!(h.replicas(&v2), 2);
    h.reconcile(T0 + 35 * SECOND).await;
    assert_eq!(h.replicas(&v2), 0);
    assert_eq!(h.replicas(&v1), 2);

    // kubectl argo rollouts retry
    h.fake
        .edit("rollouts", &h.name, json!({"status": {"abort": false}}));
    h.reconcile(T0 + 40 * SECOND).await;
    assert_eq!(h.replicas(&v2), 2);
    assert_eq!(h.phase(), "Progressing");
    h.fake.make_pods_available();
    h.reconcile(T0 + 41 * SECOND).await;
    assert_eq!(h.phase(), "Paused");
    assert_eq!(h.selector("rollout-bluegreen-preview"), v2);
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);
}

#[tokio::test]
async fn undo_inside_the_scale_down_delay_switches_back_at_once() {
    let h = Harness::new("argo-bluegreen.yaml");
    let (v1, v2) = to_paused_preview(&h).await;
    h.promote();
    h.reconcile(T0 + 5 * SECOND).await;
    assert_eq!(h.selector("rollout-bluegreen-active"), v2);

    // kubectl argo rollouts undo: the old template is copied back into the spec.
    h.set_image("argoproj/rollouts-demo:blue");
    let writes = h.reconcile(T0 + 6 * SECOND).await;
    assert_eq!(h.selector("rollout-bluegreen-active"), v1);
    assert!(
        !writes.iter().any(|w| w == "POST replicasets"),
        "the warm ReplicaSet is reused, not recreated: {writes:?}"
    );
    assert_eq!(h.phase(), "Healthy");
    assert_eq!(
        h.replica_set(&v1)["metadata"]["annotations"]["rollout.argoproj.io/revision"],
        "3"
    );
    assert_eq!(
        h.rollout()["metadata"]["annotations"]["rollout.argoproj.io/revision"],
        "3"
    );
}

#[tokio::test]
async fn auto_promotion_waits_auto_promotion_seconds() {
    let yaml = manifest("argo-bluegreen.yaml")
        .replace("autoPromotionEnabled: false", "autoPromotionSeconds: 10");
    let h = Harness::from_yaml(&yaml);
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    h.set_image("argoproj/rollouts-demo:green");
    h.reconcile(T0 + 2 * SECOND).await;
    h.fake.make_pods_available();
    h.fake.clear_calls();
    let requeue = h.try_reconcile(T0 + 3 * SECOND).await.unwrap();
    let (v1, v2) = (
        h.status()["stableRS"].clone(),
        h.status()["currentPodHash"].clone(),
    );
    assert_eq!(h.phase(), "Paused");
    assert_eq!(requeue, Some(Duration::from_secs(10)));
    h.reconcile(T0 + 12 * SECOND).await;
    assert_eq!(json!(h.selector("rollout-bluegreen-active")), v1);
    h.reconcile(T0 + 13 * SECOND).await;
    assert_eq!(json!(h.selector("rollout-bluegreen-active")), v2);
    assert_eq!(h.phase(), "Healthy");
}

#[tokio::test]
async fn a_conflict_on_the_status_write_is_read_again_and_retried() {
    let h = Harness::new("argo-bluegreen.yaml");
    h.fake
        .fail_next("PUT", "rollouts/rollout-bluegreen/status", 409);
    h.fake.clear_calls();
    h.try_reconcile(T0).await.expect("a 409 is retried");
    let status_writes = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.line() == "PUT rollouts/rollout-bluegreen/status")
        .count();
    assert_eq!(status_writes, 2);
    assert_eq!(h.phase(), "Progressing");
    // The ReplicaSet created before the conflict is found again, not created twice.
    assert_eq!(h.fake.all("replicasets").len(), 1);
}

#[tokio::test]
async fn a_person_changing_the_rollout_between_read_and_write_is_not_overwritten() {
    let h = Harness::new("argo-bluegreen.yaml");
    let (_, v2) = to_paused_preview(&h).await;
    // The status write is stale when a promote lands first: the fake answers 409 as
    // the API server would for an old resourceVersion.
    h.fake
        .fail_next("PUT", "rollouts/rollout-bluegreen/status", 409);
    h.promote();
    h.try_reconcile(T0 + 5 * SECOND).await.unwrap();
    assert_eq!(h.selector("rollout-bluegreen-active"), v2);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_created() {
    let yaml = manifest("argo-bluegreen.yaml").replace(
        "    blueGreen:\n",
        "    canary:\n      steps:\n      - setWeight: 20\n    blueGreen:\n",
    );
    let h = Harness::from_yaml(&yaml);
    h.reconcile(T0).await;
    assert_eq!(h.phase(), "Degraded");
    let message = h.status()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("InvalidSpec") && message.contains("spec.strategy.canary"),
        "{message}"
    );
    assert!(h.fake.all("replicasets").is_empty());
}

#[tokio::test]
async fn a_missing_service_is_an_error_that_names_it_and_changes_nothing() {
    let yaml = manifest("argo-bluegreen.yaml").replace(
        "activeService: rollout-bluegreen-active",
        "activeService: nope",
    );
    let h = Harness::from_yaml(&yaml);
    let error = h.try_reconcile(T0).await.unwrap_err().to_string();
    assert!(
        error.contains("\"nope\"") && error.contains("does not exist"),
        "{error}"
    );
    assert!(h.fake.all("replicasets").is_empty());
}

#[tokio::test]
async fn fields_teal_does_not_read_are_reported_in_the_status() {
    let yaml = manifest("argo-bluegreen.yaml")
    .replace(
        "      autoPromotionEnabled: false\n",
        "      autoPromotionEnabled: false\n      antiAffinity:\n        requiredDuringSchedulingIgnoredDuringExecution: {}\n",
    );
    let h = Harness::from_yaml(&yaml);
    h.reconcile(T0).await;
    let conditions = h.status()["conditions"].clone();
    let unsupported = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "UnsupportedFields")
        .unwrap_or_else(|| panic!("no UnsupportedFields condition in {conditions}"));
    assert!(
        unsupported["message"]
            .as_str()
            .unwrap()
            .contains("spec.strategy.blueGreen.antiAffinity"),
        "{unsupported}"
    );
    // Still released.
    assert_eq!(h.fake.all("replicasets").len(), 1);
}

#[tokio::test]
async fn istio_routes_testers_with_the_cookie_to_the_preview_subset() {
    let h = Harness::new("istio.yaml");
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
    let host = "shop.default.svc.cluster.local";
    let rule = h.fake.get("destinationrules", "shop").unwrap();
    assert_eq!(
        rule["spec"]["subsets"],
        json!([{"name": "blue", "labels": {"rollouts-pod-template-hash": v1}}])
    );
    let service = h.fake.get("virtualservices", "shop").unwrap();
    assert_eq!(
        service["spec"]["http"],
        json!([{"name": "teal-active", "route": [{"destination": {"host": host, "subset": "blue"}}]}])
    );
    assert_eq!(
        service["spec"]["gateways"],
        json!(["shop-gateway"]),
        "user fields are kept"
    );

    let mut template = h.rollout()["spec"]["template"].clone();
    template["spec"]["containers"][0]["image"] = json!("shop:2");
    h.fake
        .edit("rollouts", "shop", json!({"spec": {"template": template}}));
    h.reconcile(T0 + 2 * SECOND).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + 3 * SECOND).await;
    let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
    let rule = h.fake.get("destinationrules", "shop").unwrap();
    assert_eq!(
        rule["spec"]["subsets"],
        json!([
            {"name": "blue", "labels": {"rollouts-pod-template-hash": v1}},
            {"name": "green", "labels": {"rollouts-pod-template-hash": v2}},
        ])
    );
    let http = h.fake.get("virtualservices", "shop").unwrap()["spec"]["http"].clone();
    assert_eq!(
        http,
        json!([
            {"name": "teal-preview",
             "match": [{"headers": {"cookie": {"regex": "^(.*?;\\s*)?(test=true)(;.*)?$"}}}],
             "route": [{"destination": {"host": host, "subset": "green"}}]},
            {"name": "teal-active", "route": [{"destination": {"host": host, "subset": "blue"}}]},
        ])
    );

    h.promote();
    let writes = h.reconcile(T0 + 4 * SECOND).await;
    assert!(
        writes.contains(&"APPLY(teal-controller) virtualservices/shop".to_owned()),
        "{writes:?}"
    );
    let http = h.fake.get("virtualservices", "shop").unwrap()["spec"]["http"].clone();
    assert_eq!(
        http,
        json!([{"name": "teal-active", "route": [{"destination": {"host": host, "subset": "green"}}]}])
    );
    // Nothing to change afterwards: the routes are read back as pointed.
    assert_eq!(h.reconcile(T0 + 5 * SECOND).await, Vec::<String>::new());
}

#[tokio::test]
async fn gateway_api_switches_an_httproute_between_one_service_per_color() {
    let h = Harness::new("gateway-api.yaml");
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    let writes = h.reconcile(T0 + SECOND).await;
    assert!(writes.contains(&"POST services".to_owned()), "{writes:?}");
    let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
    let blue = h.fake.get("services", "shop-blue").unwrap();
    assert_eq!(
        blue["spec"]["selector"],
        json!({"app": "shop", "rollouts-pod-template-hash": v1})
    );
    assert_eq!(blue["spec"]["ports"][0]["port"], 8080);
    let route = h.fake.get("httproutes", "shop").unwrap();
    assert_eq!(
        route["spec"]["rules"],
        json!([{"backendRefs": [{"name": "shop-blue", "port": 8080}]}])
    );
    assert_eq!(route["spec"]["hostnames"], json!(["shop.example.com"]));

    let mut template = h.rollout()["spec"]["template"].clone();
    template["spec"]["containers"][0]["image"] = json!("shop:2");
    h.fake
        .edit("rollouts", "shop", json!({"spec": {"template": template}}));
    h.reconcile(T0 + 2 * SECOND).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + 3 * SECOND).await;
    let route = h.fake.get("httproutes", "shop").unwrap();
    assert_eq!(
        route["spec"]["rules"],
        json!([
            {"matches": [{"headers": [{"type": "Exact", "name": "x-test", "value": "true"}]}],
             "backendRefs": [{"name": "shop-green", "port": 8080}]},
            {"backendRefs": [{"name": "shop-blue", "port": 8080}]},
        ])
    );
    h.promote();
    h.reconcile(T0 + 4 * SECOND).await;
    let route = h.fake.get("httproutes", "shop").unwrap();
    assert_eq!(
        route["spec"]["rules"],
        json!([{"backendRefs": [{"name": "shop-green", "port": 8080}]}])
    );
    assert_eq!(h.reconcile(T0 + 5 * SECOND).await, Vec::<String>::new());
}

#[tokio::test]
async fn deleting_the_rollout_releases_its_services_and_finalizer() {
    let h = Harness::new("argo-bluegreen.yaml");
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    let annotations =
        h.fake.get("services", "rollout-bluegreen-active").unwrap()["metadata"]["annotations"]
            .clone();
    assert_eq!(
        annotations["argo-rollouts.argoproj.io/managed-by-rollouts"],
        "rollout-bluegreen"
    );
    h.fake.edit(
        "rollouts",
        &h.name,
        json!({"metadata": {"deletionTimestamp": "2026-11-23T00:00:00Z"}}),
    );
    h.reconcile(T0 + 2 * SECOND).await;
    let service = h.fake.get("services", "rollout-bluegreen-active").unwrap();
    assert!(
        service["metadata"]["annotations"]["argo-rollouts.argoproj.io/managed-by-rollouts"]
            .is_null()
    );
    assert!(
        h.fake.get("rollouts", &h.name).is_none(),
        "the finalizer was removed"
    );
}

#[tokio::test]
async fn leadership_passes_to_the_second_replica_only_after_the_lease_expires() {
    let fake = FakeApi::default();
    let lease = Duration::from_secs(15);
    let client = fake.client_with_rules(controller_rules());
    let a = LeaseLock::new(client.clone(), "teal-system", "teal-controller", "a", lease);
    let b = LeaseLock::new(client, "teal-system", "teal-controller", "b", lease);
    assert!(a.try_acquire_or_renew(T0).await.unwrap());
    assert!(!b.try_acquire_or_renew(T0 + SECOND).await.unwrap());
    assert!(a.try_acquire_or_renew(T0 + 5 * SECOND).await.unwrap());
    // a renewed at +5 s: b must wait until +20 s.
    assert!(!b.try_acquire_or_renew(T0 + 19 * SECOND).await.unwrap());
    assert!(b.try_acquire_or_renew(T0 + 21 * SECOND).await.unwrap());
    assert!(
        !a.try_acquire_or_renew(T0 + 22 * SECOND).await.unwrap(),
        "a lost it"
    );
    let stored = fake.all("leases")[0].clone();
    assert_eq!(stored["spec"]["holderIdentity"], "b");
    assert_eq!(stored["spec"]["leaseTransitions"], 1);
    // A replica that shuts down hands over at once.
    b.release().await.unwrap();
    assert!(a.try_acquire_or_renew(T0 + 23 * SECOND).await.unwrap());
}

#[tokio::test]
async fn two_replicas_racing_for_an_expired_lease_cannot_both_win() {
    let fake = FakeApi::default();
    let lease = Duration::from_secs(15);
    let a = LeaseLock::new(fake.client(), "teal-system", "l", "a", lease);
    let b = LeaseLock::new(fake.client(), "teal-system", "l", "b", lease);
    let c = LeaseLock::new(fake.client(), "teal-system", "l", "c", lease);
    assert!(a.try_acquire_or_renew(T0).await.unwrap());
    // b read the expired Lease, but c wrote first: b's write carries a stale
    // resourceVersion and gets 409.
    fake.fail_next("PUT", "leases/l", 409);
    assert!(!b.try_acquire_or_renew(T0 + 60 * SECOND).await.unwrap());
    assert!(c.try_acquire_or_renew(T0 + 60 * SECOND).await.unwrap());
}

mod cli_verbs {
    use super::*;
    use teal_k8s::cli;

    #[tokio::test]
    async fn promote_refuses_a_stale_revision_and_switches_the_previewed_one() {
        let h = Harness::new("argo-bluegreen.yaml");
        let (_, v2) = to_paused_preview(&h).await;
        let client = h.fake.client();
        let before = h.rollout();
        let error = cli::promote(&client, "default", &h.name, Some(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("stale promote: revision 1 is not in preview (revision 2 is)"),
            "{error}"
        );
        assert_eq!(h.rollout(), before, "a refused command writes nothing");

        let said = cli::promote(&client, "default", &h.name, Some(2))
            .await
            .unwrap();
        assert!(said.contains("revision 2"), "{said}");
        assert_eq!(h.status()["pauseConditions"], Value::Null);
        h.reconcile(T0 + 5 * SECOND).await;
        assert_eq!(h.selector("rollout-bluegreen-active"), v2);
        let error = cli::promote(&client, "default", &h.name, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("nothing to promote"), "{error}");
    }

    #[tokio::test]
    async fn abort_and_retry_go_through_the_status_as_with_kubectl_argo_rollouts() {
        let h = Harness::new("argo-bluegreen.yaml");
        let (v1, v2) = to_paused_preview(&h).await;
        let client = h.fake.client();
        cli::abort(&client, "default", &h.name).await.unwrap();
        assert_eq!(h.status()["abort"], true);
        h.reconcile(T0 + 4 * SECOND).await;
        assert_eq!(h.phase(), "Degraded");
        assert_eq!(h.selector("rollout-bluegreen-preview"), v1);
        let error = cli::abort(&client, "default", &h.name)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("already aborted"), "{error}");
        cli::retry(&client, "default", &h.name).await.unwrap();
        h.reconcile(T0 + 5 * SECOND).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + 6 * SECOND).await;
        assert_eq!(h.selector("rollout-bluegreen-preview"), v2);
        assert_eq!(h.phase(), "Paused");
    }

    #[tokio::test]
    async fn undo_restores_the_previous_template_and_the_switch_back_is_instant() {
        let h = Harness::new("argo-bluegreen.yaml");
        let (v1, v2) = to_paused_preview(&h).await;
        h.promote();
        h.reconcile(T0 + 5 * SECOND).await;
        assert_eq!(h.selector("rollout-bluegreen-active"), v2);
        let client = h.fake.client();
        let said = cli::undo(&client, "default", &h.name, None).await.unwrap();
        assert!(said.contains("revision 1"), "{said}");
        let writes = h.reconcile(T0 + 6 * SECOND).await;
        assert_eq!(h.selector("rollout-bluegreen-active"), v1);
        assert!(
            !writes.contains(&"POST replicasets".to_owned()),
            "{writes:?}"
        );
        let error = cli::undo(&client, "default", &h.name, Some(9))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no ReplicaSet of revision 9"), "{error}");
    }

    #[tokio::test]
    async fn get_and_list_show_revisions_colors_and_routes() {
        let h = Harness::new("argo-bluegreen.yaml");
        let (v1, v2) = to_paused_preview(&h).await;
        let client = h.fake.client();
        let details = cli::get(&client, "default", &h.name).await.unwrap();
        let text = cli::render_details(&details);
        assert!(text.contains("Phase:     Paused"), "{text}");
        let line = |hash: &str| {
            text.lines()
                .find(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(hash))
                .unwrap_or_else(|| panic!("no line for {hash} in\n{text}"))
                .to_owned()
        };
        assert!(
            line(&v1).contains("blue") && line(&v1).contains("active"),
            "{text}"
        );
        assert!(
            line(&v2).contains("green") && line(&v2).contains("preview"),
            "{text}"
        );
        assert!(line(&v2).starts_with('2'), "{text}");
        let listed = cli::list(&client, "default").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].phase, "Paused");
        assert_eq!(listed[0].api_version, "argoproj.io/v1alpha1");
        let error = cli::get(&client, "default", "nope")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("no Rollout \"nope\" in namespace \"default\""),
            "{error}"
        );
    }
}

#[tokio::test]
async fn old_replica_sets_beyond_revision_history_limit_are_deleted() {
    // The Argo example keeps revisionHistoryLimit: 2.
    let h = Harness::new("argo-bluegreen.yaml");
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    let mut at = T0 + 2 * SECOND;
    let mut deletes = 0;
    for version in 2..=6 {
        h.set_image(&format!("argoproj/rollouts-demo:v{version}"));
        h.reconcile(at).await;
        h.fake.make_pods_available();
        h.reconcile(at + SECOND).await;
        h.promote();
        h.reconcile(at + 2 * SECOND).await;
        let writes = h.reconcile(at + 40 * SECOND).await;
        deletes += writes
            .iter()
            .filter(|w| w.starts_with("DELETE replicasets/"))
            .count();
        at += 60 * SECOND;
    }
    let left = h.fake.all("replicasets");
    let scaled_down = left.iter().filter(|rs| rs["spec"]["replicas"] == 0).count();
    assert_eq!(scaled_down, 2, "two old revisions kept for undo");
    assert_eq!(left.len(), 3, "and the active one");
    assert_eq!(deletes, 3);
    assert_eq!(h.phase(), "Healthy");
}

mod analysis {
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use teal_core::analysis::{Measurement, Metric, Provider, Value as Measured};

    use super::*;

    /// Answers every Prometheus query with the next scripted success rate, and keeps
    /// the queries it was sent (with their args substituted).
    struct Scripted {
        rates: Mutex<Vec<f64>>,
        queries: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(rates: &[f64]) -> Arc<Scripted> {
            Arc::new(Scripted {
                rates: Mutex::new(rates.iter().rev().copied().collect()),
                queries: Mutex::new(Vec::new()),
            })
        }
    }

    impl Measurer for Scripted {
        fn measure<'a>(&'a self, metric: &'a Metric) -> BoxFuture<'a, Measurement> {
            Box::pin(async move {
                if let Provider::Prometheus(prometheus) = &metric.provider {
                    self.queries.lock().unwrap().push(prometheus.query.clone());
                }
                match self.rates.lock().unwrap().pop() {
                    Some(rate) => Measurement::of(Measured::List(vec![rate])),
                    None => Measurement::failed("no more scripted answers"),
                }
            })
        }
    }

    fn manifests(auto_promotion: bool) -> String {
        let rollout = manifest("argo-bluegreen.yaml").replace(
            "      autoPromotionEnabled: false\n",
            &format!(
                "      autoPromotionEnabled: {auto_promotion}\n      prePromotionAnalysis:\n        templates:\n        - templateName: success-rate\n        args:\n        - name: service-name\n          value: rollout-bluegreen-preview.default.svc.cluster.local\n"
            ),
        );
        format!("{rollout}\n---\n{}", manifest("analysis.yaml"))
    }

    /// Releases v2 to the point where it is available in preview.
    async fn to_analysis(h: &Harness) {
        h.reconcile(T0).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + SECOND).await;
        h.set_image("argoproj/rollouts-demo:green");
        h.reconcile(T0 + 2 * SECOND).await;
        h.fake.make_pods_available();
        // Available: the state machine enters Analyzing; the run starts at once.
        h.reconcile(T0 + 3 * SECOND).await;
        assert_eq!(h.phase(), "Progressing");
    }

    #[tokio::test]
    async fn a_failed_pre_promotion_analysis_aborts_and_users_never_leave_stable() {
        let scripted = Scripted::new(&[0.5]);
        let h = Harness::with_measurer(&manifests(true), scripted.clone());
        to_analysis(&h).await;
        let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
        h.reconcile(T0 + 3 * SECOND).await;
        assert_eq!(
            scripted.queries.lock().unwrap()[0]
                .matches("rollout-bluegreen-preview.default.svc.cluster.local")
                .count(),
            2,
            "the rollout's args reach the query"
        );
        // The verdict reaches the state machine on the next reconcile.
        h.reconcile(T0 + 4 * SECOND).await;
        assert_eq!(h.phase(), "Degraded");
        let message = h.status()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("success-rate") && message.contains("aborted"),
            "{message}"
        );
        let shown = teal_k8s::cli::render_details(
            &teal_k8s::cli::get(&h.fake.client(), "default", &h.name)
                .await
                .unwrap(),
        );
        assert!(
            shown.contains("Analysis:  pre-promotion of revision 2: Failed")
                && shown.contains("success-rate")
                && shown.contains("1 measured, 1 failed"),
            "{shown}"
        );
        assert_eq!(h.selector("rollout-bluegreen-active"), v1);
        assert_eq!(
            h.selector("rollout-bluegreen-preview"),
            v1,
            "testers back on stable"
        );
        assert_eq!(h.status()["abort"], true);
        let run: Value = serde_json::from_str(
            h.rollout()["metadata"]["annotations"]["teal.dev/analysis"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(run["run"]["metrics"][0]["phase"], "Failed", "{run}");
    }

    #[tokio::test]
    async fn a_passing_analysis_measures_count_times_then_promotes() {
        let scripted = Scripted::new(&[0.99, 0.98, 0.99]);
        let h = Harness::with_measurer(&manifests(true), scripted.clone());
        to_analysis(&h).await;
        let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
        let mut requeue = h.try_reconcile(T0 + 3 * SECOND).await.unwrap();
        assert_eq!(
            requeue,
            Some(Duration::from_secs(10)),
            "next measurement in 10 s"
        );
        assert_eq!(h.selector("rollout-bluegreen-active"), v1);
        // A new controller (another replica took the Lease) resumes the same run.
        let h = Harness {
            context: Context::new(
                h.fake.client_with_rules(controller_rules()),
                "teal-controller-1",
                scripted.clone(),
            ),
            ..h
        };
        for at in [13, 23] {
            assert_eq!(h.selector("rollout-bluegreen-active"), v1);
            requeue = h.try_reconcile(T0 + at * SECOND).await.unwrap();
        }
        assert_eq!(scripted.queries.lock().unwrap().len(), 3);
        assert!(requeue.is_some());
        h.reconcile(T0 + 24 * SECOND).await;
        let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
        assert_eq!(
            h.selector("rollout-bluegreen-active"),
            v2,
            "promoted after analysis"
        );
        assert_eq!(h.phase(), "Healthy");
    }

    /// What the Job controller and kubelet would do: every new Job ends as `outcome`.
    fn job_controller(fake: &FakeApi, succeed: bool) -> tokio::task::JoinHandle<()> {
        let fake = fake.clone();
        tokio::spawn(async move {
            loop {
                for job in fake.all("jobs") {
                    if job["status"].is_null() {
                        let name = job["metadata"]["name"].as_str().unwrap().to_owned();
                        let status = if succeed {
                            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
                        } else {
                            json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True",
                                   "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit"}]})
                        };
                        fake.edit("jobs", &name, json!({"status": status}));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn job_manifests() -> String {
        let rollout = manifest("argo-bluegreen.yaml").replace(
            "      autoPromotionEnabled: false\n",
            "      prePromotionAnalysis:\n        templates:\n        - templateName: smoke\n",
        );
        format!("{rollout}\n---\n{}", manifest("job-analysis.yaml"))
    }

    #[tokio::test]
    async fn a_kubernetes_job_that_fails_aborts_the_release() {
        let h = Harness::from_yaml(&job_manifests());
        let jobs = job_controller(&h.fake, false);
        to_analysis(&h).await;
        let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
        h.reconcile(T0 + 3 * SECOND).await;
        let created = h.fake.all("jobs");
        assert_eq!(created.len(), 1);
        let job = &created[0];
        assert_eq!(job["metadata"]["labels"]["team"], "shop");
        assert_eq!(
            job["metadata"]["labels"]["teal.dev/rollout"],
            "rollout-bluegreen"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "Rollout");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["command"][2],
            "http://rollout-bluegreen-preview.default.svc.cluster.local/healthz",
            "teal's preview-address arg reaches the Job"
        );
        h.reconcile(T0 + 4 * SECOND).await;
        jobs.abort();
        assert_eq!(h.phase(), "Degraded");
        assert_eq!(h.selector("rollout-bluegreen-active"), v1);
        let run: Value = serde_json::from_str(
            h.rollout()["metadata"]["annotations"]["teal.dev/analysis"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let measured = &run["run"]["metrics"][0]["measurements"][0];
        assert!(
            measured["output"]
                .as_str()
                .unwrap()
                .contains("backoff limit"),
            "{measured}"
        );
    }

    #[tokio::test]
    async fn a_kubernetes_job_that_succeeds_lets_the_release_through() {
        let h = Harness::from_yaml(&job_manifests());
        let jobs = job_controller(&h.fake, true);
        to_analysis(&h).await;
        h.reconcile(T0 + 3 * SECOND).await;
        h.reconcile(T0 + 4 * SECOND).await;
        jobs.abort();
        let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
        assert_eq!(h.selector("rollout-bluegreen-active"), v2, "auto-promoted");
    }

    #[tokio::test]
    async fn a_failed_post_promotion_analysis_switches_users_back_to_the_warm_color() {
        let text = manifests(false).replace("prePromotionAnalysis:", "postPromotionAnalysis:");
        let scripted = Scripted::new(&[0.99, 0.2]);
        let h = Harness::with_measurer(&text, scripted.clone());
        h.reconcile(T0).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + SECOND).await;
        let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
        h.set_image("argoproj/rollouts-demo:green");
        h.reconcile(T0 + 2 * SECOND).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + 3 * SECOND).await;
        assert_eq!(
            h.phase(),
            "Paused",
            "no pre-promotion analysis: paused for a person"
        );
        h.promote();
        h.reconcile(T0 + 4 * SECOND).await;
        let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
        assert_eq!(h.selector("rollout-bluegreen-active"), v2);
        // The run starts and takes its first measurement (0.99: fine).
        h.reconcile(T0 + 4 * SECOND).await;
        assert_eq!(h.phase(), "Progressing", "post-promotion analysis running");
        // The second measurement fails: users go back to the warm color at once.
        h.reconcile(T0 + 14 * SECOND).await;
        assert_eq!(
            h.replicas(&v1),
            2,
            "the old color is kept warm during the analysis"
        );
        h.reconcile(T0 + 15 * SECOND).await;
        assert_eq!(scripted.queries.lock().unwrap().len(), 2);
        assert_eq!(h.selector("rollout-bluegreen-active"), v1);
        assert_eq!(h.phase(), "Degraded");
    }

    #[tokio::test]
    async fn a_missing_template_is_an_analysis_error_that_names_it() {
        let text = manifests(true).replace("templateName: success-rate", "templateName: nope");
        let h = Harness::with_measurer(&text, Scripted::new(&[]));
        to_analysis(&h).await;
        h.reconcile(T0 + 4 * SECOND).await;
        assert_eq!(h.phase(), "Degraded");
        let message = h.status()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("AnalysisTemplate \"nope\" does not exist"),
            "{message}"
        );
    }
}

mod teal_gateway {
    use teal_k8s::gateway;
    use teal_proxy::{Proxy, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// One request on an open keep-alive connection; the body of the answer.
    async fn get(stream: &mut TcpStream, cookie: Option<&str>) -> String {
        let cookie = cookie.map_or(String::new(), |c| format!("cookie: {c}\r\n"));
        stream
            .write_all(format!("GET / HTTP/1.1\r\nhost: shop\r\n{cookie}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if body.len() >= length {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    return body[..length].to_owned();
                }
            }
        }
    }

    #[tokio::test]
    async fn the_gateway_switches_every_keep_alive_connection_at_the_next_request() {
        let h = Harness::new("teal-gateway.yaml");
        let reader = h.fake.client_with_rules(gateway_rules());
        h.reconcile(T0).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + SECOND).await;
        let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
        assert_eq!(
            h.fake.get("services", "shop-blue").unwrap()["spec"]["selector"]["rollouts-pod-template-hash"],
            v1.as_str(),
            "the controller keeps a Service per color"
        );
        h.fake
            .add_endpoint_slice("shop-blue", fake::pod("blue").await);

        let proxy = Proxy::new("shop");
        let sync = || async {
            proxy.set_routes(
                gateway::read_routes(&reader, "default", "shop")
                    .await
                    .unwrap(),
            );
        };
        sync().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(teal_proxy::serve(
            listener,
            proxy.clone(),
            Role::Active,
            std::future::pending(),
        ));
        let mut user = TcpStream::connect(address).await.unwrap();
        let mut tester = TcpStream::connect(address).await.unwrap();
        assert_eq!(get(&mut user, None).await, "blue");
        assert_eq!(
            get(&mut tester, Some("test=true")).await,
            "blue",
            "no preview yet"
        );

        h.set_image("shop:2");
        h.reconcile(T0 + 2 * SECOND).await;
        h.fake.make_pods_available();
        h.reconcile(T0 + 3 * SECOND).await;
        assert_eq!(h.phase(), "Paused");
        h.fake
            .add_endpoint_slice("shop-green", fake::pod("green").await);
        sync().await;
        assert_eq!(get(&mut user, None).await, "blue");
        assert_eq!(get(&mut tester, Some("lang=en; test=true")).await, "green");

        h.promote();
        h.reconcile(T0 + 4 * SECOND).await;
        sync().await;
        // The same connections, the next request: the new color.
        assert_eq!(get(&mut user, None).await, "green");
        assert_eq!(get(&mut tester, Some("test=true")).await, "green");
    }

    #[tokio::test]
    async fn the_gateway_reads_an_argo_rollout_from_its_own_group_once_it_knows_it() {
        let yaml = manifest("teal-gateway.yaml").replace(
            "apiVersion: teal.dev/v1alpha1\nkind: Rollout",
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout",
        );
        let h = Harness::from_yaml(&yaml);
        let reader = h.fake.client_with_rules(gateway_rules());
        h.reconcile(T0).await;
        let rollout_reads = || -> Vec<String> {
            h.fake
                .calls()
                .iter()
                .filter(|call| call.resource == "rollouts" && call.verb == "get")
                .map(|call| call.group.clone())
                .collect()
        };

        h.fake.clear_calls();
        let (_, flavor) = gateway::read_routes_in(&reader, "default", "shop", None)
            .await
            .unwrap();
        assert_eq!(flavor, Flavor::Argo);
        assert_eq!(rollout_reads(), ["teal.dev", "argoproj.io"]);

        h.fake.clear_calls();
        gateway::read_routes_in(&reader, "default", "shop", Some(flavor))
            .await
            .unwrap();
        assert_eq!(rollout_reads(), ["argoproj.io"]);
    }

    #[test]
    fn only_ready_endpoints_on_the_slice_port_are_routed() {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ],
            "ports": [{"port": 8080}],
        }))
        .unwrap();
        let addresses: Vec<String> = gateway::ready_endpoints(&[slice])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["10.0.0.1:8080", "10.0.0.3:8080"]);
    }
}

#[tokio::test]
async fn a_rollout_argo_was_running_is_adopted_without_a_restart_then_released() {
    // Argo Rollouts ran revision 3 (hash 6d4f8c9b7, live) and left revision 2's
    // preview ReplicaSet running; its controller is gone and teal takes over.
    let mut text = manifest("argo-bluegreen.yaml");
    text = text.replacen(
        "  namespace: default\n",
        "  namespace: default\n  uid: argo-rollout-uid\n",
        1,
    );
    let h = Harness::from_yaml(&text);
    let argo_rs = |hash: &str, revision: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("rollout-bluegreen-{hash}"), "namespace": "default",
                "labels": {"app": "rollout-bluegreen", "rollouts-pod-template-hash": hash},
                "annotations": {"rollout.argoproj.io/revision": revision},
                "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                                     "name": "rollout-bluegreen", "uid": "argo-rollout-uid",
                                     "controller": true}],
            },
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "rollout-bluegreen", "rollouts-pod-template-hash": hash}},
                     "template": {"metadata": {"labels": {"app": "rollout-bluegreen", "rollouts-pod-template-hash": hash}},
                                  "spec": {"containers": [{"name": "rollouts-demo", "image": "argoproj/rollouts-demo:blue"}]}}},
            "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2},
        })
    };
    h.fake.insert("replicasets", argo_rs("6d4f8c9b7", "3"));
    h.fake.insert("replicasets", argo_rs("5b8f7d6c4", "2"));
    for service in ["rollout-bluegreen-active", "rollout-bluegreen-preview"] {
        h.fake.edit(
            "services",
            service,
            json!({"spec": {"selector": {"rollouts-pod-template-hash": "6d4f8c9b7"}}}),
        );
    }

    let writes = h.reconcile(T0).await;
    assert!(
        !writes.contains(&"POST replicasets".to_owned()),
        "{writes:?}"
    );
    let live = h
        .fake
        .get("replicasets", "rollout-bluegreen-6d4f8c9b7")
        .unwrap();
    assert_eq!(live["metadata"]["labels"]["teal.dev/color"], "blue");
    assert_eq!(live["spec"]["replicas"], 2);
    assert_eq!(h.selector("rollout-bluegreen-active"), "6d4f8c9b7");
    assert_eq!(h.status()["stableRS"], "6d4f8c9b7");
    assert_eq!(h.phase(), "Healthy");
    assert_eq!(
        h.fake
            .get("replicasets", "rollout-bluegreen-5b8f7d6c4")
            .unwrap()["spec"]["replicas"],
        0,
        "the preview Argo left running is scaled away"
    );

    // teal's own hash of the same template differs from Argo's: released blue-green as
    // revision 4, users stay on the adopted pods until the promote.
    h.reconcile(T0 + SECOND).await;
    let v4 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
    assert_ne!(v4, "6d4f8c9b7");
    assert_eq!(h.selector("rollout-bluegreen-preview"), v4);
    assert_eq!(h.selector("rollout-bluegreen-active"), "6d4f8c9b7");
    h.fake.make_pods_available();
    h.reconcile(T0 + 2 * SECOND).await;
    h.promote();
    h.reconcile(T0 + 3 * SECOND).await;
    assert_eq!(h.selector("rollout-bluegreen-active"), v4);
    assert_eq!(
        h.rollout()["metadata"]["annotations"]["rollout.argoproj.io/revision"],
        "4"
    );
}

mod running_controller {
    use teal_k8s::run::{Options, run_until};

    use super::*;

    fn options(identity: &str) -> Options {
        Options {
            namespace: Some("default".to_owned()),
            identity: identity.to_owned(),
            lease_namespace: "teal-system".to_owned(),
            lease_name: "teal-controller".to_owned(),
            lease_duration: Duration::from_secs(2),
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn holder(fake: &FakeApi) -> String {
        fake.get_in("leases", "teal-system", "teal-controller")
            .map(|lease| {
                lease["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// The real watch loop (kube-runtime's Controller over both Rollout groups and the
    /// ReplicaSets they own), leader election with two replicas, and a crash of the
    /// leader: the other one carries on after the Lease expires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_drive_the_cycle_and_a_second_replica_takes_over_when_the_leader_dies() {
        let h = Harness::new("argo-bluegreen.yaml");
        let fake = h.fake.clone();
        let replica = |identity: &'static str| {
            let client = fake.client_with_rules(controller_rules());
            tokio::spawn(run_until(
                client,
                options(identity),
                Arc::new(NoProviders),
                std::future::pending(),
            ))
        };
        let a = replica("a");
        eventually("a leads", || holder(&fake) == "a").await;
        let b = replica("b");
        // A new Rollout is seen through the watch: its ReplicaSet appears.
        eventually("a ReplicaSet", || fake.all("replicasets").len() == 1).await;
        // Pods become available: the ReplicaSet watch wakes the Rollout up.
        fake.make_pods_available();
        eventually("the active Service points at revision 1", || {
            !h.selector("rollout-bluegreen-active").is_empty()
        })
        .await;
        assert_eq!(holder(&fake), "a", "b waits while a renews");

        // The leader dies without a word; b takes the Lease once it expires and acts
        // on the next change.
        a.abort();
        h.set_image("argoproj/rollouts-demo:green");
        eventually("b leads", || holder(&fake) == "b").await;
        eventually("the new revision's ReplicaSet", || {
            fake.all("replicasets").len() == 2
        })
        .await;
        fake.make_pods_available();
        eventually("paused for a promote", || h.phase() == "Paused").await;
        h.promote();
        let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
        eventually("promoted", || h.selector("rollout-bluegreen-active") == v2).await;
        b.abort();
    }
}

#[tokio::test]
async fn active_and_preview_metadata_follow_the_roles_onto_pods() {
    let yaml = manifest("argo-bluegreen.yaml")
    .replace(
        "      autoPromotionEnabled: false\n",
        "      autoPromotionEnabled: false\n      activeMetadata:\n        labels:\n          role: active\n      previewMetadata:\n        labels:\n          role: preview\n        annotations:\n          teal.dev/note: under test\n",
    );
    let h = Harness::from_yaml(&yaml);
    let pod = |hash: &str| {
        h.fake.insert(
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("pod-{hash}"), "namespace": "default",
                                "labels": {"app": "rollout-bluegreen", "rollouts-pod-template-hash": hash}}}),
        );
    };
    let pod_labels =
        |hash: &str| h.fake.get("pods", &format!("pod-{hash}")).unwrap()["metadata"].clone();
    h.reconcile(T0).await;
    h.fake.make_pods_available();
    h.reconcile(T0 + SECOND).await;
    let v1 = h.status()["stableRS"].as_str().unwrap().to_owned();
    assert_eq!(
        h.replica_set(&v1)["spec"]["template"]["metadata"]["labels"]["role"],
        "active"
    );
    pod(&v1);

    h.set_image("argoproj/rollouts-demo:green");
    h.reconcile(T0 + 2 * SECOND).await;
    let v2 = h.status()["currentPodHash"].as_str().unwrap().to_owned();
    assert_eq!(
        h.replica_set(&v2)["spec"]["template"]["metadata"]["labels"]["role"],
        "preview"
    );
    pod(&v2);
    h.fake.make_pods_available();
    h.reconcile(T0 + 3 * SECOND).await;
    h.promote();
    h.reconcile(T0 + 4 * SECOND).await;
    assert_eq!(h.selector("rollout-bluegreen-active"), v2);
    let new = pod_labels(&v2);
    assert_eq!(new["labels"]["role"], "active", "{new}");
    assert!(new["annotations"]["teal.dev/note"].is_null(), "{new}");
    let old = pod_labels(&v1);
    assert!(
        old["labels"]["role"].is_null(),
        "the old color lost its role: {old}"
    );
    assert_eq!(
        old["labels"]["app"], "rollout-bluegreen",
        "other labels stay"
    );
}
