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
    rollout: String,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(rollout: &str, manifest: &str) -> Cluster {
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
            rollout: rollout.to_owned(),
            _dir: dir,
            runtime,
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
        self.fake.get("rollouts", &self.rollout).unwrap()["status"].clone()
    }

    /// Waits until the rollout's phase is `phase`.
    fn wait_phase(&self, phase: &str) {
        eventually(Duration::from_secs(30), phase, || {
            (self.phase().as_deref() == Some(phase)).then_some(())
        });
    }

    /// A new image in the rollout's template: a new revision.
    fn set_image(&self, image: &str) {
        let mut template =
            self.fake.get("rollouts", &self.rollout).unwrap()["spec"]["template"].clone();
        template["spec"]["containers"][0]["image"] = json!(image);
        self.fake.edit(
            "rollouts",
            &self.rollout,
            json!({"spec": {"template": template}}),
        );
    }

    /// Waits for `count` ReplicaSets, then makes every pod available (the kubelet's part).
    fn pods_come_up(&self, count: usize) {
        eventually(Duration::from_secs(30), "the ReplicaSets", || {
            (self.fake.all("replicasets").len() == count).then_some(())
        });
        self.fake.make_pods_available();
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
    let cluster = Cluster::start("rollout-bluegreen", &manifest);
    let _controller = Killed(cluster.controller());

    cluster.pods_come_up(1);
    cluster.wait_phase("Healthy");
    let text = cluster.teal_ok(&["get", "rollout-bluegreen"]);
    assert!(text.contains("Phase:     Healthy"), "{text}");
    assert!(text.contains("argoproj.io/v1alpha1"), "{text}");

    // A new version: previewed, paused for a promote.
    cluster.set_image("argoproj/rollouts-demo:green");
    cluster.pods_come_up(2);
    cluster.wait_phase("Paused");

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

#[test]
fn teal_gateway_follows_the_controller_and_moves_open_connections_at_the_next_request() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../teal-k8s/tests/manifests/teal-gateway.yaml"
    ))
    .unwrap();
    let cluster = Cluster::start("shop", &manifest);
    let _controller = Killed(cluster.controller());
    cluster.pods_come_up(1);
    cluster.wait_phase("Healthy");
    let blue = cluster.runtime.block_on(fake::pod("blue"));
    cluster.fake.add_endpoint_slice("shop-blue", blue);

    // `teal get --watch` follows the cluster too.
    let mut watch = Command::new(TEAL)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["get", "shop", "--watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watched = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let watched = watched.clone();
        let mut stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut chunk) {
                if n == 0 {
                    break;
                }
                watched
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
    }
    let listen = crate::support::free_address();
    let _gateway = Killed(
        Command::new(TEAL)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["gateway", "shop", "--listen", &listen.to_string()])
            .env("TEAL_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let answer = |connection: &mut crate::support::Connection, cookie: Option<&str>| {
        cluster
            .runtime
            .block_on(connection.get("/", cookie))
            .map(|a| a.body)
            .unwrap_or_else(|error| error)
    };
    let mut user = eventually(Duration::from_secs(30), "the gateway listens", || {
        cluster
            .runtime
            .block_on(crate::support::Connection::open(listen))
            .ok()
    });
    let mut tester = cluster
        .runtime
        .block_on(crate::support::Connection::open(listen))
        .unwrap();
    eventually(Duration::from_secs(30), "blue through the gateway", || {
        (answer(&mut user, None) == "blue").then_some(())
    });

    cluster.set_image("shop:2");
    cluster.pods_come_up(2);
    cluster.wait_phase("Paused");
    let green = cluster.runtime.block_on(fake::pod("green"));
    cluster.fake.add_endpoint_slice("shop-green", green);
    eventually(
        Duration::from_secs(30),
        "testers reach green by cookie",
        || (answer(&mut tester, Some("test=true")) == "green").then_some(()),
    );
    assert_eq!(answer(&mut user, None), "blue", "users stay on blue");

    cluster.teal_ok(&["promote", "shop", "--wait", "--timeout", "30s"]);
    eventually(
        Duration::from_secs(30),
        "users on green, same connection",
        || (answer(&mut user, None) == "green").then_some(()),
    );

    // The watch redrew as the cluster changed: revision 1 first, then revision 2 live.
    eventually(
        Duration::from_secs(10),
        "get --watch shows revision 2 live",
        || {
            let frames = watched.lock().unwrap().clone();
            let last = frames.rsplit("---").nth(1).unwrap_or_default().to_owned();
            (frames.contains("Revision:  1")
                && last.contains("Revision:  2")
                && last.contains("Phase:     Healthy"))
            .then_some(())
        },
    );
    let _ = watch.kill();
    let _ = watch.wait();
}
