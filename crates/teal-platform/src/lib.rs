//! Where teal's instances run. One implementation for now: local processes.
//!
//! CONTRACT (the daemon is written against it; keep these names and meanings):
//! - `LocalPlatform::open(run_dir) -> Result<Arc<LocalPlatform>, PlatformError>`:
//!   adopts instances recorded in `run_dir` whose processes are still alive (so a
//!   daemon killed with -9 finds its instances again), forgets the rest.
//! - `start(&self, GroupKey, GroupSpec)`: makes `(rollout, color)` run `spec`; whatever
//!   ran there before is stopped (in the background).
//! - `scale(&self, &GroupKey, replicas)`, `relabel(&self, &GroupKey, revision)`.
//! - `stop(&self, &GroupKey)`: SIGTERM every instance of the group, SIGKILL after the
//!   template's grace period; returns at once, the group leaves `observe` at once.
//! - `observe(&self, rollout) -> Vec<GroupStatus>`; `changed(&self) -> watch::Receiver<u64>`
//!   bumps whenever readiness or the set of instances changes.
//! - `log_files(&self, rollout, Option<Color>) -> Vec<LogFile>`.
//! - `shutdown_all(&self)`: stops everything and waits (daemon shutdown).
//! - `suspend(&self)` / `resume(&self)`: stop supervising while leaving every process
//!   and record alone, for a new daemon that adopts them (a takeover); `resume`
//!   adopts them again if the takeover failed.
//!
//! Layout of `run_dir`:
//! - `instances/<instance-id>.json`: one record per running instance (pid, process
//!   start time, port, group and spec), so a new daemon can adopt it.
//! - `logs/<rollout>/<instance-id>.log`: the instance's stdout and stderr, written by
//!   the process itself (no pipe through the daemon), rotated to `.log.1` at
//!   [`LOG_SIZE_CAP`].

#![warn(missing_docs)]

mod error;
mod logs;
mod platform;
mod ports;
mod probe;
mod procfs;
mod record;
mod supervisor;
mod types;

pub use error::PlatformError;
pub use logs::LOG_SIZE_CAP;
pub use platform::LocalPlatform;
pub use types::{GroupKey, GroupSpec, GroupStatus, InstanceStatus, LogFile};
