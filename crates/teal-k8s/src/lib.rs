//! teal on Kubernetes: a controller that releases `Rollout`s (Argo Rollouts'
//! `argoproj.io/v1alpha1` with `strategy.blueGreen`, and teal's own `teal.dev/v1alpha1`)
//! with teal-core's state machine, the one the local daemon runs.
//!
//! - [`crd`]: the resource types, in Argo's shape.
//! - [`spec_check`]: validation, defaults, unsupported fields.
//! - [`plan`]: one reconcile without I/O, tested by tables.
//! - [`controller`] and [`routes`]: the API calls.
//! - [`run`]: the watch loop with leader election.

pub mod analysis;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod gateway;
pub mod lease;
pub mod plan;
pub mod routes;
pub mod run;
pub mod spec_check;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// An object the spec names does not exist.
    #[error("{0}")]
    Missing(String),
    /// The spec is invalid.
    #[error("invalid spec: {0}")]
    Invalid(String),
    /// An object did not (de)serialize.
    #[error("malformed object: {0}")]
    Json(#[from] serde_json::Error),
}
