//! The CLI for people and scripts: the `get` tree, `get --watch`, `--wait` with its
//! progress lines, failures and timeouts, shell completions, and help with examples.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use teal_core::Color;
use teal_core::api::RolloutView;
use teal_core::rollout::Phase;

use crate::support::*;

const SUBCOMMANDS: [&str; 14] = [
    "server",
    "apply",
    "list",
    "get",
    "promote",
    "abort",
    "retry",
    "undo",
    "history",
    "logs",
    "delete",
    "demo",
    "demo-app",
    "completions",
];

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn active(rollout: &RolloutView) -> SocketAddr {
    rollout.active_listen.parse().unwrap()
}

/// Lines of `text` that contain `needle`.
fn lines_with<'t>(text: &'t str, needle: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// A spec whose candidate starts with one instance and must scale to two when promoted,
/// so a promote is not an instant switch.
fn scaling_spec(spec: &DemoSpec) -> String {
    spec.yaml().replace(
        "      scaleDownDelaySeconds:",
        "      previewReplicaCount: 1\n      scaleDownDelaySeconds:",
    )
}

#[test]
fn get_prints_the_tree_of_revisions_colors_and_instances() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("shop", "v1");
    sandbox.apply_ok("shop.yaml", &spec.yaml());
    sandbox.wait_for("shop", "v1 live", |r| r.phase == Phase::Healthy);
    spec.version = "v2";
    sandbox.apply_ok("shop.yaml", &spec.yaml());
    let view = sandbox.wait_for("shop", "v2 ready in preview", |r| {
        r.phase == Phase::Paused && r.colors.iter().all(|c| c.ready == 2)
    });

    let text = sandbox.teal_ok(&["get", "shop"]);
    assert!(!text.contains('\x1b'), "escapes when piped:\n{text}");
    for expected in [
        "Status:        ॥ Paused (BlueGreenPause)",
        "Message:       green (revision 2) is ready in preview; waiting for promote",
        "Strategy:      BlueGreen",
        &format!("Revisions:     2: {TEAL} demo-app --port $(PORT) (green, preview)"),
        &format!("               1: {TEAL} demo-app --port $(PORT) (blue, active)"),
        &format!(
            "active:      http://{} → blue (revision 1)",
            view.active_listen
        ),
        &format!(
            "preview:     http://{} → green (revision 2)",
            view.preview_listen.as_deref().unwrap()
        ),
        &format!(
            "cookie test=true on http://{} → green (revision 2)",
            view.active_listen
        ),
        "⟳ shop",
    ] {
        assert!(text.contains(expected), "lacks {expected:?}:\n{text}");
    }

    // The tree: newest revision first, each with its color, role and readiness.
    let tree = &text[text.find("⟳ shop").unwrap()..];
    let revision_2 = tree.find("├──# revision 2").expect(tree);
    let revision_1 = tree.find("└──# revision 1").expect(tree);
    assert!(revision_2 < revision_1, "{tree}");
    let green = lines_with(tree, "● green");
    assert_eq!(green.len(), 1, "{tree}");
    assert!(
        green[0].contains("✔ 2/2 ready") && green[0].ends_with("preview"),
        "{tree}"
    );
    let blue = lines_with(tree, "● blue");
    assert!(
        blue.len() == 1 && blue[0].contains("✔ 2/2 ready") && blue[0].ends_with("active"),
        "{tree}"
    );
    assert!(
        tree.find("● green").unwrap() < revision_1,
        "green under revision 2"
    );
    for color in &view.colors {
        for instance in &color.instances {
            let lines = lines_with(tree, &format!("□ {} ", instance.id));
            assert_eq!(lines.len(), 1, "{} once:\n{tree}", instance.id);
            assert!(
                lines[0].contains("✔ ready") && lines[0].contains(&instance.addr),
                "{tree}"
            );
        }
    }

    // Scripts keep their JSON.
    let json: RolloutView = serde_json::from_str(&sandbox.teal_ok(&["get", "shop", "-o", "json"]))
        .expect("get -o json is a RolloutView");
    assert_eq!(json.preview_revision, Some(2));
}

#[test]
fn get_watch_piped_appends_a_block_per_change() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("watched", "v1");
    spec.replicas = 1;
    sandbox.apply_ok("watched.yaml", &spec.yaml());
    sandbox.wait_for("watched", "v1 live", |r| r.phase == Phase::Healthy);

    let mut child = sandbox.teal_spawn(&["get", "watched", "--watch"]);
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut read_until = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {what} in get --watch output:\n{}", seen.join("\n")),
            }
        }
        seen.clone()
    };
    read_until("first block", &|seen| {
        seen.iter()
            .any(|l| l.contains("● blue") && l.ends_with("active"))
    });

    spec.version = "v2";
    sandbox.apply_ok("watched.yaml", &spec.yaml());
    let output = read_until("block with revision 2 ready in preview", &|seen| {
        let Some(paused) = seen
            .iter()
            .rposition(|l| l.contains("॥ Paused (BlueGreenPause)"))
        else {
            return false;
        };
        let block = &seen[paused..];
        block
            .iter()
            .any(|l| l.contains("● green") && l.ends_with("preview"))
            && block
                .iter()
                .any(|l| l.contains("└──□ watched-green-r2-1") && l.contains("✔ ready"))
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let text = output.join("\n");
    assert!(!text.contains('\x1b'), "escapes when piped:\n{text}");
    let blocks: Vec<&str> = text
        .split("Name:")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert!(blocks.len() >= 2, "one block per change:\n{text}");
    assert!(
        blocks[0].contains("nothing in preview") && !blocks[0].contains("revision 2"),
        "the first block is v1 alone:\n{}",
        blocks[0]
    );
    let last = blocks.last().unwrap();
    assert!(
        last.contains("├──# revision 2") && last.contains("Paused (BlueGreenPause)"),
        "{last}"
    );
    for pair in blocks.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "a block is printed only when something changed"
        );
    }
}

#[test]
fn apply_wait_returns_once_the_rollout_is_healthy() {
    let sandbox = Sandbox::start();
    let spec = DemoSpec::new("waited", "v1");
    let path = sandbox.write_spec("waited.yaml", &spec.yaml());
    let output = sandbox.teal(&["apply", "-f", &path, "--wait", "--timeout", "2m"]);
    let rollout = sandbox.get("waited");
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert_eq!(
        (rollout.phase, rollout.active_color),
        (Phase::Healthy, Some(Color::Blue)),
        "apply --wait returned before the rollout was Healthy:\n{text}"
    );
    assert!(text.contains("rollout/waited created"), "{text}");
    assert!(
        !lines_with(&text, "waited: Progressing: ").is_empty(),
        "progress lines:\n{text}"
    );
    assert_eq!(
        text.trim_end().lines().last(),
        Some("waited: Healthy: users are on blue (revision 1)"),
        "{text}"
    );
    let users = runtime().block_on(get_once(active(&rollout), None));
    assert!(
        users.status == 200 && users.body.contains("version v1"),
        "{users:?}"
    );

    // A second apply --wait of a new version returns when it waits in preview.
    let v2 = DemoSpec::new("waited", "v2");
    let path = sandbox.write_spec("waited.yaml", &v2.yaml());
    let text = sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);
    assert!(
        text.contains(
            "waited: Paused (BlueGreenPause): green (revision 2) is ready in preview; waiting for promote"
        ),
        "{text}"
    );
    assert_eq!(sandbox.get("waited").phase, Phase::Paused);
}

#[test]
fn apply_wait_fails_when_the_new_revision_never_becomes_ready() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("stuck", "v1");
    spec.replicas = 1;
    let path = sandbox.write_spec("stuck.yaml", &spec.yaml());
    sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);

    spec.version = "v2";
    spec.progress_deadline = 3;
    spec.extra_env = vec![("DEMO_NEVER_READY", "true")];
    sandbox.write_spec("stuck.yaml", &spec.yaml());
    let started = Instant::now();
    let output = sandbox.teal(&["apply", "-f", &path, "--wait"]);
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{}{error}", stdout(&output));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it fails at the deadline, not at the timeout"
    );
    assert_eq!(error.trim().lines().count(), 1, "one sentence: {error}");
    for expected in [
        "rollout stuck is Degraded (ProgressDeadlineExceeded)",
        "green (revision 2)",
        "503",
    ] {
        assert!(error.contains(expected), "lacks {expected:?}: {error}");
    }
    assert!(
        stdout(&output).contains("stuck: Progressing: waiting for green (revision 2)"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn apply_wait_gives_up_at_the_timeout() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("slow", "v1");
    spec.replicas = 1;
    spec.extra_env = vec![("DEMO_NEVER_READY", "true")];
    let path = sandbox.write_spec("slow.yaml", &spec.yaml());
    let started = Instant::now();
    let output = sandbox.teal(&["apply", "-f", &path, "--wait", "--timeout", "1s"]);
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "{error}");
    assert!(
        error.contains(
            "timed out after 1s waiting for rollout slow to become Healthy, or Paused for a promote; it is Progressing: "
        ),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "one sentence: {error}");

    let bad = sandbox.teal(&["apply", "-f", &path, "--wait", "--timeout", "soon"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a duration"), "{}", stderr(&bad));
}

#[test]
fn promote_and_undo_wait_until_users_are_switched() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("switch", "v1");
    let path = sandbox.write_spec("switch.yaml", &scaling_spec(&spec));
    sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);
    spec.version = "v2";
    sandbox.write_spec("switch.yaml", &scaling_spec(&spec));
    sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);
    let paused = sandbox.get("switch");
    assert_eq!(paused.phase, Phase::Paused, "{paused:#?}");
    let address = active(&paused);

    let text = sandbox.teal_ok(&["promote", "switch", "--revision", "2", "--wait"]);
    // No sleep, no polling: users are on green the moment promote --wait returns.
    for _ in 0..5 {
        let users = rt.block_on(get_once(address, None));
        assert!(
            users.color.as_deref() == Some("green") && users.body.contains("version v2"),
            "{users:?}\n{text}"
        );
    }
    assert!(
        text.trim_end()
            .ends_with("switch: users switched to green (revision 2)"),
        "{text}"
    );
    assert!(
        text.contains("promoting green (revision 2)"),
        "the scale-up was reported:\n{text}"
    );
    let healthy = sandbox.get("switch");
    assert_eq!(
        (healthy.phase, healthy.active_revision),
        (Phase::Healthy, Some(2))
    );

    let text = sandbox.teal_ok(&["undo", "switch", "--wait", "--timeout", "1m"]);
    let users = rt.block_on(get_once(address, None));
    assert!(
        users.color.as_deref() == Some("blue") && users.body.contains("version v1"),
        "{users:?}\n{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("switch: users are on blue (revision 3)"),
        "{text}"
    );
}

#[test]
fn abort_wait_returns_once_testers_are_off_the_candidate() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("aborted", "v1");
    spec.replicas = 1;
    let path = sandbox.write_spec("aborted.yaml", &spec.yaml());
    sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);
    spec.version = "v2";
    sandbox.write_spec("aborted.yaml", &spec.yaml());
    sandbox.teal_ok(&["apply", "-f", &path, "--wait"]);
    let paused = sandbox.get("aborted");
    let preview: SocketAddr = paused.preview_listen.as_deref().unwrap().parse().unwrap();
    let testers = rt.block_on(get_once(preview, None));
    assert_eq!(testers.color.as_deref(), Some("green"), "{testers:?}");

    let text = sandbox.teal_ok(&["abort", "aborted", "--wait"]);
    assert!(
        text.contains("aborted: green (revision 2) is no longer served in preview"),
        "{text}"
    );
    let testers = rt.block_on(get_once(preview, None));
    assert_eq!(testers.color.as_deref(), Some("blue"), "{testers:?}");

    let text = sandbox.teal_ok(&["retry", "aborted", "--wait"]);
    assert!(text.contains("aborted: Paused (BlueGreenPause)"), "{text}");
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(TEAL)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = stdout(&output);
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        assert!(script.contains("teal"), "{shell}:\n{script}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let bash = stdout(
        &Command::new(TEAL)
            .args(["completions", "bash"])
            .output()
            .unwrap(),
    );
    assert!(bash.contains("complete -F _teal"), "{bash}");
    for flag in ["--wait", "--timeout", "--watch", "--data-dir"] {
        assert!(bash.contains(flag), "bash completion lacks {flag}");
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    let top = Command::new(TEAL).arg("--help").output().unwrap();
    let top = stdout(&top);
    for sub in SUBCOMMANDS {
        let summary = top
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{sub} ")))
            .unwrap_or_else(|| panic!("teal --help does not list {sub}:\n{top}"));
        assert!(summary.split_whitespace().count() > 3, "{summary}");

        let output = Command::new(TEAL).args([sub, "--help"]).output().unwrap();
        let help = stdout(&output);
        assert!(output.status.success(), "{sub}: {}", stderr(&output));
        assert!(help.contains("Example"), "teal {sub} --help:\n{help}");
        assert!(
            help.contains(&format!("teal {sub}")),
            "the example runs teal {sub}:\n{help}"
        );
    }
    assert!(top.contains("Example"), "{top}");
}
