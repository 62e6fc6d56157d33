//! The whole blue-green cycle through the CLI, as a user runs it.

use std::net::SocketAddr;
use std::time::Duration;

use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

fn addresses(rollout: &teal_core::api::RolloutView) -> (SocketAddr, SocketAddr) {
    (
        rollout.active_listen.parse().unwrap(),
        rollout.preview_listen.as_deref().unwrap().parse().unwrap(),
    )
}

fn pids(rollout: &teal_core::api::RolloutView, color: Color) -> Vec<u32> {
    rollout
        .colors
        .iter()
        .filter(|c| c.color == color)
        .flat_map(|c| c.instances.iter().filter_map(|i| i.pid))
        .collect()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn full_cycle_previews_promotes_and_retires_the_old_color() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("shop", "v1");
    spec.scale_down_delay = 3;
    assert!(
        sandbox
            .apply_ok("shop.yaml", &spec.yaml())
            .contains("rollout/shop created")
    );
    let live = sandbox.wait_for("shop", "v1 live on blue", |r| {
        r.phase == Phase::Healthy && r.active_color == Some(Color::Blue)
    });
    let (active, preview) = addresses(&live);
    let answer = rt.block_on(get_once(active, None));
    assert_eq!(
        (answer.status, answer.color.as_deref()),
        (200, Some("blue"))
    );
    assert!(answer.body.contains("version v1"), "{answer:?}");

    spec.version = "v2";
    assert!(
        sandbox
            .apply_ok("shop.yaml", &spec.yaml())
            .contains("rollout/shop revision 2")
    );
    let paused = sandbox.wait_for("shop", "v2 paused in preview", |r| r.phase == Phase::Paused);
    assert_eq!(paused.reason.as_deref(), Some("BlueGreenPause"));
    assert_eq!(paused.preview_revision, Some(2));
    let blue_pids = pids(&paused, Color::Blue);
    assert_eq!(blue_pids.len(), 2, "{paused:#?}");

    // Users stay on v1; testers reach v2 by the preview address or the cookie.
    let users = rt.block_on(get_once(active, None));
    assert!(
        users.body.contains("version v1") && users.color.as_deref() == Some("blue"),
        "{users:?}"
    );
    let testers = rt.block_on(get_once(preview, None));
    assert!(
        testers.body.contains("version v2") && testers.color.as_deref() == Some("green"),
        "{testers:?}"
    );
    let cookie = rt.block_on(get_once(active, Some("session=abc; test=true")));
    assert!(
        cookie.body.contains("version v2"),
        "cookie test=true reaches preview: {cookie:?}"
    );
    let wrong_cookie = rt.block_on(get_once(active, Some("test=false")));
    assert!(wrong_cookie.body.contains("version v1"), "{wrong_cookie:?}");

    let text = sandbox.teal_ok(&["get", "shop"]);
    assert!(text.contains("Paused (BlueGreenPause)"), "{text}");
    assert!(text.contains("green    2         preview"), "{text}");

    let promoted = sandbox.teal_ok(&["promote", "shop", "--revision", "2"]);
    assert!(promoted.contains("revision 2 promoted"), "{promoted}");
    let healthy = sandbox.wait_for("shop", "users on green", |r| {
        r.phase == Phase::Healthy && r.active_color == Some(Color::Green)
    });
    assert!(
        healthy
            .colors
            .iter()
            .any(|c| c.color == Color::Blue && c.role == "warm"),
        "{healthy:#?}"
    );
    let users = rt.block_on(get_once(active, None));
    assert!(
        users.body.contains("version v2") && users.color.as_deref() == Some("green"),
        "{users:?}"
    );

    // After the 3 s scale-down delay, blue's processes are gone.
    let stopped = sandbox.wait_for("shop", "blue stopped", |r| {
        r.colors.iter().all(|c| c.color == Color::Green)
    });
    assert_eq!(stopped.colors.len(), 1);
    eventually(Duration::from_secs(10), "blue's processes exit", || {
        blue_pids.iter().all(|pid| !alive(*pid)).then_some(())
    });

    let history = sandbox.teal_ok(&["history", "shop"]);
    for expected in [
        "blue (revision 1) is live",
        "revision 2 starting in green (preview)",
        "promote ",
        "switched users from blue (revision 1) to green (revision 2)",
        "blue (revision 1) stopped",
    ] {
        assert!(
            history.contains(expected),
            "history lacks {expected:?}:\n{history}"
        );
    }
}

#[test]
fn undo_inside_the_delay_switches_back_without_starting_anything() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("undo", "v1");
    spec.auto_promotion = true;
    sandbox.apply_ok("undo.yaml", &spec.yaml());
    let v1 = sandbox.wait_for("undo", "v1 live", |r| r.phase == Phase::Healthy);
    let (active, _) = addresses(&v1);
    spec.version = "v2";
    sandbox.apply_ok("undo.yaml", &spec.yaml());
    let v2 = sandbox.wait_for("undo", "v2 auto-promoted", |r| {
        r.phase == Phase::Healthy && r.active_revision == Some(2)
    });
    let warm_blue = pids(&v2, Color::Blue);
    assert_eq!(warm_blue.len(), 2);

    let undone = sandbox.teal_ok(&["undo", "undo"]);
    assert!(
        undone.contains("undo to revision 1, released as revision 3"),
        "{undone}"
    );
    assert!(undone.contains("switched users back"), "{undone}");
    let back = sandbox.get("undo");
    assert_eq!(
        (back.active_color, back.active_revision),
        (Some(Color::Blue), Some(3))
    );
    eventually(Duration::from_secs(5), "users are back on v1", || {
        let answer = rt.block_on(get_once(active, None));
        answer.body.contains("version v1").then_some(())
    });
    assert_eq!(
        pids(&sandbox.get("undo"), Color::Blue),
        warm_blue,
        "the warm processes serve again"
    );
}

#[test]
fn a_candidate_that_never_becomes_ready_is_never_promoted() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("stuck", "v1");
    spec.progress_deadline = 4;
    spec.replicas = 1;
    sandbox.apply_ok("stuck.yaml", &spec.yaml());
    let v1 = sandbox.wait_for("stuck", "v1 live", |r| r.phase == Phase::Healthy);
    let (active, _) = addresses(&v1);

    spec.version = "v2";
    spec.extra_env = vec![("DEMO_NEVER_READY", "true")];
    sandbox.apply_ok("stuck.yaml", &spec.yaml());
    let promote = sandbox.teal_ok(&["promote", "stuck"]);
    assert!(
        promote.contains("promoted as soon as it is ready"),
        "{promote}"
    );

    let degraded = sandbox.wait_for("stuck", "the deadline to pass", |r| {
        r.phase == Phase::Degraded
    });
    assert_eq!(degraded.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert!(
        degraded.message.contains("0/1 ready"),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("503"),
        "the reason names the failing probe: {}",
        degraded.message
    );
    assert_eq!(degraded.active_color, Some(Color::Blue));
    let users = rt.block_on(get_once(active, None));
    assert!(users.body.contains("version v1"), "{users:?}");

    let aborted = sandbox.teal_ok(&["abort", "stuck"]);
    assert!(aborted.contains("Degraded (RolloutAborted)"), "{aborted}");
    let users = rt.block_on(get_once(active, None));
    assert!(users.body.contains("version v1"), "{users:?}");
}

#[test]
fn refusals_are_one_clear_sentence() {
    let sandbox = Sandbox::start();
    let spec = DemoSpec::new("svc", "v1");
    sandbox.apply_ok("svc.yaml", &spec.yaml());
    sandbox.wait_for("svc", "v1 live", |r| r.phase == Phase::Healthy);

    let nothing = sandbox.teal(&["promote", "svc"]);
    assert!(!nothing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&nothing.stderr).trim(),
        "error: rollout svc: nothing to promote: no revision is in preview (users are on blue (revision 1))"
    );

    let mut v2 = DemoSpec::new("svc", "v2");
    v2.replicas = 2;
    sandbox.apply_ok("svc.yaml", &v2.yaml());
    let stale = sandbox.teal(&["promote", "svc", "--revision", "1"]);
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr)
            .contains("stale promote: revision 1 is not in preview (revision 2 is)"),
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );

    let unknown = sandbox.teal(&["get", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no rollout named \"nope\""));

    let no_token = sandbox.teal(&["--token", "wrong", "abort", "svc"]);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("needs the API token"));
    assert_eq!(
        sandbox.get("svc").preview_revision,
        Some(2),
        "the refused abort changed nothing"
    );
}

#[test]
fn logs_show_each_instance_output() {
    let sandbox = Sandbox::start();
    sandbox.apply_ok("logs.yaml", &DemoSpec::new("logs", "v1").yaml());
    sandbox.wait_for("logs", "v1 live", |r| r.phase == Phase::Healthy);
    let logs = sandbox.teal_ok(&["logs", "logs", "--color", "blue"]);
    assert!(logs.contains("demo-app v1 (blue) listening"), "{logs}");
    let none = sandbox.teal_ok(&["logs", "logs", "--color", "green"]);
    assert!(!none.contains("listening"), "{none}");
}

#[test]
fn demo_runs_a_full_cycle_and_exits() {
    let output = std::process::Command::new(TEAL)
        .args(["demo", "--exit"])
        .output()
        .expect("teal demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "✓ v1 is live",
        "✓ v2 is ready in preview",
        "hello from green, version v2",
        "✓ users are on green",
        "✓ users are back on blue",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
}

#[test]
fn two_promotes_at_once_are_serialized_and_the_second_is_refused() {
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("race", "v1");
    sandbox.apply_ok("race.yaml", &spec.yaml());
    sandbox.wait_for("race", "v1 live", |r| r.phase == Phase::Healthy);
    spec.version = "v2";
    spec.scale_down_delay = 60;
    sandbox.apply_ok("race.yaml", &spec.yaml());
    sandbox.wait_for("race", "v2 paused", |r| r.phase == Phase::Paused);

    let outputs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| sandbox.teal(&["promote", "race", "--revision", "2"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let succeeded = outputs.iter().filter(|o| o.status.success()).count();
    let refusals: Vec<String> = outputs
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert_eq!(succeeded, 1, "exactly one promote wins: {refusals:?}");
    // The loser was judged against the state the winner left: already promoting, or
    // (when the switch was immediate) nothing left in preview.
    assert!(
        refusals[0].contains("already being promoted")
            || refusals[0].contains("stale promote: revision 2 is not in preview"),
        "{refusals:?}"
    );
    let history = sandbox.teal_ok(&["history", "race"]);
    assert_eq!(
        history.matches("revision 2 promoted").count(),
        1,
        "{history}"
    );
}

#[test]
fn abort_then_retry_then_delete() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("life", "v1");
    sandbox.apply_ok("life.yaml", &spec.yaml());
    let v1 = sandbox.wait_for("life", "v1 live", |r| r.phase == Phase::Healthy);
    let (active, _) = addresses(&v1);
    spec.version = "v2";
    sandbox.apply_ok("life.yaml", &spec.yaml());
    sandbox.wait_for("life", "v2 paused", |r| r.phase == Phase::Paused);

    sandbox.teal_ok(&["abort", "life"]);
    let aborted = sandbox.get("life");
    assert_eq!(
        (aborted.phase, aborted.reason.as_deref()),
        (Phase::Degraded, Some("RolloutAborted"))
    );
    assert_eq!(aborted.preview_revision, None);
    let cookie = rt.block_on(get_once(active, Some("test=true")));
    assert!(
        cookie.body.contains("version v1"),
        "after an abort, testers get the stable color too: {cookie:?}"
    );

    sandbox.teal_ok(&["retry", "life"]);
    sandbox.wait_for("life", "v2 paused again", |r| {
        r.phase == Phase::Paused && r.preview_revision == Some(2)
    });

    let list = sandbox.teal_ok(&["list"]);
    assert!(
        list.contains("life") && list.contains("Paused (BlueGreenPause)"),
        "{list}"
    );

    let all_pids: Vec<u32> = sandbox
        .get("life")
        .colors
        .iter()
        .flat_map(|c| c.instances.iter().filter_map(|i| i.pid))
        .collect();
    assert_eq!(all_pids.len(), 4);
    sandbox.teal_ok(&["delete", "life"]);
    let gone = sandbox.teal(&["get", "life"]);
    assert!(!gone.status.success());
    eventually(Duration::from_secs(10), "every instance exits", || {
        all_pids.iter().all(|pid| !alive(*pid)).then_some(())
    });
    eventually(Duration::from_secs(5), "the listener closes", || {
        rt.block_on(tokio::net::TcpStream::connect(active))
            .is_err()
            .then_some(())
    });
    let history = sandbox.teal_ok(&["history", "life"]);
    assert!(history.contains("rollout life deleted"), "{history}");
}

#[test]
fn logs_follow_streams_new_instances_as_they_start() {
    use std::io::BufRead;
    let sandbox = Sandbox::start();
    let mut spec = DemoSpec::new("tail", "v1");
    spec.replicas = 1;
    sandbox.apply_ok("tail.yaml", &spec.yaml());
    sandbox.wait_for("tail", "v1 live", |r| r.phase == Phase::Healthy);

    let mut follower = std::process::Command::new(TEAL)
        .arg("--data-dir")
        .arg(sandbox.data_dir())
        .args(["logs", "tail", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for_line = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = received.recv_timeout(Duration::from_millis(200))
                && line.contains(needle)
            {
                return line;
            }
        }
        panic!("no log line with {needle:?}");
    };
    let blue = wait_for_line("demo-app v1 (blue) listening");
    assert!(
        blue.starts_with("[tail-blue-r1-1] "),
        "lines are tagged with their instance: {blue}"
    );

    spec.version = "v2";
    sandbox.apply_ok("tail.yaml", &spec.yaml());
    let green = wait_for_line("demo-app v2 (green) listening");
    assert!(green.starts_with("[tail-green-r2-1] "), "{green}");
    let _ = follower.kill();
    let _ = follower.wait();
}
