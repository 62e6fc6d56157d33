//! A fresh sandbox per test: a temp dir, the daemon as a child process that `Drop`
//! stops, the CLI, and HTTP clients that keep their connections alive.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use teal_core::api::RolloutView;
use tokio::net::TcpStream;

pub const TEAL: &str = env!("CARGO_BIN_EXE_teal");

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback address that was free a moment ago (for tests that restart the daemon
/// and need the same address twice).
pub fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The stdout of `teal args` that must have succeeded; panics with its output if not.
pub fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "teal {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// More arguments for every `teal server` of this sandbox.
    server_args: Vec<String>,
}

impl Sandbox {
    /// Starts `teal server` in a fresh directory with its API on port 0.
    pub fn start() -> Sandbox {
        Sandbox::start_with(&[])
    }

    /// Like [`Sandbox::start`], with more arguments for `teal server`.
    pub fn start_with(server_args: &[&str]) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("teal-it-")
            .tempdir()
            .unwrap();
        let mut sandbox = Sandbox {
            dir,
            daemon: None,
            server_args: server_args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        sandbox.start_daemon();
        sandbox
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn start_daemon(&mut self) {
        let _ = std::fs::remove_file(self.data_dir().join("api.addr"));
        self.daemon = Some(self.spawn_daemon());
        eventually(
            Duration::from_secs(20),
            "the daemon writes its API address",
            || self.data_dir().join("api.addr").exists().then_some(()),
        );
    }

    /// `teal server --api 127.0.0.1:0` on this data directory, logging to a file of
    /// its own.
    fn spawn_daemon(&self) -> Child {
        let log = std::fs::File::create(self.data_dir().join(format!("daemon-{}.log", now_ms())))
            .unwrap();
        Command::new(TEAL)
            .args(["server", "--api", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .args(&self.server_args)
            .env("TEAL_LOG", "info")
            .env_remove("TEAL_PROXY_THREADS")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the teal binary starts")
    }

    /// Starts a second `teal server` on this data directory while the first runs, so
    /// that it takes over; returns the first, which is expected to exit by itself.
    pub fn start_successor(&mut self) -> Child {
        let old = self.daemon.take().expect("a daemon runs");
        self.daemon = Some(self.spawn_daemon());
        old
    }

    /// Starts a second `teal server` on this data directory that is expected to give
    /// up its takeover: waits for it to exit and returns its status, the first daemon
    /// staying in charge.
    pub fn failed_successor(&self) -> std::process::ExitStatus {
        let mut successor = self.spawn_daemon();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = successor.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = successor.kill();
                panic!("the successor neither served nor gave up within 60s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("a daemon runs").id()
    }

    /// kill -9: no shutdown code runs.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Runs the CLI against this sandbox's daemon.
    pub fn teal(&self, args: &[&str]) -> Output {
        Command::new(TEAL)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the teal binary runs")
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn teal_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.teal(args))
    }

    /// Starts the CLI against this sandbox's daemon with stdout and stderr piped, for
    /// commands that keep running (`get --watch`).
    pub fn teal_spawn(&self, args: &[&str]) -> Child {
        Command::new(TEAL)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the teal binary starts")
    }

    /// Writes a spec file into the sandbox; returns its path.
    pub fn write_spec(&self, file: &str, yaml: &str) -> String {
        let path = self.data_dir().join(file);
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Writes a spec file into the sandbox and applies it.
    pub fn apply(&self, file: &str, yaml: &str) -> Output {
        let path = self.data_dir().join(file);
        std::fs::write(&path, yaml).unwrap();
        self.teal(&["apply", "-f", path.to_str().unwrap()])
    }

    pub fn apply_ok(&self, file: &str, yaml: &str) -> String {
        let output = self.apply(file, yaml);
        assert!(
            output.status.success(),
            "apply failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Applies `spec` and waits until users are on it; returns its active address.
    pub fn go_live(&self, spec: &DemoSpec) -> SocketAddr {
        self.apply_ok(&format!("{}.yaml", spec.name), &spec.yaml());
        let live = self.wait_for(spec.name, "the first revision live", |r| {
            r.phase == teal_core::rollout::Phase::Healthy
        });
        live.active_listen.parse().unwrap()
    }

    pub fn get(&self, name: &str) -> RolloutView {
        serde_json::from_str(&self.teal_ok(&["get", name, "-o", "json"])).unwrap()
    }

    /// Waits until the rollout satisfies `done`; the panic shows its last state.
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&RolloutView) -> bool,
    ) -> RolloutView {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.teal(&["get", name, "-o", "json"]);
            if output.status.success() {
                let rollout: RolloutView = serde_json::from_slice(&output.stdout).unwrap();
                if done(&rollout) {
                    return rollout;
                }
                last = Some(rollout);
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last state: {last:#?}\ndaemon log:\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn daemon_log(&self) -> String {
        self.daemon_logs()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// The log of the daemon started last.
    pub fn newest_daemon_log(&self) -> String {
        let newest = self.daemon_logs().pop().expect("a daemon log");
        std::fs::read_to_string(newest).unwrap()
    }

    /// Every daemon's log file, oldest first.
    fn daemon_logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.data_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("daemon-")
            })
            .collect();
        logs.sort();
        logs
    }

    /// Every instance process recorded by the platform (to clean up after a kill -9).
    fn recorded_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join("run/instances")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter_map(|record| record.get("pid")?.as_i64())
            .map(|pid| pid as i32)
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM: the daemon stops its instances; give it a moment.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.recorded_pids() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Options for a demo-app rollout spec.
pub struct DemoSpec {
    pub name: &'static str,
    pub version: &'static str,
    pub replicas: u32,
    pub active: String,
    pub preview: String,
    pub auto_promotion: bool,
    pub extra_env: Vec<(&'static str, &'static str)>,
    pub scale_down_delay: u32,
    pub progress_deadline: u32,
    /// More `blueGreen` fields, each line indented by six spaces.
    pub strategy_extra: String,
    /// More documents (AnalysisTemplates), appended after `---`.
    pub documents: String,
}

impl DemoSpec {
    pub fn new(name: &'static str, version: &'static str) -> DemoSpec {
        DemoSpec {
            name,
            version,
            replicas: 2,
            active: "127.0.0.1:0".to_owned(),
            preview: "127.0.0.1:0".to_owned(),
            auto_promotion: false,
            extra_env: Vec::new(),
            scale_down_delay: 30,
            progress_deadline: 600,
            strategy_extra: String::new(),
            documents: String::new(),
        }
    }

    pub fn yaml(&self) -> String {
        let env: String = self
            .extra_env
            .iter()
            .map(|(k, v)| format!("        - {{name: {k}, value: \"{v}\"}}\n"))
            .collect();
        format!(
            r#"apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: {name}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
  template:
    process:
      command: ["{TEAL}", "demo-app", "--port", "$(PORT)"]
      env:
        - {{name: DEMO_VERSION, value: "{version}"}}
{env}    readinessProbe:
      httpGet: {{path: /ready}}
      periodSeconds: 1
      failureThreshold: 2
    terminationGracePeriodSeconds: 5
  strategy:
    blueGreen:
      activeService: {{listen: "{active}"}}
      previewService: {{listen: "{preview}"}}
      previewMatch: {{cookie: {{name: test, value: "true"}}}}
      autoPromotionEnabled: {auto}
      scaleDownDelaySeconds: {delay}
{extra}{documents}"#,
            name = self.name,
            replicas = self.replicas,
            deadline = self.progress_deadline,
            version = self.version,
            active = self.active,
            preview = self.preview,
            auto = self.auto_promotion,
            delay = self.scale_down_delay,
            extra = self.strategy_extra,
            documents = if self.documents.is_empty() {
                String::new()
            } else {
                format!("---\n{}", self.documents)
            },
        )
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub color: Option<String>,
    pub body: String,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Connection { sender })
    }

    pub async fn get(&mut self, path: &str, cookie: Option<&str>) -> Result<Answer, String> {
        let mut request = hyper::Request::get(path).header("host", "teal.test");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let color = response
            .headers()
            .get("x-teal-color")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            color,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The daemon's API address.
pub fn api_address(sandbox: &Sandbox) -> SocketAddr {
    std::fs::read_to_string(sandbox.data_dir().join("api.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One request on a fresh connection.
pub async fn get_once(address: SocketAddr, cookie: Option<&str>) -> Answer {
    let mut connection = Connection::open(address).await.expect("connects");
    connection.get("/", cookie).await.expect("answers")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}
