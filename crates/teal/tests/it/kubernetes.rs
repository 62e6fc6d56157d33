//! The `teal` binary against a Kubernetes API server it reaches through a kubeconfig:
//! `teal controller` releases an Argo Rollouts manifest, and `teal --kubeconfig ...`
//! steers it. No cluster exists here: teal-k8s's fake API server (the one its scenarios
//! use) is served over HTTP on loopback, and both programs talk to it as to a cluster.

#[path = "../../../teal-k8s/tests/fake/mod.rs"]
mod fake;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fake::FakeApi;
use serde_json::{Value, json};

use crate::support::{TEAL, eventually, runtime, succeeded};

struct Cluster {
    fake: FakeApi,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(manifest: &str) -> Cluster {
        let runtime = runtime();
        let fake = FakeApi::default();
        fake.load(manifest);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(fake.clone().serve(listener));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\n\
                 users:\n- name: me\n  user:\n    token: not-a-secret\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\n    namespace: default\n\
                 current-context: fake\n"
            ),
        )
        .unwrap();
        Cluster {
            fake,
            kubeconfig,
            _dir: dir,
            _runtime: runtime,
        }
    }

    fn teal(&self, args: &[&str]) -> Output {
        Command::new(TEAL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the teal binary runs")
    }

    fn teal_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.teal(args))
    }

    fn controller(&self) -> Child {
        Command::new(TEAL)
            .args([
                "controller",
                "--identity",
                "it",
                "--lease-namespace",
                "teal-system",
            ])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("TEAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("teal controller starts")
    }

    fn status(&self) -> Value {
        self.fake.get("rollouts", "rollout-bluegreen").unwrap()["status"].clone()
    }

    fn phase(&self) -> Option<String> {
        self.status()["phase"].as_str().map(str::to_owned)
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn teal_controller_and_the_cli_release_an_argo_rollout_through_a_kubeconfig() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../teal-k8s/tests/manifests/argo-bluegreen.yaml"
    ))
    .unwrap();
    let cluster = Cluster::start(&manifest);
    let _controller = Killed(cluster.controller());
    let wait = Duration::from_secs(30);

    eventually(wait, "the first ReplicaSet", || {
        (cluster.fake.all("replicasets").len() == 1).then_some(())
    });
    cluster.fake.make_pods_available();
    eventually(wait, "Healthy", || {
        (cluster.phase().as_deref() == Some("Healthy")).then_some(())
    });
    let text = cluster.teal_ok(&["get", "rollout-bluegreen"]);
    assert!(text.contains("Phase:     Healthy"), "{text}");
    assert!(text.contains("argoproj.io/v1alpha1"), "{text}");

    // A new version: previewed, paused for a promote.
    let mut template =
        cluster.fake.get("rollouts", "rollout-bluegreen").unwrap()["spec"]["template"].clone();
    template["spec"]["containers"][0]["image"] = json!("argoproj/rollouts-demo:green");
    cluster.fake.edit(
        "rollouts",
        "rollout-bluegreen",
        json!({"spec": {"template": template}}),
    );
    eventually(wait, "the second ReplicaSet", || {
        (cluster.fake.all("replicasets").len() == 2).then_some(())
    });
    cluster.fake.make_pods_available();
    eventually(wait, "Paused", || {
        (cluster.phase().as_deref() == Some("Paused")).then_some(())
    });

    let stale = cluster.teal(&["promote", "rollout-bluegreen", "--revision", "1"]);
    assert!(!stale.status.success());
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        stderr.contains("stale promote: revision 1 is not in preview (revision 2 is)"),
        "{stderr}"
    );

    cluster.teal_ok(&[
        "promote",
        "rollout-bluegreen",
        "--revision",
        "2",
        "--wait",
        "--timeout",
        "30s",
    ]);
    let status = cluster.status();
    assert_eq!(status["phase"], "Healthy");
    assert_eq!(
        status["blueGreen"]["activeSelector"],
        status["currentPodHash"]
    );

    let listed: Value = serde_json::from_str(&cluster.teal_ok(&["list", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["name"], "rollout-bluegreen");
    assert_eq!(listed[0]["revision"], 2);

    // A command the cluster does not have is refused before any request.
    let history = cluster.teal(&["history", "rollout-bluegreen"]);
    assert!(!history.status.success());
    assert!(String::from_utf8_lossy(&history.stderr).contains("--kubeconfig works with"));
}
