//! Analysis: promote or roll back by itself from metrics, as Argo Rollouts'
//! AnalysisTemplate and AnalysisRun do. This is the pure core; the daemon takes the
//! measurements (providers) and drives the rollout from a run's phase.
//!
//! - [`template`]: the typed metrics and args of an AnalysisTemplate (parsed and
//!   validated by [`crate::spec::parse_documents`]).
//! - [`expr`]: the condition language of `successCondition` / `failureCondition`.
//! - [`json_path`]: the `jsonPath` of a `web` metric.
//! - [`args`]: `{{args.NAME}}` substitution into provider fields.
//! - [`run`]: judging measurements, metrics and runs; when to measure next.
//!
//! The conditions use a language of teal's own rather than a crate: the candidates
//! (evalexpr, cel-interpreter) lack `result[0]` indexing or Argo's `len()`, cannot
//! type-check a condition before it runs, or bring a large dependency tree for a
//! dozen operators.

pub mod args;
pub mod expr;
pub mod json_path;
pub mod run;
pub mod template;

pub use args::{ArgValues, ArgsError, STANDARD_ARGS, TealArgs};
pub use expr::{Condition, ExprError, Expression, Types, Value};
pub use run::{
    AnalysisRun, Assessment, Measurement, MeasurementRecord, MetricRun, Phase, UnknownMetric,
    assess_measurement,
};
pub use template::{
    Arg, BuiltinMetric, Header, HttpMethod, JobMetric, KubernetesJobMetric, Measure, Metric,
    PrometheusMetric, Provider, Service, WebMetric,
};
