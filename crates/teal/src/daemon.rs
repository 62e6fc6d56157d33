//! The daemon: commands record desired state, one reconciler per rollout makes the
//! world match it.
//!
//! Commands (apply, promote, abort, retry, undo, delete) and the reconcilers' status
//! changes are decided one at a time under `decisions`, and each is committed to the
//! store before anyone is answered. Only reconcilers start, route and stop things.
//!
//! A daemon that a new `teal server` takes over from ([`Daemon::quiesce`], see
//! `crate::handoff`) stops deciding and supervising for good, so that the two never
//! write the store or touch an instance at the same time.

mod analysis;
mod listeners;
mod reconciler;
mod traffic;
mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use teal_core::Color;
use teal_core::api::{
    ApplyRequest, ApplyResponse, ApplyResult, CommandResponse, HistoryView, PromoteRequest,
    RolloutView, UndoRequest,
};
use teal_core::rollout::{Event, Policy};
use teal_core::spec::{Document, RolloutSpec, parse_documents};
use teal_platform::{GroupKey, LocalPlatform};
use teal_proxy::{Backend, Proxy, RouteTable};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::store::Store;
use listeners::Listeners;
pub use listeners::{Handed, HandoffSocket};

/// What a call to the daemon can fail with; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The named rollout does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong; nothing changed (400). `details` lists every problem.
    #[error("{message}")]
    Invalid {
        /// One sentence.
        message: String,
        /// One line per problem.
        details: Vec<String>,
    },
    /// The rollout's state does not allow this now; nothing changed (409).
    #[error("{0}")]
    Refused(String),
    /// This daemon handed over to a new one; nothing changed, the same call to the
    /// same address reaches the new one (503 with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside teal (500).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What the daemon this one takes over from hands over for one rollout.
pub struct Inherited {
    /// Its listening sockets.
    pub sockets: Handed,
    /// The backends its proxy routed to, (active, preview). The new proxy starts with
    /// them, so the first request it accepts goes where the old daemon sent requests.
    pub routes: (Option<Backend>, Option<Backend>),
}

/// What this daemon hands over for one rollout.
pub struct Handover {
    /// The rollout.
    pub name: String,
    /// Its active listener.
    pub active: Option<HandoffSocket>,
    /// Its preview listener.
    pub preview: Option<HandoffSocket>,
    /// Where its proxy routes now.
    pub routes: Arc<RouteTable>,
}

/// The running parts of one rollout.
struct Runtime {
    proxy: Arc<Proxy>,
    wake: Notify,
    listeners: Mutex<Listeners>,
    /// Where the routes point, as last set on the proxy: (active, preview).
    routes: Mutex<(Option<Color>, Option<Color>)>,
    /// Dropped to stop the reconciler.
    stop: watch::Sender<bool>,
    /// Readings of the proxy's counters, for rates and latencies.
    traffic: Mutex<traffic::TrafficLog>,
    /// The analysis run, load test and webhook gates in progress.
    analysis: Mutex<analysis::Tasks>,
    /// Colors being drained and stopped in the background.
    stops: Mutex<reconciler::Stops>,
}

/// The daemon's shared state.
pub struct Daemon {
    store: Store,
    platform: Arc<LocalPlatform>,
    /// One decision at a time: a second command waits for the first, then is judged
    /// against the state it left.
    decisions: tokio::sync::Mutex<()>,
    runtimes: Mutex<BTreeMap<String, Arc<Runtime>>>,
    /// Bumped whenever a rollout's status changes (for watchers).
    changes: watch::Sender<u64>,
    /// Held (read) by every reconcile pass, from observing to the last effect; a
    /// takeover holds it (write) so that no pass is half done when it hands over.
    passes: tokio::sync::RwLock<()>,
    /// The pid of the daemon this one handed over to.
    successor: watch::Sender<Option<u32>>,
    /// True while the daemon this one took over from still answers the requests and
    /// carries the WebSockets it accepted: no color is stopped under them meanwhile.
    predecessor_running: watch::Sender<bool>,
    /// The pid of the daemon this one took over from, once it confirmed the takeover.
    predecessor: std::sync::OnceLock<u32>,
}

/// The daemon with every writer stopped, for a takeover: no command is decided, no
/// reconcile pass runs, no analysis runs, and the platform supervises nothing (every
/// instance runs on untouched). Listeners keep accepting and proxies keep routing.
pub struct Quiesced<'a> {
    daemon: &'a Daemon,
    passes: tokio::sync::RwLockWriteGuard<'a, ()>,
    decisions: tokio::sync::MutexGuard<'a, ()>,
}

/// Milliseconds since the epoch: the only clock the daemon reads.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Daemon {
    /// Starts the reconcilers and listeners of every stored rollout. A rollout in
    /// `inherited` (a takeover) serves the sockets it was handed and starts with the
    /// routes of the daemon it replaces; the others bind their addresses.
    pub async fn start(
        store: Store,
        platform: Arc<LocalPlatform>,
        mut inherited: BTreeMap<String, Inherited>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let daemon = Arc::new(Daemon {
            store,
            platform,
            decisions: tokio::sync::Mutex::new(()),
            runtimes: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            passes: tokio::sync::RwLock::new(()),
            successor: watch::channel(None).0,
            predecessor_running: watch::channel(!inherited.is_empty()).0,
            predecessor: std::sync::OnceLock::new(),
        });
        // Every rollout's listeners before any reconciler starts: a takeover that cannot
        // serve what it was handed is refused with nothing begun, and the running daemon,
        // which still serves those sockets, carries on.
        let mut planned = Vec::new();
        for (name, stored) in daemon.store.rollouts()? {
            let (sockets, routes) = match inherited.remove(&name) {
                Some(inherited) => (inherited.sockets, Some(inherited.routes)),
                None => (Handed::default(), None),
            };
            let listeners = Listeners::start(&name, &stored.spec, sockets).await?;
            let routes = routes.map(|(active, preview)| RouteTable {
                active,
                preview,
                preview_match: stored.spec.strategy.preview_match.clone(),
            });
            planned.push((stored.spec, listeners, routes));
        }
        for (spec, listeners, routes) in planned {
            daemon.install(&spec, listeners, routes);
        }
        tokio::spawn(sample_traffic(Arc::downgrade(&daemon)));
        Ok(daemon)
    }

    /// The analysis runs of one rollout, oldest first; of one revision when given.
    pub fn analysis(
        &self,
        name: &str,
        revision: Option<teal_core::rollout::Revision>,
    ) -> Result<teal_core::api::AnalysisView, DaemonError> {
        self.stored(name)?;
        let runs = self.store.analysis_runs(name, revision)?;
        Ok(teal_core::api::AnalysisView {
            runs: runs.iter().map(view::run_view).collect(),
        })
    }

    /// The traffic history of one rollout.
    pub fn traffic(&self, name: &str) -> Result<teal_core::api::TrafficView, DaemonError> {
        self.stored(name)?;
        Ok(self
            .runtime(name)
            .map(|runtime| runtime.traffic.lock().expect("traffic lock").view())
            .unwrap_or(teal_core::api::TrafficView {
                interval_ms: traffic::INTERVAL_MS,
                samples: Vec::new(),
            }))
    }

    /// Per rollout: its view, and per color the revision it serves with the proxy's
    /// counters since it began serving it.
    pub fn metrics(&self) -> Result<Vec<crate::metrics::RolloutMetrics>, DaemonError> {
        let rollouts = self.list()?;
        Ok(rollouts
            .into_iter()
            .map(|view| {
                let stats = self
                    .runtime(&view.name)
                    .map(|runtime| {
                        Color::ALL
                            .into_iter()
                            .filter_map(|color| {
                                let (revision, stats) = runtime.proxy.revision_stats(color)?;
                                Some((color, revision, stats))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (view, stats)
            })
            .collect())
    }

    /// A receiver that changes whenever any rollout's status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn all_runtimes(&self) -> Vec<Arc<Runtime>> {
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .values()
            .cloned()
            .collect()
    }

    fn runtime(&self, name: &str) -> Option<Arc<Runtime>> {
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .get(name)
            .cloned()
    }

    /// Creates the runtime of a rollout and starts its reconciler and listeners; the
    /// proxy starts with `routes` when given (a takeover), else routes nothing until
    /// the first reconcile pass.
    fn install(
        self: &Arc<Self>,
        spec: &RolloutSpec,
        listeners: listeners::Pending,
        routes: Option<RouteTable>,
    ) {
        let name = &spec.name;
        let proxy = Proxy::with_options(name, reconciler::proxy_options(spec));
        let colors = routes.as_ref().map_or((None, None), |table| {
            (
                table.active.as_ref().map(|b| b.color),
                table.preview.as_ref().map(|b| b.color),
            )
        });
        if let Some(table) = routes {
            proxy.set_routes(table);
        }
        let (stop, stopped) = watch::channel(false);
        let runtime = Arc::new(Runtime {
            proxy: proxy.clone(),
            wake: Notify::new(),
            listeners: Mutex::new(Listeners::none()),
            routes: Mutex::new(colors),
            stop,
            traffic: Mutex::new(traffic::TrafficLog::new(now_ms())),
            analysis: Mutex::new(analysis::Tasks::default()),
            stops: Mutex::new(reconciler::Stops::default()),
        });
        listeners.serve(
            &proxy,
            &mut runtime.listeners.lock().expect("listeners lock"),
        );
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .insert(name.to_owned(), runtime.clone());
        tokio::spawn(reconciler::run(
            self.clone(),
            name.to_owned(),
            runtime,
            stopped,
        ));
    }

    fn wake(&self, name: &str) {
        if let Some(runtime) = self.runtime(name) {
            runtime.wake.notify_one();
        }
    }

    /// Creates or updates every document of a spec file. All or nothing.
    pub async fn apply(
        self: &Arc<Self>,
        request: ApplyRequest,
    ) -> Result<ApplyResponse, DaemonError> {
        let documents = parse_documents(
            &request.file,
            &request.text,
            std::path::Path::new(&request.base_dir),
        )
        .map_err(|errors| DaemonError::Invalid {
            message: format!(
                "{} is not a valid spec ({} problem{}); nothing was changed",
                request.file,
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            ),
            details: errors.0.iter().map(ToString::to_string).collect(),
        })?;
        self.check_analysis_templates(&request.file, &documents)?;
        let _decision = self.decision().await?;
        let before: Vec<(RolloutSpec, teal_core::rollout::Status)> = documents
            .iter()
            .filter_map(|document| match document {
                Document::Rollout(spec) => Some(spec),
                Document::AnalysisTemplate(_) => None,
            })
            .map(|spec| {
                let status = self
                    .store
                    .rollout(&spec.name)
                    .ok()
                    .flatten()
                    .map(|stored| stored.status)
                    .unwrap_or_default();
                (spec.clone(), status)
            })
            .collect();

        // Bind every new listener first: a port in use rejects the whole apply before
        // anything is stored.
        let mut bound = Vec::new();
        for document in &documents {
            if let Document::Rollout(spec) = document {
                let current = self.runtime(&spec.name);
                let current = current
                    .as_ref()
                    .map(|r| r.listeners.lock().expect("listeners lock").addresses());
                let listeners = Listeners::bind(spec, current.as_ref())
                    .await
                    .map_err(|error| DaemonError::Invalid {
                        message: format!("rollout {}: {error:#}; nothing was changed", spec.name),
                        details: Vec::new(),
                    })?;
                bound.push((spec, listeners));
            }
        }

        let now = now_ms();
        let results = self.store.write(|writer| {
            let mut results = Vec::new();
            for document in &documents {
                results.push(match document {
                    Document::Rollout(spec) => apply_rollout(writer, spec, now)?,
                    Document::AnalysisTemplate(template) => {
                        let changed = writer.put_analysis_template(template, now)?;
                        ApplyResult {
                            kind: "AnalysisTemplate".into(),
                            name: template.name.clone(),
                            outcome: if changed { "configured" } else { "unchanged" }.into(),
                            revision: None,
                        }
                    }
                });
            }
            Ok(results)
        })?;

        for (spec, old) in &before {
            if let Ok(Some(stored)) = self.store.rollout(&spec.name) {
                analysis::notify(spec, old, &stored.status);
            }
        }
        for (spec, listeners) in bound {
            let name = &spec.name;
            match self.runtime(name) {
                Some(runtime) => {
                    // Before the reconciler's pass: the next request follows them.
                    runtime.proxy.set_options(reconciler::proxy_options(spec));
                    listeners.serve(
                        &runtime.proxy,
                        &mut runtime.listeners.lock().expect("listeners lock"),
                    );
                }
                None => self.install(spec, listeners, None),
            }
            self.wake(name);
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(ApplyResponse { results })
    }

    /// Every AnalysisTemplate a rollout's analysis names must be applied already or be
    /// in the same file: otherwise the analysis could only fail when it starts.
    fn check_analysis_templates(
        &self,
        file: &str,
        documents: &[Document],
    ) -> Result<(), DaemonError> {
        let in_file: Vec<&str> = documents
            .iter()
            .filter_map(|document| match document {
                Document::AnalysisTemplate(template) => Some(template.name.as_str()),
                Document::Rollout(_) => None,
            })
            .collect();
        let mut missing = Vec::new();
        for document in documents {
            let Document::Rollout(spec) = document else {
                continue;
            };
            let strategy = &spec.strategy;
            for (field, analysis) in [
                ("prePromotionAnalysis", &strategy.pre_promotion_analysis),
                ("postPromotionAnalysis", &strategy.post_promotion_analysis),
            ] {
                for template in analysis.iter().flat_map(|a| a.templates.iter()) {
                    if in_file.contains(&template.as_str())
                        || self.store.analysis_template(template)?.is_some()
                    {
                        continue;
                    }
                    missing.push(format!(
                        "{file}: rollout {}: spec.strategy.blueGreen.{field} names AnalysisTemplate \
                         \"{template}\", which is not applied (apply it first, or put it in this file)",
                        spec.name
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(DaemonError::Invalid {
            message: format!(
                "{file} names analysis templates teal does not have; nothing was changed"
            ),
            details: missing,
        })
    }

    /// Runs one event through the state machine and stores the outcome.
    async fn command(
        &self,
        name: &str,
        cause: &str,
        event: Event,
    ) -> Result<CommandResponse, DaemonError> {
        let notes = {
            let _decision = self.decision().await?;
            let stored = self.stored(name)?;
            let policy = Policy::from(&stored.spec);
            let now = now_ms();
            let transition = stored
                .status
                .on(event, &policy, now)
                .map_err(|refusal| DaemonError::Refused(format!("rollout {name}: {refusal}")))?;
            self.store.write(|writer| {
                writer.put_rollout(&stored.spec, &transition.status, now)?;
                writer.record(name, cause, &transition.notes, now)
            })?;
            for note in &transition.notes {
                tracing::info!("rollout {name}: {note} ({cause})");
            }
            analysis::notify(&stored.spec, &stored.status, &transition.status);
            transition.notes
        };
        self.wake(name);
        self.changes.send_modify(|n| *n += 1);
        Ok(CommandResponse {
            notes,
            rollout: self.get(name)?,
        })
    }

    /// Waits for the turn to decide; refused once this daemon handed over (its
    /// successor decides from then on).
    async fn decision(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, DaemonError> {
        let mut successor = self.successor.subscribe();
        tokio::select! {
            biased;
            guard = self.decisions.lock() => Ok(guard),
            pid = successor.wait_for(Option::is_some) => {
                let pid = pid.ok().and_then(|pid| *pid).unwrap_or_default();
                Err(DaemonError::Unavailable(format!(
                    "this teal daemon handed over to a new one (pid {pid}); nothing was changed: send the same call again"
                )))
            }
        }
    }

    fn stored(&self, name: &str) -> Result<crate::store::StoredRollout, DaemonError> {
        self.store.rollout(name)?.ok_or_else(|| {
            DaemonError::NotFound(format!(
                "no rollout named {name:?} (teal list shows the rollouts)"
            ))
        })
    }

    /// Promotes the candidate; with `revision`, only if that is the one in preview.
    pub async fn promote(
        &self,
        name: &str,
        request: PromoteRequest,
    ) -> Result<CommandResponse, DaemonError> {
        let event = Event::PromoteRequested {
            expected_revision: request.revision,
        };
        self.command(name, "promote", event).await
    }

    /// Aborts the candidate: users stay on (or return to) the stable color.
    pub async fn abort(&self, name: &str) -> Result<CommandResponse, DaemonError> {
        let event = Event::AbortRequested {
            reason: "aborted by teal abort".to_owned(),
        };
        self.command(name, "abort", event).await
    }

    /// Releases an aborted candidate again.
    pub async fn retry(&self, name: &str) -> Result<CommandResponse, DaemonError> {
        self.command(name, "retry", Event::RetryRequested).await
    }

    /// Releases an earlier revision's template again, as a new revision. Instant when
    /// that template is still warm in the idle color.
    pub async fn undo(
        &self,
        name: &str,
        request: UndoRequest,
    ) -> Result<CommandResponse, DaemonError> {
        let notes = {
            let _decision = self.decision().await?;
            let stored = self.stored(name)?;
            let Some(stable) = stored.status.stable.clone() else {
                return Err(DaemonError::Refused(format!(
                    "rollout {name}: nothing is live yet, so there is nothing to undo"
                )));
            };
            let revisions = self.store.revisions(name)?;
            let target = match request.to_revision {
                Some(target) => target,
                None => revisions
                    .iter()
                    .rev()
                    .find(|r| {
                        r.revision < stable.revision && r.template_hash != stable.template_hash
                    })
                    .map(|r| r.revision)
                    .ok_or_else(|| {
                        DaemonError::Refused(format!(
                            "rollout {name}: no revision before {} to undo to",
                            stable.revision
                        ))
                    })?,
            };
            let template = self.store.template(name, target)?.ok_or_else(|| {
                DaemonError::NotFound(format!(
                    "rollout {name} has no revision {target} (teal history {name} lists them)"
                ))
            })?;
            if template.hash() == stable.template_hash {
                return Err(DaemonError::Refused(format!(
                    "rollout {name}: revision {target} runs the same template as revision {}, which users are on already",
                    stable.revision
                )));
            }
            let policy = Policy::from(&stored.spec);
            let now = now_ms();
            let revision = stored.status.revision + 1;
            let transition = stored
                .status
                .on(
                    Event::Applied {
                        revision,
                        template_hash: template.hash(),
                    },
                    &policy,
                    now,
                )
                .map_err(|refusal| DaemonError::Refused(format!("rollout {name}: {refusal}")))?;
            let mut spec = stored.spec.clone();
            spec.template = template.clone();
            let mut notes = vec![format!(
                "undo to revision {target}, released as revision {revision}"
            )];
            notes.extend(transition.notes);
            self.store.write(|writer| {
                writer.put_revision(
                    name,
                    revision,
                    &template,
                    &format!("undo to revision {target}"),
                    now,
                )?;
                writer.put_rollout(&spec, &transition.status, now)?;
                writer.record(name, "undo", &notes, now)
            })?;
            notes
        };
        self.wake(name);
        self.changes.send_modify(|n| *n += 1);
        Ok(CommandResponse {
            notes,
            rollout: self.get(name)?,
        })
    }

    /// Stops a rollout's listeners and instances and forgets it (its history stays).
    pub async fn delete(&self, name: &str) -> Result<Vec<String>, DaemonError> {
        let _decision = self.decision().await?;
        self.stored(name)?;
        let notes = vec![format!("rollout {name} deleted")];
        let now = now_ms();
        self.store.write(|writer| {
            writer.delete_rollout(name)?;
            writer.record(name, "delete", &notes, now)
        })?;
        let runtime = self.runtimes.lock().expect("runtimes lock").remove(name);
        if let Some(runtime) = runtime {
            let _ = runtime.stop.send(true);
            runtime.stops.lock().expect("stops lock").cancel_all();
            *runtime.listeners.lock().expect("listeners lock") = Listeners::none();
        }
        for color in Color::ALL {
            self.platform
                .stop(&GroupKey {
                    rollout: name.to_owned(),
                    color,
                })
                .await;
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(notes)
    }

    /// Every rollout.
    pub fn list(&self) -> Result<Vec<RolloutView>, DaemonError> {
        let rollouts = self.store.rollouts()?;
        Ok(rollouts
            .iter()
            .map(|(name, stored)| self.view(name, stored))
            .collect())
    }

    /// One rollout.
    pub fn get(&self, name: &str) -> Result<RolloutView, DaemonError> {
        let stored = self.stored(name)?;
        Ok(self.view(name, &stored))
    }

    /// Revisions and the audit trail.
    pub fn history(&self, name: &str) -> Result<HistoryView, DaemonError> {
        let revisions = self.store.revisions(name)?;
        let events = self.store.events(name)?;
        if revisions.is_empty() && events.is_empty() {
            return Err(DaemonError::NotFound(format!("no rollout named {name:?}")));
        }
        Ok(HistoryView { revisions, events })
    }

    /// The platform, for logs.
    pub fn platform(&self) -> &LocalPlatform {
        &self.platform
    }

    /// Stops reconcilers and listeners, then every instance (daemon shutdown).
    pub async fn shutdown(&self) {
        let runtimes: Vec<_> = std::mem::take(&mut *self.runtimes.lock().expect("runtimes lock"))
            .into_values()
            .collect();
        for runtime in runtimes {
            let _ = runtime.stop.send(true);
            runtime.stops.lock().expect("stops lock").cancel_all();
            *runtime.listeners.lock().expect("listeners lock") = Listeners::none();
        }
        self.platform.shutdown_all().await;
    }

    /// Stops every writer for a takeover (see [`Quiesced`]): waits for the reconcile
    /// passes and the command under way to finish, stops the analysis tasks (their
    /// runs are stored and resume in whichever daemon reconciles next), then the
    /// platform's supervision.
    pub async fn quiesce(&self) -> Quiesced<'_> {
        let passes = self.passes.write().await;
        let decisions = self.decisions.lock().await;
        for runtime in self.all_runtimes() {
            let tasks = std::mem::take(&mut *runtime.analysis.lock().expect("analysis lock"));
            tasks.halt().await;
        }
        self.platform.suspend().await;
        Quiesced {
            daemon: self,
            passes,
            decisions,
        }
    }

    /// The takeover this daemon was making failed after it began serving (the old
    /// daemon carries on): it stops every writer as [`quiesce`](Self::quiesce) does,
    /// for good, and lets go of the instances without writing a record (the old
    /// daemon supervises them again). Its listeners still need closing.
    pub async fn give_back(&self, predecessor: u32) {
        // First, before waiting for a pass under way: the old daemon supervises the
        // instances again already. The platform is let go of once, so the suspend
        // in `quiesce` then writes no record.
        self.platform.let_go().await;
        self.quiesce().await.hand_over(predecessor);
    }

    /// Duplicates of every rollout's listening sockets, and its routes, for a takeover.
    pub fn handover(&self) -> Vec<Handover> {
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .iter()
            .map(|(name, runtime)| {
                let (active, preview) = runtime
                    .listeners
                    .lock()
                    .expect("listeners lock")
                    .handoff_sockets();
                Handover {
                    name: name.clone(),
                    active,
                    preview,
                    routes: runtime.proxy.routes(),
                }
            })
            .collect()
    }

    /// The daemon this one took over from (pid) confirmed the takeover; it drains
    /// until [`Daemon::predecessor_exited`].
    pub fn took_over_from(&self, pid: u32) {
        let _ = self.predecessor.set(pid);
    }

    /// The daemon this one took over from has exited (or the takeover is over).
    pub fn predecessor_exited(&self) {
        self.predecessor_running.send_replace(false);
    }

    /// Waits (at most `timeout`) until the daemon this one took over from has exited:
    /// it may still be answering requests on a color, or carrying its WebSockets, that
    /// this daemon is about to stop. True when it has.
    pub(crate) async fn wait_for_predecessor(&self, timeout: Duration) -> bool {
        let mut running = self.predecessor_running.subscribe();
        if !*running.borrow() {
            return true;
        }
        tracing::info!(
            "waiting for the daemon this one took over from to finish its requests (at most {timeout:?})"
        );
        matches!(
            tokio::time::timeout(timeout, running.wait_for(|running| !*running)).await,
            Ok(Ok(_))
        )
    }

    /// For a daemon that handed over: every rollout drains on its own, as after a
    /// switch. Its listeners stop accepting and answer their requests within the
    /// rollout's `drainTimeoutSeconds`; then its WebSockets, which die with this
    /// process, run until they end or `upgradedDrainTimeout` passes, and are closed
    /// cleanly. Once `close_now` says so (a stop signal) WebSockets are closed at once;
    /// requests still get their time. Last, while a daemon this one took over from
    /// still drains, this one waits for it (within the same bounds), so that the
    /// daemon that took over from this one, which waits for this one to exit before
    /// it stops a color, waits for both. A stop signal is passed on to it: it closes
    /// its WebSockets and answers its requests in the same way, and is still waited
    /// for.
    pub async fn drain_after_handover(&self, close_now: watch::Receiver<bool>) {
        let runtimes = self.all_runtimes();
        let options: Vec<_> = runtimes.iter().map(|r| r.proxy.options()).collect();
        // How long the daemon this one took over from may drain: everything, or, once
        // told to stop, its requests alone.
        let longest = options.iter().map(predecessor_bound).max();
        let longest_requests = options
            .iter()
            .map(|options| options.shutdown_grace + PREDECESSOR_EXIT)
            .max();
        let drains = runtimes.iter().map(|runtime| {
            let listeners = runtime.listeners.lock().expect("listeners lock").close();
            let (mut signal, later) = (close_now.clone(), close_now.clone());
            async move {
                let proxy = &runtime.proxy;
                let close_websockets = || {
                    for color in Color::ALL {
                        proxy.close_upgraded(color);
                    }
                };
                // Closes the WebSockets open when the signal comes, whatever the
                // drain is waiting for then.
                let closer = async {
                    let _ = signal.wait_for(|close| *close).await.map(drop);
                    close_websockets();
                    std::future::pending::<()>().await;
                };
                let drain = async {
                    for listener in listeners {
                        let _ = listener.await;
                    }
                    // A WebSocket upgraded by a request answered after the signal.
                    if *later.borrow() {
                        close_websockets();
                    }
                    futures_util::future::join_all(
                        Color::ALL.map(|color| proxy.drain_upgraded(color)),
                    )
                    .await;
                };
                tokio::select! {
                    () = drain => {}
                    () = closer => {}
                }
            }
        });
        futures_util::future::join_all(drains).await;
        let mut close_now = close_now;
        tokio::select! {
            _ = self.wait_for_predecessor(longest.unwrap_or_default()) => return,
            _ = async { close_now.wait_for(|close| *close).await.map(drop) } => {}
        }
        if self.stop_predecessor() {
            self.wait_for_predecessor(longest_requests.unwrap_or_default())
                .await;
        }
    }

    /// Sends SIGTERM to the daemon this one took over from, while it still drains;
    /// true when it was sent. Its pid cannot have been reused: the daemon holds the
    /// handoff connection open until it exits, and it has not been seen to close.
    fn stop_predecessor(&self) -> bool {
        let Some(&pid) = self.predecessor.get() else {
            return false;
        };
        if !*self.predecessor_running.borrow() {
            return false;
        }
        tracing::info!(
            "stopping pid {pid}, the daemon this one took over from, the same way: its WebSockets close, its requests are answered"
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!("could not stop pid {pid}: {err}");
                false
            }
        }
    }

    /// The pid of the daemon this one handed over to, once it has.
    pub fn successor(&self) -> Option<u32> {
        *self.successor.borrow()
    }

    /// Resolves with the successor's pid once this daemon handed over.
    pub async fn handed_over(&self) -> u32 {
        let mut successor = self.successor.subscribe();
        let pid = successor
            .wait_for(Option::is_some)
            .await
            .map(|pid| pid.unwrap_or_default());
        match pid {
            Ok(pid) => pid,
            // The sender lives as long as the daemon.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops accepting on every rollout's listeners (a successor accepts on the same
    /// sockets); returns their accept loops, which end once the requests in flight
    /// are answered (within the rollout's drainTimeoutSeconds).
    pub fn close_listeners(&self) -> Vec<JoinHandle<()>> {
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .values()
            .flat_map(|runtime| runtime.listeners.lock().expect("listeners lock").close())
            .collect()
    }

    /// The bound addresses of every rollout: (name, active, preview).
    pub fn bound_addresses(
        &self,
    ) -> Vec<(
        String,
        Option<std::net::SocketAddr>,
        Option<std::net::SocketAddr>,
    )> {
        self.runtimes
            .lock()
            .expect("runtimes lock")
            .iter()
            .map(|(name, runtime)| {
                let listeners = runtime.listeners.lock().expect("listeners lock");
                (
                    name.clone(),
                    listeners.active_bound(),
                    listeners.preview_bound(),
                )
            })
            .collect()
    }
}

/// How long a daemon waits for the one it took over from, before it stops a color of a
/// rollout with these options: that one drains the rollout within the same timeouts
/// (its requests, then its WebSockets), plus a margin for its exit.
pub(crate) fn predecessor_bound(options: &teal_proxy::ProxyOptions) -> Duration {
    options.shutdown_grace + options.upgraded_drain_timeout + PREDECESSOR_EXIT
}

/// The margin for a daemon that has drained to exit.
const PREDECESSOR_EXIT: Duration = Duration::from_secs(10);

/// How long a daemon whose takeover failed waits for its instances to be ready again.
const RESUME_WARM: std::time::Duration = std::time::Duration::from_secs(5);

impl Quiesced<'_> {
    /// The takeover failed: supervise, reconcile and decide again. The instances are
    /// adopted anew as ready as they were when this daemon let go of them; the
    /// reconcilers still wait until the ones the proxies route to are ready (at most
    /// [`RESUME_WARM`]), so no route loses one that is only being probed again.
    pub async fn resume(self) {
        let daemon = self.daemon;
        if let Err(error) = daemon.platform.resume() {
            tracing::error!("cannot supervise the instances again: {error}");
        }
        let runtimes: Vec<(String, Arc<Runtime>)> = daemon
            .runtimes
            .lock()
            .expect("runtimes lock")
            .iter()
            .map(|(name, runtime)| (name.clone(), runtime.clone()))
            .collect();
        let deadline = tokio::time::Instant::now() + RESUME_WARM;
        while tokio::time::Instant::now() < deadline {
            let warm = runtimes.iter().all(|(name, runtime)| {
                let routes = runtime.proxy.routes();
                let ready: Vec<std::net::SocketAddr> = daemon
                    .platform
                    .observe(name)
                    .iter()
                    .flat_map(|group| &group.instances)
                    .filter(|instance| instance.ready)
                    .map(|instance| instance.addr)
                    .collect();
                [&routes.active, &routes.preview]
                    .into_iter()
                    .flatten()
                    .flat_map(|backend| &backend.instances)
                    .all(|addr| ready.contains(addr))
            });
            if warm {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for (_, runtime) in &runtimes {
            runtime.wake.notify_one();
        }
        drop(self.decisions);
        drop(self.passes);
    }

    /// The takeover succeeded: this daemon never decides, reconciles or supervises
    /// again (commands are answered 503), and says whom it handed over to.
    pub fn hand_over(self, successor: u32) {
        let daemon = self.daemon;
        std::mem::forget(self.decisions);
        std::mem::forget(self.passes);
        daemon.successor.send_replace(Some(successor));
    }
}

/// Stores one applied rollout; a changed template makes a new revision.
fn apply_rollout(
    writer: &crate::store::Writer<'_>,
    spec: &RolloutSpec,
    now: u64,
) -> anyhow::Result<ApplyResult> {
    let existing = writer.rollout(&spec.name)?;
    let status = existing
        .as_ref()
        .map(|e| e.status.clone())
        .unwrap_or_default();
    let latest_hash = match &existing {
        Some(existing) => writer
            .template(&spec.name, existing.status.revision)?
            .map(|t| t.hash()),
        None => None,
    };
    let template_hash = spec.template.hash();
    let policy = Policy::from(spec);
    let (status, outcome, notes) = if latest_hash.as_deref() != Some(template_hash.as_str()) {
        let revision = status.revision + 1;
        writer.put_revision(&spec.name, revision, &spec.template, "apply", now)?;
        let transition = status
            .on(
                Event::Applied {
                    revision,
                    template_hash,
                },
                &policy,
                now,
            )
            .map_err(|refusal| anyhow::anyhow!("rollout {}: {refusal}", spec.name))?;
        let outcome = if existing.is_none() {
            "created".to_owned()
        } else {
            format!("revision {revision}")
        };
        (transition.status, outcome, transition.notes)
    } else if existing.as_ref().is_some_and(|e| &e.spec != spec) {
        (
            status,
            "configured".to_owned(),
            vec!["settings changed; same template, no new revision".to_owned()],
        )
    } else {
        (status, "unchanged".to_owned(), Vec::new())
    };
    if outcome != "unchanged" {
        writer.put_rollout(spec, &status, now)?;
        writer.record(&spec.name, "apply", &notes, now)?;
    }
    Ok(ApplyResult {
        kind: "Rollout".into(),
        name: spec.name.clone(),
        outcome,
        revision: Some(status.revision),
    })
}

/// Reads every proxy's counters once a second until the daemon is gone.
async fn sample_traffic(daemon: std::sync::Weak<Daemon>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(traffic::INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let runtimes: Vec<_> = daemon
            .runtimes
            .lock()
            .expect("runtimes lock")
            .values()
            .cloned()
            .collect();
        let now = now_ms();
        for runtime in runtimes {
            runtime
                .traffic
                .lock()
                .expect("traffic lock")
                .record(&runtime.proxy, now);
        }
    }
}
