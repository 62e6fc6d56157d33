//! Text output for people. Scripts use `-o json`.

use std::collections::BTreeMap;
use std::fmt::Write;

use teal_core::Color;
use teal_core::api::{
    AnalysisRunView, AnalysisView, ApplyResponse, ColorView, HistoryView, InstanceView, RolloutView,
};
use teal_core::rollout::{Phase, Revision};

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

/// Each revision's command line (from the history), for the tree's header.
pub type Commands = BTreeMap<Revision, String>;

/// The command lines of every revision in a history.
pub fn commands(history: &HistoryView) -> Commands {
    history
        .revisions
        .iter()
        .map(|r| (r.revision, command_line(&r.command)))
        .collect()
}

/// A command as a shell would need it typed: arguments with spaces or quotes quoted.
pub fn command_line(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c)) {
                format!("'{}'", arg.replace('\'', r"'\''"))
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How text is painted: ANSI colors for a terminal, plain text otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    ansi: bool,
}

impl Style {
    /// No escapes at all.
    pub const PLAIN: Style = Style { ansi: false };

    /// Colors when writing to a terminal, unless `NO_COLOR` is set (https://no-color.org).
    pub fn detect(terminal: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            ansi: terminal && !no_color,
        }
    }

    /// Whether this style writes escapes.
    pub fn is_ansi(self) -> bool {
        self.ansi
    }

    fn paint(self, sgr: &str, text: &str) -> String {
        if self.ansi && !sgr.is_empty() && !text.is_empty() {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

const BOLD: &str = "1";

/// A status symbol and its color.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// ✔ healthy, ready.
    Ok,
    /// ◌ starting, progressing, not ready yet.
    Waiting,
    /// ॥ waiting for a person.
    Paused,
    /// ✖ degraded, aborted, failing.
    Problem,
    /// Nothing to say.
    Blank,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Mark::Ok => "✔",
            Mark::Waiting => "◌",
            Mark::Paused => "॥",
            Mark::Problem => "✖",
            Mark::Blank => "",
        }
    }

    fn sgr(self) -> &'static str {
        match self {
            Mark::Ok => "32",
            Mark::Waiting | Mark::Paused => "33",
            Mark::Problem => "31",
            Mark::Blank => "",
        }
    }

    fn label(self, text: &str) -> String {
        match self {
            Mark::Blank => text.to_owned(),
            _ => format!("{} {text}", self.symbol()),
        }
    }
}

fn phase_mark(phase: Phase) -> Mark {
    match phase {
        Phase::Healthy => Mark::Ok,
        Phase::Progressing => Mark::Waiting,
        Phase::Paused => Mark::Paused,
        Phase::Degraded => Mark::Problem,
    }
}

fn color_sgr(color: Color) -> &'static str {
    match color {
        Color::Blue => "1;34",
        Color::Green => "1;32",
    }
}

fn color_mark(color: &ColorView) -> Mark {
    if color.role == "aborted" {
        Mark::Problem
    } else if color.replicas > 0 && color.ready >= color.replicas {
        Mark::Ok
    } else if color.instances.iter().any(instance_failing) {
        Mark::Problem
    } else {
        Mark::Waiting
    }
}

fn instance_failing(instance: &InstanceView) -> bool {
    !instance.ready && (instance.problem.is_some() || instance.pid.is_none())
}

fn role_info(role: &str) -> String {
    match role {
        "warm" => "warm (kept for an instant undo)".to_owned(),
        "stopping" => "stopping".to_owned(),
        other => other.to_owned(),
    }
}

/// One line of the tree: a name column (tree lines, symbol, name), a status column and
/// free text.
struct Row {
    prefix: String,
    name: String,
    name_sgr: &'static str,
    mark: Mark,
    status: String,
    info: String,
}

/// One rollout in detail, plain text (as `teal get NAME` prints it when piped).
pub fn rollout(rollout: &RolloutView) -> String {
    tree(rollout, &Commands::new(), Style::PLAIN)
}

/// One rollout in detail: a header (phase, message, strategy, revisions and their
/// commands, routes, colors), then the tree of revisions, colors and instances.
pub fn tree(rollout: &RolloutView, commands: &Commands, style: Style) -> String {
    let mut out = String::new();
    let phase_mark = phase_mark(rollout.phase);
    let label = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{:<15}{value}", format!("{label}:"));
    };
    label(&mut out, "Name", &style.paint(BOLD, &rollout.name));
    label(
        &mut out,
        "Status",
        &style.paint(phase_mark.sgr(), &phase_mark.label(&phase(rollout))),
    );
    label(&mut out, "Message", &rollout.message);
    label(&mut out, "Strategy", "BlueGreen");

    // Revisions: the ones that run, and the newest even when it does not run.
    let mut revisions: Vec<Revision> = rollout.colors.iter().map(|c| c.revision).collect();
    revisions.push(rollout.revision);
    revisions.sort_unstable_by(|a, b| b.cmp(a));
    revisions.dedup();
    for (index, revision) in revisions.iter().enumerate() {
        let roles: Vec<String> = rollout
            .colors
            .iter()
            .filter(|c| c.revision == *revision)
            .map(|c| {
                format!(
                    "{}, {}",
                    style.paint(color_sgr(c.color), c.color.as_str()),
                    c.role
                )
            })
            .collect();
        let roles = if roles.is_empty() {
            "not running".to_owned()
        } else {
            roles.join("; ")
        };
        let command = commands
            .get(revision)
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let text = format!("{revision}:{command} ({roles})");
        if index == 0 {
            label(&mut out, "Revisions", &text);
        } else {
            let _ = writeln!(out, "{:<15}{text}", "");
        }
    }

    // Routes: where users and testers connect, and which color answers them.
    let active_target = match (rollout.active_color, rollout.active_revision) {
        (Some(color), Some(revision)) => {
            format!(
                "{} (revision {revision})",
                style.paint(color_sgr(color), color.as_str())
            )
        }
        _ => "nothing ready yet (503)".to_owned(),
    };
    let preview_target = rollout
        .colors
        .iter()
        .find(|c| c.role == "preview")
        .map(|c| {
            format!(
                "{} (revision {})",
                style.paint(color_sgr(c.color), c.color.as_str()),
                c.revision
            )
        })
        .unwrap_or_else(|| format!("{active_target}, nothing in preview"));
    let _ = writeln!(out, "Routes:");
    let active_url = rollout.active_url();
    let _ = writeln!(out, "  {:<13}{active_url} → {active_target}", "active:");
    let mut preview_label = "preview:";
    if let Some(preview) = rollout.preview_url() {
        let _ = writeln!(out, "  {preview_label:<13}{preview} → {preview_target}");
        preview_label = "";
    }
    for matcher in &rollout.preview_match {
        let _ = writeln!(
            out,
            "  {preview_label:<13}{matcher} on {active_url} → {preview_target}"
        );
        preview_label = "";
    }

    // Colors: one line each (the summary scripts grepped before the tree existed).
    if !rollout.colors.is_empty() {
        let _ = writeln!(out, "Colors:");
        let _ = writeln!(
            out,
            "  {:<8} {:<9} {:<9} READY",
            "COLOR", "REVISION", "ROLE"
        );
        for color in &rollout.colors {
            let mark = color_mark(color);
            let _ = writeln!(
                out,
                "  {:<8} {:<9} {:<9} {}",
                color.color.as_str(),
                color.revision,
                color.role,
                style.paint(
                    mark.sgr(),
                    &mark.label(&format!("{}/{}", color.ready, color.replicas))
                )
            );
        }
    }
    out.push('\n');

    // The tree: rollout → revisions (newest first) → colors → instances.
    let mut rows = vec![Row {
        prefix: String::new(),
        name: format!("⟳ {}", rollout.name),
        name_sgr: BOLD,
        mark: phase_mark,
        status: rollout.phase.to_string(),
        info: rollout.reason.clone().unwrap_or_default(),
    }];
    let running: Vec<Revision> = revisions
        .iter()
        .copied()
        .filter(|r| rollout.colors.iter().any(|c| c.revision == *r))
        .collect();
    for (r, revision) in running.iter().enumerate() {
        let last_revision = r + 1 == running.len();
        let (revision_branch, indent) = branch(last_revision);
        rows.push(Row {
            prefix: revision_branch.to_owned(),
            name: format!("# revision {revision}"),
            name_sgr: "",
            mark: Mark::Blank,
            status: String::new(),
            info: String::new(),
        });
        let colors: Vec<&ColorView> = rollout
            .colors
            .iter()
            .filter(|c| c.revision == *revision)
            .collect();
        for (c, color) in colors.iter().enumerate() {
            let (color_branch, color_indent) = branch(c + 1 == colors.len());
            rows.push(Row {
                prefix: format!("{indent}{color_branch}"),
                name: format!("● {}", color.color),
                name_sgr: color_sgr(color.color),
                mark: color_mark(color),
                status: format!("{}/{} ready", color.ready, color.replicas),
                info: role_info(&color.role),
            });
            for (i, instance) in color.instances.iter().enumerate() {
                let (instance_branch, _) = branch(i + 1 == color.instances.len());
                let (mark, status) = if instance.ready {
                    (Mark::Ok, "ready")
                } else if instance.pid.is_none() {
                    (Mark::Problem, "not running")
                } else if instance.problem.is_some() {
                    (Mark::Problem, "not ready")
                } else {
                    (Mark::Waiting, "starting")
                };
                let mut info = instance.addr.clone();
                if let Some(pid) = instance.pid {
                    let _ = write!(info, "  pid {pid}");
                }
                match instance.restarts {
                    0 => {}
                    1 => info.push_str(", 1 restart"),
                    n => {
                        let _ = write!(info, ", {n} restarts");
                    }
                }
                if let Some(problem) = &instance.problem {
                    let _ = write!(info, "  ({problem})");
                }
                rows.push(Row {
                    prefix: format!("{indent}{color_indent}{instance_branch}"),
                    name: format!("□ {}", instance.id),
                    name_sgr: "",
                    mark,
                    status: status.to_owned(),
                    info,
                });
            }
        }
    }
    let name_width = rows
        .iter()
        .map(|row| row.prefix.chars().count() + row.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(24)
        + 2;
    let status_width = rows
        .iter()
        .map(|row| row.mark.label(&row.status).chars().count())
        .max()
        .unwrap_or(0)
        .max(6)
        + 2;
    let _ = writeln!(
        out,
        "{:<name_width$}{:<status_width$}INFO",
        "NAME", "STATUS"
    );
    for row in &rows {
        let name_len = row.prefix.chars().count() + row.name.chars().count();
        let status = row.mark.label(&row.status);
        let line = format!(
            "{}{}{}{}{}{}",
            row.prefix,
            style.paint(row.name_sgr, &row.name),
            " ".repeat(name_width - name_len),
            style.paint(row.mark.sgr(), &status),
            " ".repeat(status_width - status.chars().count()),
            row.info
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(run) = &rollout.analysis {
        out.push('\n');
        out.push_str(&analysis_run(run));
    }
    out
}

/// One analysis run: its verdict, then a line per metric with its last value.
pub fn analysis_run(run: &AnalysisRunView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Analysis:      {} of revision {} ({}): {}{}",
        run.kind,
        run.revision,
        run.templates,
        run.phase,
        run.message
            .as_deref()
            .map(|m| format!(" — {m}"))
            .unwrap_or_default()
    );
    let rows: Vec<[String; 5]> = run
        .metrics
        .iter()
        .map(|metric| {
            let last = metric.measurements.last();
            let condition = match (&metric.success_condition, &metric.failure_condition) {
                (Some(success), Some(failure)) => format!("{success} / fail: {failure}"),
                (Some(success), None) => success.clone(),
                (None, Some(failure)) => format!("fail: {failure}"),
                (None, None) => String::new(),
            };
            [
                metric.name.clone(),
                format!("{} {}", metric.provider, metric.measures),
                metric.phase.to_string(),
                format!(
                    "{} ({}✓ {}✗ {}? {}!)",
                    last.and_then(|m| m.value.clone())
                        .unwrap_or_else(|| "-".to_owned()),
                    metric.successful,
                    metric.failed,
                    metric.inconclusive,
                    metric.errors
                ),
                condition,
            ]
        })
        .collect();
    let header = ["METRIC", "MEASURES", "PHASE", "LAST (✓✗?!)", "CONDITION"];
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count().min(48))
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
                + 2
        })
        .collect();
    let line = |out: &mut String, cells: [&str; 5]| {
        let mut text = String::from("  ");
        for (cell, width) in cells.iter().zip(&widths) {
            let cell: String = if cell.chars().count() > 48 {
                cell.chars().take(47).chain(['…']).collect()
            } else {
                (*cell).to_owned()
            };
            let pad = width.saturating_sub(cell.chars().count());
            text.push_str(&cell);
            text.push_str(&" ".repeat(pad));
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, header);
    for row in &rows {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    for metric in &run.metrics {
        if let Some(message) = metric.message.as_deref().filter(|_| {
            !matches!(
                metric.phase,
                teal_core::analysis::Phase::Successful | teal_core::analysis::Phase::Pending
            )
        }) {
            let _ = writeln!(out, "  {}: {message}", metric.name);
        }
    }
    out
}

/// Every run of `teal analysis`, oldest first.
pub fn analysis(view: &AnalysisView) -> String {
    if view.runs.is_empty() {
        return "no analysis runs (the rollout has no prePromotionAnalysis or \
                postPromotionAnalysis, or none has started yet)\n"
            .to_owned();
    }
    view.runs
        .iter()
        .map(analysis_run)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tree lines for a child: its branch, and the indent of its own children.
fn branch(last: bool) -> (&'static str, &'static str) {
    if last {
        ("└──", "   ")
    } else {
        ("├──", "│  ")
    }
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

    fn sample() -> RolloutView {
        let instance = |id: &str, ready: bool, problem: Option<&str>| InstanceView {
            id: id.to_owned(),
            addr: "127.0.0.1:4000".to_owned(),
            pid: Some(42),
            ready,
            restarts: 0,
            problem: problem.map(str::to_owned),
        };
        RolloutView {
            name: "shop".to_owned(),
            phase: Phase::Progressing,
            reason: None,
            message: "waiting for green (revision 2) to become ready: 1/2 ready".to_owned(),
            revision: 2,
            active_color: Some(Color::Blue),
            active_revision: Some(1),
            preview_revision: Some(2),
            active_listen: "127.0.0.1:8080".to_owned(),
            active_tls: false,
            preview_listen: None,
            preview_tls: false,
            preview_match: vec!["header X-Test: yes".to_owned()],
            routes: teal_core::api::RoutesView {
                active: Some(Color::Blue),
                preview: Some(Color::Green),
            },
            colors: vec![
                ColorView {
                    color: Color::Blue,
                    revision: 1,
                    role: "active".to_owned(),
                    replicas: 1,
                    ready: 1,
                    instances: vec![instance("shop-blue-r1-1", true, None)],
                },
                ColorView {
                    color: Color::Green,
                    revision: 2,
                    role: "preview".to_owned(),
                    replicas: 2,
                    ready: 1,
                    instances: vec![
                        instance("shop-green-r2-1", true, None),
                        instance(
                            "shop-green-r2-2",
                            false,
                            Some("readiness probe answered 503"),
                        ),
                    ],
                },
            ],
            updated_at_ms: 0,
            traffic: Vec::new(),
            status: Default::default(),
            analysis: None,
        }
    }

    /// Drops `ESC [ ... m` sequences.
    fn strip_ansi(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn the_tree_marks_problems_and_colors_only_for_terminals() {
        let rollout = sample();
        let commands = Commands::from([(2, command_line(&["app".into(), "a b".into()]))]);
        let plain = tree(&rollout, &commands, Style::PLAIN);
        assert!(!plain.contains('\x1b'), "{plain}");
        for expected in [
            "Status:        ◌ Progressing",
            "Revisions:     2: app 'a b' (green, preview)",
            "               1: (blue, active)",
            "header X-Test: yes on http://127.0.0.1:8080 → green (revision 2)",
            "  green    2         preview   ✖ 1/2",
            "├──# revision 2",
            "│  └──● green",
            "│     └──□ shop-green-r2-2",
            "✖ not ready",
            "(readiness probe answered 503)",
            "└──# revision 1",
            "   └──● blue",
        ] {
            assert!(plain.contains(expected), "lacks {expected:?}:\n{plain}");
        }

        let ansi = tree(&rollout, &commands, Style { ansi: true });
        assert!(ansi.contains("\x1b[31m✖ 1/2 ready\x1b[0m"), "{ansi}");
        assert!(ansi.contains("\x1b[32m✔ ready\x1b[0m"), "{ansi}");
        assert_eq!(strip_ansi(&ansi), plain, "colors do not move the columns");
    }

    #[test]
    fn routes_say_https_for_listeners_that_terminate_tls() {
        let mut rollout = sample();
        rollout.active_tls = true;
        rollout.preview_listen = Some("127.0.0.1:8081".to_owned());
        let text = tree(&rollout, &Commands::new(), Style::PLAIN);
        assert!(
            text.contains("active:      https://127.0.0.1:8080 →"),
            "{text}"
        );
        assert!(
            text.contains("preview:     http://127.0.0.1:8081 →"),
            "{text}"
        );
        assert!(
            text.contains("header X-Test: yes on https://127.0.0.1:8080 →"),
            "{text}"
        );
        rollout.preview_tls = true;
        let text = tree(&rollout, &Commands::new(), Style::PLAIN);
        assert!(
            text.contains("preview:     https://127.0.0.1:8081 →"),
            "{text}"
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(timestamp(1_795_383_785_123), "2026-11-22 21:43:05.123");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
