//! Text output for people. Scripts use `-o json`.

use std::fmt::Write;

use teal_core::api::{ApplyResponse, HistoryView, RolloutView};

/// `Paused (BlueGreenPause)`.
pub fn phase(rollout: &RolloutView) -> String {
    match &rollout.reason {
        Some(reason) => format!("{} ({reason})", rollout.phase),
        None => rollout.phase.to_string(),
    }
}

/// One line per document.
pub fn apply(response: &ApplyResponse) -> String {
    let mut out = String::new();
    for result in &response.results {
        let _ = writeln!(
            out,
            "{}/{} {}",
            result.kind.to_lowercase(),
            result.name,
            result.outcome
        );
    }
    out
}

/// How long ago, roughly.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// A table of rollouts.
pub fn list(rollouts: &[RolloutView], now_ms: u64) -> String {
    if rollouts.is_empty() {
        return "no rollouts yet (teal apply -f FILE creates one)".to_owned();
    }
    let mut out = format!(
        "{:<20} {:<32} {:<16} {:<8} {}\n",
        "NAME", "PHASE", "ACTIVE", "PREVIEW", "CHANGED"
    );
    for rollout in rollouts {
        let active = match (rollout.active_color, rollout.active_revision) {
            (Some(color), Some(revision)) => format!("{color} (rev {revision})"),
            _ => "-".to_owned(),
        };
        let preview = rollout
            .preview_revision
            .map_or("-".to_owned(), |r| format!("rev {r}"));
        let _ = writeln!(
            out,
            "{:<20} {:<32} {:<16} {:<8} {} ago",
            rollout.name,
            phase(rollout),
            active,
            preview,
            age(now_ms, rollout.updated_at_ms)
        );
    }
    out
}

/// One rollout in detail.
pub fn rollout(rollout: &RolloutView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:      {}", rollout.name);
    let _ = writeln!(out, "Phase:     {}", phase(rollout));
    let _ = writeln!(out, "Message:   {}", rollout.message);
    let _ = writeln!(out, "Revision:  {}", rollout.revision);
    let active_target = match (rollout.active_color, rollout.active_revision) {
        (Some(color), Some(revision)) => format!("{color} (revision {revision})"),
        _ => "nothing ready yet (503)".to_owned(),
    };
    let _ = writeln!(
        out,
        "Active:    http://{} -> {active_target}",
        rollout.active_listen
    );
    let preview_target = rollout
        .colors
        .iter()
        .find(|c| c.role == "preview")
        .map(|c| format!("{} (revision {})", c.color, c.revision))
        .unwrap_or_else(|| format!("{active_target}, nothing in preview"));
    if let Some(preview) = &rollout.preview_listen {
        let _ = writeln!(out, "Preview:   http://{preview} -> {preview_target}");
    }
    for matcher in &rollout.preview_match {
        let _ = writeln!(
            out,
            "           requests with {matcher} on the active address -> {preview_target}"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<8} {:<9} {:<9} READY", "COLOR", "REVISION", "ROLE");
    for color in &rollout.colors {
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<9} {}/{}",
            color.color.as_str(),
            color.revision,
            color.role,
            color.ready,
            color.replicas
        );
        for instance in &color.instances {
            let state = if instance.ready { "ready" } else { "not ready" };
            let pid = instance.pid.map_or("-".to_owned(), |p| p.to_string());
            let _ = write!(
                out,
                "  {:<22} {:<21} {:<10} pid {pid}",
                instance.id, instance.addr, state
            );
            if instance.restarts > 0 {
                let _ = write!(out, ", {} restarts", instance.restarts);
            }
            if let Some(problem) = &instance.problem {
                let _ = write!(out, "  ({problem})");
            }
            out.push('\n');
        }
    }
    out
}

/// Revisions and the audit trail.
pub fn history(history: &HistoryView) -> String {
    let mut out = format!(
        "{:<9} {:<10} {:<24} {}\n",
        "REVISION", "TEMPLATE", "SOURCE", "COMMAND"
    );
    for revision in &history.revisions {
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:<24} {}",
            revision.revision,
            revision.template_hash,
            revision.source,
            revision.command.join(" ")
        );
    }
    let _ = writeln!(out, "\n{:<24} {:<11} WHAT", "WHEN (UTC)", "CAUSE");
    for event in &history.events {
        let _ = writeln!(
            out,
            "{:<24} {:<11} {}",
            timestamp(event.at_ms),
            event.cause,
            event.message
        );
    }
    out
}

/// `2026-11-22 21:43:05.123` in UTC, without a date crate.
pub fn timestamp(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86400, seconds % 86400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(timestamp(1_795_383_785_123), "2026-11-22 21:43:05.123");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
