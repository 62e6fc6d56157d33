//! Per-instance log files and their size cap.
//!
//! An instance's stdout and stderr are the log file itself (opened with `O_APPEND` and
//! handed to the child), not a pipe to the daemon: an instance must outlive a daemon
//! killed with -9, and a pipe whose reader died would kill it with SIGPIPE.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use teal_core::Color;

/// A log larger than this is copied to `<file>.1` and truncated.
pub const LOG_SIZE_CAP: u64 = 10 * 1024 * 1024;

/// How often log sizes are checked.
pub(crate) const ROTATE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// `run_dir/logs`.
pub(crate) fn root(run_dir: &Path) -> PathBuf {
    run_dir.join("logs")
}

/// `run_dir/logs/<rollout>/<id>.log`.
pub(crate) fn path(run_dir: &Path, rollout: &str, id: &str) -> PathBuf {
    root(run_dir).join(rollout).join(format!("{id}.log"))
}

/// Opens (creating it and its directory) a log file for appending.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends one line of teal's own (e.g. why the instance restarts) to a log, so the
/// log tells the whole story; failures are ignored, the status says it too.
pub(crate) fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut file) = open_append(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// When `path` is larger than `cap`, copies it to `<path>.1` (replacing an older one)
/// and truncates it. The instance writes with `O_APPEND`, so it simply continues at
/// the new end. Lines written between the copy and the truncation are lost; that is
/// the price of not routing output through the daemon.
pub(crate) fn rotate_if_larger(path: &Path, cap: u64) -> io::Result<bool> {
    if std::fs::metadata(path)?.len() <= cap {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Applies [`rotate_if_larger`] to every `logs/<rollout>/*.log`.
pub(crate) fn rotate_all(run_dir: &Path, cap: u64) {
    let Ok(rollouts) = std::fs::read_dir(root(run_dir)) else {
        return;
    };
    for rollout in rollouts.flatten() {
        let Ok(files) = std::fs::read_dir(rollout.path()) else {
            continue;
        };
        for file in files.flatten() {
            let file = file.path();
            if file.extension().is_some_and(|e| e == "log")
                && let Err(error) = rotate_if_larger(&file, cap)
            {
                tracing::warn!(file = %file.display(), %error, "cannot rotate log");
            }
        }
    }
}

/// The color and revision in an instance id `<rollout>-<color>-r<revision>-<n>`.
pub(crate) fn parse_instance_id(rollout: &str, id: &str) -> Option<(Color, u64)> {
    let rest = id.strip_prefix(rollout)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let color = parts.next()?.parse().ok()?;
    let revision = parts.next()?.strip_prefix('r')?.parse().ok()?;
    let ordinal: Option<u32> = parts.next()?.parse().ok();
    (ordinal.is_some() && parts.next().is_none()).then_some((color, revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_only_past_the_cap_and_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "shop", "shop-blue-r1-1");
        let mut writer = open_append(&file).unwrap();
        writer.write_all(b"0123456789").unwrap();
        assert!(!rotate_if_larger(&file, 10).unwrap());

        writer.write_all(b"abc").unwrap();
        rotate_all(dir.path(), 10);
        let rotated = dir.path().join("logs/shop/shop-blue-r1-1.log.1");
        assert_eq!(std::fs::read(&rotated).unwrap(), b"0123456789abc");
        assert_eq!(std::fs::read(&file).unwrap(), b"");

        // The writer appends at the new end rather than at its old offset.
        writer.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"next");
    }

    #[test]
    fn parses_instance_ids() {
        assert_eq!(
            parse_instance_id("my-shop", "my-shop-green-r12-3"),
            Some((Color::Green, 12))
        );
        assert_eq!(parse_instance_id("my", "my-shop-green-r12-3"), None);
        assert_eq!(parse_instance_id("shop", "shop-blue-r1"), None);
    }
}
