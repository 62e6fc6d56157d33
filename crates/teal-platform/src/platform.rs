//! [`LocalPlatform`]: groups of local processes, one group per rollout color.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use teal_core::Color;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::PlatformError;
use crate::logs::{self, LOG_SIZE_CAP, ROTATE_CHECK_INTERVAL};
use crate::procfs;
use crate::record::{self, Record};
use crate::supervisor::{Instance, Shared, lock, supervise};
use crate::types::{GroupKey, GroupSpec, GroupStatus, LogFile};

/// Runs rollouts' instances as local processes: picks their ports, probes them,
/// restarts them, stops them, keeps their logs, and adopts them again after a daemon
/// crash. Every method returns quickly; the work happens in one task per instance.
pub struct LocalPlatform {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

struct State {
    groups: BTreeMap<GroupKey, Group>,
    /// Tasks of instances being stopped, so `shutdown_all` can wait for them.
    stopping: Vec<JoinHandle<()>>,
    /// `shutdown_all` ran: start nothing new.
    shut_down: bool,
    /// `suspend` ran: nothing is supervised and nothing changes; `observe` answers
    /// with the groups as they were then.
    suspended: Option<Vec<(GroupKey, GroupStatus)>>,
}

struct Group {
    spec: GroupSpec,
    /// Oldest first; scaling down removes from the end.
    members: Vec<Member>,
}

struct Member {
    instance: Arc<Instance>,
    task: JoinHandle<()>,
}

impl LocalPlatform {
    /// Opens the platform on `run_dir` (created if needed), adopting the instances its
    /// records describe whose processes still run and forgetting the others. Groups
    /// that lost instances while no daemon watched them get replacements. Must be
    /// called inside a tokio runtime, and only one platform may use a `run_dir` at a
    /// time (the daemon's own lock guarantees that).
    pub fn open(run_dir: PathBuf) -> Result<Arc<LocalPlatform>, PlatformError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PlatformError::NoRuntime);
        }
        for dir in [record::dir(&run_dir), logs::root(&run_dir)] {
            std::fs::create_dir_all(&dir).map_err(|source| PlatformError::RunDir {
                path: dir.clone(),
                source,
            })?;
        }
        let records = record::read_all(&run_dir).map_err(|source| PlatformError::RunDir {
            path: record::dir(&run_dir),
            source,
        })?;
        let platform = Arc::new(LocalPlatform {
            shared: Arc::new(Shared::new(run_dir)),
            state: Mutex::new(State {
                groups: BTreeMap::new(),
                stopping: Vec::new(),
                shut_down: false,
                suspended: None,
            }),
        });
        platform.adopt(records, |record| record.ready);
        tokio::spawn(rotate_logs(Arc::downgrade(&platform.shared)));
        Ok(platform)
    }

    /// Makes `key` run `spec` with `spec.replicas` new instances. Whatever ran there
    /// before is stopped in the background and leaves `observe` at once.
    pub async fn start(&self, key: GroupKey, spec: GroupSpec) -> Result<(), PlatformError> {
        if key.rollout.is_empty()
            || key.rollout.starts_with('.')
            || key.rollout.contains(['/', '\0'])
        {
            return Err(PlatformError::BadRolloutName(key.rollout));
        }
        if spec.template.process.command.is_empty() {
            return Err(PlatformError::EmptyCommand(key.to_string()));
        }
        let mut state = lock(&self.state);
        if state.shut_down {
            return Err(PlatformError::ShuttingDown);
        }
        if state.suspended.is_some() {
            return Err(PlatformError::Suspended);
        }
        tracing::info!(group = %key, revision = spec.revision, replicas = spec.replicas, "starting");
        let mut group = Group {
            spec,
            members: Vec::new(),
        };
        let wanted = group.spec.replicas;
        self.resize(&key, &mut group, wanted, &mut state.stopping);
        if let Some(old) = state.groups.insert(key, group) {
            self.stop_members(old.members, &mut state.stopping);
        }
        drop(state);
        self.shared.bump();
        Ok(())
    }

    /// Changes how many instances `key` runs: new ones start, the newest go first when
    /// scaling down. Unknown groups are ignored.
    pub async fn scale(&self, key: &GroupKey, replicas: u32) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        // While suspended, `groups` is empty: every change is ignored.
        let Some(group) = state.groups.get_mut(key) else {
            tracing::debug!(group = %key, "scale of a group that does not run");
            return;
        };
        group.spec.replicas = replicas;
        self.resize(key, group, replicas, &mut state.stopping);
        for member in &group.members {
            member
                .instance
                .update_spec(&self.shared, |spec| spec.replicas = replicas);
        }
        self.shared.bump();
    }

    /// Labels `key` with another revision (the same template came back, e.g. an undo):
    /// the processes keep running. Unknown groups are ignored.
    pub fn relabel(&self, key: &GroupKey, revision: u64) {
        let mut state = lock(&self.state);
        let Some(group) = state.groups.get_mut(key) else {
            tracing::debug!(group = %key, "relabel of a group that does not run");
            return;
        };
        group.spec.revision = revision;
        for member in &group.members {
            member
                .instance
                .update_spec(&self.shared, |spec| spec.revision = revision);
        }
        self.shared.bump();
    }

    /// Stops every instance of `key`: SIGTERM to each process group, SIGKILL after the
    /// template's grace period. Returns at once; the group leaves `observe` at once.
    pub async fn stop(&self, key: &GroupKey) {
        let mut state = lock(&self.state);
        if let Some(group) = state.groups.remove(key) {
            tracing::info!(group = %key, "stopping");
            self.stop_members(group.members, &mut state.stopping);
            drop(state);
            self.shared.bump();
        }
    }

    /// The groups of `rollout` and their instances, blue first.
    pub fn observe(&self, rollout: &str) -> Vec<GroupStatus> {
        let state = lock(&self.state);
        if let Some(frozen) = &state.suspended {
            return frozen
                .iter()
                .filter(|(key, _)| key.rollout == rollout)
                .map(|(_, group)| group.clone())
                .collect();
        }
        state
            .groups
            .iter()
            .filter(|(key, _)| key.rollout == rollout)
            .map(|(key, group)| group_status(key, group))
            .collect()
    }

    /// A receiver whose value changes whenever an instance starts, stops, restarts,
    /// becomes ready or unready, or a group changes: the reconciler's wake-up call.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    /// The log files of `rollout` (of `color` only, if given): those of running
    /// instances and those left by earlier ones, ordered by revision then instance.
    pub fn log_files(&self, rollout: &str, color: Option<Color>) -> Vec<LogFile> {
        // Running instances report their current revision, which `relabel` may have
        // changed since the id was made.
        let live: BTreeMap<String, u64> = {
            let state = lock(&self.state);
            state
                .groups
                .iter()
                .filter(|(key, _)| key.rollout == rollout)
                .flat_map(|(_, group)| &group.members)
                .map(|m| (m.instance.id.clone(), m.instance.revision()))
                .collect()
        };
        let dir = logs::root(&self.shared.run_dir).join(rollout);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<LogFile> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != "log" {
                    return None;
                }
                let instance = path.file_stem()?.to_str()?.to_owned();
                let (file_color, revision) = logs::parse_instance_id(rollout, &instance)?;
                let revision = live.get(&instance).copied().unwrap_or(revision);
                Some(LogFile {
                    instance,
                    color: file_color,
                    revision,
                    path,
                })
            })
            .filter(|file| color.is_none_or(|c| c == file.color))
            .collect();
        files.sort_by(|a, b| (a.revision, &a.instance).cmp(&(b.revision, &b.instance)));
        files
    }

    /// Stops every group and waits until all their processes have exited (each bounded
    /// by its grace period). The platform starts nothing afterwards.
    pub async fn shutdown_all(&self) {
        let tasks = {
            let mut state = lock(&self.state);
            let state = &mut *state;
            state.shut_down = true;
            if state.suspended.is_some() {
                // The instances are another daemon's now.
                return;
            }
            let groups = std::mem::take(&mut state.groups);
            for (_, group) in groups {
                self.stop_members(group.members, &mut state.stopping);
            }
            std::mem::take(&mut state.stopping)
        };
        self.shared.bump();
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "an instance task failed");
            }
        }
    }

    /// Stops supervising without touching a single process, so that another daemon
    /// can adopt them all (a takeover by a new `teal server`): every instance task
    /// ends, the records stay as they are but for the readiness each instance is
    /// handed over with (see `Record::ready`; a stop in progress stays recorded as one,
    /// for the successor to finish), and until [`resume`](Self::resume) nothing starts,
    /// scales, relabels or stops, `shutdown_all` leaves the instances alone, and
    /// `observe` answers with the groups as they were. Returns once no task of this
    /// platform can touch a process or a record any more. Does nothing on a platform
    /// already suspended or let go of.
    pub async fn suspend(&self) {
        self.suspend_and(true).await;
    }

    /// Like [`suspend`](Self::suspend), writing no record: for a daemon that gives
    /// the instances back to the one it failed to take over from, which supervises
    /// them again already.
    pub async fn let_go(&self) {
        self.suspend_and(false).await;
    }

    async fn suspend_and(&self, record_readiness: bool) {
        let (tasks, instances): (Vec<JoinHandle<()>>, Vec<Arc<Instance>>) = {
            let mut state = lock(&self.state);
            let state = &mut *state;
            if state.suspended.is_some() {
                return;
            }
            let frozen = state
                .groups
                .iter()
                .map(|(key, group)| (key.clone(), group_status(key, group)))
                .collect();
            state.suspended = Some(frozen);
            let groups = std::mem::take(&mut state.groups);
            let mut tasks = std::mem::take(&mut state.stopping);
            let mut instances = Vec::new();
            for member in groups.into_values().flat_map(|group| group.members) {
                tasks.push(member.task);
                instances.push(member.instance);
            }
            (tasks, instances)
        };
        for task in &tasks {
            task.abort();
        }
        // An aborted task stops at its next await; the processes it watched keep
        // running (a child of ours is reaped by tokio when it exits).
        for task in tasks {
            let _ = task.await;
        }
        if record_readiness {
            for instance in &instances {
                instance.record_for_handover(&self.shared);
            }
        }
        tracing::info!("instances handed over; no longer supervising them");
    }

    /// Supervises again after [`suspend`](Self::suspend) (the takeover failed): adopts
    /// the instances the records describe, as [`open`](Self::open) does.
    pub fn resume(&self) -> Result<(), PlatformError> {
        let records =
            record::read_all(&self.shared.run_dir).map_err(|source| PlatformError::RunDir {
                path: record::dir(&self.shared.run_dir),
                source,
            })?;
        let Some(frozen) = lock(&self.state).suspended.take() else {
            return Ok(());
        };
        // The records may have been rewritten by the daemon that failed to take over
        // (adopting clears their readiness); what this platform saw when it let go
        // vouches as well.
        let ready: BTreeSet<(String, u32)> = frozen
            .iter()
            .flat_map(|(_, group)| &group.instances)
            .filter(|instance| instance.ready)
            .filter_map(|instance| Some((instance.id.clone(), instance.pid?)))
            .collect();
        self.adopt(records, |record| {
            record.ready || ready.contains(&(record.id.clone(), record.pid))
        });
        self.shared.bump();
        Ok(())
    }

    /// Starts or stops instances until `group` has `wanted`.
    fn resize(
        &self,
        key: &GroupKey,
        group: &mut Group,
        wanted: u32,
        stopping: &mut Vec<JoinHandle<()>>,
    ) {
        let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
        if group.members.len() > wanted {
            let extra = group.members.split_off(wanted);
            self.stop_members(extra, stopping);
        }
        while group.members.len() < wanted {
            let prefix = format!("{}-{}-r{}", key.rollout, key.color, group.spec.revision);
            let (id, ordinal) = self.shared.claim_new_id(&prefix);
            let port = match self.shared.claim_new_port() {
                Ok(port) => port,
                Err(error) => {
                    // The instance's first start picks another port if this one is taken.
                    tracing::warn!(%error, "cannot pick a free port");
                    0
                }
            };
            let instance = Instance::new(
                &self.shared,
                key.clone(),
                group.spec.clone(),
                id,
                ordinal,
                port,
            );
            let task = tokio::spawn(supervise(self.shared.clone(), instance.clone(), None));
            group.members.push(Member { instance, task });
        }
    }

    fn stop_members(&self, members: Vec<Member>, stopping: &mut Vec<JoinHandle<()>>) {
        stopping.retain(|task| !task.is_finished());
        for member in members {
            member.instance.request_stop(&self.shared);
            stopping.push(member.task);
        }
    }

    /// Takes over the instances an earlier daemon recorded.
    /// `ready`: whether an instance may be routed to before its probes pass (it was
    /// handed over ready).
    fn adopt(
        &self,
        records: Vec<(PathBuf, Result<Record, String>)>,
        ready: impl Fn(&Record) -> bool,
    ) {
        let mut by_group: BTreeMap<GroupKey, Vec<Record>> = BTreeMap::new();
        let mut state = lock(&self.state);
        let state = &mut *state;
        for (path, parsed) in records {
            let record = match parsed {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "unreadable instance record; deleting it");
                    record::remove_path(&path);
                    continue;
                }
            };
            if !procfs::is_running(record.pid, record.start_time) {
                tracing::info!(instance = %record.id, pid = record.pid, "its process is gone; forgetting it");
                record::remove_path(&path);
                continue;
            }
            self.shared.claim_id(&record.id);
            self.shared.claim_port(record.port);
            if record.stopping {
                // It was being stopped when the daemon died: finish that.
                let instance = Instance::adopted(&self.shared, &record, ready(&record));
                let adopt = Some((record.pid, record.start_time));
                state.stopping.push(tokio::spawn(supervise(
                    self.shared.clone(),
                    instance,
                    adopt,
                )));
                continue;
            }
            by_group.entry(record.key.clone()).or_default().push(record);
        }

        for (key, mut records) in by_group {
            // Normally all records of a group agree; if not (a crash in the middle of
            // a replacement), the highest revision wins and the rest are stopped.
            records.sort_by_key(|r| (r.spec.revision, r.started_at_ms));
            let spec = records
                .last()
                .map(|r| r.spec.clone())
                .expect("a group has records");
            records.sort_by_key(|r| r.ordinal);
            let mut group = Group {
                spec: spec.clone(),
                members: Vec::new(),
            };
            let mut strays = Vec::new();
            for record in records {
                let instance = Instance::adopted(&self.shared, &record, ready(&record));
                let adopt = Some((record.pid, record.start_time));
                let task = tokio::spawn(supervise(self.shared.clone(), instance.clone(), adopt));
                let member = Member { instance, task };
                if record.spec.revision == spec.revision
                    && record.spec.template_hash == spec.template_hash
                {
                    tracing::info!(instance = %record.id, pid = record.pid, "adopted");
                    group.members.push(member);
                } else {
                    strays.push(member);
                }
            }
            self.stop_members(strays, &mut state.stopping);
            self.resize(&key, &mut group, spec.replicas, &mut state.stopping);
            state.groups.insert(key, group);
        }
    }
}

fn group_status(key: &GroupKey, group: &Group) -> GroupStatus {
    GroupStatus {
        color: key.color,
        revision: group.spec.revision,
        template_hash: group.spec.template_hash.clone(),
        replicas: group.spec.replicas,
        instances: group.members.iter().map(|m| m.instance.status()).collect(),
    }
}

/// Every few seconds, caps the size of every log (see [`LOG_SIZE_CAP`]). Ends when
/// the platform and all its instance tasks are gone.
async fn rotate_logs(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(ROTATE_CHECK_INTERVAL);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let run_dir = shared.run_dir.clone();
        drop(shared);
        let _ = tokio::task::spawn_blocking(move || logs::rotate_all(&run_dir, LOG_SIZE_CAP)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    use teal_core::spec::{Process, Template};

    use super::*;

    fn record(id: &str, pid: u32, start_time: u64, stopping: bool) -> Record {
        let template = Template {
            process: Process {
                command: vec!["sleep".into(), "100".into()],
                args: Vec::new(),
                env: Vec::new(),
                working_dir: None,
            },
            readiness_probe: None,
            liveness_probe: None,
            termination_grace_period: Duration::from_secs(1),
        };
        Record {
            id: id.into(),
            ordinal: 1,
            key: GroupKey {
                rollout: "old".into(),
                color: Color::Blue,
            },
            spec: GroupSpec {
                revision: 1,
                template_hash: template.hash(),
                template,
                replicas: 1,
            },
            pid,
            start_time,
            port: 1,
            started_at_ms: 0,
            restarts: 0,
            stopping,
            ready: false,
        }
    }

    #[tokio::test]
    async fn stale_records_are_forgotten() {
        let run = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(record::dir(run.path())).unwrap();
        // A process that has exited and been reaped.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        record::write(run.path(), &record("old-blue-r1-1", gone_pid, 1, false)).unwrap();
        // A live pid whose start time is not the recorded one: a reused pid.
        let me = std::process::id();
        let my_start = procfs::stat(me).unwrap().start_time;
        record::write(
            run.path(),
            &record("old-blue-r1-2", me, my_start + 1, false),
        )
        .unwrap();
        std::fs::write(record::dir(run.path()).join("garbage.json"), "{").unwrap();

        let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
        assert!(platform.observe("old").is_empty());
        assert_eq!(
            std::fs::read_dir(record::dir(run.path())).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn a_stop_interrupted_by_a_crash_is_finished() {
        let run = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(record::dir(run.path())).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let start_time = procfs::stat(pid).unwrap().start_time;
        record::write(run.path(), &record("old-blue-r1-1", pid, start_time, true)).unwrap();

        let platform = LocalPlatform::open(run.path().to_path_buf()).unwrap();
        assert!(
            platform.observe("old").is_empty(),
            "a stopping instance is not adopted"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the interrupted stop was not finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        platform.shutdown_all().await;
        assert_eq!(
            std::fs::read_dir(record::dir(run.path())).unwrap().count(),
            0
        );
    }
}
