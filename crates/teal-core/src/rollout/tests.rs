//! Table tests: (status, events) → (phase, routes, what runs, notes).

use std::time::Duration;

use super::*;
use crate::world::World;

use Color::{Blue, Green};

mod analysis;

fn policy() -> Policy {
    Policy {
        replicas: 2,
        preview_replicas: 1,
        auto_promotion_enabled: false,
        auto_promotion_delay: Duration::ZERO,
        scale_down_delay: Duration::from_secs(30),
        abort_scale_down_delay: Some(Duration::from_secs(30)),
        progress_deadline: Duration::from_secs(600),
        pre_promotion_analysis: false,
        post_promotion_analysis: false,
        confirm_promotion: false,
    }
}

fn applied(revision: Revision, hash: &str) -> Event {
    Event::Applied {
        revision,
        template_hash: hash.to_owned(),
    }
}

fn ready(color: Color, hash: &str, ready: u32) -> Event {
    Event::Observed {
        color,
        template_hash: hash.to_owned(),
        ready,
        problem: None,
    }
}

fn not_ready(color: Color, hash: &str, problem: &str) -> Event {
    Event::Observed {
        color,
        template_hash: hash.to_owned(),
        ready: 0,
        problem: Some(problem.to_owned()),
    }
}

fn promote(expected: Option<Revision>) -> Event {
    Event::PromoteRequested {
        expected_revision: expected,
    }
}

fn abort() -> Event {
    Event::AbortRequested {
        reason: "by a person".to_owned(),
    }
}

/// Runs events at the given times; panics on a refusal.
fn run(start: Status, policy: &Policy, events: Vec<(Millis, Event)>) -> (Status, Vec<String>) {
    let mut status = start;
    let mut notes = Vec::new();
    for (now, event) in events {
        let transition = status
            .on(event.clone(), policy, now)
            .unwrap_or_else(|refusal| panic!("{event:?} at {now} refused: {refusal}"));
        status = transition.status;
        notes.extend(transition.notes);
    }
    (status, notes)
}

/// blue runs revision 1 (hash "a") with 2 ready instances.
fn healthy_on_blue() -> Status {
    run(
        Status::default(),
        &policy(),
        vec![(0, applied(1, "a")), (1, ready(Blue, "a", 2))],
    )
    .0
}

/// Revision 2 ("b") paused in preview on green.
fn paused_on_green() -> Status {
    run(
        healthy_on_blue(),
        &policy(),
        vec![(10, applied(2, "b")), (11, ready(Green, "b", 1))],
    )
    .0
}

/// Users on green revision 2; blue revision 1 warm until 30_020.
fn switched_to_green() -> Status {
    run(
        paused_on_green(),
        &policy(),
        vec![(15, promote(Some(2))), (20, ready(Green, "b", 2))],
    )
    .0
}

fn deployment(revision: Revision, hash: &str, replicas: u32) -> Option<Deployment> {
    Some(Deployment {
        revision,
        template_hash: hash.to_owned(),
        replicas,
    })
}

struct Case {
    name: &'static str,
    start: Status,
    policy: Policy,
    events: Vec<(Millis, Event)>,
    phase: (Phase, Option<&'static str>),
    world: World,
    note: &'static str,
}

#[test]
fn blue_green_cycle_table() {
    let auto = Policy {
        auto_promotion_enabled: true,
        ..policy()
    };
    let auto_after_5s = Policy {
        auto_promotion_enabled: true,
        auto_promotion_delay: Duration::from_secs(5),
        ..policy()
    };
    let cases = vec![
        Case {
            name: "the first revision goes to blue at full size, with no preview and no active route until ready",
            start: Status::default(),
            policy: policy(),
            events: vec![(0, applied(1, "a")), (1, ready(Blue, "a", 1))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: None,
                active: None,
                preview: None,
            },
            note: "revision 1 starting in blue",
        },
        Case {
            name: "the first revision goes live when all its instances are ready",
            start: Status::default(),
            policy: policy(),
            events: vec![(0, applied(1, "a")), (1, ready(Blue, "a", 2))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: None,
                active: Some(Blue),
                preview: None,
            },
            note: "blue (revision 1) is live",
        },
        Case {
            name: "a new revision starts in the idle color with preview replicas and the preview route",
            start: healthy_on_blue(),
            policy: policy(),
            events: vec![(10, applied(2, "b"))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "revision 2 starting in green (preview)",
        },
        Case {
            name: "a candidate that is not ready is never promoted, even when promote was asked",
            start: healthy_on_blue(),
            policy: policy(),
            events: vec![
                (10, applied(2, "b")),
                (11, promote(None)),
                (
                    12,
                    not_ready(Green, "b", "readiness probe GET /ready answered 503"),
                ),
                (700_000, Event::TimePassed),
            ],
            phase: (Phase::Degraded, Some("ProgressDeadlineExceeded")),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "did not become ready within 600s: readiness probe GET /ready answered 503",
        },
        Case {
            name: "a ready candidate pauses for a person by default",
            start: healthy_on_blue(),
            policy: policy(),
            events: vec![(10, applied(2, "b")), (11, ready(Green, "b", 1))],
            phase: (Phase::Paused, Some("BlueGreenPause")),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "paused for promotion",
        },
        Case {
            name: "promote scales the candidate to full size before any user moves",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(15, promote(Some(2))), (16, ready(Green, "b", 1))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "revision 2 promoted",
        },
        Case {
            name: "users switch once the candidate is fully ready; the old color stays warm",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(15, promote(None)), (20, ready(Green, "b", 2))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "switched users from blue (revision 1) to green (revision 2); blue stays warm for 30s",
        },
        Case {
            name: "the old color stops when its scale-down delay passes",
            start: switched_to_green(),
            policy: policy(),
            events: vec![(30_020, Event::TimePassed)],
            phase: (Phase::Healthy, None),
            world: World {
                blue: None,
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "blue (revision 1) stopped: its scale-down delay passed",
        },
        Case {
            name: "the old color is still warm just before its delay ends",
            start: switched_to_green(),
            policy: policy(),
            events: vec![(30_019, Event::TimePassed)],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "",
        },
        Case {
            name: "an undo inside the delay is a route switch back, not a start",
            start: switched_to_green(),
            policy: policy(),
            events: vec![(100, ready(Blue, "a", 2)), (200, applied(3, "a"))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(3, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Blue),
                preview: None,
            },
            note: "switched users back from green (revision 2) at once",
        },
        Case {
            name: "an undo after the delay is an ordinary release into the idle color",
            start: switched_to_green(),
            policy: policy(),
            events: vec![(40_000, Event::TimePassed), (40_001, applied(3, "a"))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(3, "a", 1),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: Some(Blue),
            },
            note: "revision 3 starting in blue (preview)",
        },
        Case {
            name: "auto-promotion switches as soon as the candidate is ready",
            start: healthy_on_blue(),
            policy: Policy {
                preview_replicas: 2,
                ..auto.clone()
            },
            events: vec![(10, applied(2, "b")), (11, ready(Green, "b", 2))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "promoting automatically",
        },
        Case {
            name: "auto-promotion with a delay waits in preview first",
            start: healthy_on_blue(),
            policy: auto_after_5s.clone(),
            events: vec![
                (10, applied(2, "b")),
                (11, ready(Green, "b", 1)),
                (5_010, Event::TimePassed),
            ],
            phase: (Phase::Paused, Some("BlueGreenPause")),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "paused for promotion",
        },
        Case {
            name: "auto-promotion with a delay promotes when it ends",
            start: healthy_on_blue(),
            policy: auto_after_5s,
            events: vec![
                (10, applied(2, "b")),
                (11, ready(Green, "b", 1)),
                (5_011, Event::TimePassed),
            ],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "promoted automatically after 5s in preview",
        },
        Case {
            name: "abort keeps users on the stable color and takes the preview route away",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(20, abort())],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: None,
            },
            note: "revision 2 aborted: by a person",
        },
        Case {
            name: "an aborted candidate stops after the abort scale-down delay",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(20, abort()), (30_020, Event::TimePassed)],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: World {
                blue: deployment(1, "a", 2),
                green: None,
                active: Some(Blue),
                preview: None,
            },
            note: "aborted green (revision 2) stopped",
        },
        Case {
            name: "abortScaleDownDelaySeconds 0 keeps an aborted candidate running",
            start: paused_on_green(),
            policy: Policy {
                abort_scale_down_delay: None,
                ..policy()
            },
            events: vec![(20, abort()), (9_000_000, Event::TimePassed)],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: None,
            },
            note: "revision 2 aborted",
        },
        Case {
            name: "retry releases the aborted candidate again",
            start: paused_on_green(),
            policy: policy(),
            events: vec![
                (20, abort()),
                (30_020, Event::TimePassed),
                (40_000, Event::RetryRequested),
            ],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "revision 2 retried",
        },
        Case {
            name: "a new apply during preview replaces the candidate, never the live color",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(20, applied(3, "c"))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(3, "c", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "candidate green (revision 2) replaced by revision 3",
        },
        Case {
            name: "a new apply while the old color is warm releases into it",
            start: switched_to_green(),
            policy: policy(),
            events: vec![(100, applied(3, "c"))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(3, "c", 1),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: Some(Blue),
            },
            note: "blue (revision 1) replaced; it can no longer be undone instantly",
        },
        Case {
            name: "applying the live template again drops the candidate",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(20, applied(3, "a"))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(3, "a", 2),
                green: None,
                active: Some(Blue),
                preview: None,
            },
            note: "dropped candidate green (revision 2)",
        },
        Case {
            name: "observations of a replaced template are ignored",
            start: paused_on_green(),
            policy: policy(),
            events: vec![(20, applied(3, "c")), (21, ready(Green, "b", 1))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(3, "c", 1),
                active: Some(Blue),
                preview: Some(Green),
            },
            note: "candidate green (revision 2) replaced by revision 3",
        },
        Case {
            name: "a promote sent before readiness takes effect once ready, without a pause",
            start: healthy_on_blue(),
            policy: Policy {
                preview_replicas: 2,
                ..policy()
            },
            events: vec![
                (10, applied(2, "b")),
                (11, promote(Some(2))),
                (12, ready(Green, "b", 2)),
            ],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "promoting as requested",
        },
        Case {
            name: "no scale-down delay stops the old color at the switch",
            start: paused_on_green(),
            policy: Policy {
                scale_down_delay: Duration::ZERO,
                ..policy()
            },
            events: vec![(15, promote(None)), (20, ready(Green, "b", 2))],
            phase: (Phase::Healthy, None),
            world: World {
                blue: None,
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "blue (revision 1) stopped: no scale-down delay",
        },
    ];

    check(cases);
}

/// Runs every case and checks its phase, world and notes.
fn check(cases: Vec<Case>) {
    for case in cases {
        let (status, notes) = run(case.start, &case.policy, case.events);
        assert_eq!(status.phase(), case.phase, "{}: phase", case.name);
        assert_eq!(
            status.world(&case.policy),
            case.world,
            "{}: world",
            case.name
        );
        // An empty note means nothing noteworthy may happen.
        assert!(
            if case.note.is_empty() {
                notes.is_empty()
            } else {
                notes.iter().any(|n| n.contains(case.note))
            },
            "{}: no note contains {:?} in {notes:#?}",
            case.name,
            case.note
        );
    }
}

#[test]
fn refusals_table() {
    let cases: Vec<(&str, Status, Event, &str)> = vec![
        (
            "promote with nothing in preview",
            healthy_on_blue(),
            promote(None),
            "nothing to promote: no revision is in preview (users are on blue (revision 1))",
        ),
        (
            "promote of a stale revision",
            paused_on_green(),
            promote(Some(1)),
            "stale promote: revision 1 is not in preview (revision 2 is)",
        ),
        (
            "promote of a revision when nothing is in preview",
            healthy_on_blue(),
            promote(Some(2)),
            "stale promote: revision 2 is not in preview (nothing is)",
        ),
        (
            "a second promote while promoting",
            run(paused_on_green(), &policy(), vec![(15, promote(None))]).0,
            promote(None),
            "revision 2 is already being promoted",
        ),
        (
            "promote of an aborted candidate",
            run(paused_on_green(), &policy(), vec![(15, abort())]).0,
            promote(None),
            "revision 2 was aborted; run retry to release it again",
        ),
        (
            "abort with nothing being released",
            healthy_on_blue(),
            abort(),
            "nothing to abort",
        ),
        (
            "retry with nothing aborted",
            paused_on_green(),
            Event::RetryRequested,
            "nothing to retry",
        ),
    ];
    for (name, status, event, message) in cases {
        let refusal = status.on(event, &policy(), 100).expect_err(name);
        assert!(
            refusal.to_string().contains(message),
            "{name}: got {refusal}"
        );
    }
}

#[test]
fn wakes_for_the_next_deadline() {
    let policy = policy();
    assert_eq!(
        switched_to_green().next_wake(&policy),
        Some(30_020),
        "scale-down of the warm color"
    );
    assert_eq!(
        run(healthy_on_blue(), &policy, vec![(10, applied(2, "b"))])
            .0
            .next_wake(&policy),
        Some(600_010),
        "progress deadline of a starting candidate"
    );
    assert_eq!(
        paused_on_green().next_wake(&policy),
        None,
        "a manual pause waits for a person"
    );
    assert_eq!(healthy_on_blue().next_wake(&policy), None);
}

#[test]
fn messages_say_what_blocks_progress() {
    let policy = policy();
    let (status, _) = run(
        healthy_on_blue(),
        &policy,
        vec![
            (10, applied(2, "b")),
            (
                11,
                not_ready(Green, "b", "readiness probe GET /ready answered 503"),
            ),
        ],
    );
    assert_eq!(
        status.message(&policy),
        "waiting for green (revision 2) to become ready: 0/1 ready: readiness probe GET /ready answered 503"
    );
    assert_eq!(
        paused_on_green().message(&policy),
        "green (revision 2) is ready in preview; waiting for promote"
    );
}

#[test]
fn switches_and_aborts_are_counted() {
    let policy = policy();
    assert_eq!(
        healthy_on_blue().switches,
        0,
        "the first release is not a switch"
    );
    let switched = switched_to_green();
    assert_eq!(switched.switches, 1);
    let (undone, _) = run(
        switched,
        &policy,
        vec![(100, ready(Blue, "a", 2)), (200, applied(3, "a"))],
    );
    assert_eq!(undone.switches, 2, "an instant undo is a switch");
    let (aborted, _) = run(paused_on_green(), &policy, vec![(20, abort())]);
    assert_eq!((aborted.switches, aborted.aborts), (0, 1));
}
