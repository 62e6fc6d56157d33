//! The blue-green state machine of one rollout.
//!
//! [`Status`] is what teal has decided (and persists); [`Status::on`] takes one
//! [`Event`] at time `now` and returns the next status with notes for the history, or
//! refuses the event with a clear reason. [`Status::world`] says what should run where
//! for a status, and [`Status::next_wake`] when time alone will change something.
//! Nothing here does I/O or reads a clock.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::analysis::Phase as AnalysisPhase;
use crate::spec::{RolloutSpec, WebhookKind};
use crate::world::{Deployment, World};

/// `Retiring::stop_at` while post-promotion analysis runs: kept until it passes.
pub const KEPT_WARM: Millis = Millis::MAX;

/// A revision number: 1 for the first template, +1 for every change.
pub type Revision = u64;

/// Milliseconds since the Unix epoch. Time is always an argument here.
pub type Millis = u64;

/// One revision placed in one color.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Where it runs.
    pub color: Color,
    /// Which revision.
    pub revision: Revision,
    /// Fingerprint of its template.
    pub template_hash: String,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (revision {})", self.color, self.revision)
    }
}

/// Where a candidate is in the cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Preview instances are starting and must pass their readiness probes.
    Starting,
    /// Ready in preview; pre-promotion analysis runs against it.
    Analyzing,
    /// Ready in preview; waiting for a promote (or the auto-promotion delay).
    Paused,
    /// Promoted, but the `confirm-promotion` webhook has not answered 2xx yet.
    AwaitingConfirmation,
    /// Promoted: scaling to full size; the switch happens when all are ready.
    ScalingUp,
    /// Aborted: users stay on the stable color. `stopped` once the abort scale-down
    /// delay has passed and the instances are gone.
    Aborted {
        /// The candidate's instances have been stopped.
        stopped: bool,
        /// Who or what aborted, and why.
        reason: String,
    },
}

/// The revision being released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Where it runs; always the color that is not active.
    pub slot: Slot,
    /// Where it is in the cycle.
    pub stage: Stage,
    /// When the current stage began.
    pub stage_since: Millis,
    /// When this attempt began (the progress deadline counts from here).
    pub started: Millis,
    /// A promote arrived before the candidate was ready.
    pub promote_requested: bool,
    /// Ready instances at the last observation.
    pub ready: u32,
    /// Why instances are not ready, from the last observation.
    pub problem: Option<String>,
    /// The progress deadline passed before the candidate became ready.
    pub deadline_exceeded: bool,
    /// Why a person must decide: analysis was inconclusive, so it is never promoted
    /// automatically.
    #[serde(default)]
    pub hold: Option<String>,
}

/// Post-promotion analysis of the revision users were just switched to. While it
/// runs, the old color stays warm whatever the scale-down delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostAnalysis {
    /// The revision under analysis (the stable one).
    pub revision: Revision,
    /// When the switch happened and the analysis started.
    pub since: Millis,
    /// Set when the analysis was inconclusive: a person decides (promote keeps the
    /// revision, abort switches back).
    pub hold: Option<String>,
}

/// Which analysis of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnalysisKind {
    /// `prePromotionAnalysis`: against the preview, before any user sees it.
    PrePromotion,
    /// `postPromotionAnalysis`: after the switch, while the old color is warm.
    PostPromotion,
}

impl fmt::Display for AnalysisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnalysisKind::PrePromotion => "pre-promotion",
            AnalysisKind::PostPromotion => "post-promotion",
        })
    }
}

/// The previous active color, kept warm after a switch for an instant undo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    /// Where it runs.
    pub slot: Slot,
    /// When it is stopped.
    pub stop_at: Millis,
    /// Ready instances at the last observation.
    pub ready: u32,
}

/// Everything teal has decided about one rollout. Persisted after every change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The newest revision.
    pub revision: Revision,
    /// The color users are routed to, and what it runs.
    pub stable: Option<Slot>,
    /// Ready instances of the stable color at the last observation.
    pub stable_ready: u32,
    /// The revision being released, if any.
    pub candidate: Option<Candidate>,
    /// The previous stable color while it stays warm.
    pub retiring: Option<Retiring>,
    /// Times users were switched to another color (promotions and instant undos).
    #[serde(default)]
    pub switches: u64,
    /// Times a candidate was aborted.
    #[serde(default)]
    pub aborts: u64,
    /// Post-promotion analysis in progress, if any.
    #[serde(default)]
    pub post_analysis: Option<PostAnalysis>,
}

/// The knobs of the spec that the state machine reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Instances per color once promoted.
    pub replicas: u32,
    /// Instances of the candidate before promotion.
    pub preview_replicas: u32,
    /// Promote without a person once ready.
    pub auto_promotion_enabled: bool,
    /// With auto-promotion, how long to stay in preview first.
    pub auto_promotion_delay: Duration,
    /// How long the old color stays warm after a switch.
    pub scale_down_delay: Duration,
    /// How long an aborted candidate keeps running; None: until the next apply/retry.
    pub abort_scale_down_delay: Option<Duration>,
    /// How long a candidate may take to become ready.
    pub progress_deadline: Duration,
    /// The spec has `prePromotionAnalysis`.
    pub pre_promotion_analysis: bool,
    /// The spec has `postPromotionAnalysis`.
    pub post_promotion_analysis: bool,
    /// The spec has a `confirm-promotion` webhook.
    pub confirm_promotion: bool,
}

impl From<&RolloutSpec> for Policy {
    fn from(spec: &RolloutSpec) -> Self {
        let strategy = &spec.strategy;
        Policy {
            replicas: spec.replicas,
            preview_replicas: spec.preview_replicas(),
            auto_promotion_enabled: strategy.auto_promotion_enabled,
            auto_promotion_delay: strategy.auto_promotion_delay,
            scale_down_delay: strategy.scale_down_delay,
            abort_scale_down_delay: strategy.abort_scale_down_delay,
            progress_deadline: spec.progress_deadline,
            pre_promotion_analysis: strategy.pre_promotion_analysis.is_some(),
            post_promotion_analysis: strategy.post_promotion_analysis.is_some(),
            confirm_promotion: strategy
                .webhooks
                .iter()
                .any(|hook| hook.kind == WebhookKind::ConfirmPromotion),
        }
    }
}

/// Something that happened to a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new revision was recorded (a changed template, or an undo).
    Applied {
        /// Its number.
        revision: Revision,
        /// Its template's fingerprint.
        template_hash: String,
    },
    /// The reconciler counted the ready instances of a color.
    Observed {
        /// The color.
        color: Color,
        /// The template it was found running.
        template_hash: String,
        /// How many instances are ready.
        ready: u32,
        /// Why the others are not, if any.
        problem: Option<String>,
    },
    /// Time passed; deadlines and delays are checked.
    TimePassed,
    /// A person (or script) asked to promote.
    PromoteRequested {
        /// The revision they expect in preview; a different one refuses the promote.
        expected_revision: Option<Revision>,
    },
    /// A person (or an analysis) asked to abort.
    AbortRequested {
        /// Who or why, shown in the status and the history.
        reason: String,
    },
    /// A person asked to retry an aborted candidate.
    RetryRequested,
    /// An analysis run ended.
    AnalysisCompleted {
        /// Which one.
        kind: AnalysisKind,
        /// The revision it analysed; a run of another revision is ignored.
        revision: Revision,
        /// Successful, Failed, Error or Inconclusive.
        phase: AnalysisPhase,
        /// Why, for anything but success.
        message: String,
    },
    /// The `confirm-promotion` webhook answered 2xx for this revision.
    PromotionConfirmed {
        /// The revision it confirmed.
        revision: Revision,
    },
}

/// Why an event was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Promote without a candidate.
    #[error("nothing to promote: no revision is in preview{}", active_suffix(.active))]
    NothingToPromote {
        /// What users are on.
        active: Option<Slot>,
    },
    /// Promote naming a revision that is not the one in preview.
    #[error("stale promote: revision {expected} is not in preview{}", preview_suffix(*.preview))]
    StalePromote {
        /// The revision the caller expected.
        expected: Revision,
        /// The revision actually in preview.
        preview: Option<Revision>,
    },
    /// Promote while the candidate is already being promoted.
    #[error("revision {revision} is already being promoted")]
    AlreadyPromoting {
        /// The candidate.
        revision: Revision,
    },
    /// Promote of an aborted candidate.
    #[error("revision {revision} was aborted; run retry to release it again")]
    CandidateAborted {
        /// The candidate.
        revision: Revision,
    },
    /// Promote while the confirm-promotion webhook has not answered 2xx.
    #[error("revision {revision} is promoted and waits for the confirm-promotion webhook")]
    AwaitingConfirmation {
        /// The candidate.
        revision: Revision,
    },
    /// Abort without a candidate.
    #[error("nothing to abort: no revision is being released (to go back, use undo)")]
    NothingToAbort,
    /// Abort of an aborted candidate.
    #[error("revision {revision} is already aborted")]
    AlreadyAborted {
        /// The candidate.
        revision: Revision,
    },
    /// Retry without an aborted candidate.
    #[error("nothing to retry: no aborted revision")]
    NothingToRetry,
}

fn active_suffix(active: &Option<Slot>) -> String {
    match active {
        Some(slot) => format!(" (users are on {slot})"),
        None => String::new(),
    }
}

fn preview_suffix(preview: Option<Revision>) -> String {
    match preview {
        Some(revision) => format!(" (revision {revision} is)"),
        None => " (nothing is)".to_owned(),
    }
}

/// A status after an event, with what to write in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The new status.
    pub status: Status,
    /// One sentence per notable change, for the audit trail.
    pub notes: Vec<String>,
}

/// Argo Rollouts' phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing to do: the active color runs the newest revision (or the candidate is
    /// gone).
    Healthy,
    /// A revision is starting or being promoted.
    Progressing,
    /// Waiting for a promote.
    Paused,
    /// Aborted, or the candidate missed its progress deadline.
    Degraded,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn ms(duration: Duration) -> Millis {
    duration.as_millis().try_into().unwrap_or(Millis::MAX)
}

fn secs(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

impl Status {
    /// Applies one event at time `now`.
    pub fn on(&self, event: Event, policy: &Policy, now: Millis) -> Result<Transition, Refusal> {
        let mut next = self.clone();
        let mut notes = Vec::new();
        match event {
            Event::Applied {
                revision,
                template_hash,
            } => next.apply(revision, template_hash, policy, now, &mut notes),
            Event::Observed {
                color,
                template_hash,
                ready,
                problem,
            } => next.observe(color, &template_hash, ready, problem),
            Event::TimePassed => {}
            Event::PromoteRequested { expected_revision } => {
                next.promote(expected_revision, policy, now, &mut notes)?
            }
            Event::AbortRequested { reason } => next.abort(reason, now, &mut notes)?,
            Event::RetryRequested => next.retry(now, &mut notes)?,
            Event::AnalysisCompleted {
                kind,
                revision,
                phase,
                message,
            } => next.analysis_completed(kind, revision, phase, message, policy, now, &mut notes),
            Event::PromotionConfirmed { revision } => {
                if let Some(candidate) = next.candidate.as_mut().filter(|c| {
                    c.slot.revision == revision && c.stage == Stage::AwaitingConfirmation
                }) {
                    notes.push(format!(
                        "promotion of revision {revision} confirmed by webhook"
                    ));
                    candidate.enter(Stage::ScalingUp, now);
                }
            }
        }
        next.advance(policy, now, &mut notes);
        Ok(Transition {
            status: next,
            notes,
        })
    }

    fn apply(
        &mut self,
        revision: Revision,
        template_hash: String,
        policy: &Policy,
        now: Millis,
        notes: &mut Vec<String>,
    ) {
        self.revision = revision;
        // A new revision (or an undo) ends the post-promotion analysis of the current one.
        if let Some(post) = self.post_analysis.take() {
            notes.push(format!(
                "post-promotion analysis of revision {} stopped by revision {revision}",
                post.revision
            ));
        }
        let slot_in = |color| Slot {
            color,
            revision,
            template_hash: template_hash.clone(),
        };

        if let Some(stable) = self
            .stable
            .as_mut()
            .filter(|s| s.template_hash == template_hash)
        {
            // The active color already runs this template: nothing to release.
            if let Some(dropped) = self.candidate.take() {
                notes.push(format!(
                    "revision {revision} has the template {} already runs; dropped candidate {}",
                    stable.color, dropped.slot
                ));
            }
            stable.revision = revision;
            return;
        }

        let warm = self
            .retiring
            .as_ref()
            .filter(|r| r.template_hash() == template_hash && r.ready >= policy.replicas);
        if let (Some(warm), Some(stable)) = (warm.cloned(), self.stable.clone()) {
            // The old color still runs this template and is ready: switch back now, as
            // Argo does for a ReplicaSet inside its scale-down delay.
            let back = slot_in(warm.slot.color);
            notes.push(format!(
                "revision {revision} is the template still warm on {}: switched users back from {stable} at once",
                warm.slot.color
            ));
            self.candidate = None;
            self.retiring = Some(Retiring {
                slot: stable,
                stop_at: now + ms(policy.scale_down_delay),
                ready: self.stable_ready,
            });
            self.stable = Some(back);
            self.stable_ready = warm.ready;
            self.switches += 1;
            return;
        }

        let Some(stable) = self.stable.clone() else {
            // First release: nobody to protect, so no preview and no pause.
            let color = self
                .candidate
                .as_ref()
                .map_or(Color::Blue, |c| c.slot.color);
            notes.push(format!("revision {revision} starting in {color}"));
            self.candidate = Some(Candidate::new(slot_in(color), Stage::ScalingUp, now));
            return;
        };

        // Never into the live color: the candidate always takes the idle one, replacing
        // whatever was kept warm or previewed there.
        let idle = stable.color.other();
        let mut candidate = Candidate::new(slot_in(idle), Stage::Starting, now);
        if let Some(retiring) = self.retiring.take() {
            if retiring.template_hash() == template_hash {
                candidate.ready = retiring.ready;
            } else {
                notes.push(format!(
                    "{} replaced; it can no longer be undone instantly",
                    retiring.slot
                ));
            }
        }
        if let Some(old) = self.candidate.take() {
            notes.push(format!(
                "candidate {} replaced by revision {revision}",
                old.slot
            ));
        }
        notes.push(format!("revision {revision} starting in {idle} (preview)"));
        self.candidate = Some(candidate);
    }

    fn observe(&mut self, color: Color, template_hash: &str, ready: u32, problem: Option<String>) {
        if let Some(candidate) = self
            .candidate
            .as_mut()
            .filter(|c| c.slot.is(color, template_hash))
        {
            candidate.ready = ready;
            candidate.problem = problem;
        } else if self
            .stable
            .as_ref()
            .is_some_and(|s| s.is(color, template_hash))
        {
            self.stable_ready = ready;
        } else if let Some(retiring) = self
            .retiring
            .as_mut()
            .filter(|r| r.slot.is(color, template_hash))
        {
            retiring.ready = ready;
        }
        // Anything else is an observation of instances that are on their way out.
    }

    fn promote(
        &mut self,
        expected: Option<Revision>,
        policy: &Policy,
        now: Millis,
        notes: &mut Vec<String>,
    ) -> Result<(), Refusal> {
        if self.candidate.is_none()
            && let Some(post) = self.post_analysis.as_ref()
            && expected.is_none_or(|e| e == post.revision)
        {
            // A person accepts the revision users are on; the old color's delay starts.
            let revision = post.revision;
            self.end_post_analysis(policy, now);
            notes.push(format!(
                "revision {revision} accepted by promote; post-promotion analysis no longer decides"
            ));
            return Ok(());
        }
        let Some(candidate) = self.candidate.as_mut() else {
            if let Some(expected) = expected {
                return Err(Refusal::StalePromote {
                    expected,
                    preview: None,
                });
            }
            return Err(Refusal::NothingToPromote {
                active: self.stable.clone(),
            });
        };
        let revision = candidate.slot.revision;
        if let Some(expected) = expected.filter(|e| *e != revision) {
            return Err(Refusal::StalePromote {
                expected,
                preview: Some(revision),
            });
        }
        match candidate.stage {
            Stage::Aborted { .. } => Err(Refusal::CandidateAborted { revision }),
            Stage::ScalingUp => Err(Refusal::AlreadyPromoting { revision }),
            Stage::AwaitingConfirmation => Err(Refusal::AwaitingConfirmation { revision }),
            Stage::Starting => {
                candidate.promote_requested = true;
                notes.push(format!(
                    "promote of revision {revision} accepted; it is promoted as soon as it is ready"
                ));
                Ok(())
            }
            Stage::Analyzing => {
                candidate.promote_requested = true;
                notes.push(format!(
                    "promote of revision {revision} accepted; it is promoted as soon as \
                     pre-promotion analysis passes"
                ));
                Ok(())
            }
            Stage::Paused => {
                candidate.hold = None;
                notes.push(format!("revision {revision} promoted"));
                candidate.promote(policy, now);
                Ok(())
            }
        }
    }

    fn abort(
        &mut self,
        reason: String,
        now: Millis,
        notes: &mut Vec<String>,
    ) -> Result<(), Refusal> {
        if self.candidate.is_none() && self.post_analysis.is_some() {
            self.roll_back(&reason, now, notes);
            return Ok(());
        }
        let candidate = self.candidate.as_mut().ok_or(Refusal::NothingToAbort)?;
        let revision = candidate.slot.revision;
        if matches!(candidate.stage, Stage::Aborted { .. }) {
            return Err(Refusal::AlreadyAborted { revision });
        }
        notes.push(format!("revision {revision} aborted: {reason}"));
        self.aborts += 1;
        candidate.enter(
            Stage::Aborted {
                stopped: false,
                reason,
            },
            now,
        );
        Ok(())
    }

    fn retry(&mut self, now: Millis, notes: &mut Vec<String>) -> Result<(), Refusal> {
        let candidate = self
            .candidate
            .as_mut()
            .filter(|c| matches!(c.stage, Stage::Aborted { .. }))
            .ok_or(Refusal::NothingToRetry)?;
        notes.push(format!("revision {} retried", candidate.slot.revision));
        let stage = if self.stable.is_some() {
            Stage::Starting
        } else {
            Stage::ScalingUp
        };
        *candidate = Candidate::new(candidate.slot.clone(), stage, now);
        Ok(())
    }

    /// Moves on as far as the observations and the clock allow.
    fn advance(&mut self, policy: &Policy, now: Millis, notes: &mut Vec<String>) {
        if let Some(retiring) = self.retiring.as_ref().filter(|r| now >= r.stop_at) {
            notes.push(format!(
                "{} stopped: its scale-down delay passed",
                retiring.slot
            ));
            self.retiring = None;
        }
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let revision = candidate.slot.revision;
        if candidate.stage == Stage::Starting && candidate.ready >= policy.preview_replicas {
            if policy.pre_promotion_analysis {
                notes.push(format!(
                    "revision {revision} is ready in preview on {}; pre-promotion analysis started",
                    candidate.slot.color
                ));
                candidate.enter(Stage::Analyzing, now);
            } else {
                candidate.ready_for_promotion(policy, now, notes);
            }
        }
        if candidate.stage == Stage::Paused
            && policy.auto_promotion_enabled
            && candidate.hold.is_none()
            && now >= candidate.stage_since + ms(policy.auto_promotion_delay)
        {
            notes.push(format!(
                "revision {revision} promoted automatically after {} in preview",
                secs(policy.auto_promotion_delay)
            ));
            candidate.promote(policy, now);
        }
        if let Stage::Aborted { stopped: false, .. } = candidate.stage
            && let Some(delay) = policy.abort_scale_down_delay
            && now >= candidate.stage_since + ms(delay)
        {
            notes.push(format!("aborted {} stopped", candidate.slot));
            if let Stage::Aborted { stopped, .. } = &mut candidate.stage {
                *stopped = true;
            }
        }
        if matches!(candidate.stage, Stage::Starting | Stage::ScalingUp)
            && !candidate.deadline_exceeded
            && now >= candidate.started + ms(policy.progress_deadline)
        {
            candidate.deadline_exceeded = true;
            notes.push(format!(
                "revision {revision} did not become ready within {}{}",
                secs(policy.progress_deadline),
                candidate
                    .problem
                    .as_deref()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ));
        }
        if candidate.stage == Stage::ScalingUp && candidate.ready >= policy.replicas {
            self.switch(policy, now, notes);
        }
    }

    /// The one atomic step: users move to the candidate; the old color stays warm.
    fn switch(&mut self, policy: &Policy, now: Millis, notes: &mut Vec<String>) {
        let Some(candidate) = self.candidate.take() else {
            return;
        };
        let old = self.stable.replace(candidate.slot.clone());
        match old {
            Some(old) if policy.post_promotion_analysis => {
                self.switches += 1;
                notes.push(format!(
                    "switched users from {old} to {}; {} stays warm while post-promotion \
                     analysis runs",
                    candidate.slot, old.color,
                ));
                self.retiring = Some(Retiring {
                    slot: old,
                    stop_at: KEPT_WARM,
                    ready: self.stable_ready,
                });
                self.post_analysis = Some(PostAnalysis {
                    revision: candidate.slot.revision,
                    since: now,
                    hold: None,
                });
            }
            Some(old) => {
                self.switches += 1;
                notes.push(format!(
                    "switched users from {old} to {}; {} stays warm for {}",
                    candidate.slot,
                    old.color,
                    secs(policy.scale_down_delay)
                ));
                self.retiring = Some(Retiring {
                    slot: old,
                    stop_at: now + ms(policy.scale_down_delay),
                    ready: self.stable_ready,
                });
            }
            None => notes.push(format!("{} is live", candidate.slot)),
        }
        self.stable_ready = candidate.ready;
        if self.retiring.as_ref().is_some_and(|r| now >= r.stop_at) {
            let retiring = self.retiring.take().expect("checked above");
            notes.push(format!("{} stopped: no scale-down delay", retiring.slot));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn analysis_completed(
        &mut self,
        kind: AnalysisKind,
        revision: Revision,
        phase: AnalysisPhase,
        message: String,
        policy: &Policy,
        now: Millis,
        notes: &mut Vec<String>,
    ) {
        let why = if message.is_empty() {
            phase.to_string()
        } else {
            format!("{phase}: {message}")
        };
        match kind {
            AnalysisKind::PrePromotion => {
                let Some(candidate) = self
                    .candidate
                    .as_mut()
                    .filter(|c| c.slot.revision == revision && c.stage == Stage::Analyzing)
                else {
                    return; // a run of an older attempt: nothing depends on it any more
                };
                match phase {
                    AnalysisPhase::Successful => {
                        notes.push(format!(
                            "pre-promotion analysis of revision {revision} passed"
                        ));
                        candidate.ready_for_promotion(policy, now, notes);
                    }
                    AnalysisPhase::Inconclusive => {
                        let reason = format!("pre-promotion analysis inconclusive: {message}");
                        notes.push(format!(
                            "revision {revision} paused: {reason}; promote or abort"
                        ));
                        candidate.promote_requested = false;
                        candidate.hold = Some(reason);
                        candidate.enter(Stage::Paused, now);
                    }
                    _ => {
                        let reason = format!("pre-promotion analysis {why}");
                        notes.push(format!("revision {revision} aborted: {reason}"));
                        self.aborts += 1;
                        candidate.enter(
                            Stage::Aborted {
                                stopped: false,
                                reason,
                            },
                            now,
                        );
                    }
                }
            }
            AnalysisKind::PostPromotion => {
                if self
                    .post_analysis
                    .as_ref()
                    .is_none_or(|post| post.revision != revision || post.hold.is_some())
                {
                    return;
                }
                match phase {
                    AnalysisPhase::Successful => {
                        self.end_post_analysis(policy, now);
                        notes.push(format!(
                            "post-promotion analysis of revision {revision} passed{}",
                            match &self.retiring {
                                Some(r) => format!(
                                    "; {} stays warm for {}",
                                    r.slot.color,
                                    secs(policy.scale_down_delay)
                                ),
                                None => String::new(),
                            }
                        ));
                    }
                    AnalysisPhase::Inconclusive => {
                        let reason = format!("post-promotion analysis inconclusive: {message}");
                        notes.push(format!(
                            "revision {revision} held: {reason}; promote to keep it, abort to \
                             switch back"
                        ));
                        if let Some(post) = self.post_analysis.as_mut() {
                            post.hold = Some(reason);
                        }
                    }
                    _ => {
                        let reason = format!("post-promotion analysis {why}");
                        self.roll_back(&reason, now, notes);
                    }
                }
            }
        }
    }

    /// Post-promotion analysis is over (passed or overruled): the old color's
    /// scale-down delay starts now.
    fn end_post_analysis(&mut self, policy: &Policy, now: Millis) {
        self.post_analysis = None;
        if let Some(retiring) = self.retiring.as_mut() {
            retiring.stop_at = now + ms(policy.scale_down_delay);
        }
    }

    /// Switches users back to the warm old color after a failed (or aborted)
    /// post-promotion analysis; the failed revision becomes an aborted candidate.
    fn roll_back(&mut self, reason: &str, now: Millis, notes: &mut Vec<String>) {
        self.post_analysis = None;
        let (Some(failed), Some(warm)) = (self.stable.clone(), self.retiring.take()) else {
            return;
        };
        notes.push(format!(
            "revision {} aborted: {reason}; switched users back to {}",
            failed.revision, warm.slot
        ));
        let mut candidate = Candidate::new(
            failed,
            Stage::Aborted {
                stopped: false,
                reason: reason.to_owned(),
            },
            now,
        );
        candidate.ready = self.stable_ready;
        self.candidate = Some(candidate);
        self.stable = Some(warm.slot);
        self.stable_ready = warm.ready;
        self.switches += 1;
        self.aborts += 1;
    }

    /// What should run where for this status.
    pub fn world(&self, policy: &Policy) -> World {
        let mut world = World::default();
        let deployment = |slot: &Slot, replicas: u32| Deployment {
            revision: slot.revision,
            template_hash: slot.template_hash.clone(),
            replicas,
        };
        if let Some(retiring) = &self.retiring {
            world.set_deployment(
                retiring.slot.color,
                Some(deployment(&retiring.slot, policy.replicas)),
            );
        }
        if let Some(stable) = &self.stable {
            world.set_deployment(stable.color, Some(deployment(stable, policy.replicas)));
            world.active = Some(stable.color);
        }
        if let Some(candidate) = &self.candidate {
            let color = candidate.slot.color;
            let (replicas, previewed) = match candidate.stage {
                Stage::Starting
                | Stage::Analyzing
                | Stage::Paused
                | Stage::AwaitingConfirmation => (policy.preview_replicas, true),
                Stage::ScalingUp => (policy.replicas, true),
                Stage::Aborted { stopped: false, .. } => (policy.preview_replicas, false),
                Stage::Aborted { stopped: true, .. } => (0, false),
            };
            if replicas > 0 {
                world.set_deployment(color, Some(deployment(&candidate.slot, replicas)));
            }
            // Before the first release there is no active color to compare with, so the
            // candidate is not previewed; users get a 503 until it is live.
            if previewed && self.stable.is_some() {
                world.preview = Some(color);
            }
        }
        world
    }

    /// When time alone changes something (a delay ends, a deadline passes).
    pub fn next_wake(&self, policy: &Policy) -> Option<Millis> {
        let mut wakes = Vec::new();
        if let Some(retiring) = self.retiring.as_ref().filter(|r| r.stop_at != KEPT_WARM) {
            wakes.push(retiring.stop_at);
        }
        if let Some(candidate) = &self.candidate {
            match &candidate.stage {
                Stage::Paused if policy.auto_promotion_enabled && candidate.hold.is_none() => {
                    wakes.push(candidate.stage_since + ms(policy.auto_promotion_delay))
                }
                Stage::Aborted { stopped: false, .. } => {
                    if let Some(delay) = policy.abort_scale_down_delay {
                        wakes.push(candidate.stage_since + ms(delay));
                    }
                }
                Stage::Starting | Stage::ScalingUp if !candidate.deadline_exceeded => {
                    wakes.push(candidate.started + ms(policy.progress_deadline))
                }
                _ => {}
            }
        }
        wakes.into_iter().min()
    }

    /// The Argo phase and its reason.
    pub fn phase(&self) -> (Phase, Option<&'static str>) {
        match &self.candidate {
            None if self
                .post_analysis
                .as_ref()
                .is_some_and(|p| p.hold.is_some()) =>
            {
                (Phase::Paused, Some("AnalysisInconclusive"))
            }
            None if self.post_analysis.is_some() => (Phase::Progressing, None),
            None if self.stable.is_some() => (Phase::Healthy, None),
            None => (Phase::Progressing, None),
            Some(candidate) => match candidate.stage {
                Stage::Aborted { .. } => (Phase::Degraded, Some("RolloutAborted")),
                _ if candidate.deadline_exceeded => {
                    (Phase::Degraded, Some("ProgressDeadlineExceeded"))
                }
                Stage::Paused if candidate.hold.is_some() => {
                    (Phase::Paused, Some("AnalysisInconclusive"))
                }
                Stage::Paused => (Phase::Paused, Some("BlueGreenPause")),
                Stage::AwaitingConfirmation => (Phase::Paused, Some("WaitingPromotion")),
                Stage::Starting | Stage::Analyzing | Stage::ScalingUp => (Phase::Progressing, None),
            },
        }
    }

    /// One sentence a person can act on.
    pub fn message(&self, policy: &Policy) -> String {
        let Some(candidate) = &self.candidate else {
            return match (&self.stable, &self.post_analysis) {
                (
                    Some(stable),
                    Some(PostAnalysis {
                        hold: Some(hold), ..
                    }),
                ) => format!(
                    "users are on {stable}; {hold}: promote to keep it, abort to switch back"
                ),
                (Some(stable), Some(_)) => {
                    format!("users are on {stable}; post-promotion analysis running")
                }
                (Some(stable), None) => format!("users are on {stable}"),
                (None, _) => "nothing deployed yet".to_owned(),
            };
        };
        let slot = &candidate.slot;
        let problem = candidate
            .problem
            .as_deref()
            .map(|p| format!(": {p}"))
            .unwrap_or_default();
        match &candidate.stage {
            Stage::Aborted { reason, .. } => {
                format!("revision {} aborted: {reason}", slot.revision)
            }
            Stage::Starting => {
                let deadline = if candidate.deadline_exceeded {
                    format!(
                        " (progress deadline of {} exceeded)",
                        secs(policy.progress_deadline)
                    )
                } else {
                    String::new()
                };
                format!(
                    "waiting for {slot} to become ready: {}/{} ready{problem}{deadline}",
                    candidate.ready, policy.preview_replicas
                )
            }
            Stage::Analyzing => format!(
                "{slot} is ready in preview; pre-promotion analysis running{}",
                if candidate.promote_requested {
                    " (promote requested)"
                } else {
                    ""
                }
            ),
            Stage::AwaitingConfirmation => format!(
                "{slot} is promoted; waiting for the confirm-promotion webhook to answer 2xx"
            ),
            Stage::Paused if candidate.hold.is_some() => format!(
                "{slot} is paused: {}; promote or abort",
                candidate.hold.as_deref().unwrap_or_default()
            ),
            Stage::Paused => format!(
                "{slot} is ready in preview; waiting for promote{}",
                if policy.auto_promotion_enabled {
                    format!(" (automatic after {})", secs(policy.auto_promotion_delay))
                } else {
                    String::new()
                }
            ),
            Stage::ScalingUp => format!(
                "{} {slot}: {}/{} ready{problem}",
                if self.stable.is_some() {
                    "promoting"
                } else {
                    "starting the first release in"
                },
                candidate.ready,
                policy.replicas
            ),
        }
    }
}

impl Slot {
    fn is(&self, color: Color, template_hash: &str) -> bool {
        self.color == color && self.template_hash == template_hash
    }
}

impl Retiring {
    fn template_hash(&self) -> &str {
        &self.slot.template_hash
    }
}

impl Candidate {
    fn new(slot: Slot, stage: Stage, now: Millis) -> Self {
        Candidate {
            slot,
            stage,
            stage_since: now,
            started: now,
            promote_requested: false,
            ready: 0,
            problem: None,
            deadline_exceeded: false,
            hold: None,
        }
    }

    fn enter(&mut self, stage: Stage, now: Millis) {
        self.stage = stage;
        self.stage_since = now;
    }

    /// Promoted: the switch waits for a confirm-promotion webhook when there is one.
    fn promote(&mut self, policy: &Policy, now: Millis) {
        let stage = if policy.confirm_promotion {
            Stage::AwaitingConfirmation
        } else {
            Stage::ScalingUp
        };
        self.enter(stage, now);
    }

    /// Ready in preview and past any pre-promotion analysis: promote if asked to (or
    /// automatically), else pause for a person.
    fn ready_for_promotion(&mut self, policy: &Policy, now: Millis, notes: &mut Vec<String>) {
        let revision = self.slot.revision;
        if self.promote_requested {
            notes.push(format!(
                "revision {revision} is ready; promoting as requested"
            ));
            self.promote(policy, now);
        } else if policy.auto_promotion_enabled && policy.auto_promotion_delay.is_zero() {
            notes.push(format!(
                "revision {revision} is ready; promoting automatically"
            ));
            self.promote(policy, now);
        } else {
            notes.push(format!(
                "revision {revision} is ready in preview on {}; paused for promotion",
                self.slot.color
            ));
            self.enter(Stage::Paused, now);
        }
    }
}

#[cfg(test)]
mod tests;
