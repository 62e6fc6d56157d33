//! One reconcile of one Rollout, without I/O: what was observed (the Rollout, its
//! ReplicaSets, where the routes point) goes through teal-core's state machine — the
//! same one the local daemon runs — and comes out as the writes to make and the
//! status to publish.
//!
//! Colors map onto Kubernetes as ReplicaSets: one per pod-template hash (as Argo
//! Rollouts does), labelled with the color it runs in while it runs. A route is a
//! pod-template hash in a Service's selector, or a color's subset or Service in a mesh
//! or gateway route.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};
use teal_core::Color;
use teal_core::rollout::{Event, Millis, Phase, Policy, Stage, Status};
use teal_core::world::{Deployment, Effect, World, converge};

use crate::crd::{Condition, PauseCondition, RolloutSpec, RolloutStatus};
use crate::spec_check;

/// Argo's pod-template hash, teal's way: a short fingerprint of the pod template.
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    let canonical = serde_json::to_vec(template).expect("a pod template always serializes");
    let digest = Sha256::digest(&canonical);
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// A ReplicaSet of the rollout, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSetView {
    /// Its name.
    pub name: String,
    /// Its pod-template hash label.
    pub hash: String,
    /// The color it runs in, from its label.
    pub color: Option<Color>,
    /// Its revision annotation.
    pub revision: Option<u64>,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `status.availableReplicas`.
    pub available: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
    /// Why pods are missing, from its ReplicaFailure condition.
    pub problem: Option<String>,
}

/// Where the routes point now, as colors; None where they point at nothing teal runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedRoutes {
    /// Where users go.
    pub active: Option<Color>,
    /// Where testers go; None when it is the active color.
    pub preview: Option<Color>,
    /// The pod-template hash the active Service selects, whatever runs it (a
    /// ReplicaSet another controller made, before teal adopts it).
    pub active_hash: Option<String>,
    /// There is a preview route at all (a preview Service, a mesh or gateway route).
    pub preview_routed: bool,
}

/// Everything one reconcile reads.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The rollout's name (ReplicaSets are named after it).
    pub name: String,
    /// Its spec, typed.
    pub spec: RolloutSpec,
    /// Its spec as written, to find fields teal does not read.
    pub raw_spec: Value,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Its status as read: `kubectl argo rollouts` writes promote, abort and retry here.
    pub status: RolloutStatus,
    /// teal's state, from the Rollout's annotation; None the first time.
    pub state: Option<Status>,
    /// Its ReplicaSets.
    pub replica_sets: Vec<ReplicaSetView>,
    /// Where the routes point.
    pub routes: ObservedRoutes,
    /// Verdicts of completed analysis runs.
    pub analysis_events: Vec<Event>,
    /// Now.
    pub now: Millis,
}

/// A write to a ReplicaSet or a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the ReplicaSet of `hash` from `spec.template`.
    CreateReplicaSet {
        /// `{rollout}-{hash}`.
        name: String,
        /// The pod-template hash.
        hash: String,
        /// The color it runs in.
        color: Color,
        /// Its revision.
        revision: u64,
        /// How many pods.
        replicas: u32,
    },
    /// Change a ReplicaSet: any of its color (None: it leaves its color), size and
    /// revision.
    UpdateReplicaSet {
        /// Its name.
        name: String,
        /// Its color label; `Some(None)` removes it.
        color: Option<Option<Color>>,
        /// Its size.
        replicas: Option<u32>,
        /// Its revision annotation.
        revision: Option<u64>,
    },
    /// Delete an old ReplicaSet beyond `revisionHistoryLimit`.
    DeleteReplicaSet {
        /// Its name.
        name: String,
    },
    /// Point the routes (Services' selectors, mesh or gateway route).
    Route {
        /// Where users go: the color and its pod-template hash.
        active: Option<(Color, String)>,
        /// Where testers go; None: the active color.
        preview: Option<(Color, String)>,
    },
}

/// A Kubernetes Event to publish on the Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// A warning (aborted, degraded) or normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What happened.
    pub note: String,
}

/// The outcome of one reconcile.
#[derive(Clone, Debug)]
pub struct Plan {
    /// teal's state to store on the Rollout.
    pub state: Status,
    /// What should run where for that state; empty for an invalid spec, where nothing
    /// is acted on.
    pub desired: World,
    /// Writes, in order.
    pub actions: Vec<Action>,
    /// The status to publish.
    pub status: RolloutStatus,
    /// Events to publish.
    pub notices: Vec<Notice>,
    /// When to look again even if nothing changes.
    pub requeue_after: Option<Duration>,
}

/// Decides one reconcile.
pub fn plan(observed: &Observed) -> Plan {
    let unsupported = spec_check::unsupported_fields(&observed.raw_spec);
    let previous = observed.state.clone().unwrap_or_default();
    if let Err(problem) = spec_check::validate(&observed.spec) {
        // Nothing that runs is touched: a bad spec must not disturb the live color.
        let mut status = observed.status.clone();
        status.phase = Some(Phase::Degraded.to_string());
        status.message = Some(format!("InvalidSpec: {problem}"));
        status.observed_generation = observed.generation.map(|g| g.to_string());
        set_condition(
            &mut status.conditions,
            condition("InvalidSpec", true, "InvalidSpec", &problem),
            observed.now,
        );
        let changed = observed.status.message != status.message;
        return Plan {
            state: previous,
            desired: World::default(),
            actions: Vec::new(),
            status,
            notices: changed
                .then(|| Notice {
                    warning: true,
                    reason: "InvalidSpec".to_owned(),
                    note: problem,
                })
                .into_iter()
                .collect(),
            requeue_after: None,
        };
    }
    let policy = spec_check::policy(&observed.spec);
    let hash = pod_template_hash(&observed.spec.template);
    let mut state = previous.clone();
    let mut notices = Vec::new();

    for event in events(observed, &state, &hash) {
        match state.on(event.clone(), &policy, observed.now) {
            Ok(transition) => {
                notices.extend(transition.notes.into_iter().map(|note| Notice {
                    warning: note.contains("abort"),
                    reason: reason_of(&event).to_owned(),
                    note,
                }));
                state = transition.status;
            }
            Err(refusal) => notices.push(Notice {
                warning: true,
                reason: "Refused".to_owned(),
                note: format!("{}: {refusal}", reason_of(&event)),
            }),
        }
    }
    let (phase, _) = state.phase();
    if phase != previous.phase().0 || observed.state.is_none() {
        notices.push(Notice {
            warning: phase == Phase::Degraded,
            reason: format!("Rollout{phase}"),
            note: state.message(&policy),
        });
    }

    let desired = state.world(&policy);
    let actions = actions(observed, &desired);
    let status = status_of(observed, &state, &policy, &desired, &hash, &unsupported);
    let adopted = adoptable(observed, &previous).is_some();
    let requeue_after = if adopted {
        // The spec's own template comes next.
        Some(Duration::ZERO)
    } else {
        state
            .next_wake(&policy)
            .map(|wake| Duration::from_millis(wake.saturating_sub(observed.now)))
    };
    Plan {
        state,
        desired,
        actions,
        status,
        notices,
        requeue_after,
    }
}

fn reason_of(event: &Event) -> &'static str {
    match event {
        Event::Applied { .. } => "RolloutUpdated",
        Event::Observed { .. } | Event::TimePassed => "RolloutStep",
        Event::PromoteRequested { .. } => "RolloutPromoted",
        Event::AbortRequested { .. } => "RolloutAborted",
        Event::RetryRequested => "RolloutRetried",
        Event::AnalysisCompleted { .. } => "AnalysisRunCompleted",
        Event::PromotionConfirmed { .. } => "RolloutPromoted",
    }
}

/// A ReplicaSet this Rollout owns that users are on although teal never released it
/// (Argo Rollouts did, before teal took over): the first revision teal knows.
fn adoptable(observed: &Observed, state: &Status) -> Option<ReplicaSetView> {
    if state.revision != 0 {
        return None;
    }
    let selected = observed.routes.active_hash.as_deref()?;
    observed
        .replica_sets
        .iter()
        .find(|rs| rs.hash == selected && rs.replicas > 0 && rs.color.is_none())
        .cloned()
}

/// The events one observation brings, in the order the state machine takes them.
fn events(observed: &Observed, state: &Status, hash: &str) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(live) = adoptable(observed, state) {
        // Adopted as it runs, in blue, without a restart; the spec's template (if it
        // differs) is released normally at the next reconcile.
        events.push(Event::Applied {
            revision: live.revision.unwrap_or(1),
            template_hash: live.hash.clone(),
        });
        events.push(Event::Observed {
            color: Color::Blue,
            template_hash: live.hash.clone(),
            ready: live.available,
            problem: None,
        });
        events.push(Event::TimePassed);
        return events;
    }
    let newest = state
        .candidate
        .as_ref()
        .map(|c| &c.slot)
        .or(state.stable.as_ref());
    if newest.is_none_or(|slot| slot.template_hash != hash) {
        events.push(Event::Applied {
            revision: state.revision + 1,
            template_hash: hash.to_owned(),
        });
    }
    // Argo's verbs are status patches; compare what a person wrote with what teal
    // decided last time.
    let status = &observed.status;
    let aborted = state
        .candidate
        .as_ref()
        .is_some_and(|c| matches!(c.stage, Stage::Aborted { .. }));
    let post_held = state
        .post_analysis
        .as_ref()
        .is_some_and(|p| p.hold.is_some());
    if status.abort && !aborted && (state.candidate.is_some() || post_held) {
        events.push(Event::AbortRequested {
            reason: "aborted by a person (status.abort)".to_owned(),
        });
    } else if !status.abort && aborted {
        events.push(Event::RetryRequested);
    }
    let waiting = state
        .candidate
        .as_ref()
        .is_some_and(|c| c.stage == Stage::Paused)
        || post_held;
    let pause_cleared = waiting && status.controller_pause && status.pause_conditions.is_empty();
    if status.promote_full || pause_cleared {
        events.push(Event::PromoteRequested {
            expected_revision: None,
        });
    }
    for rs in &observed.replica_sets {
        let Some(color) = rs.color.filter(|_| rs.replicas > 0) else {
            continue;
        };
        events.push(Event::Observed {
            color,
            template_hash: rs.hash.clone(),
            ready: rs.available,
            problem: rs.problem.clone().or_else(|| {
                (rs.available < rs.replicas).then(|| {
                    format!(
                        "{} of {} pods of {} available",
                        rs.available, rs.replicas, rs.name
                    )
                })
            }),
        });
    }
    events.extend(observed.analysis_events.iter().cloned());
    events.push(Event::TimePassed);
    events
}

/// The world as observed: what each color runs (ReplicaSets with pods), where the
/// routes point.
fn observed_world(observed: &Observed) -> World {
    let mut world = World::default();
    for rs in &observed.replica_sets {
        if let Some(color) = rs.color.filter(|_| rs.replicas > 0) {
            world.set_deployment(
                color,
                Some(Deployment {
                    revision: rs.revision.unwrap_or(0),
                    template_hash: rs.hash.clone(),
                    replicas: rs.replicas,
                }),
            );
        }
    }
    world.active = observed.routes.active;
    world.preview = observed.routes.preview;
    world
}

fn replica_set_name(rollout: &str, hash: &str) -> String {
    format!("{rollout}-{hash}")
}

/// The writes that turn the observed world into `desired`, in converge's safe order,
/// then the history clean-up.
fn actions(observed: &Observed, desired: &World) -> Vec<Action> {
    let mut world = observed_world(observed);
    if !observed.routes.preview_routed {
        // Nothing to point: the preview is wherever it should be.
        world.preview = desired.preview;
    }
    let by_color = |color: Color| {
        observed
            .replica_sets
            .iter()
            .filter(move |rs| rs.color == Some(color))
    };
    let hash_of = |color: Color| {
        desired
            .deployment(color)
            .map(|d| (color, d.template_hash.clone()))
    };
    let mut actions = Vec::new();
    for effect in converge(desired, &world) {
        match effect {
            Effect::Start { color, deployment } => {
                // Whatever ran in this color leaves it.
                for rs in by_color(color).filter(|rs| rs.hash != deployment.template_hash) {
                    actions.push(Action::UpdateReplicaSet {
                        name: rs.name.clone(),
                        color: Some(None),
                        replicas: Some(0),
                        revision: None,
                    });
                }
                match observed
                    .replica_sets
                    .iter()
                    .find(|rs| rs.hash == deployment.template_hash)
                {
                    // An old ReplicaSet of the same template (undo): reused, as Argo does.
                    Some(rs) => actions.push(Action::UpdateReplicaSet {
                        name: rs.name.clone(),
                        color: Some(Some(color)),
                        replicas: Some(deployment.replicas),
                        revision: Some(deployment.revision),
                    }),
                    None => actions.push(Action::CreateReplicaSet {
                        name: replica_set_name(&observed.name, &deployment.template_hash),
                        hash: deployment.template_hash,
                        color,
                        revision: deployment.revision,
                        replicas: deployment.replicas,
                    }),
                }
            }
            Effect::Scale { color, replicas } => {
                for rs in by_color(color) {
                    actions.push(Action::UpdateReplicaSet {
                        name: rs.name.clone(),
                        color: None,
                        replicas: Some(replicas),
                        revision: None,
                    });
                }
            }
            Effect::Relabel { color, revision } => {
                for rs in by_color(color) {
                    actions.push(Action::UpdateReplicaSet {
                        name: rs.name.clone(),
                        color: None,
                        replicas: None,
                        revision: Some(revision),
                    });
                }
            }
            Effect::Route { active, preview } => actions.push(Action::Route {
                active: active.and_then(hash_of),
                preview: preview.and_then(hash_of),
            }),
            Effect::Stop { color } => {
                for rs in by_color(color) {
                    actions.push(Action::UpdateReplicaSet {
                        name: rs.name.clone(),
                        color: Some(None),
                        replicas: Some(0),
                        revision: None,
                    });
                }
            }
        }
    }
    // Pods of a ReplicaSet in no color that nothing wants (a preview another controller
    // left behind) are scaled away.
    let wanted = |hash: &str| {
        Color::ALL.iter().any(|c| {
            desired
                .deployment(*c)
                .is_some_and(|d| d.template_hash == hash)
        })
    };
    for rs in &observed.replica_sets {
        let touched = actions.iter().any(
            |action| matches!(action, Action::UpdateReplicaSet { name, .. } if *name == rs.name),
        );
        if rs.color.is_none() && rs.replicas > 0 && !wanted(&rs.hash) && !touched {
            actions.push(Action::UpdateReplicaSet {
                name: rs.name.clone(),
                color: None,
                replicas: Some(0),
                revision: None,
            });
        }
    }
    let cleanup = history_cleanup(observed, desired, &actions);
    actions.extend(cleanup);
    actions
}

/// ReplicaSets at zero and in no color (once `actions` are made) are history; the
/// oldest beyond `revisionHistoryLimit` are deleted.
fn history_cleanup(observed: &Observed, desired: &World, actions: &[Action]) -> Vec<Action> {
    let limit = observed
        .spec
        .revision_history_limit
        .unwrap_or(spec_check::DEFAULT_REVISION_HISTORY_LIMIT)
        .max(0) as usize;
    let in_use = |hash: &str| {
        Color::ALL.iter().any(|c| {
            desired
                .deployment(*c)
                .is_some_and(|d| d.template_hash == hash)
        })
    };
    let after_actions = |rs: &ReplicaSetView| {
        let (mut replicas, mut color) = (rs.replicas, rs.color);
        for action in actions {
            if let Action::UpdateReplicaSet {
                name,
                color: new_color,
                replicas: new_replicas,
                ..
            } = action
                && *name == rs.name
            {
                replicas = new_replicas.unwrap_or(replicas);
                color = new_color.unwrap_or(color);
            }
        }
        (replicas, color)
    };
    let mut history: Vec<&ReplicaSetView> = observed
        .replica_sets
        .iter()
        .filter(|rs| after_actions(rs) == (0, None) && !in_use(&rs.hash))
        .collect();
    history.sort_by_key(|rs| std::cmp::Reverse(rs.revision.unwrap_or(0)));
    history
        .into_iter()
        .skip(limit)
        .map(|rs| Action::DeleteReplicaSet {
            name: rs.name.clone(),
        })
        .collect()
}

/// RFC 3339 for a time in milliseconds.
pub fn rfc3339(at: Millis) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(at as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: None,
        last_update_time: None,
    }
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Millis) {
    let at = rfc3339(now);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Some(at.clone())
            };
            new.last_update_time = if old.reason == new.reason && old.message == new.message {
                old.last_update_time.clone()
            } else {
                Some(at)
            };
            *old = new;
        }
        None => {
            new.last_transition_time = Some(at.clone());
            new.last_update_time = Some(at);
            conditions.push(new);
        }
    }
}

fn status_of(
    observed: &Observed,
    state: &Status,
    policy: &Policy,
    desired: &World,
    hash: &str,
    unsupported: &[String],
) -> RolloutStatus {
    let (phase, reason) = state.phase();
    let mut message = state.message(policy);
    if let Some(reason) = reason {
        message = format!("{reason}: {message}");
    }
    let hash_of = |color: Option<Color>| {
        color
            .and_then(|c| desired.deployment(c))
            .map(|d| d.template_hash.clone())
    };
    let active_selector = hash_of(desired.active);
    let preview_selector = hash_of(desired.preview).or(active_selector.clone());
    let mut status = observed.status.clone();
    status.phase = Some(phase.to_string());
    status.message = Some(message.clone());
    status.observed_generation = observed.generation.map(|g| g.to_string());
    status.current_pod_hash = Some(hash.to_owned());
    status.stable_rs = state.stable.as_ref().map(|s| s.template_hash.clone());
    status.blue_green.active_selector = active_selector;
    status.blue_green.preview_selector = preview_selector;
    status.promote_full = false;

    let candidate = state.candidate.as_ref();
    let aborted = candidate.is_some_and(|c| matches!(c.stage, Stage::Aborted { .. }));
    status.abort = aborted;
    if aborted {
        let since = candidate.map_or(observed.now, |c| c.stage_since);
        status.aborted_at.get_or_insert_with(|| rfc3339(since));
    } else {
        status.aborted_at = None;
    }
    let pause_reason = match (candidate, &state.post_analysis) {
        (Some(c), _) if c.stage == Stage::Paused && c.hold.is_some() => {
            Some(("InconclusiveAnalysisRun", c.stage_since))
        }
        (Some(c), _) if c.stage == Stage::Paused => Some(("BlueGreenPause", c.stage_since)),
        (None, Some(post)) if post.hold.is_some() => Some(("InconclusiveAnalysisRun", post.since)),
        _ => None,
    };
    match pause_reason {
        Some((reason, since)) => {
            if status.pause_conditions.iter().all(|p| p.reason != reason) {
                status.pause_conditions = vec![PauseCondition {
                    reason: reason.to_owned(),
                    start_time: rfc3339(since),
                }];
            }
            status.controller_pause = true;
        }
        None => {
            status.pause_conditions.clear();
            status.controller_pause = false;
        }
    }

    let (mut replicas, mut updated, mut ready, mut available) = (0, 0, 0, 0);
    for rs in &observed.replica_sets {
        replicas += rs.replicas as i32;
        ready += rs.ready as i32;
        available += rs.available as i32;
        if rs.hash == hash {
            updated += rs.replicas as i32;
        }
    }
    status.replicas = replicas;
    status.updated_replicas = updated;
    status.ready_replicas = ready;
    status.available_replicas = available;
    status.selector = Some(selector_string(
        observed.spec.selector.match_labels.as_ref(),
    ));

    let now = observed.now;
    let conditions = &mut status.conditions;
    conditions.retain(|c| c.type_ != "InvalidSpec");
    set_condition(
        conditions,
        condition(
            "Available",
            state.stable.is_some() && state.stable_ready >= policy.replicas,
            if state.stable.is_some() {
                "AvailableReason"
            } else {
                "NotAvailable"
            },
            &format!(
                "{} of {} pods of the active color available",
                state.stable_ready, policy.replicas
            ),
        ),
        now,
    );
    let (progressing, progress_reason) = match (phase, reason) {
        (Phase::Degraded, Some(reason)) => (false, reason),
        (Phase::Healthy, _) => (true, "NewReplicaSetAvailable"),
        (Phase::Paused, _) => (true, "RolloutPaused"),
        _ => (true, "ReplicaSetUpdated"),
    };
    set_condition(
        conditions,
        condition("Progressing", progressing, progress_reason, &message),
        now,
    );
    set_condition(
        conditions,
        condition(
            "Paused",
            pause_reason.is_some(),
            pause_reason.map_or("Resumed", |(r, _)| r),
            &message,
        ),
        now,
    );
    if unsupported.is_empty() {
        conditions.retain(|c| c.type_ != "UnsupportedFields");
    } else {
        set_condition(
            conditions,
            condition(
                "UnsupportedFields",
                true,
                "UnsupportedFields",
                &format!(
                    "teal does not read these fields: {}",
                    unsupported.join(", ")
                ),
            ),
            now,
        );
    }
    status
}

fn selector_string(labels: Option<&BTreeMap<String, String>>) -> String {
    labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use teal_core::rollout::{Candidate, Slot};

    use super::*;

    fn slot(color: Color, revision: u64, hash: &str) -> Slot {
        Slot {
            color,
            revision,
            template_hash: hash.to_owned(),
        }
    }

    fn candidate(stage: Stage) -> Candidate {
        Candidate {
            slot: slot(Color::Green, 2, "b"),
            stage,
            stage_since: 0,
            started: 0,
            promote_requested: false,
            ready: 1,
            problem: None,
            deadline_exceeded: false,
            hold: None,
        }
    }

    /// A state with users on blue (revision 1, hash "a") and `candidate`.
    fn state(candidate: Option<Candidate>) -> Status {
        Status {
            revision: if candidate.is_some() { 2 } else { 1 },
            stable: Some(slot(Color::Blue, 1, "a")),
            stable_ready: 1,
            candidate,
            ..Status::default()
        }
    }

    fn observed(status: RolloutStatus) -> Observed {
        Observed {
            name: "shop".to_owned(),
            spec: RolloutSpec::default(),
            raw_spec: Value::Null,
            generation: Some(1),
            status,
            state: None,
            replica_sets: Vec::new(),
            routes: ObservedRoutes::default(),
            analysis_events: Vec::new(),
            now: 0,
        }
    }

    /// What a person (or `kubectl argo rollouts`) wrote in the status, read back as
    /// events: (case, teal's state, the status as read, the events).
    #[test]
    fn argo_verbs_in_the_status_become_events() {
        let paused_by_teal = RolloutStatus {
            controller_pause: true,
            pause_conditions: vec![PauseCondition {
                reason: "BlueGreenPause".to_owned(),
                start_time: rfc3339(0),
            }],
            ..RolloutStatus::default()
        };
        let promote = Event::PromoteRequested {
            expected_revision: None,
        };
        let abort = Event::AbortRequested {
            reason: "aborted by a person (status.abort)".to_owned(),
        };
        let aborted = || Stage::Aborted {
            stopped: false,
            reason: "analysis".to_owned(),
        };
        let cases: Vec<(&str, Status, RolloutStatus, Vec<Event>)> = vec![
            (
                "paused as teal left it: nothing",
                state(Some(candidate(Stage::Paused))),
                paused_by_teal.clone(),
                vec![],
            ),
            (
                "promote cleared the pause conditions",
                state(Some(candidate(Stage::Paused))),
                RolloutStatus {
                    pause_conditions: vec![],
                    ..paused_by_teal.clone()
                },
                vec![promote.clone()],
            ),
            (
                "a pause teal has not written yet is not a promote",
                state(Some(candidate(Stage::Paused))),
                RolloutStatus::default(),
                vec![],
            ),
            (
                "promote --full while the candidate starts",
                state(Some(candidate(Stage::Starting))),
                RolloutStatus {
                    promote_full: true,
                    ..RolloutStatus::default()
                },
                vec![promote],
            ),
            (
                "abort set on a candidate",
                state(Some(candidate(Stage::Paused))),
                RolloutStatus {
                    abort: true,
                    ..paused_by_teal.clone()
                },
                vec![abort],
            ),
            (
                "abort set with nothing to abort: nothing",
                state(None),
                RolloutStatus {
                    abort: true,
                    ..RolloutStatus::default()
                },
                vec![],
            ),
            (
                "aborted as teal wrote it: nothing",
                state(Some(candidate(aborted()))),
                RolloutStatus {
                    abort: true,
                    ..RolloutStatus::default()
                },
                vec![],
            ),
            (
                "retry cleared abort",
                state(Some(candidate(aborted()))),
                RolloutStatus::default(),
                vec![Event::RetryRequested],
            ),
        ];
        for (case, state, status, expected) in cases {
            let found: Vec<Event> = events(&observed(status), &state, "b")
                .into_iter()
                .filter(|e| {
                    !matches!(
                        e,
                        Event::TimePassed | Event::Observed { .. } | Event::Applied { .. }
                    )
                })
                .collect();
            assert_eq!(found, expected, "{case}");
        }
    }

    #[test]
    fn a_new_template_is_a_new_revision_and_the_same_one_is_not() {
        let current = state(Some(candidate(Stage::Paused)));
        let applied = |hash: &str| {
            events(&observed(RolloutStatus::default()), &current, hash)
                .into_iter()
                .filter(|e| matches!(e, Event::Applied { .. }))
                .collect::<Vec<_>>()
        };
        assert_eq!(applied("b"), vec![]);
        assert_eq!(
            applied("c"),
            vec![Event::Applied {
                revision: 3,
                template_hash: "c".to_owned()
            }]
        );
    }
}
