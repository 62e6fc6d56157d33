//! Bad input is refused precisely and disturbs nothing that runs.

use teal_core::Color;
use teal_core::rollout::Phase;

use crate::support::*;

#[test]
fn a_malformed_spec_names_every_problem_and_changes_nothing() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    sandbox.apply_ok("shop.yaml", &DemoSpec::new("shop", "v1").yaml());
    let live = sandbox.wait_for("shop", "v1 live", |r| r.phase == Phase::Healthy);
    let active = live.active_listen.parse().unwrap();

    // Two documents, three problems: an unknown field, a bad address, a bad name.
    let bad = DemoSpec::new("shop", "v2")
        .yaml()
        .replace("  replicas: 2\n", "  replica: 2\n")
        + "---\napiVersion: teal.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: Bad_Name\nspec:\n  template:\n    process:\n      command: [\"x\"]\n  strategy:\n    blueGreen:\n      activeService: {listen: \"nope\"}\n";
    let output = sandbox.apply("shop.yaml", &bad);
    assert_eq!(output.status.code(), Some(64), "invalid input exits 64");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a valid spec"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(
        stderr.contains("shop.yaml:6:"),
        "the unknown field is located: {stderr}"
    );
    assert!(stderr.contains("replica"), "{stderr}");
    assert!(
        stderr.contains("spec.strategy.blueGreen.activeService.listen"),
        "the bad address is named by its path: {stderr}"
    );
    assert!(stderr.contains("metadata.name"), "{stderr}");

    let after = sandbox.get("shop");
    assert_eq!(
        (after.revision, after.phase),
        (1, Phase::Healthy),
        "nothing changed"
    );
    let users = rt.block_on(get_once(active, None));
    assert!(users.body.contains("version v1"), "{users:?}");
}

#[test]
fn an_address_in_use_rejects_the_apply_before_anything_is_stored() {
    let sandbox = Sandbox::start();
    sandbox.apply_ok("a.yaml", &DemoSpec::new("first", "v1").yaml());
    let first = sandbox.wait_for("first", "first live", |r| r.phase == Phase::Healthy);

    let mut second = DemoSpec::new("second", "v1");
    second.active = first.active_listen.clone();
    let output = sandbox.apply("b.yaml", &second.yaml());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rollout second: cannot listen on"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    let list = sandbox.teal_ok(&["list"]);
    assert!(!list.contains("second"), "{list}");
    assert_eq!(sandbox.get("first").active_color, Some(Color::Blue));
}
