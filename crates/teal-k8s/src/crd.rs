//! The Rollout resource: teal's own `teal.dev/v1alpha1 Rollout` and Argo Rollouts'
//! `argoproj.io/v1alpha1 Rollout` share one spec and one status, in Argo's shape, so
//! manifests written for Argo Rollouts (and `kubectl argo rollouts promote`, which
//! patches the status) work unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use kube::core::{ApiResource, GroupVersionKind, Object};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label that carries a ReplicaSet's pod-template hash, as Argo Rollouts writes it;
/// Services select pods of one revision by it.
pub const HASH_LABEL: &str = "rollouts-pod-template-hash";
/// The label that says which color a ReplicaSet and its pods run in.
pub const COLOR_LABEL: &str = "teal.dev/color";
/// The label teal puts on everything it creates for a rollout (its name).
pub const ROLLOUT_LABEL: &str = "teal.dev/rollout";
/// The revision annotation on the Rollout and its ReplicaSets, as Argo writes it.
pub const REVISION_ANNOTATION: &str = "rollout.argoproj.io/revision";
/// The pod template of a ReplicaSet as the Rollout had it (JSON), before the API
/// server's defaults: `teal undo` copies it back so the hash matches and the switch back
/// is instant.
pub const TEMPLATE_ANNOTATION: &str = "teal.dev/pod-template";
/// Where teal keeps its state machine's status on the Rollout (JSON).
pub const STATE_ANNOTATION: &str = "teal.dev/state";
/// Argo's mark on Services it manages.
pub const MANAGED_BY_ANNOTATION: &str = "argo-rollouts.argoproj.io/managed-by-rollouts";
/// The field manager of every write teal makes.
pub const FIELD_MANAGER: &str = "teal-controller";

/// Creating an object, as teal's one field manager.
pub(crate) fn create_params() -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PostParams::default()
    }
}

/// Merge patches (ReplicaSets teal owns, the Rollout's annotations with the
/// resourceVersion they were decided on), as teal's one field manager.
pub(crate) fn merge_params() -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PatchParams::default()
    }
}

/// Server-side apply as teal's one field manager, taking over the fields teal owns (a
/// route's rules, a selector's hash) from whoever wrote them first.
pub(crate) fn apply_params() -> kube::api::PatchParams {
    kube::api::PatchParams::apply(FIELD_MANAGER).force()
}

/// A blue-green rollout on Kubernetes. The same spec as Argo Rollouts' `Rollout`
/// (`strategy.blueGreen`), plus teal's `trafficRouting` for meshes and gateways.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "teal.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "tro",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.blueGreen.activeSelector"}"#,
    printcolumn = r#"{"name":"Preview","type":"string","jsonPath":".status.blueGreen.previewSelector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Pods per color once promoted (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Selects the rollout's pods; must match the template's labels.
    #[schemars(schema_with = "any_object")]
    pub selector: LabelSelector,
    /// The pod template; every change is a new revision.
    #[schemars(schema_with = "any_object")]
    pub template: PodTemplateSpec,
    /// Old ReplicaSets kept (scaled to zero) for undo (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Seconds a pod must be ready before it counts as available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// Seconds a new revision may take to become available (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    /// Set by a person to hold the rollout; a promote clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// How to release: only `blueGreen` is supported.
    pub strategy: Strategy,
}

/// `spec.strategy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// The blue-green strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    /// Argo's canary strategy: accepted so the object is readable, reported as
    /// unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub canary: Option<serde_json::Value>,
}

/// `spec.strategy.blueGreen`, with Argo's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// The Service users reach; its selector points at the active revision.
    pub active_service: String,
    /// The Service testers reach; its selector points at the preview revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<String>,
    /// Promote without a person once the preview is available (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// With auto-promotion, seconds to stay in preview first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<i32>,
    /// Seconds the old color stays warm after a switch (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<i32>,
    /// How many old ReplicaSets may wait for their scale-down at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_revision_limit: Option<i32>,
    /// Seconds an aborted revision keeps running (default 30; 0 = until the next
    /// change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Pods of the new revision before promotion (default: `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_replica_count: Option<i32>,
    /// Analysis against the preview before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    /// Analysis after the switch, while the old color is kept warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    /// Labels and annotations for the active pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_metadata: Option<PodMetadata>,
    /// Labels and annotations for the preview pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_metadata: Option<PodMetadata>,
    /// teal's extension: switch a mesh or gateway route instead of (in addition to)
    /// the Services' selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
}

/// `prePromotionAnalysis` / `postPromotionAnalysis`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// The AnalysisTemplates to run.
    #[serde(default)]
    pub templates: Vec<AnalysisTemplateRef>,
    /// Arguments for the templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
}

/// One AnalysisTemplate by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// The template's name in the rollout's namespace.
    pub template_name: String,
    /// A ClusterAnalysisTemplate instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
}

/// One analysis argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisArg {
    /// Its name.
    pub name: String,
    /// Its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Labels and annotations added to pods of one role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PodMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// teal's routers beside the Services' selectors. At most one of `istio`,
/// `gatewayAPI` and `tealGateway`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// An Istio VirtualService (and DestinationRule with one subset per color).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    /// A Gateway API HTTPRoute, switched between one Service per color.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
    /// teal's own proxy in the cluster (`teal gateway`): it follows the Rollout and the
    /// EndpointSlices of one Service per color, and switches per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teal_gateway: Option<TealGatewayRouting>,
    /// Which requests go to the preview through the mesh or gateway route: a cookie
    /// (`test=true` in the classic setup) or a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_match: Option<PreviewMatch>,
}

/// `trafficRouting.istio`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    /// The VirtualService whose `http` routes teal owns.
    pub virtual_service: NamedRef,
    /// The DestinationRule whose `subsets` teal owns (`blue` and `green`).
    pub destination_rule: NamedRef,
}

/// `trafficRouting.tealGateway`: nothing to configure; `teal gateway` reads the rest
/// from the Rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TealGatewayRouting {}

/// `trafficRouting.gatewayAPI`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// The HTTPRoute whose `rules` teal owns.
    pub http_route: String,
}

/// An object by name in the rollout's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NamedRef {
    /// Its name.
    pub name: String,
}

/// Requests that carry this cookie or header go to the preview.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PreviewMatch {
    /// A cookie, by name and value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NameValue>,
    /// A header, by name and exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NameValue>,
}

/// A name and a value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NameValue {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// The status, in Argo Rollouts' shape so its tools read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Healthy, Progressing, Paused or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// One sentence a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Available, Progressing, Paused, InvalidSpec, UnsupportedFields.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Set while the rollout waits for a promote; `kubectl argo rollouts promote`
    /// clears it.
    #[serde(default)]
    pub pause_conditions: Vec<PauseCondition>,
    /// The controller paused the rollout (with `pauseConditions`).
    #[serde(default)]
    pub controller_pause: bool,
    /// Set by `abort`, cleared by `retry`.
    #[serde(default)]
    pub abort: bool,
    /// When the revision was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<String>,
    /// Set by `promote --full`.
    #[serde(default)]
    pub promote_full: bool,
    /// The pod-template hash of `spec.template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pod_hash: Option<String>,
    /// The pod-template hash users are on.
    #[serde(default, rename = "stableRS", skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    /// The Services' selectors.
    #[serde(default)]
    pub blue_green: BlueGreenStatus,
    /// The `metadata.generation` this status describes (a string, as Argo writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<String>,
    /// Pods of every revision.
    #[serde(default)]
    pub replicas: i32,
    /// Pods of the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Available pods.
    #[serde(default)]
    pub available_replicas: i32,
    /// The label selector, as a string (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `status.blueGreen`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// The hash the active Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_selector: Option<String>,
    /// The hash the preview Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_selector: Option<String>,
}

/// One condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Its type.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False".
    pub status: String,
    /// A CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// What it means.
    #[serde(default)]
    pub message: String,
    /// When it last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// When it was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
}

/// Why the rollout waits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    /// `BlueGreenPause` or `InconclusiveAnalysisRun`.
    pub reason: String,
    /// Since when (RFC 3339).
    pub start_time: String,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// An AnalysisTemplate in teal's group, so a cluster without Argo Rollouts' CRDs can
/// hold them. Its spec is Argo's (`args`, `metrics`), checked by teal's parser when a
/// run starts (a bad template ends the run with an error that says where).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "teal.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    shortname = "tat"
)]
pub struct AnalysisTemplateSpec {
    /// Arguments the metrics use as `{{args.NAME}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_list")]
    pub args: Vec<serde_json::Value>,
    /// The metrics: interval, count, conditions, limits and a provider.
    #[schemars(schema_with = "any_list")]
    pub metrics: Vec<serde_json::Value>,
}

fn any_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// teal.dev's CRDs (Rollout, AnalysisTemplate), as YAML for `kubectl apply`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = "# Generated by `teal controller --print-crd` from crates/teal-k8s/src/crd.rs; do not edit.\n".to_owned();
    for crd in [Rollout::crd(), AnalysisTemplate::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD always serializes"));
    }
    out
}

/// A Rollout of either group, read and written the same way.
pub type AnyRollout = Object<RolloutSpec, RolloutStatus>;

/// A JSON value teal keeps in one of the Rollout's annotations ([`STATE_ANNOTATION`],
/// the analysis run); None when it is absent or unreadable.
pub fn annotation<T: serde::de::DeserializeOwned>(rollout: &AnyRollout, key: &str) -> Option<T> {
    rollout
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .and_then(|json| serde_json::from_str(json).ok())
}

/// Which Rollout resource a controller manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `teal.dev/v1alpha1 Rollout`.
    Teal,
    /// `argoproj.io/v1alpha1 Rollout`, as written for Argo Rollouts.
    Argo,
}

impl Flavor {
    /// Both, in the order the controller watches them.
    pub const ALL: [Flavor; 2] = [Flavor::Teal, Flavor::Argo];

    /// The API resource to read and write.
    pub fn api_resource(self) -> ApiResource {
        let group = match self {
            Flavor::Teal => "teal.dev",
            Flavor::Argo => "argoproj.io",
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, "v1alpha1", "Rollout"),
            "rollouts",
        )
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> String {
        self.api_resource().api_version
    }
}
