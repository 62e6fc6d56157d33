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

#![warn(missing_docs)]
