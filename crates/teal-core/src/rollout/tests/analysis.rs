//! Analysis in the cycle: (status, events) → (phase, routes, what runs, notes) for
//! pre-promotion analysis (abort before users see it), post-promotion analysis (switch
//! back while the old color is warm), inconclusive runs (a person decides) and the
//! confirm-promotion gate.

use super::*;

fn analysed() -> Policy {
    Policy {
        pre_promotion_analysis: true,
        post_promotion_analysis: true,
        ..policy()
    }
}

fn completed(kind: AnalysisKind, revision: Revision, phase: AnalysisPhase) -> Event {
    Event::AnalysisCompleted {
        kind,
        revision,
        phase,
        message: "metric \"rate\": 1 failed measurement".to_owned(),
    }
}

use AnalysisKind::{PostPromotion, PrePromotion};
use AnalysisPhase::{Error, Failed, Inconclusive, Successful};

/// Revision 2 ("b") ready in preview on green, pre-promotion analysis running.
fn analysing_on_green(policy: &Policy) -> Status {
    run(
        healthy_on_blue(),
        policy,
        vec![(10, applied(2, "b")), (11, ready(Green, "b", 1))],
    )
    .0
}

/// Users switched to green revision 2; post-promotion analysis running, blue warm.
fn post_analysing_on_green() -> Status {
    run(
        analysing_on_green(&analysed()),
        &analysed(),
        vec![
            (20, completed(PrePromotion, 2, Successful)),
            (21, promote(Some(2))),
            (22, ready(Green, "b", 2)),
        ],
    )
    .0
}

#[test]
fn analysis_table() {
    let preview_running = World {
        blue: deployment(1, "a", 2),
        green: deployment(2, "b", 1),
        active: Some(Blue),
        preview: Some(Green),
    };
    let aborted_on_green = World {
        blue: deployment(1, "a", 2),
        green: deployment(2, "b", 1),
        active: Some(Blue),
        preview: None,
    };
    let both_on_green = World {
        blue: deployment(1, "a", 2),
        green: deployment(2, "b", 2),
        active: Some(Green),
        preview: None,
    };
    let rolled_back = World {
        blue: deployment(1, "a", 2),
        green: deployment(2, "b", 1),
        active: Some(Blue),
        preview: None,
    };
    let auto = Policy {
        auto_promotion_enabled: true,
        ..analysed()
    };
    let gated = Policy {
        confirm_promotion: true,
        ..policy()
    };
    let cases = vec![
        Case {
            name: "a ready preview is analysed before anything else",
            start: healthy_on_blue(),
            policy: analysed(),
            events: vec![(10, applied(2, "b")), (11, ready(Green, "b", 1))],
            phase: (Phase::Progressing, None),
            world: preview_running.clone(),
            note: "pre-promotion analysis started",
        },
        Case {
            name: "auto-promotion waits for the analysis",
            start: healthy_on_blue(),
            policy: auto.clone(),
            events: vec![
                (10, applied(2, "b")),
                (11, ready(Green, "b", 1)),
                (5_000, Event::TimePassed),
            ],
            phase: (Phase::Progressing, None),
            world: preview_running.clone(),
            note: "pre-promotion analysis started",
        },
        Case {
            name: "a passed analysis pauses for promotion",
            start: analysing_on_green(&analysed()),
            policy: analysed(),
            events: vec![(20, completed(PrePromotion, 2, Successful))],
            phase: (Phase::Paused, Some("BlueGreenPause")),
            world: preview_running.clone(),
            note: "pre-promotion analysis of revision 2 passed",
        },
        Case {
            name: "a passed analysis promotes automatically",
            start: analysing_on_green(&auto),
            policy: auto.clone(),
            events: vec![(20, completed(PrePromotion, 2, Successful))],
            phase: (Phase::Progressing, None),
            world: World {
                green: deployment(2, "b", 2),
                ..preview_running.clone()
            },
            note: "promoting automatically",
        },
        Case {
            name: "a promote during analysis waits for it, then switches",
            start: analysing_on_green(&analysed()),
            policy: analysed(),
            events: vec![
                (15, promote(Some(2))),
                (20, completed(PrePromotion, 2, Successful)),
                (21, ready(Green, "b", 2)),
            ],
            phase: (Phase::Progressing, None),
            world: both_on_green.clone(),
            note: "switched users from blue (revision 1) to green (revision 2); blue stays warm while post-promotion analysis runs",
        },
        Case {
            name: "a failed pre-promotion analysis aborts: users never leave blue",
            start: analysing_on_green(&analysed()),
            policy: analysed(),
            events: vec![
                (15, promote(Some(2))),
                (20, completed(PrePromotion, 2, Failed)),
            ],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: aborted_on_green.clone(),
            note: "revision 2 aborted: pre-promotion analysis Failed: metric \"rate\"",
        },
        Case {
            name: "an analysis error aborts too",
            start: analysing_on_green(&analysed()),
            policy: analysed(),
            events: vec![(20, completed(PrePromotion, 2, Error))],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: aborted_on_green,
            note: "pre-promotion analysis Error",
        },
        Case {
            name: "an inconclusive analysis pauses for a person, even with auto-promotion",
            start: analysing_on_green(&auto),
            policy: auto.clone(),
            events: vec![
                (20, completed(PrePromotion, 2, Inconclusive)),
                (100_000, Event::TimePassed),
            ],
            phase: (Phase::Paused, Some("AnalysisInconclusive")),
            world: preview_running.clone(),
            note: "revision 2 paused: pre-promotion analysis inconclusive",
        },
        Case {
            name: "a run of an older revision changes nothing",
            start: analysing_on_green(&analysed()),
            policy: analysed(),
            events: vec![(20, completed(PrePromotion, 1, Failed))],
            phase: (Phase::Progressing, None),
            world: preview_running.clone(),
            note: "",
        },
        Case {
            name: "the old color stays warm past the scale-down delay while post-promotion analysis runs",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![(1_000_000, Event::TimePassed)],
            phase: (Phase::Progressing, None),
            world: both_on_green.clone(),
            note: "",
        },
        Case {
            name: "a passed post-promotion analysis starts the scale-down delay",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![(100, completed(PostPromotion, 2, Successful))],
            phase: (Phase::Healthy, None),
            world: both_on_green.clone(),
            note: "post-promotion analysis of revision 2 passed; blue stays warm for 30s",
        },
        Case {
            name: "...and blue stops when it has passed",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![
                (100, completed(PostPromotion, 2, Successful)),
                (30_100, Event::TimePassed),
            ],
            phase: (Phase::Healthy, None),
            world: World {
                blue: None,
                ..both_on_green.clone()
            },
            note: "blue (revision 1) stopped: its scale-down delay passed",
        },
        Case {
            name: "a failed post-promotion analysis switches users back at once",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![(100, completed(PostPromotion, 2, Failed))],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: rolled_back.clone(),
            note: "revision 2 aborted: post-promotion analysis Failed: metric \"rate\": 1 failed measurement; switched users back to blue (revision 1)",
        },
        Case {
            name: "an inconclusive post-promotion analysis holds both colors for a person",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![
                (100, completed(PostPromotion, 2, Inconclusive)),
                (1_000_000, Event::TimePassed),
            ],
            phase: (Phase::Paused, Some("AnalysisInconclusive")),
            world: both_on_green.clone(),
            note: "promote to keep it, abort to switch back",
        },
        Case {
            name: "abort while post-promotion analysis is held switches back",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![
                (100, completed(PostPromotion, 2, Inconclusive)),
                (200, abort()),
            ],
            phase: (Phase::Degraded, Some("RolloutAborted")),
            world: rolled_back,
            note: "switched users back to blue (revision 1)",
        },
        Case {
            name: "promote while post-promotion analysis is held keeps the new revision",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![
                (100, completed(PostPromotion, 2, Inconclusive)),
                (200, promote(None)),
            ],
            phase: (Phase::Healthy, None),
            world: both_on_green.clone(),
            note: "revision 2 accepted by promote",
        },
        Case {
            name: "a new revision during post-promotion analysis ends it",
            start: post_analysing_on_green(),
            policy: analysed(),
            events: vec![(100, applied(3, "c"))],
            phase: (Phase::Progressing, None),
            world: World {
                blue: deployment(3, "c", 1),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: Some(Blue),
            },
            note: "post-promotion analysis of revision 2 stopped by revision 3",
        },
        Case {
            name: "with a confirm-promotion webhook, promote waits for it",
            start: paused_on_green(),
            policy: gated.clone(),
            events: vec![(15, promote(Some(2))), (16, ready(Green, "b", 2))],
            phase: (Phase::Paused, Some("WaitingPromotion")),
            world: preview_running.clone(),
            note: "revision 2 promoted",
        },
        Case {
            name: "the webhook's confirmation promotes",
            start: paused_on_green(),
            policy: gated.clone(),
            events: vec![
                (15, promote(Some(2))),
                (16, Event::PromotionConfirmed { revision: 2 }),
                (17, ready(Green, "b", 2)),
            ],
            phase: (Phase::Healthy, None),
            world: World {
                blue: deployment(1, "a", 2),
                green: deployment(2, "b", 2),
                active: Some(Green),
                preview: None,
            },
            note: "promotion of revision 2 confirmed by webhook",
        },
    ];
    check(cases);
}

#[test]
fn analysis_counts_wakes_and_refusals() {
    // A rollback is a switch and an abort.
    let before = post_analysing_on_green();
    assert_eq!((before.switches, before.aborts), (1, 0));
    let (after, _) = run(
        before.clone(),
        &analysed(),
        vec![(100, completed(PostPromotion, 2, Failed))],
    );
    assert_eq!((after.switches, after.aborts), (2, 1));
    assert_eq!(after.stable.as_ref().map(|s| s.revision), Some(1));
    // Retry of the rolled-back revision starts it in preview again.
    let (retried, _) = run(after, &analysed(), vec![(200, Event::RetryRequested)]);
    assert_eq!(retried.candidate.map(|c| c.stage), Some(Stage::Starting));
    // Nothing to wake for while the old color is kept warm by the analysis.
    assert_eq!(before.next_wake(&analysed()), None);
    // A promote during the webhook wait is refused with the reason.
    let gated = Policy {
        confirm_promotion: true,
        ..policy()
    };
    let (waiting, _) = run(paused_on_green(), &gated, vec![(15, promote(None))]);
    let refusal = waiting.on(promote(None), &gated, 16).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "revision 2 is promoted and waits for the confirm-promotion webhook"
    );
    // The message says what the person can do.
    let (held, _) = run(
        post_analysing_on_green(),
        &analysed(),
        vec![(100, completed(PostPromotion, 2, Inconclusive))],
    );
    let message = held.message(&analysed());
    assert!(
        message.contains("promote to keep it, abort to switch back"),
        "{message}"
    );
    // Statuses stored before analysis existed still load.
    let old: Status = serde_json::from_str(
        r#"{"revision":1,"stable":null,"stable_ready":0,"candidate":null,"retiring":null}"#,
    )
    .unwrap();
    assert_eq!(old.post_analysis, None);
}
