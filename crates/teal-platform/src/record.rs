//! One JSON file per running instance in `run_dir/instances/`, so that a daemon that
//! was killed finds its instances again (see `LocalPlatform::open`).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::{GroupKey, GroupSpec};

/// What a later daemon needs to adopt an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The instance id.
    pub id: String,
    /// Its number within its group's ids.
    pub ordinal: u32,
    /// Its group.
    pub key: GroupKey,
    /// What the group runs (revision and replicas kept current).
    pub spec: GroupSpec,
    /// Its process, which leads its own process group.
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22, so a reused pid is not mistaken for it.
    pub start_time: u64,
    /// Its port.
    pub port: u16,
    /// When the process started (ms since the epoch).
    pub started_at_ms: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// Being stopped: a new daemon finishes the stop instead of adopting it.
    pub stopping: bool,
    /// Ready when its daemon handed it over (a takeover): the daemon that adopts it
    /// routes to it from the start rather than after probes that may take many
    /// periods to pass again, and its probes go on and take it out when they fail.
    /// Every other write clears it, adoption first: after a crash nothing vouches for
    /// the instance, and it is probed before it is routed to.
    #[serde(default)]
    pub ready: bool,
}

/// `run_dir/instances`.
pub(crate) fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("instances")
}

fn path(run_dir: &Path, id: &str) -> PathBuf {
    dir(run_dir).join(format!("{id}.json"))
}

/// Writes the record atomically (a temporary file renamed over the old one), so a
/// crash never leaves half a record.
pub(crate) fn write(run_dir: &Path, record: &Record) -> io::Result<()> {
    let final_path = path(run_dir, &record.id);
    let tmp_path = final_path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    std::fs::write(&tmp_path, json)?;
    std::fs::rename(&tmp_path, &final_path)
}

/// Removes the record of `id`; a record that is already gone is fine.
pub(crate) fn remove(run_dir: &Path, id: &str) {
    remove_path(&path(run_dir, id));
}

/// Removes a record file, logging (not failing) when that is impossible.
pub(crate) fn remove_path(file: &Path) {
    if let Err(error) = std::fs::remove_file(file)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %file.display(), %error, "cannot remove instance record");
    }
}

/// Every record file, parsed; unreadable ones come back as errors with their path so
/// the caller can delete them.
pub(crate) fn read_all(run_dir: &Path) -> io::Result<Vec<(PathBuf, Result<Record, String>)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir(run_dir))? {
        let file = entry?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json.tmp") {
            // A write that a crash interrupted; the record it was replacing is intact.
            remove_path(&file);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let parsed = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
        found.push((file, parsed));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}
