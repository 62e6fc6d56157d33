//! Clients that never stop sending see no error through a promote and an undo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

#[derive(Default, Debug)]
struct Tally {
    ok_blue: u64,
    ok_green: u64,
    failures: Vec<String>,
}

/// `connections` keep-alive clients sending back to back until `stop`.
fn load(
    rt: &tokio::runtime::Runtime,
    address: SocketAddr,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..connections)
        .map(|_| {
            let stop = stop.clone();
            rt.spawn(async move {
                let mut tally = Tally::default();
                let mut connection = Connection::open(address).await.expect("connects");
                while !stop.load(Ordering::Relaxed) {
                    match connection.get("/", None).await {
                        Ok(answer) if answer.status == 200 => match answer.color.as_deref() {
                            Some("blue") => tally.ok_blue += 1,
                            Some("green") => tally.ok_green += 1,
                            other => tally.failures.push(format!("no color header: {other:?}")),
                        },
                        Ok(answer) => tally
                            .failures
                            .push(format!("{} {}", answer.status, answer.body)),
                        Err(error) => {
                            tally.failures.push(error);
                            // Count it, then carry on with a new connection.
                            match Connection::open(address).await {
                                Ok(fresh) => connection = fresh,
                                Err(error) => tally.failures.push(error.to_string()),
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect()
}

#[test]
fn no_request_fails_through_promote_and_undo() {
    promote_and_undo_under_load(30);
}

/// Without a scale-down delay the old color is drained and stopped right after each
/// switch: the drain is all that stands between its in-flight requests and SIGTERM.
#[test]
fn no_request_fails_when_the_old_color_stops_at_the_switch() {
    promote_and_undo_under_load(0);
}

fn promote_and_undo_under_load(scale_down_delay: u32) {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let mut spec = DemoSpec::new("busy", "v1");
    spec.scale_down_delay = scale_down_delay;
    let active = sandbox.go_live(&spec);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&rt, active, 6, stop.clone());

    spec.version = "v2";
    sandbox.apply_ok("busy.yaml", &spec.yaml());
    sandbox.wait_for("busy", "v2 in preview", |r| r.phase == Phase::Paused);
    sandbox.teal_ok(&["promote", "busy"]);
    sandbox.wait_for("busy", "users on green", |r| {
        r.active_color == Some(Color::Green)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    sandbox.teal_ok(&["undo", "busy"]);
    if scale_down_delay == 0 {
        // Nothing is warm: the undo is a release like any other.
        sandbox.wait_for("busy", "v1 again in preview", |r| r.phase == Phase::Paused);
        sandbox.teal_ok(&["promote", "busy"]);
    }
    sandbox.wait_for("busy", "users back on blue", |r| {
        r.active_color == Some(Color::Blue)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));

    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for client in clients {
        let tally = rt.block_on(client).unwrap();
        total.ok_blue += tally.ok_blue;
        total.ok_green += tally.ok_green;
        total.failures.extend(tally.failures);
    }
    assert!(
        total.failures.is_empty(),
        "failed requests: {:?}",
        total.failures
    );
    assert!(
        total.ok_blue > 50 && total.ok_green > 50,
        "both colors served: {total:?}"
    );
}
