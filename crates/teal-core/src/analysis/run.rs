//! Judging measurements, metrics and whole runs, as Argo Rollouts' analysis
//! controller does. Pure: the daemon takes the measurements and passes the time.
//!
//! - [`assess_measurement`]: one [`Measurement`] → Successful, Failed, Inconclusive or
//!   Error, from the metric's conditions.
//! - [`MetricRun`]: a metric's measurements so far, its counters (Argo's
//!   `MetricResult`) and its phase: Failed once failures exceed `failureLimit`,
//!   Inconclusive once inconclusives exceed `inconclusiveLimit`, Error once errors in a
//!   row exceed `consecutiveErrorLimit`, Successful once `count` measurements are taken,
//!   otherwise Running (Pending before the first measurement).
//! - [`AnalysisRun`]: every metric of a template, with args resolved. Failed if a
//!   metric failed, else Error if one errored, else Inconclusive if one was
//!   inconclusive, else Successful once all are, else Running. [`AnalysisRun::due`]
//!   and [`AnalysisRun::next_measurement_at`] say what to measure when.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::args::{ArgValues, ArgsError};
use super::expr::{Condition, Value};
use super::template::Metric;
use crate::rollout::Millis;
use crate::spec::AnalysisTemplateSpec;

/// Measurements kept per metric (Argo's `DefaultMeasurementHistoryLimit`); the
/// counters keep counting past it.
pub const MEASUREMENT_HISTORY_LIMIT: usize = 10;

/// When a metric without `interval` is measured again after an error (Argo's
/// `DefaultErrorRetryInterval`). With an interval, the interval is used.
pub const ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The phase of a measurement, a metric or a run (Argo's `AnalysisPhase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing measured yet.
    Pending,
    /// Measuring.
    Running,
    /// Passed.
    Successful,
    /// Failed: the release should be rolled back.
    Failed,
    /// Could not be measured (too many errors in a row).
    Error,
    /// Measured, but neither good nor bad (or no data): a person should decide.
    Inconclusive,
}

impl Phase {
    /// True for the four final phases.
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            Phase::Successful | Phase::Failed | Phase::Error | Phase::Inconclusive
        )
    }

    /// The name, as in the API (`Successful`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Successful => "Successful",
            Phase::Failed => "Failed",
            Phase::Error => "Error",
            Phase::Inconclusive => "Inconclusive",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider measured: a value, no value (no data, such as no traffic), or an
/// error (the provider could not answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The value; None when there was nothing to measure.
    pub value: Option<Value>,
    /// Why the value could not be taken. Wins over `value`.
    pub error: Option<String>,
    /// What a job printed (the end of it), kept with the measurement.
    #[serde(default)]
    pub output: Option<String>,
}

impl Measurement {
    /// A measured value.
    pub fn of(value: Value) -> Self {
        Measurement {
            value: Some(value),
            error: None,
            output: None,
        }
    }

    /// Nothing to measure (for example no requests in the window).
    pub fn no_data() -> Self {
        Measurement::default()
    }

    /// The provider failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Measurement {
            value: None,
            error: Some(message.into()),
            output: None,
        }
    }
}

/// The judgement of one measurement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: Phase,
    /// Why, for anything but a plain success.
    pub message: Option<String>,
}

/// Judges one measurement by the metric's conditions, as Argo does:
///
/// - an error is Error; no value is Inconclusive ("no data"), never Successful;
/// - a condition that cannot be evaluated for the value (wrong type, index out of
///   range) is Error;
/// - no conditions: Successful;
/// - only `successCondition`: Successful if true, else Failed;
/// - only `failureCondition`: Failed if true, else Successful;
/// - both: Failed if the failure condition is true, else Successful if the success
///   condition is, else Inconclusive.
pub fn assess_measurement<'a>(metric: &'a Metric, measurement: &Measurement) -> Assessment {
    let done = |phase, message: Option<String>| Assessment { phase, message };
    if let Some(error) = &measurement.error {
        return done(Phase::Error, Some(error.clone()));
    }
    let Some(value) = &measurement.value else {
        return done(
            Phase::Inconclusive,
            Some("no data: nothing to measure".to_owned()),
        );
    };
    // Each condition that is set: whether it holds, or the Error assessment saying why
    // it could not be evaluated for this value.
    let evaluate = |field: &str, condition: &'a Option<Condition>| match condition {
        None => Ok(None),
        Some(condition) => match condition.evaluate(value) {
            Ok(holds) => Ok(Some((condition, holds))),
            Err(error) => Err(done(
                Phase::Error,
                Some(format!(
                    "{field} \"{condition}\" failed for {value}: {error}"
                )),
            )),
        },
    };
    let success = match evaluate("successCondition", &metric.success_condition) {
        Ok(success) => success,
        Err(error) => return error,
    };
    let failure = match evaluate("failureCondition", &metric.failure_condition) {
        Ok(failure) => failure,
        Err(error) => return error,
    };
    match (success, failure) {
        (_, Some((condition, true))) => done(
            Phase::Failed,
            Some(format!(
                "failureCondition \"{condition}\" is true for {value}"
            )),
        ),
        (Some((condition, false)), None) => done(
            Phase::Failed,
            Some(format!(
                "successCondition \"{condition}\" is false for {value}"
            )),
        ),
        (Some((success, false)), Some((failure, false))) => done(
            Phase::Inconclusive,
            Some(format!(
                "neither successCondition \"{success}\" nor failureCondition \"{failure}\" \
                 holds for {value}"
            )),
        ),
        _ => done(Phase::Successful, None),
    }
}

/// One judged measurement, as kept in a [`MetricRun`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasurementRecord {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: Phase,
    /// The value, if one was measured.
    pub value: Option<Value>,
    /// Why, for anything but a plain success.
    pub message: Option<String>,
    /// When the measurement started.
    pub started_at: Millis,
    /// When it finished; the next one is due an interval after this.
    pub finished_at: Millis,
    /// What a job printed (the end of it).
    #[serde(default)]
    pub output: Option<String>,
}

/// One metric of a run: its (resolved) spec, measurements and counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRun {
    /// The metric, with args substituted into its provider.
    pub metric: Metric,
    /// Pending, Running, or the final phase.
    pub phase: Phase,
    /// Why the metric is in its phase (the last measurement's message while running).
    pub message: Option<String>,
    /// Measurements that were not errors (Argo's `count`): successful + failed +
    /// inconclusive.
    pub count: u32,
    /// Successful measurements.
    pub successful: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Measurements that were errors.
    pub errors: u32,
    /// Errors since the last measurement that was not one.
    pub consecutive_errors: u32,
    /// The latest measurements, oldest first; at most [`MEASUREMENT_HISTORY_LIMIT`].
    pub measurements: Vec<MeasurementRecord>,
}

/// `at + duration`, in milliseconds, saturating.
fn after(at: Millis, duration: Duration) -> Millis {
    at.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

impl MetricRun {
    /// A metric with nothing measured yet.
    pub fn new(metric: Metric) -> Self {
        MetricRun {
            metric,
            phase: Phase::Pending,
            message: None,
            count: 0,
            successful: 0,
            failed: 0,
            inconclusive: 0,
            errors: 0,
            consecutive_errors: 0,
            measurements: Vec::new(),
        }
    }

    /// When the next measurement is due, for a run that started at `run_started`; None
    /// once the metric is completed. The first is due after `initialDelay`; the next an
    /// `interval` after the previous finished (after an error without an interval,
    /// [`ERROR_RETRY_INTERVAL`]).
    pub fn due_at(&self, run_started: Millis) -> Option<Millis> {
        if self.phase.is_completed() {
            return None;
        }
        match self.measurements.last() {
            None => Some(after(
                after(run_started, self.metric.initial_delay),
                self.metric.first_window(),
            )),
            Some(last) => Some(after(
                last.finished_at,
                self.metric.interval.unwrap_or(ERROR_RETRY_INTERVAL),
            )),
        }
    }

    /// Records a measurement and judges the metric again; returns the record, or None
    /// when the metric had already completed (a late measurement is ignored).
    pub fn record(
        &mut self,
        measurement: &Measurement,
        started_at: Millis,
        finished_at: Millis,
    ) -> Option<&MeasurementRecord> {
        if self.phase.is_completed() {
            return None;
        }
        let assessment = assess_measurement(&self.metric, measurement);
        match assessment.phase {
            Phase::Error => {
                self.errors = self.errors.saturating_add(1);
                self.consecutive_errors = self.consecutive_errors.saturating_add(1);
            }
            phase => {
                self.count = self.count.saturating_add(1);
                let counter = match phase {
                    Phase::Successful => &mut self.successful,
                    Phase::Failed => &mut self.failed,
                    _ => &mut self.inconclusive,
                };
                *counter = counter.saturating_add(1);
                self.consecutive_errors = 0;
            }
        }
        self.measurements.push(MeasurementRecord {
            phase: assessment.phase,
            value: measurement.value.clone(),
            message: assessment.message,
            started_at,
            finished_at,
            output: measurement.output.clone(),
        });
        if self.measurements.len() > MEASUREMENT_HISTORY_LIMIT {
            let excess = self.measurements.len() - MEASUREMENT_HISTORY_LIMIT;
            self.measurements.drain(..excess);
        }
        self.assess();
        self.measurements.last()
    }

    /// Sets the phase and message from the counters (Argo's `assessMetricStatus`).
    fn assess(&mut self) {
        let metric = &self.metric;
        let last = self
            .measurements
            .last()
            .and_then(|record| record.message.clone());
        let with_last = |text: String| match &last {
            Some(last) => format!("{text}; last: {last}"),
            None => text,
        };
        let (phase, message) = if self.failed > metric.failure_limit {
            (
                Phase::Failed,
                Some(with_last(format!(
                    "{} failed measurement{}, more than failureLimit {}",
                    self.failed,
                    plural(self.failed),
                    metric.failure_limit
                ))),
            )
        } else if self.inconclusive > metric.inconclusive_limit {
            (
                Phase::Inconclusive,
                Some(with_last(format!(
                    "{} inconclusive measurement{}, more than inconclusiveLimit {}",
                    self.inconclusive,
                    plural(self.inconclusive),
                    metric.inconclusive_limit
                ))),
            )
        } else if self.consecutive_errors > metric.consecutive_error_limit {
            (
                Phase::Error,
                Some(with_last(format!(
                    "{} errors in a row, more than consecutiveErrorLimit {}",
                    self.consecutive_errors, metric.consecutive_error_limit
                ))),
            )
        } else if metric.count.is_some_and(|count| self.count >= count) {
            (Phase::Successful, last)
        } else {
            (Phase::Running, last)
        };
        self.phase = phase;
        self.message = message;
    }

    /// Stops the metric: one not yet completed is Successful (as in Argo, a metric
    /// measured until stopped passes if it never crossed a limit).
    pub fn terminate(&mut self) {
        if self.phase.is_completed() {
            return;
        }
        self.phase = Phase::Successful;
        self.message = Some(match self.measurements.len() {
            0 => "stopped before the first measurement".to_owned(),
            _ => format!(
                "stopped after {} measurement{}",
                self.count,
                plural(self.count)
            ),
        });
    }
}

fn plural(count: u32) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The metric named in [`AnalysisRun::record`] is not in the run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this analysis has no metric \"{0}\"")]
pub struct UnknownMetric(pub String);

/// One run of an AnalysisTemplate (Argo's `AnalysisRun`): its metrics with args
/// resolved, and everything measured so far. Stored as JSON between measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRun {
    /// The template's name.
    pub template: String,
    /// The value of every arg.
    pub args: ArgValues,
    /// When the run started; `initialDelay`s count from here.
    pub started_at: Millis,
    /// One entry per metric, in the template's order.
    pub metrics: Vec<MetricRun>,
}

impl AnalysisRun {
    /// Starts a run of `template` at `now`. `supplied` are the arg values teal (and
    /// the rollout) give, such as [`super::args::TealArgs::pairs`]; they override the
    /// template's defaults. Fails when an arg has no value or a provider field names an
    /// unknown arg.
    pub fn start(
        template: &AnalysisTemplateSpec,
        supplied: &[(String, String)],
        now: Millis,
    ) -> Result<AnalysisRun, ArgsError> {
        let args = ArgValues::resolve(&template.args, supplied)?;
        let metrics = template
            .metrics
            .iter()
            .map(|metric| metric.resolve(&args).map(MetricRun::new))
            .collect::<Result<_, _>>()?;
        Ok(AnalysisRun {
            template: template.name.clone(),
            args,
            started_at: now,
            metrics,
        })
    }

    /// The run's phase: Failed if any metric failed; else Error if any errored; else
    /// Inconclusive if any was inconclusive; else Successful when all succeeded; else
    /// Running. A bad metric ends the run at once: the others are not waited for.
    pub fn phase(&self) -> Phase {
        let any = |phase| self.metrics.iter().any(|metric| metric.phase == phase);
        for phase in [Phase::Failed, Phase::Error, Phase::Inconclusive] {
            if any(phase) {
                return phase;
            }
        }
        if self
            .metrics
            .iter()
            .all(|metric| metric.phase == Phase::Successful)
        {
            Phase::Successful
        } else {
            Phase::Running
        }
    }

    /// Why the run is in its phase: the message of the metric that decided it (for
    /// Failed, Error, Inconclusive), prefixed with its name.
    pub fn message(&self) -> Option<String> {
        let phase = self.phase();
        if !matches!(phase, Phase::Failed | Phase::Error | Phase::Inconclusive) {
            return None;
        }
        let metric = self.metrics.iter().find(|metric| metric.phase == phase)?;
        Some(match &metric.message {
            Some(message) => format!("metric \"{}\": {message}", metric.metric.name),
            None => format!("metric \"{}\" is {phase}", metric.metric.name),
        })
    }

    /// The metrics to measure at `now`: those whose next measurement is due. Empty
    /// once the run is completed. The daemon measures these, then calls
    /// [`AnalysisRun::record`] for each (it must not ask again for a metric whose
    /// measurement is still under way).
    pub fn due(&self, now: Millis) -> Vec<&Metric> {
        if self.phase().is_completed() {
            return Vec::new();
        }
        self.metrics
            .iter()
            .filter(|metric| metric.due_at(self.started_at).is_some_and(|at| at <= now))
            .map(|metric| &metric.metric)
            .collect()
    }

    /// When something is next due (`now` if something already is); None once the run
    /// is completed.
    pub fn next_measurement_at(&self, now: Millis) -> Option<Millis> {
        if self.phase().is_completed() {
            return None;
        }
        self.metrics
            .iter()
            .filter_map(|metric| metric.due_at(self.started_at))
            .min()
            .map(|at| at.max(now))
    }

    /// Records a measurement of metric `name` and returns the run's phase after it.
    /// A measurement that arrives after its metric or the run completed is ignored.
    pub fn record(
        &mut self,
        name: &str,
        measurement: &Measurement,
        started_at: Millis,
        finished_at: Millis,
    ) -> Result<Phase, UnknownMetric> {
        let completed = self.phase().is_completed();
        let metric = self
            .metrics
            .iter_mut()
            .find(|metric| metric.metric.name == name)
            .ok_or_else(|| UnknownMetric(name.to_owned()))?;
        if !completed {
            metric.record(measurement, started_at, finished_at);
        }
        Ok(self.phase())
    }

    /// Stops the run (the rollout no longer needs it): every metric not yet completed
    /// is Successful, as in Argo; one that already failed keeps its phase.
    pub fn terminate(&mut self) {
        if self.phase().is_completed() {
            return;
        }
        for metric in &mut self.metrics {
            metric.terminate();
        }
    }

    /// The metric named `name`.
    pub fn metric(&self, name: &str) -> Option<&MetricRun> {
        self.metrics
            .iter()
            .find(|metric| metric.metric.name == name)
    }
}

#[cfg(test)]
mod tests;
