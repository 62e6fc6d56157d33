//! What teal makes of a Rollout's spec: the state machine's [`Policy`], the errors
//! that make the spec invalid, and the fields teal does not support (reported in the
//! status, never silently ignored).

use std::time::Duration;

use serde_json::Value;
use teal_core::rollout::Policy;

use crate::crd::{BlueGreenStrategy, RolloutSpec};

/// Argo's defaults (`utils/defaults/defaults.go`).
const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// Old ReplicaSets kept for undo.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// The blue-green part of a valid spec.
pub fn blue_green(spec: &RolloutSpec) -> Result<&BlueGreenStrategy, String> {
    if spec.strategy.canary.is_some() {
        return Err(
            "spec.strategy.canary is not supported: teal releases with spec.strategy.blueGreen"
                .to_owned(),
        );
    }
    spec.strategy
        .blue_green
        .as_ref()
        .ok_or_else(|| "spec.strategy.blueGreen is required".to_owned())
}

/// Checks what Kubernetes' schema cannot, with the field at fault; all problems at once.
pub fn validate(spec: &RolloutSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    match blue_green(spec) {
        Err(problem) => problems.push(problem),
        Ok(bg) => {
            if bg.active_service.is_empty() {
                problems.push("spec.strategy.blueGreen.activeService is required".to_owned());
            }
            if bg.preview_service.as_deref() == Some(bg.active_service.as_str()) {
                problems.push(format!(
                    "spec.strategy.blueGreen.previewService must differ from activeService ({:?})",
                    bg.active_service
                ));
            }
            for (field, value) in [
                ("autoPromotionSeconds", bg.auto_promotion_seconds),
                ("scaleDownDelaySeconds", bg.scale_down_delay_seconds),
                (
                    "abortScaleDownDelaySeconds",
                    bg.abort_scale_down_delay_seconds,
                ),
                ("previewReplicaCount", bg.preview_replica_count),
            ] {
                if value.is_some_and(|v| v < 0) {
                    problems.push(format!(
                        "spec.strategy.blueGreen.{field} must not be negative"
                    ));
                }
            }
            if let Some(routing) = &bg.traffic_routing {
                let path = "spec.strategy.blueGreen.trafficRouting";
                let routers = [
                    routing.istio.is_some(),
                    routing.gateway_api.is_some(),
                    routing.teal_gateway.is_some(),
                ];
                if routers.iter().filter(|set| **set).count() > 1 {
                    problems.push(format!(
                        "{path}: set one of istio, gatewayAPI and tealGateway"
                    ));
                }
                if let Some(matcher) = &routing.preview_match
                    && matcher.cookie.is_some() == matcher.header.is_some()
                {
                    problems.push(format!(
                        "{path}.previewMatch: set exactly one of cookie and header"
                    ));
                }
            }
        }
    }
    if spec.replicas.is_some_and(|r| r < 0) {
        problems.push("spec.replicas must not be negative".to_owned());
    }
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    if match_labels.is_empty() {
        problems.push("spec.selector.matchLabels is required".to_owned());
    }
    for (key, value) in &match_labels {
        if template_labels.get(key) != Some(value) {
            problems.push(format!(
                "spec.selector.matchLabels {key}={value} does not match spec.template.metadata.labels"
            ));
        }
    }
    if spec
        .template
        .spec
        .as_ref()
        .is_none_or(|pod| pod.containers.is_empty())
    {
        problems.push("spec.template.spec.containers must name at least one container".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The knobs of the state machine, with Argo's defaults. Call on a validated spec.
pub fn policy(spec: &RolloutSpec) -> Policy {
    let default = BlueGreenStrategy::default();
    let bg = blue_green(spec).unwrap_or(&default);
    let seconds = |value: Option<i32>, default: i32| {
        Duration::from_secs(value.unwrap_or(default).max(0) as u64)
    };
    let replicas = spec.replicas.unwrap_or(1).max(0) as u32;
    let has_templates = |analysis: &Option<crate::crd::RolloutAnalysis>| {
        analysis.as_ref().is_some_and(|a| !a.templates.is_empty())
    };
    Policy {
        replicas,
        preview_replicas: bg
            .preview_replica_count
            .map_or(replicas, |count| count.max(0) as u32),
        // A person's `spec.paused` holds the rollout before the switch until a promote
        // (which clears it, as `kubectl argo rollouts promote` does).
        auto_promotion_enabled: bg.auto_promotion_enabled.unwrap_or(true)
            && spec.paused != Some(true),
        auto_promotion_delay: seconds(bg.auto_promotion_seconds, 0),
        scale_down_delay: seconds(
            bg.scale_down_delay_seconds,
            DEFAULT_SCALE_DOWN_DELAY_SECONDS,
        ),
        // Argo: 0 keeps an aborted revision running until the next change.
        abort_scale_down_delay: match bg
            .abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS)
        {
            0 => None,
            delay => Some(Duration::from_secs(delay.max(0) as u64)),
        },
        progress_deadline: seconds(
            spec.progress_deadline_seconds,
            DEFAULT_PROGRESS_DEADLINE_SECONDS,
        ),
        pre_promotion_analysis: has_templates(&bg.pre_promotion_analysis),
        post_promotion_analysis: has_templates(&bg.post_promotion_analysis),
        confirm_promotion: false,
    }
}

/// The shape of the fields teal reads.
enum Known {
    /// Any value: teal passes it on whole (the pod template, the selector).
    Any,
    /// A scalar.
    Leaf,
    /// An object with these fields.
    Object(&'static [(&'static str, Known)]),
    /// A list of objects with these fields.
    List(&'static [(&'static str, Known)]),
    /// An object whose keys are free (labels).
    Map,
}

const NAME_VALUE: &[(&str, Known)] = &[("name", Known::Leaf), ("value", Known::Leaf)];
const ANALYSIS: &[(&str, Known)] = &[
    (
        "templates",
        Known::List(&[("templateName", Known::Leaf), ("clusterScope", Known::Leaf)]),
    ),
    ("args", Known::List(NAME_VALUE)),
];
const POD_METADATA: &[(&str, Known)] = &[("labels", Known::Map), ("annotations", Known::Map)];
const BLUE_GREEN: &[(&str, Known)] = &[
    ("activeService", Known::Leaf),
    ("previewService", Known::Leaf),
    ("autoPromotionEnabled", Known::Leaf),
    ("autoPromotionSeconds", Known::Leaf),
    ("scaleDownDelaySeconds", Known::Leaf),
    ("scaleDownDelayRevisionLimit", Known::Leaf),
    ("abortScaleDownDelaySeconds", Known::Leaf),
    ("previewReplicaCount", Known::Leaf),
    ("prePromotionAnalysis", Known::Object(ANALYSIS)),
    ("postPromotionAnalysis", Known::Object(ANALYSIS)),
    ("activeMetadata", Known::Object(POD_METADATA)),
    ("previewMetadata", Known::Object(POD_METADATA)),
    (
        "trafficRouting",
        Known::Object(&[
            (
                "istio",
                Known::Object(&[
                    ("virtualService", Known::Object(&[("name", Known::Leaf)])),
                    ("destinationRule", Known::Object(&[("name", Known::Leaf)])),
                ]),
            ),
            ("gatewayAPI", Known::Object(&[("httpRoute", Known::Leaf)])),
            ("tealGateway", Known::Object(&[])),
            (
                "previewMatch",
                Known::Object(&[
                    ("cookie", Known::Object(NAME_VALUE)),
                    ("header", Known::Object(NAME_VALUE)),
                ]),
            ),
        ]),
    ),
];
const SPEC: &[(&str, Known)] = &[
    ("replicas", Known::Leaf),
    ("selector", Known::Any),
    ("template", Known::Any),
    ("revisionHistoryLimit", Known::Leaf),
    ("minReadySeconds", Known::Leaf),
    ("progressDeadlineSeconds", Known::Leaf),
    ("paused", Known::Leaf),
    (
        "strategy",
        // canary is reported by validate() as an invalid spec.
        Known::Object(&[
            ("blueGreen", Known::Object(BLUE_GREEN)),
            ("canary", Known::Any),
        ]),
    ),
];

/// Fields of the spec (as written, JSON) that teal does not read, by path; Argo fields
/// teal does not implement (workloadRef, antiAffinity, valueFrom, ...) land here.
pub fn unsupported_fields(raw_spec: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(raw_spec, &Known::Object(SPEC), "spec", &mut found);
    found
}

fn walk(value: &Value, known: &Known, path: &str, found: &mut Vec<String>) {
    match (known, value) {
        (Known::Object(fields), Value::Object(map)) => {
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match fields.iter().find(|(name, _)| name == key) {
                    Some((_, shape)) => walk(child, shape, &child_path, found),
                    None => found.push(child_path),
                }
            }
        }
        (Known::List(fields), Value::Array(items)) => {
            let shape = Known::Object(fields);
            for (index, item) in items.iter().enumerate() {
                walk(item, &shape, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_fields_are_named_by_path() {
        let spec = serde_json::json!({
            "replicas": 2,
            "workloadRef": {"kind": "Deployment"},
            "template": {"anything": {"goes": true}},
            "strategy": {"blueGreen": {
                "activeService": "a",
                "antiAffinity": {},
                "prePromotionAnalysis": {"args": [{"name": "x", "valueFrom": {}}]}
            }}
        });
        assert_eq!(
            unsupported_fields(&spec),
            vec![
                "spec.strategy.blueGreen.antiAffinity",
                "spec.strategy.blueGreen.prePromotionAnalysis.args[0].valueFrom",
                "spec.workloadRef",
            ]
        );
    }
}
