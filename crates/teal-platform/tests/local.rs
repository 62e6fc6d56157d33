//! The local platform with real processes: python3's http.server and small sh scripts.
//! Ports are picked by the platform; waits poll with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use teal_core::Color;
use teal_core::spec::{EnvVar, Probe, ProbeAction, Process, Template};
use teal_platform::{GroupKey, GroupSpec, InstanceStatus, LocalPlatform, PlatformError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(15);

fn python_server(dir: &Path) -> Template {
    Template {
        process: Process {
            command: vec!["python3".into(), "-m".into(), "http.server".into()],
            args: vec!["$(PORT)".into(), "--bind".into(), "127.0.0.1".into()],
            env: Vec::new(),
            working_dir: Some(dir.to_path_buf()),
        },
        readiness_probe: None,
        liveness_probe: None,
        termination_grace_period: Duration::from_secs(5),
    }
}

fn sh(script: &str, grace: Duration) -> Template {
    Template {
        process: Process {
            command: vec!["sh".into(), "-c".into(), script.into()],
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
        },
        readiness_probe: None,
        liveness_probe: None,
        termination_grace_period: grace,
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        action: ProbeAction::HttpGet { path: path.into() },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 2,
    }
}

fn spec(template: Template, revision: u64, replicas: u32) -> GroupSpec {
    GroupSpec {
        revision,
        template_hash: template.hash(),
        template,
        replicas,
    }
}

fn key(rollout: &str, color: Color) -> GroupKey {
    GroupKey {
        rollout: rollout.into(),
        color,
    }
}

/// The instances of `key`'s group (empty when it does not run).
fn instances(platform: &LocalPlatform, key: &GroupKey) -> Vec<InstanceStatus> {
    platform
        .observe(&key.rollout)
        .into_iter()
        .find(|group| group.color == key.color)
        .map(|group| group.instances)
        .unwrap_or_default()
}

/// Polls `check` every 20 ms until it returns Some, panicking after [`DEADLINE`].
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` instances of `key`, all ready.
async fn wait_ready(platform: &LocalPlatform, key: &GroupKey, count: usize) -> Vec<InstanceStatus> {
    wait_for(&format!("{count} ready instance(s) of {key}"), || {
        let now = instances(platform, key);
        (now.len() == count && now.iter().all(|i| i.ready && i.pid.is_some())).then_some(now)
    })
    .await
}

/// Some process of the process group `pgid` has not exited (zombies count as exited).
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

async fn wait_group_gone(pgid: u32) {
    wait_for(&format!("process group {pgid} to exit"), || {
        (!group_alive(pgid)).then_some(())
    })
    .await;
}

/// Answers the HTTP status line and body of `GET path`.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Kills whatever a test left running when it fails half-way.
struct KillOnDrop(Arc<LocalPlatform>, &'static str);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for group in self.0.observe(self.1) {
            for pid in group.instances.iter().filter_map(|i| i.pid) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

#[tokio::test]
async fn a_group_of_two_becomes_ready_on_distinct_ports_and_serves() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hi there").unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "shop");
    let mut changed = platform.changed();
    changed.borrow_and_update();

    let mut template = python_server(site.path());
    template.readiness_probe = Some(http_probe("/hello.txt"));
    let blue = key("shop", Color::Blue);
    platform
        .start(blue.clone(), spec(template.clone(), 1, 2))
        .await
        .unwrap();

    let ready = wait_ready(&platform, &blue, 2).await;
    assert!(
        changed.has_changed().unwrap(),
        "readiness changes wake the reconciler"
    );
    let ids: Vec<&str> = ready.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["shop-blue-r1-1", "shop-blue-r1-2"]);
    assert_ne!(ready[0].addr, ready[1].addr);
    assert_ne!(ready[0].pid, ready[1].pid);
    for instance in &ready {
        assert!(instance.addr.ip().is_loopback());
        assert!(!instance.adopted);
        assert_eq!(instance.problem, None);
        let answer = get(instance.addr, "/hello.txt").await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.ends_with("hi there"), "{answer}");
    }
    let groups = platform.observe("shop");
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].revision, groups[0].replicas), (1, 2));
    assert_eq!(groups[0].template_hash, template.hash());
    assert!(platform.observe("other").is_empty());

    platform.shutdown_all().await;
    for instance in &ready {
        assert!(
            !group_alive(instance.pid.unwrap()),
            "shutdown_all waits for the processes"
        );
    }
    assert_eq!(
        std::fs::read_dir(run.path().join("instances"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(
        platform.start(blue, spec(template, 2, 1)).await,
        Err(PlatformError::ShuttingDown)
    ));
}

#[tokio::test]
async fn a_failing_readiness_probe_keeps_the_instance_unready_and_says_why() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "shop");
    let mut template = python_server(site.path());
    template.readiness_probe = Some(http_probe("/missing"));
    let green = key("shop", Color::Green);
    platform
        .start(green.clone(), spec(template, 3, 1))
        .await
        .unwrap();

    let problem = wait_for("the 404 to be reported", || {
        let problem = instances(&platform, &green).first()?.problem.clone()?;
        // Not merely containing "404": a refused connect before the server is up
        // names a port, which may contain it.
        problem.contains("answered").then_some(problem)
    })
    .await;
    assert_eq!(problem, "readiness probe GET /missing answered 404");
    // Several more probe periods: it stays unready.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let now = instances(&platform, &green);
        assert!(!now[0].ready, "a 404 must never make it ready");
        assert!(now[0].pid.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    platform.shutdown_all().await;
}

#[tokio::test]
async fn a_crashing_command_restarts_with_growing_backoff() {
    let run = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "crash");
    let blue = key("crash", Color::Blue);
    platform
        .start(
            blue.clone(),
            spec(sh("echo starting; exit 3", Duration::from_secs(1)), 1, 1),
        )
        .await
        .unwrap();

    // Record when each restart is announced and what it says.
    let mut seen: Vec<(u32, Instant, String)> = Vec::new();
    wait_for("three restarts", || {
        let now = instances(&platform, &blue).pop()?;
        if now.restarts > seen.last().map_or(0, |s| s.0) {
            seen.push((
                now.restarts,
                Instant::now(),
                now.problem.clone().unwrap_or_default(),
            ));
        }
        (now.restarts >= 3).then_some(())
    })
    .await;
    let problems: Vec<&str> = seen.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(
        problems,
        [
            "exited with status 3; restarting in 1s",
            "exited with status 3; restarting in 2s",
            "exited with status 3; restarting in 4s",
        ]
    );
    let first_gap = seen[1].1 - seen[0].1;
    let second_gap = seen[2].1 - seen[1].1;
    assert!(first_gap >= Duration::from_millis(900), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1900), "{second_gap:?}");
    assert!(!instances(&platform, &blue)[0].ready);

    let logs = platform.log_files("crash", None);
    let log = std::fs::read_to_string(&logs[0].path).unwrap();
    assert!(log.matches("starting\n").count() >= 3, "{log}");
    assert!(
        log.contains("[teal] exited with status 3; restarting in 2s"),
        "{log}"
    );
    platform.shutdown_all().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_says_so() {
    let run = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let mut template = sh("", Duration::from_secs(1));
    template.process.command = vec!["./nope".into()];
    let blue = key("nope", Color::Blue);
    platform
        .start(blue.clone(), spec(template, 1, 1))
        .await
        .unwrap();
    let problem = wait_for("the start failure", || {
        instances(&platform, &blue).pop()?.problem
    })
    .await;
    assert_eq!(
        problem,
        "cannot start \"./nope\": No such file or directory; retrying in 1s"
    );
    platform.shutdown_all().await;
}

#[tokio::test]
async fn stop_terms_the_process_group_and_kills_it_after_the_grace_period() {
    let run = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "stop");

    // Exits on SIGTERM: gone long before its 10 s grace period.
    let polite = key("stop", Color::Blue);
    let script = "trap 'exit 0' TERM; echo trapped; while :; do sleep 0.1; done";
    platform
        .start(
            polite.clone(),
            spec(sh(script, Duration::from_secs(10)), 1, 1),
        )
        .await
        .unwrap();
    let pid = wait_trapped(&platform, &polite).await;
    let stopped_at = Instant::now();
    platform.stop(&polite).await;
    assert!(
        instances(&platform, &polite).is_empty(),
        "the group leaves observe at once"
    );
    wait_group_gone(pid).await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped_at.elapsed()
    );

    // Ignores SIGTERM (and so does the sleep it leaves behind): SIGKILLed after 1 s.
    let stubborn = key("stop", Color::Green);
    let script = "trap '' TERM; echo trapped; sleep 100; sleep 100";
    platform
        .start(
            stubborn.clone(),
            spec(sh(script, Duration::from_secs(1)), 1, 1),
        )
        .await
        .unwrap();
    let pid = wait_trapped(&platform, &stubborn).await;
    let stopped_at = Instant::now();
    platform.stop(&stubborn).await;
    assert!(platform.observe("stop").is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        group_alive(pid),
        "SIGTERM is ignored, so it runs until the grace period ends"
    );
    wait_group_gone(pid).await;
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The record goes once the supervisor has reaped the process, a moment after
    // the group leaves /proc (it must outlive the process, so a daemon that dies
    // meanwhile still finds and kills it).
    wait_for("no instance record left", || {
        let records = std::fs::read_dir(run.path().join("instances"))
            .unwrap()
            .count();
        (records == 0).then_some(())
    })
    .await;
    platform.shutdown_all().await;
}

/// Waits until the sh script of `key` has set its trap (it then echoes "trapped").
async fn wait_trapped(platform: &LocalPlatform, key: &GroupKey) -> u32 {
    wait_for("the trap to be set", || {
        let instance = instances(platform, key).pop()?;
        let file = platform.log_files(&key.rollout, Some(key.color)).pop()?;
        let log = std::fs::read_to_string(file.path).ok()?;
        log.contains("trapped").then_some(instance.pid?)
    })
    .await
}

#[tokio::test]
async fn shutdown_all_waits_for_the_grace_period() {
    let run = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "down");
    let blue = key("down", Color::Blue);
    let script = "trap '' TERM; echo trapped; sleep 100";
    platform
        .start(blue.clone(), spec(sh(script, Duration::from_secs(1)), 1, 1))
        .await
        .unwrap();
    let pid = wait_trapped(&platform, &blue).await;
    let began = Instant::now();
    platform.shutdown_all().await;
    assert!(began.elapsed() >= Duration::from_secs(1));
    assert!(!group_alive(pid));
}

#[tokio::test]
async fn output_lands_in_the_log_file_with_the_instance_environment() {
    let run = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "logs");
    let mut template = sh(
        "echo \"hello $GREETING port=$PORT arg=$1 color=$TEAL_COLOR revision=$TEAL_REVISION rollout=$TEAL_ROLLOUT\"; echo oops >&2; sleep 100",
        Duration::from_secs(1),
    );
    template.process.args = vec!["sh".into(), "$(PORT)".into()];
    template.process.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "world".into(),
    }];
    let green = key("logs", Color::Green);
    platform
        .start(green.clone(), spec(template, 4, 1))
        .await
        .unwrap();
    let port = wait_for("a pid", || {
        let instance = instances(&platform, &green).pop()?;
        instance.pid.map(|_| instance.addr.port())
    })
    .await;

    let files = platform.log_files("logs", None);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].instance, "logs-green-r4-1");
    assert_eq!((files[0].color, files[0].revision), (Color::Green, 4));
    assert_eq!(
        files[0].path,
        run.path().join("logs/logs/logs-green-r4-1.log")
    );
    assert!(platform.log_files("logs", Some(Color::Blue)).is_empty());
    let expected =
        format!("hello world port={port} arg={port} color=green revision=4 rollout=logs");
    let log = wait_for("the output in the log", || {
        let log = std::fs::read_to_string(&files[0].path).ok()?;
        (log.contains(&expected) && log.contains("oops")).then_some(log)
    })
    .await;
    assert!(log.contains("[teal] starting \"sh\""), "{log}");

    // relabel changes the reported revision, not the process.
    let pid = instances(&platform, &green)[0].pid;
    platform.relabel(&green, 9);
    assert_eq!(platform.observe("logs")[0].revision, 9);
    assert_eq!(instances(&platform, &green)[0].pid, pid);
    assert_eq!(
        platform.log_files("logs", Some(Color::Green))[0].revision,
        9
    );
    platform.shutdown_all().await;
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_instance() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "live");
    let mut template = python_server(site.path());
    template.readiness_probe = Some(http_probe("/"));
    // Give python time to listen, so the failure is the 404 and not a refused connection.
    let mut liveness = http_probe("/healthz");
    liveness.initial_delay = Duration::from_secs(1);
    template.liveness_probe = Some(liveness);
    let blue = key("live", Color::Blue);
    platform
        .start(blue.clone(), spec(template, 1, 1))
        .await
        .unwrap();

    let first = wait_for("a first process", || instances(&platform, &blue).pop()?.pid).await;
    let problem = wait_for("a liveness restart", || {
        let instance = instances(&platform, &blue).pop()?;
        let problem = instance.problem?;
        (instance.restarts >= 1 && problem.contains("answered 404")).then_some(problem)
    })
    .await;
    assert!(
        problem.starts_with("liveness probe GET /healthz answered 404 (2 times in a row)"),
        "{problem}"
    );
    wait_group_gone(first).await;
    let second = wait_for("a new process", || {
        let pid = instances(&platform, &blue).pop()?.pid?;
        (pid != first).then_some(pid)
    })
    .await;
    assert_ne!(second, first);
    platform.shutdown_all().await;
}

#[tokio::test]
async fn scale_down_removes_the_newest_and_start_replaces() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(platform.clone(), "scale");
    let blue = key("scale", Color::Blue);
    // No readinessProbe: ready once the port accepts connections.
    platform
        .start(blue.clone(), spec(python_server(site.path()), 1, 2))
        .await
        .unwrap();
    let two = wait_ready(&platform, &blue, 2).await;

    platform.scale(&blue, 1).await;
    let one = instances(&platform, &blue);
    assert_eq!(one.len(), 1, "scaled-down instances leave observe at once");
    assert_eq!(one[0].id, two[0].id, "the newest goes");
    assert_eq!(platform.observe("scale")[0].replicas, 1);
    wait_group_gone(two[1].pid.unwrap()).await;
    assert!(group_alive(two[0].pid.unwrap()));

    platform.scale(&blue, 2).await;
    wait_ready(&platform, &blue, 2).await;

    // A new start replaces the group; the old instances go in the background.
    let mut template = python_server(site.path());
    template.termination_grace_period = Duration::from_secs(2);
    platform
        .start(blue.clone(), spec(template, 2, 1))
        .await
        .unwrap();
    let groups = platform.observe("scale");
    assert_eq!((groups[0].revision, groups[0].instances.len()), (2, 1));
    assert_eq!(groups[0].instances[0].id, "scale-blue-r2-1");
    wait_ready(&platform, &blue, 1).await;
    wait_group_gone(two[0].pid.unwrap()).await;
    platform.shutdown_all().await;
}

/// A daemon "crash": the first platform's runtime goes away with all its tasks, but
/// the processes keep running. A second platform on the same run_dir adopts them.
#[test]
fn a_new_platform_adopts_running_instances() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let blue = key("adopt", Color::Blue);

    let first = tokio::runtime::Runtime::new().unwrap();
    let before = first.block_on(async {
        let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
        let mut template = python_server(site.path());
        template.readiness_probe = Some(http_probe("/"));
        platform
            .start(blue.clone(), spec(template, 5, 1))
            .await
            .unwrap();
        wait_ready(&platform, &blue, 1).await.remove(0)
    });
    drop(first);
    let pid = before.pid.unwrap();
    assert!(group_alive(pid), "the instance outlives its daemon");

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
        let _guard = KillOnDrop(platform.clone(), "adopt");
        let groups = platform.observe("adopt");
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].revision, groups[0].replicas), (5, 1));
        let adopted = wait_ready(&platform, &blue, 1).await.remove(0);
        assert!(adopted.adopted);
        assert_eq!(adopted.id, before.id);
        assert_eq!(adopted.pid, Some(pid));
        assert_eq!(adopted.addr, before.addr);
        assert!(get(adopted.addr, "/").await.starts_with("HTTP/1.0 200"));

        // When the adopted process dies, a replacement starts as after a crash.
        killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let replacement = wait_for("a replacement", || {
            let now = instances(&platform, &blue).pop()?;
            (now.ready && now.pid != Some(pid)).then_some(now)
        })
        .await;
        assert!(!replacement.adopted);
        assert_eq!(replacement.restarts, 1);
        assert_eq!(replacement.problem, None);

        platform.shutdown_all().await;
        assert!(!group_alive(replacement.pid.unwrap()));
        assert_eq!(
            std::fs::read_dir(run.path().join("instances"))
                .unwrap()
                .count(),
            0
        );
    });
}

/// A takeover: the old daemon's platform lets go of its instances without touching
/// them, a new platform adopts them; `resume` takes them back when a takeover fails.
#[tokio::test]
async fn a_suspended_platform_leaves_its_instances_to_the_next_one() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let blue = key("handoff", Color::Blue);
    let old = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _guard = KillOnDrop(old.clone(), "handoff");
    let mut template = python_server(site.path());
    template.readiness_probe = Some(http_probe("/"));
    old.start(blue.clone(), spec(template.clone(), 3, 1))
        .await
        .unwrap();
    let before = wait_ready(&old, &blue, 1).await.remove(0);
    let pid = before.pid.unwrap();

    old.suspend().await;
    assert_eq!(
        instances(&old, &blue),
        std::slice::from_ref(&before),
        "observe answers with the groups as they were"
    );
    assert!(matches!(
        old.start(key("handoff", Color::Green), spec(template, 4, 1))
            .await,
        Err(PlatformError::Suspended)
    ));
    old.stop(&blue).await;
    old.shutdown_all().await;
    assert!(
        group_alive(pid),
        "a suspended platform stops nothing, not even at shutdown"
    );

    let new = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let adopted = wait_ready(&new, &blue, 1).await.remove(0);
    assert_eq!(
        (adopted.id.as_str(), adopted.pid),
        (before.id.as_str(), Some(pid))
    );
    new.suspend().await;

    new.resume().unwrap();
    let again = wait_ready(&new, &blue, 1).await.remove(0);
    assert_eq!(again.pid, Some(pid), "resume adopts the same process again");
    new.shutdown_all().await;
    assert!(!group_alive(pid));
}

/// The readiness written in every instance record under `run_dir`.
fn recorded_readiness(run_dir: &Path) -> Vec<bool> {
    std::fs::read_dir(run_dir.join("instances"))
        .unwrap()
        .map(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let record: serde_json::Value = serde_json::from_str(&text).unwrap();
            record["ready"].as_bool().unwrap_or(false)
        })
        .collect()
}

/// An adopting daemon routes to the instances its predecessor handed over ready
/// without waiting for their probes to pass again (which can take many periods), and
/// the probes go on: one that fails takes the instance out, and that is what the next
/// daemon adopts.
#[tokio::test]
async fn an_instance_handed_over_ready_is_adopted_ready_until_a_probe_says_otherwise() {
    let run = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("ready"), "yes").unwrap();
    let blue = key("adopt-ready", Color::Blue);
    let old = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _old_guard = KillOnDrop(old.clone(), "adopt-ready");
    let mut template = python_server(site.path());
    // Four passes 300 ms apart: a fresh probe needs about a second to say ready.
    template.readiness_probe = Some(Probe {
        period: Duration::from_millis(300),
        success_threshold: 4,
        ..http_probe("/ready")
    });
    old.start(blue.clone(), spec(template, 1, 1)).await.unwrap();
    let pid = wait_ready(&old, &blue, 1).await.remove(0).pid;
    assert_eq!(
        recorded_readiness(run.path()),
        vec![false],
        "not while supervised"
    );
    old.suspend().await;
    assert_eq!(
        recorded_readiness(run.path()),
        vec![true],
        "handed over ready"
    );

    let new = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _new_guard = KillOnDrop(new.clone(), "adopt-ready");
    let adopted = instances(&new, &blue);
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].pid, pid);
    assert!(adopted[0].ready, "ready from the moment it is adopted");
    // Only the handover vouched for it: a daemon that crashed now would leave nothing
    // that says ready, and the next would probe before routing.
    assert_eq!(recorded_readiness(run.path()), vec![false]);

    // The takeover fails after all: the new platform lets go without writing a
    // record, and the old one takes the instance back, still ready although the
    // record no longer says so.
    new.let_go().await;
    old.resume().unwrap();
    assert!(instances(&old, &blue)[0].ready, "taken back ready");
    // A second takeover goes through.
    old.suspend().await;
    let new = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _new_guard = KillOnDrop(new.clone(), "adopt-ready");
    assert!(instances(&new, &blue)[0].ready);

    std::fs::remove_file(site.path().join("ready")).unwrap();
    wait_for("the failing probe to take it out", || {
        (!instances(&new, &blue)[0].ready).then_some(())
    })
    .await;
    new.suspend().await;
    let next = LocalPlatform::open(run.path().to_path_buf()).unwrap();
    let _next_guard = KillOnDrop(next.clone(), "adopt-ready");
    assert!(
        !instances(&next, &blue)[0].ready,
        "adopted unready, as it was last probed"
    );
    next.shutdown_all().await;
}
