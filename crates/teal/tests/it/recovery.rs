//! A daemon killed with -9 comes back where it was.

use std::time::Duration;

use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

#[test]
fn kill_9_mid_cycle_then_restart_resumes_the_cycle() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("phoenix", "v1");
    spec.active = free_address().to_string();
    spec.preview = free_address().to_string();
    sandbox.apply_ok("phoenix.yaml", &spec.yaml());
    sandbox.wait_for("phoenix", "v1 live", |r| r.phase == Phase::Healthy);
    spec.version = "v2";
    sandbox.apply_ok("phoenix.yaml", &spec.yaml());
    let paused = sandbox.wait_for("phoenix", "v2 in preview", |r| r.phase == Phase::Paused);
    let active = spec.active.parse().unwrap();
    let preview = spec.preview.parse().unwrap();

    sandbox.kill_daemon();
    // The instances outlive the daemon; the listeners do not.
    assert!(
        rt.block_on(tokio::net::TcpStream::connect(active)).is_err(),
        "the proxy died with the daemon"
    );

    sandbox.start_daemon();
    eventually(
        Duration::from_secs(20),
        "users get v1 again after the restart",
        || {
            let answer = rt.block_on(async {
                let mut connection = Connection::open(active).await.ok()?;
                connection.get("/", None).await.ok()
            })?;
            (answer.status == 200 && answer.body.contains("version v1")).then_some(())
        },
    );
    let testers = rt.block_on(get_once(preview, None));
    assert!(
        testers.body.contains("version v2"),
        "the preview resumed: {testers:?}"
    );
    let resumed = sandbox.get("phoenix");
    assert_eq!(
        (resumed.phase, resumed.preview_revision),
        (Phase::Paused, Some(2))
    );
    let pids = |r: &teal_core::api::RolloutView| {
        let mut pids: Vec<_> = r
            .colors
            .iter()
            .flat_map(|c| c.instances.iter().filter_map(|i| i.pid))
            .collect();
        pids.sort();
        pids
    };
    assert_eq!(
        pids(&resumed),
        pids(&paused),
        "the running instances were adopted, not restarted"
    );

    sandbox.teal_ok(&["promote", "phoenix"]);
    sandbox.wait_for("phoenix", "users on green", |r| {
        r.phase == Phase::Healthy && r.active_color == Some(Color::Green)
    });
    let users = rt.block_on(get_once(active, None));
    assert!(users.body.contains("version v2"), "{users:?}");
}

#[test]
fn a_listener_taken_at_restart_is_bound_once_it_is_free() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("patient", "v1");
    spec.active = free_address().to_string();
    sandbox.apply_ok("patient.yaml", &spec.yaml());
    sandbox.wait_for("patient", "v1 live", |r| r.phase == Phase::Healthy);
    let active: std::net::SocketAddr = spec.active.parse().unwrap();

    sandbox.kill_daemon();
    let squatter = std::net::TcpListener::bind(active).expect("the address is free after the kill");
    sandbox.start_daemon();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sandbox.get("patient").phase,
        Phase::Healthy,
        "the daemon came up anyway"
    );
    drop(squatter);

    eventually(Duration::from_secs(15), "users are served again", || {
        let answer = rt.block_on(async {
            let mut connection = Connection::open(active).await.ok()?;
            connection.get("/", None).await.ok()
        })?;
        answer.body.contains("version v1").then_some(())
    });
}
