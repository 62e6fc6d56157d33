//! One instance's life: start its process, probe it, restart it, stop it.
//!
//! Each instance has one task ([`supervise`]) that owns its process. The platform
//! talks to it through the [`Instance`] it shares with the task: a status it reads and
//! a stop flag it sets.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use teal_core::spec::{Probe, Template};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::probe::{self, describe_io};
use crate::record::{self, Record};
use crate::types::{GroupKey, GroupSpec, InstanceStatus};
use crate::{logs, ports, procfs};

/// First restart delay; it doubles with each crash in a row.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The restart delay never grows beyond this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that stayed up this long is no longer crash-looping: the delay resets.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// How often we look at an adopted process, which we cannot wait for.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// How long we wait for a SIGKILLed process to disappear before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Probe periods below this would spin.
const MIN_PROBE_PERIOD: Duration = Duration::from_millis(10);

/// What the platform and every instance task share.
pub(crate) struct Shared {
    /// The platform's run directory.
    pub run_dir: PathBuf,
    changed: watch::Sender<u64>,
    /// Ids of instances that exist, stopping ones included, so a new instance never
    /// takes the id (and so the record file) of one that is still going away.
    ids: Mutex<HashSet<String>>,
    /// Ports our instances hold, so two instances never get the same one.
    ports: Mutex<HashSet<u16>>,
}

impl Shared {
    /// Nothing claimed yet.
    pub fn new(run_dir: PathBuf) -> Self {
        Shared {
            run_dir,
            changed: watch::channel(0).0,
            ids: Mutex::default(),
            ports: Mutex::default(),
        }
    }

    /// Tells `changed()` subscribers that readiness or the set of instances changed.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of the change counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The smallest ordinal `n >= 1` whose id `<prefix>-<n>` is unused, claimed.
    pub fn claim_new_id(&self, prefix: &str) -> (String, u32) {
        let mut ids = lock(&self.ids);
        let mut ordinal = 1;
        loop {
            let id = format!("{prefix}-{ordinal}");
            if ids.insert(id.clone()) {
                return (id, ordinal);
            }
            ordinal += 1;
        }
    }

    /// Claims the id of an adopted instance (record file names keep those unique).
    pub fn claim_id(&self, id: &str) {
        lock(&self.ids).insert(id.to_owned());
    }

    /// A free port none of our instances holds, claimed.
    pub fn claim_new_port(&self) -> io::Result<u16> {
        let mut held = lock(&self.ports);
        // The kernel rarely hands out a port we just let go of; a few tries suffice.
        for _ in 0..20 {
            let port = ports::pick()?;
            if held.insert(port) {
                return Ok(port);
            }
        }
        Err(io::Error::other("the kernel keeps offering ports we hold"))
    }

    /// Claims the port of an adopted instance.
    pub fn claim_port(&self, port: u16) {
        lock(&self.ports).insert(port);
    }

    fn release_port(&self, port: u16) {
        lock(&self.ports).remove(&port);
    }

    fn release_id(&self, id: &str) {
        lock(&self.ids).remove(id);
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One instance, as the platform and its task see it.
pub(crate) struct Instance {
    /// E.g. `shop-green-r2-1`.
    pub id: String,
    /// The `n` in the id.
    pub ordinal: u32,
    /// Its group.
    pub key: GroupKey,
    log_path: PathBuf,
    state: Mutex<State>,
    /// Set once to ask the task to stop the process and end.
    stop: watch::Sender<bool>,
}

struct State {
    /// The group's spec (revision and replicas follow relabel and scale).
    spec: GroupSpec,
    port: u16,
    pid: Option<u32>,
    /// `/proc/<pid>/stat` start time of `pid`.
    start_time: u64,
    ready: bool,
    started_at_ms: u64,
    restarts: u32,
    problem: Option<String>,
    adopted: bool,
    stopping: bool,
    /// The task has ended and removed the record; nothing may write it again.
    finished: bool,
}

impl Instance {
    /// A new instance that has not started yet (its task will start it).
    pub fn new(
        shared: &Shared,
        key: GroupKey,
        spec: GroupSpec,
        id: String,
        ordinal: u32,
        port: u16,
    ) -> Arc<Self> {
        Arc::new(Instance {
            log_path: logs::path(&shared.run_dir, &key.rollout, &id),
            id,
            ordinal,
            key,
            state: Mutex::new(State {
                spec,
                port,
                pid: None,
                start_time: 0,
                ready: false,
                started_at_ms: now_ms(),
                restarts: 0,
                problem: None,
                adopted: false,
                stopping: false,
                finished: false,
            }),
            stop: watch::channel(false).0,
        })
    }

    /// An instance whose process an earlier daemon started, as its record describes it;
    /// `ready` when it was handed over ready. The readiness in its record is used once,
    /// and cleared at once.
    pub fn adopted(shared: &Shared, record: &Record, ready: bool) -> Arc<Self> {
        let instance = Arc::new(Instance {
            id: record.id.clone(),
            ordinal: record.ordinal,
            key: record.key.clone(),
            log_path: logs::path(&shared.run_dir, &record.key.rollout, &record.id),
            state: Mutex::new(State {
                spec: record.spec.clone(),
                port: record.port,
                pid: Some(record.pid),
                start_time: record.start_time,
                ready: ready && !record.stopping,
                started_at_ms: record.started_at_ms,
                restarts: record.restarts,
                problem: None,
                adopted: true,
                stopping: record.stopping,
                finished: false,
            }),
            stop: watch::channel(record.stopping).0,
        });
        if record.ready {
            let state = lock(&instance.state);
            instance.save(shared, &state);
        }
        instance
    }

    /// What it looks like now.
    pub fn status(&self) -> InstanceStatus {
        let state = lock(&self.state);
        InstanceStatus {
            id: self.id.clone(),
            pid: state.pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, state.port)),
            ready: state.ready,
            started_at_ms: state.started_at_ms,
            restarts: state.restarts,
            problem: state.problem.clone(),
            adopted: state.adopted,
        }
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The revision it is labelled with now.
    pub fn revision(&self) -> u64 {
        lock(&self.state).spec.revision
    }

    /// Changes the spec it reports and records (relabel, scale); the process stays.
    pub fn update_spec(&self, shared: &Shared, change: impl FnOnce(&mut GroupSpec)) {
        let mut state = lock(&self.state);
        change(&mut state.spec);
        self.save(shared, &state);
    }

    /// Asks its task to stop the process (SIGTERM, then SIGKILL after the grace period)
    /// and end. The record says so at once, so that a daemon that dies meanwhile has its
    /// successor finish the stop instead of adopting the instance.
    pub fn request_stop(&self, shared: &Shared) {
        {
            let mut state = lock(&self.state);
            state.stopping = true;
            state.ready = false;
            self.save(shared, &state);
        }
        self.stop.send_replace(true);
    }

    /// Writes its record, when it has a process to record. The readiness in it is
    /// cleared: only a handover says an instance is ready (see [`Record::ready`]).
    fn save(&self, shared: &Shared, state: &State) {
        self.write_record(shared, state, false);
    }

    fn write_record(&self, shared: &Shared, state: &State, ready: bool) {
        let Some(pid) = state.pid else { return };
        if state.finished {
            return;
        }
        let record = Record {
            id: self.id.clone(),
            ordinal: self.ordinal,
            key: self.key.clone(),
            spec: state.spec.clone(),
            pid,
            start_time: state.start_time,
            port: state.port,
            started_at_ms: state.started_at_ms,
            restarts: state.restarts,
            stopping: state.stopping,
            ready,
        };
        if let Err(error) = record::write(&shared.run_dir, &record) {
            tracing::warn!(instance = %self.id, %error, "cannot write instance record; a restarted daemon will not adopt it");
        }
    }

    fn template_and_port(&self) -> (Template, u16) {
        let state = lock(&self.state);
        (state.spec.template.clone(), state.port)
    }

    fn set_problem(&self, problem: String) {
        lock(&self.state).problem = Some(problem);
    }

    /// A readiness check passed often enough; true when that made it ready.
    fn mark_ready(&self) -> bool {
        let mut state = lock(&self.state);
        state.problem = None;
        let flipped = !state.ready && !state.stopping;
        state.ready |= flipped;
        flipped
    }

    /// A readiness check failed; true when that made it unready.
    fn probe_failed(&self, why: String, enough_to_unready: bool) -> bool {
        let mut state = lock(&self.state);
        state.problem = Some(why);
        let flipped = state.ready && enough_to_unready;
        if flipped {
            state.ready = false;
        }
        flipped
    }

    /// Writes its record with the readiness its probes last saw, for the daemon about
    /// to adopt it. Only once nothing supervises it any more.
    pub fn record_for_handover(&self, shared: &Shared) {
        let state = lock(&self.state);
        self.write_record(shared, &state, state.ready);
    }

    /// Its process ended and it will be restarted.
    fn exited(&self, why: String) {
        let mut state = lock(&self.state);
        state.ready = false;
        state.pid = None;
        state.adopted = false;
        state.restarts = state.restarts.saturating_add(1);
        state.problem = Some(why);
    }

    /// The task is ending: the record goes, and the id and port are free again.
    fn finish(&self, shared: &Shared) {
        let port = {
            let mut state = lock(&self.state);
            state.finished = true;
            state.ready = false;
            state.pid = None;
            record::remove(&shared.run_dir, &self.id);
            state.port
        };
        shared.release_port(port);
        shared.release_id(&self.id);
    }
}

/// The instance's current process.
enum Running {
    /// We started it and will reap it.
    Child(tokio::process::Child, u32),
    /// An earlier daemon started it; we can only watch `/proc`.
    Adopted { pid: u32, start_time: u64 },
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Child(_, pid) | Running::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits until the process has exited (reaping it when it is our child). Its exit
    /// status only when it was ours. Cancel-safe.
    async fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Running::Child(child, _) => child.wait().await.ok(),
            Running::Adopted { pid, start_time } => {
                while procfs::is_running(*pid, *start_time) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                None
            }
        }
    }

    /// Sends `signal` to the process's whole group (it leads its own group).
    fn signal_group(&self, signal: Signal) {
        let Ok(pgid) = i32::try_from(self.pid()) else {
            return;
        };
        match killpg(Pid::from_raw(pgid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => tracing::warn!(pgid, %error, ?signal, "cannot signal process group"),
        }
    }
}

/// Why a running process stopped running.
enum Outcome {
    Exited(String),
    Unhealthy(String),
    Stop,
}

/// The instance's task: runs (or adopts, with `adopt = (pid, start time)`) its
/// process, probes it, restarts it when it dies, and stops it when asked. Ends once
/// the instance is stopped, after removing its record.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    instance: Arc<Instance>,
    adopt: Option<(u32, u64)>,
) {
    let mut stop = instance.stop.subscribe();
    let mut current = adopt.map(|(pid, start_time)| Running::Adopted { pid, start_time });
    let mut crashes_in_a_row: u32 = 0;
    loop {
        if *stop.borrow() {
            if let Some(running) = current.take() {
                terminate(&instance, running).await;
            }
            break;
        }
        let mut running = match current.take() {
            Some(running) => running,
            None => match spawn(&shared, &instance) {
                Ok(running) => {
                    shared.bump();
                    running
                }
                Err(reason) => {
                    let delay = backoff(crashes_in_a_row);
                    crashes_in_a_row = crashes_in_a_row.saturating_add(1);
                    let problem = format!("{reason}; retrying in {}s", delay.as_secs());
                    logs::append_line(instance.log_path(), &format!("[teal] {problem}"));
                    instance.set_problem(problem);
                    shared.bump();
                    wait_or_stop(&mut stop, delay).await;
                    continue;
                }
            },
        };

        let adopted = matches!(running, Running::Adopted { .. });
        let (template, port) = instance.template_and_port();
        let up_since = Instant::now();
        let outcome = tokio::select! {
            status = running.wait() => Outcome::Exited(describe_exit(status)),
            reason = liveness(&template, port, adopted) => Outcome::Unhealthy(reason),
            never = readiness(&shared, &instance, &template, port, adopted) => match never {},
            _ = stop.wait_for(|stop| *stop) => Outcome::Stop,
        };
        let what = match outcome {
            Outcome::Stop => {
                terminate(&instance, running).await;
                break;
            }
            Outcome::Exited(what) => {
                // Children it left behind would hold its port or keep working unseen.
                running.signal_group(Signal::SIGKILL);
                what
            }
            Outcome::Unhealthy(reason) => {
                running.signal_group(Signal::SIGKILL);
                let _ = tokio::time::timeout(KILL_WAIT, running.wait()).await;
                reason
            }
        };
        if up_since.elapsed() >= BACKOFF_RESET_AFTER {
            crashes_in_a_row = 0;
        }
        let delay = backoff(crashes_in_a_row);
        crashes_in_a_row = crashes_in_a_row.saturating_add(1);
        let problem = format!("{what}; restarting in {}s", delay.as_secs());
        tracing::info!(instance = %instance.id, "{problem}");
        logs::append_line(instance.log_path(), &format!("[teal] {problem}"));
        instance.exited(problem);
        shared.bump();
        wait_or_stop(&mut stop, delay).await;
    }
    instance.finish(&shared);
    shared.bump();
}

/// SIGTERM to the process group; SIGKILL once the grace period is over. Whatever is
/// left of the group when the main process has exited is killed too, so nothing of
/// the instance outlives its stop.
async fn terminate(instance: &Instance, mut running: Running) {
    let grace = lock(&instance.state).spec.template.termination_grace_period;
    running.signal_group(Signal::SIGTERM);
    let exited = tokio::time::timeout(grace, running.wait()).await.is_ok();
    if !exited {
        tracing::info!(instance = %instance.id, ?grace, "still running after SIGTERM; sending SIGKILL");
    }
    running.signal_group(Signal::SIGKILL);
    if !exited
        && tokio::time::timeout(KILL_WAIT, running.wait())
            .await
            .is_err()
    {
        tracing::warn!(instance = %instance.id, pid = running.pid(), "did not exit after SIGKILL");
    }
    // SIGKILL is acted on when each process next runs: the rest of the group (a
    // shell's children, say) may still hold the port for a moment. The stop is over
    // when they are gone too.
    let pgid = running.pid();
    let gone = tokio::time::timeout(KILL_WAIT, async {
        while procfs::group_alive(pgid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if gone.is_err() {
        tracing::warn!(instance = %instance.id, pgid, "processes of its group still run after SIGKILL");
    }
}

/// Starts the instance's process, its output going straight to its log file.
fn spawn(shared: &Shared, instance: &Instance) -> Result<Running, String> {
    let (spec, old_port) = {
        let state = lock(&instance.state);
        (state.spec.clone(), state.port)
    };
    // A restart keeps its port when nobody took it meanwhile. (0: none was found
    // when the instance was made.)
    let port = if old_port != 0 && ports::is_free(old_port) {
        old_port
    } else {
        let port = shared
            .claim_new_port()
            .map_err(|e| format!("cannot find a free port: {}", describe_io(&e)))?;
        shared.release_port(old_port);
        lock(&instance.state).port = port;
        port
    };

    let process = &spec.template.process;
    let port_text = port.to_string();
    let mut words = process
        .command
        .iter()
        .chain(&process.args)
        .map(|word| word.replace("$(PORT)", &port_text));
    let program = words.next().ok_or("the command is empty")?;
    let mut command = tokio::process::Command::new(&program);
    command.args(words);
    for var in &process.env {
        command.env(&var.name, &var.value);
    }
    // Set after the spec's env so these always hold.
    command
        .env("PORT", &port_text)
        .env("TEAL_ROLLOUT", &instance.key.rollout)
        .env("TEAL_COLOR", instance.key.color.as_str())
        .env("TEAL_REVISION", spec.revision.to_string())
        .env("TEAL_INSTANCE", &instance.id);
    if let Some(dir) = &process.working_dir {
        if !dir.is_dir() {
            return Err(format!(
                "cannot start {program:?}: working directory {} does not exist",
                dir.display()
            ));
        }
        command.current_dir(dir);
    }

    let log_error = |e: io::Error| {
        format!(
            "cannot open log file {}: {}",
            instance.log_path().display(),
            describe_io(&e)
        )
    };
    let mut stdout = logs::open_append(instance.log_path()).map_err(log_error)?;
    let _ = writeln!(stdout, "[teal] starting {program:?} on port {port}");
    let stderr = stdout.try_clone().map_err(log_error)?;
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: signals reach its whole tree through killpg, and a
        // Ctrl-C on the daemon's terminal (sent to the daemon's group) does not.
        .process_group(0)
        // It must outlive the daemon, so never kill it when the handle is dropped.
        .kill_on_drop(false);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {}", describe_io(&e)))?;
    let pid = child.id().ok_or("the process vanished as it started")?;
    // Not yet reaped, so its /proc entry exists even if it already exited.
    let start_time = procfs::stat(pid).map_or(0, |stat| stat.start_time);

    let mut state = lock(&instance.state);
    state.pid = Some(pid);
    state.start_time = start_time;
    state.started_at_ms = now_ms();
    state.adopted = false;
    instance.save(shared, &state);
    tracing::info!(instance = %instance.id, pid, port, "started");
    Ok(Running::Child(child, pid))
}

/// Checks readiness forever, keeping `ready` and `problem` current. Without a
/// readinessProbe, the port accepting a TCP connection is enough.
async fn readiness(
    shared: &Shared,
    instance: &Instance,
    template: &Template,
    port: u16,
    adopted: bool,
) -> Infallible {
    let (probe, label) = match &template.readiness_probe {
        Some(probe) => (
            probe.clone(),
            probe::label("readiness", &probe.action, port),
        ),
        None => (
            probe::default_readiness(),
            format!("TCP check of port {port}"),
        ),
    };
    let mut ticks = start_probing(&probe, adopted).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        ticks.tick().await;
        match probe::check(&probe, &label, port).await {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if passes >= probe.success_threshold && instance.mark_ready() {
                    tracing::info!(instance = %instance.id, "ready");
                    shared.bump();
                }
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if instance.probe_failed(why, failures >= probe.failure_threshold) {
                    tracing::info!(instance = %instance.id, "not ready");
                    shared.bump();
                }
            }
        }
    }
}

/// Returns (a reason) once the livenessProbe failed `failureThreshold` times in a
/// row; never without a livenessProbe.
async fn liveness(template: &Template, port: u16, adopted: bool) -> String {
    let Some(probe) = &template.liveness_probe else {
        return std::future::pending().await;
    };
    let label = probe::label("liveness", &probe.action, port);
    let mut ticks = start_probing(probe, adopted).await;
    let mut failures = 0u32;
    loop {
        ticks.tick().await;
        match probe::check(probe, &label, port).await {
            Ok(()) => failures = 0,
            Err(why) => {
                failures = failures.saturating_add(1);
                if failures >= probe.failure_threshold {
                    return format!("{why} ({failures} times in a row)");
                }
            }
        }
    }
}

/// Waits the probe's initial delay (not for an adopted process, which has been up for
/// a while) and returns the ticker of its period.
async fn start_probing(probe: &Probe, adopted: bool) -> tokio::time::Interval {
    if !adopted {
        tokio::time::sleep(probe.initial_delay).await;
    }
    let mut ticks = tokio::time::interval(probe.period.max(MIN_PROBE_PERIOD));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// Sleeps `delay`, or less if a stop is requested meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) {
    let _ = tokio::time::timeout(delay, stop.wait_for(|stop| *stop)).await;
}

/// The delay before restart number `crashes_in_a_row + 1`: 1 s, 2 s, 4 s, ... 30 s.
fn backoff(crashes_in_a_row: u32) -> Duration {
    (BACKOFF_START * 2u32.saturating_pow(crashes_in_a_row.min(16))).min(BACKOFF_MAX)
}

/// "exited with status 3", "was killed by signal SIGSEGV", or, for an adopted process
/// whose status only its real parent saw, "exited".
fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "exited".to_owned();
    };
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("was killed by signal {}", signal.as_str()),
            Err(_) => format!("was killed by signal {number}"),
        },
        None => format!("exited ({status})"),
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn describes_exits() {
        assert_eq!(
            describe_exit(Some(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(Some(ExitStatus::from_raw(9))),
            "was killed by signal SIGKILL"
        );
        assert_eq!(describe_exit(None), "exited");
    }
}
