//! The platform's vocabulary: which group, what it runs, and what it looks like now.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use teal_core::Color;
use teal_core::spec::Template;

/// One group of instances: a rollout's color.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// The rollout's name.
    pub rollout: String,
    /// Which of its two slots.
    pub color: Color,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.rollout, self.color)
    }
}

/// What a group runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The revision number the group is labelled with (see `relabel`).
    pub revision: u64,
    /// `template.hash()`: reported back so the reconciler can tell what runs.
    pub template_hash: String,
    /// What each instance runs and how it is probed.
    pub template: Template,
    /// How many instances are wanted.
    pub replicas: u32,
}

/// What one group looks like now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group's color.
    pub color: Color,
    /// The revision it is labelled with.
    pub revision: u64,
    /// Fingerprint of the template it runs.
    pub template_hash: String,
    /// Wanted instances.
    pub replicas: u32,
    /// The instances it has (stopping ones are not listed).
    pub instances: Vec<InstanceStatus>,
}

/// What one instance looks like now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// `<rollout>-<color>-r<revision it was started with>-<n>`, e.g. `shop-green-r2-1`.
    pub id: String,
    /// Its process, while one runs (None while waiting to restart).
    pub pid: Option<u32>,
    /// Where it listens (always on 127.0.0.1).
    pub addr: SocketAddr,
    /// Passing its readiness probe: the proxy may send it requests.
    pub ready: bool,
    /// When its current process started (ms since the epoch).
    pub started_at_ms: u64,
    /// Restarts after crashes or liveness failures.
    pub restarts: u32,
    /// Why it is not ready, or why it last restarted, as one sentence.
    pub problem: Option<String>,
    /// Its process was started by an earlier daemon and adopted by this one.
    pub adopted: bool,
}

/// One instance's log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFile {
    /// The instance id.
    pub instance: String,
    /// Its color.
    pub color: Color,
    /// Its revision (the current label for a running instance).
    pub revision: u64,
    /// Where the file is.
    pub path: PathBuf,
}
