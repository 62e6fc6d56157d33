//! Analysis at the edge: runs what the state machine asks for and reports back.
//!
//! The core says *when* analysis runs (a candidate in `Analyzing`, a post-promotion
//! analysis after a switch) and what a verdict does. Here, after every reconcile
//! pass, [`sync`] makes the running tasks match: one analysis run per rollout (its
//! measurements taken by the providers and stored after each one, so a restarted
//! daemon resumes it), the preview load test beside a pre-promotion run, the
//! `rollback` webhooks polled during analysis, and the `confirm-promotion` webhooks
//! polled while a promotion waits for them. A finished run becomes an
//! [`Event::AnalysisCompleted`] through the same path as a person's command.
//!
//! Phase changes are posted to the rollout's `notifications` by [`notify`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use teal_core::Color;
use teal_core::analysis::{
    AnalysisRun, BuiltinMetric, Measure, Measurement, Metric, Phase as AnalysisPhase, Provider,
    Service, TealArgs, Value,
};
use teal_core::metrics::quantile_from_buckets;
use teal_core::rollout::{AnalysisKind, Event, Millis, Revision, Stage, Status};
use teal_core::spec::{
    AnalysisTemplateSpec, LoadTest, NotificationFormat, RolloutAnalysis, RolloutSpec, WebhookKind,
};
use teal_proxy::{ColorStats, LATENCY_BUCKETS_MS, Proxy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Daemon, DaemonError, now_ms};
use crate::http_client::{self, Outgoing};
use crate::providers;

/// How often gates (rollback and confirm-promotion webhooks) are asked.
const GATE_POLL: Duration = Duration::from_secs(2);

/// Identifies one run: the state machine asks for (kind, revision) at `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunKey {
    kind: AnalysisKind,
    revision: Revision,
    since: Millis,
}

/// The analysis tasks of one rollout. Dropping it (the rollout was deleted) stops them.
#[derive(Default)]
pub(super) struct Tasks {
    run: Option<(RunKey, watch::Sender<bool>, JoinHandle<()>)>,
    gate: Option<((Revision, Millis), JoinHandle<()>)>,
}

impl Tasks {
    /// Stops every task now (a takeover). A measurement under way is lost; the run as
    /// stored resumes in whichever daemon reconciles next. Returns once none runs.
    pub(super) async fn halt(mut self) {
        let handles: Vec<JoinHandle<()>> = self
            .run
            .take()
            .map(|(_, _, handle)| handle)
            .into_iter()
            .chain(self.gate.take().map(|(_, handle)| handle))
            .collect();
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            let _ = handle.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some((_, _, handle)) = self.run.take() {
            handle.abort();
        }
        if let Some((_, handle)) = self.gate.take() {
            handle.abort();
        }
    }
}

/// Which colors a run reads.
#[derive(Clone, Copy, Debug)]
struct Colors {
    /// The color under analysis.
    analysed: Color,
    /// Behind the active route.
    active: Option<Color>,
    /// Behind the preview route.
    preview: Option<Color>,
}

/// Starts and stops tasks so they match `status`.
pub(super) fn sync(
    daemon: &Arc<Daemon>,
    name: &str,
    tasks: &mut Tasks,
    proxy: &Arc<Proxy>,
    spec: &RolloutSpec,
    status: &Status,
) {
    let stable_color = status.stable.as_ref().map(|s| s.color);
    let wanted = match (&status.candidate, &status.post_analysis) {
        (Some(candidate), _) if candidate.stage == Stage::Analyzing => Some((
            RunKey {
                kind: AnalysisKind::PrePromotion,
                revision: candidate.slot.revision,
                since: candidate.stage_since,
            },
            Colors {
                analysed: candidate.slot.color,
                active: stable_color,
                preview: Some(candidate.slot.color),
            },
        )),
        (None, Some(post)) if post.hold.is_none() => stable_color.map(|color| {
            (
                RunKey {
                    kind: AnalysisKind::PostPromotion,
                    revision: post.revision,
                    since: post.since,
                },
                Colors {
                    analysed: color,
                    active: Some(color),
                    preview: None,
                },
            )
        }),
        _ => None,
    };
    let current = tasks.run.as_ref().map(|(key, _, _)| *key);
    let wanted_key = wanted.map(|(key, _)| key);
    // A task that ended while the status still wants its run had its report refused
    // or lost: starting it again reports the stored verdict again.
    let finished = tasks
        .run
        .as_ref()
        .is_some_and(|(_, _, handle)| handle.is_finished());
    if current != wanted_key || finished {
        if let Some((_, cancel, _)) = tasks.run.take() {
            // The task terminates its run and stores it; nothing waits for that.
            let _ = cancel.send(true);
        }
        if let Some((key, colors)) = wanted {
            let (cancel, cancelled) = watch::channel(false);
            let handle = tokio::spawn(drive(
                daemon.clone(),
                name.to_owned(),
                proxy.clone(),
                spec.clone(),
                key,
                colors,
                cancelled,
            ));
            tasks.run = Some((key, cancel, handle));
        }
    }

    let gate = status
        .candidate
        .as_ref()
        .filter(|c| c.stage == Stage::AwaitingConfirmation)
        .map(|c| (c.slot.revision, c.stage_since));
    if tasks.gate.as_ref().map(|(key, _)| *key) != gate {
        if let Some((_, handle)) = tasks.gate.take() {
            handle.abort();
        }
        if let Some(key) = gate {
            let handle = tokio::spawn(confirm_promotion(
                daemon.clone(),
                name.to_owned(),
                spec.clone(),
                key.0,
            ));
            tasks.gate = Some((key, handle));
        }
    }
}

/// Runs one analysis to its end (or until cancelled), storing every measurement.
async fn drive(
    daemon: Arc<Daemon>,
    name: String,
    proxy: Arc<Proxy>,
    spec: RolloutSpec,
    key: RunKey,
    colors: Colors,
    mut cancelled: watch::Receiver<bool>,
) {
    let mut run = match daemon
        .store
        .analysis_run(&name, key.kind, key.revision, key.since)
    {
        Ok(Some(stored)) => stored.run,
        Ok(None) => match start_run(&daemon, &name, &spec, key, colors) {
            Ok(run) => {
                tracing::info!(
                    "rollout {name}: {} analysis of revision {} started ({} metric{})",
                    key.kind,
                    key.revision,
                    run.metrics.len(),
                    if run.metrics.len() == 1 { "" } else { "s" }
                );
                run
            }
            Err(message) => {
                tracing::warn!(
                    "rollout {name}: {} analysis cannot start: {message}",
                    key.kind
                );
                report(&daemon, &name, key, AnalysisPhase::Error, message).await;
                return;
            }
        },
        Err(error) => {
            tracing::error!("rollout {name}: reading an analysis run: {error:#}");
            return;
        }
    };
    save(&daemon, &name, key, &run);

    // A restarted daemon's proxy routes nothing until its reconciler has adopted the
    // instances again and published them: a load test or a built-in measurement
    // started before that would see teal's own 503s and blame the candidate for them.
    if !run.phase().is_completed() && !routed(&proxy, colors.analysed, &mut cancelled).await {
        stopped(&daemon, &name, key, &mut run);
        return;
    }
    let measuring_since = now_ms();

    let _load = match (key.kind, &spec.strategy.load_test) {
        (AnalysisKind::PrePromotion, Some(load)) if !run.phase().is_completed() => {
            preview_target(&daemon, &name, &spec).map(|target| {
                AbortOnDrop(tokio::spawn(load_test(
                    name.clone(),
                    target,
                    load.clone(),
                    cancelled.clone(),
                )))
            })
        }
        _ => None,
    };
    let rollback_hooks: Vec<_> = spec
        .strategy
        .webhooks
        .iter()
        .filter(|hook| hook.kind == WebhookKind::Rollback)
        .cloned()
        .collect();

    // Built-in metrics measure the traffic since their previous measurement; after a
    // restart, since the restart.
    let mut since_last: HashMap<String, [ColorStats; 2]> = HashMap::new();
    let snapshot = || [proxy.stats(Color::Blue), proxy.stats(Color::Green)];
    for metric in &run.metrics {
        since_last.insert(metric.metric.name.clone(), snapshot());
    }
    // A job gets the run's args in its environment; they never change during a run.
    let env: Vec<(String, String)> = run
        .args
        .0
        .iter()
        .map(|(k, v)| (format!("TEAL_ARG_{}", env_name(k)), v.clone()))
        .collect();

    loop {
        if run.phase().is_completed() {
            let message = run.message().unwrap_or_default();
            tracing::info!(
                "rollout {name}: {} analysis of revision {}: {}{}",
                key.kind,
                key.revision,
                run.phase(),
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            );
            report(&daemon, &name, key, run.phase(), message).await;
            return;
        }
        let now = now_ms();
        let due: Vec<Metric> = run
            .due(now)
            .into_iter()
            .filter(|metric| window_end(metric, measuring_since) <= now)
            .cloned()
            .collect();
        if !due.is_empty() {
            let measurements = join_all(due.iter().map(|metric| {
                let before = since_last.get(&metric.name).copied().unwrap_or_default();
                let after = snapshot();
                since_last.insert(metric.name.clone(), after);
                let env = &env;
                async move {
                    let started = now_ms();
                    let measurement = measure(metric, colors, &before, &after, env).await;
                    (metric.name.clone(), measurement, started, now_ms())
                }
            }))
            .await;
            for (metric, measurement, started, finished) in measurements {
                let _ = run.record(&metric, &measurement, started, finished);
            }
            save(&daemon, &name, key, &run);
            continue;
        }
        for hook in &rollback_hooks {
            let body = payload(
                &name,
                &spec,
                key.revision,
                "Analysis",
                &format!("{} analysis", key.kind),
            );
            let answer =
                http_client::send(Outgoing::post_json(&hook.url, body, hook.timeout)).await;
            if let Ok(answer) = answer
                && answer.status.is_success()
            {
                run.terminate();
                save(&daemon, &name, key, &run);
                let reason = format!(
                    "rollback webhook \"{}\" answered {}",
                    hook.name,
                    answer.status.as_u16()
                );
                tracing::warn!("rollout {name}: {reason}");
                let event = Event::AbortRequested { reason };
                if let Err(error) = daemon.command(&name, "webhook", event).await {
                    tracing::warn!("rollout {name}: {error}");
                }
                return;
            }
        }
        let next = run
            .metrics
            .iter()
            .filter_map(|metric| {
                let due = metric.due_at(run.started_at)?;
                Some(due.max(window_end(&metric.metric, measuring_since)))
            })
            .min()
            .map_or(now + 1000, |at| at.max(now));
        let mut wait = Duration::from_millis(next.saturating_sub(now));
        if !rollback_hooks.is_empty() {
            wait = wait.min(GATE_POLL);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancelled.changed() => {}
        }
        if *cancelled.borrow() {
            stopped(&daemon, &name, key, &mut run);
            return;
        }
    }
}

/// Ends a run that is no longer needed.
fn stopped(daemon: &Daemon, name: &str, key: RunKey, run: &mut AnalysisRun) {
    run.terminate();
    save(daemon, name, key, run);
    tracing::info!(
        "rollout {name}: {} analysis of revision {} stopped: no longer needed",
        key.kind,
        key.revision
    );
}

/// How long a run waits for the color it analyses to be routed to ready instances
/// before measuring anyway (then whatever teal answered counts: a candidate with no
/// ready instance for this long is not healthy).
const ROUTED_WAIT: Duration = Duration::from_secs(60);

/// Waits until the proxy routes some route to ready instances of `color` (at most
/// [`ROUTED_WAIT`]); false when the run was cancelled meanwhile.
async fn routed(proxy: &Proxy, color: Color, cancelled: &mut watch::Receiver<bool>) -> bool {
    let deadline = tokio::time::Instant::now() + ROUTED_WAIT;
    loop {
        if *cancelled.borrow() {
            return false;
        }
        let table = proxy.routes();
        let ready = [&table.active, &table.preview]
            .into_iter()
            .flatten()
            .any(|backend| backend.color == color && !backend.instances.is_empty());
        if ready || tokio::time::Instant::now() >= deadline {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = cancelled.changed() => {}
        }
    }
}

/// When a metric may first measure in a task that began measuring at `since`: a
/// built-in metric measures the traffic since its previous measurement or since then,
/// so it waits one window of traffic first, even when the stored run says it is
/// overdue (a restarted daemon), rather than measure an empty window.
fn window_end(metric: &Metric, since: Millis) -> Millis {
    since.saturating_add(u64::try_from(metric.first_window().as_millis()).unwrap_or(u64::MAX))
}

/// Creates a run from the rollout's templates and teal's args.
fn start_run(
    daemon: &Daemon,
    name: &str,
    spec: &RolloutSpec,
    key: RunKey,
    colors: Colors,
) -> Result<AnalysisRun, String> {
    let analysis: &RolloutAnalysis = match key.kind {
        AnalysisKind::PrePromotion => spec.strategy.pre_promotion_analysis.as_ref(),
        AnalysisKind::PostPromotion => spec.strategy.post_promotion_analysis.as_ref(),
    }
    .ok_or_else(|| format!("the spec no longer has {} analysis", key.kind))?;
    let mut templates = Vec::new();
    for template_name in &analysis.templates {
        templates.push(
            daemon
                .store
                .analysis_template(template_name)
                .map_err(|error| format!("{error:#}"))?
                .ok_or_else(|| {
                    format!(
                        "AnalysisTemplate \"{template_name}\" is not applied (teal apply -f it)"
                    )
                })?,
        );
    }
    let combined = AnalysisTemplateSpec::combine(templates)?;
    let preview_address = preview_target(daemon, name, spec).map(|t| t.address.to_string());
    let mut supplied = TealArgs {
        rollout: name.to_owned(),
        revision: key.revision,
        color: colors.analysed,
        preview_address,
    }
    .pairs();
    supplied.extend(
        analysis
            .args
            .iter()
            .map(|arg| (arg.name.clone(), arg.value.clone())),
    );
    AnalysisRun::start(&combined, &supplied, now_ms()).map_err(|error| error.to_string())
}

/// Takes one measurement.
async fn measure(
    metric: &Metric,
    colors: Colors,
    before: &[ColorStats; 2],
    after: &[ColorStats; 2],
    env: &[(String, String)],
) -> Measurement {
    match &metric.provider {
        Provider::Builtin(builtin) => {
            let color = match builtin.color {
                None => Some(colors.analysed),
                Some(Service::Active) => colors.active,
                Some(Service::Preview) => colors.preview.or(Some(colors.analysed)),
            };
            let Some(color) = color else {
                return Measurement::failed("no color is behind that service");
            };
            let index = usize::from(color == Color::Green);
            builtin_value(builtin, &before[index], &after[index])
        }
        Provider::Prometheus(prometheus) => providers::prometheus(prometheus).await,
        Provider::Web(web) => providers::web(web).await,
        Provider::Job(job) => providers::job(job, env).await,
        Provider::KubernetesJob(_) => Measurement::failed(
            "this job is a Kubernetes Job (job.spec), which only teal controller runs; on one machine use job.command",
        ),
    }
}

/// A built-in measure over the traffic between two readings of one color.
fn builtin_value(metric: &BuiltinMetric, before: &ColorStats, after: &ColorStats) -> Measurement {
    let served = after.since(before);
    let responses = served.responses();
    let errors = served.responses_5xx;
    let quantile = |q| {
        quantile_from_buckets(&LATENCY_BUCKETS_MS, &served.latency_buckets, q)
            .map_or_else(Measurement::no_data, |ms| {
                Measurement::of(Value::Number(ms))
            })
    };
    match metric.measure {
        Measure::RequestCount => Measurement::of(Value::Number(responses as f64)),
        Measure::ErrorCount => Measurement::of(Value::Number(errors as f64)),
        // No requests: no data, never a pass.
        Measure::SuccessRate if responses == 0 => Measurement::no_data(),
        Measure::SuccessRate => Measurement::of(Value::Number(
            (responses - errors) as f64 / responses as f64,
        )),
        Measure::LatencyP50 => quantile(0.5),
        Measure::LatencyP90 => quantile(0.9),
        Measure::LatencyP99 => quantile(0.99),
    }
}

fn env_name(arg: &str) -> String {
    arg.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn save(daemon: &Daemon, name: &str, key: RunKey, run: &AnalysisRun) {
    match daemon
        .store
        .put_analysis_run(name, key.kind, key.revision, key.since, run, now_ms())
    {
        Ok(_) => daemon.changes.send_modify(|n| *n += 1),
        Err(error) => tracing::error!("rollout {name}: storing an analysis run: {error:#}"),
    }
}

/// Reports a finished run to the state machine.
async fn report(daemon: &Daemon, name: &str, key: RunKey, phase: AnalysisPhase, message: String) {
    let event = Event::AnalysisCompleted {
        kind: key.kind,
        revision: key.revision,
        phase,
        message,
    };
    match daemon.command(name, "analysis", event).await {
        Ok(_) | Err(DaemonError::NotFound(_)) => {}
        Err(error) => tracing::warn!("rollout {name}: reporting analysis: {error}"),
    }
}

/// Where teal reaches the preview: its own listener, or the active listener with the
/// preview cookie or header.
#[derive(Clone, Debug)]
struct Target {
    address: SocketAddr,
    headers: Vec<(String, String)>,
}

fn preview_target(daemon: &Daemon, name: &str, spec: &RolloutSpec) -> Option<Target> {
    let (_, active, preview) = daemon
        .bound_addresses()
        .into_iter()
        .find(|(n, _, _)| n == name)?;
    if let Some(address) = preview {
        return Some(Target {
            address,
            headers: Vec::new(),
        });
    }
    let matcher = &spec.strategy.preview_match;
    let headers = match (&matcher.header, &matcher.cookie) {
        (Some(header), _) => vec![(header.name.clone(), header.value.clone())],
        (None, Some(cookie)) => vec![(
            "cookie".to_owned(),
            format!("{}={}", cookie.name, cookie.value),
        )],
        (None, None) => return None,
    };
    Some(Target {
        address: active?,
        headers,
    })
}

/// Sends `load` to the preview until its duration ends or the run does. Each of the
/// `concurrency` workers keeps one keep-alive connection and its share of the rate.
async fn load_test(name: String, target: Target, load: LoadTest, cancelled: watch::Receiver<bool>) {
    let started = tokio::time::Instant::now();
    let deadline = load.duration.map(|d| started + d);
    let workers = load.concurrency.max(1);
    let interval =
        Duration::from_secs_f64(f64::from(workers) / f64::from(load.requests_per_second.max(1)));
    tracing::info!(
        "rollout {name}: load test: {} requests/s over {workers} connection{} to {}",
        load.requests_per_second,
        if workers == 1 { "" } else { "s" },
        target.address
    );
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let target = target.clone();
            let load = load.clone();
            let sent = sent.clone();
            let mut cancelled = cancelled.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut path_index = worker as usize;
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = cancelled.changed() => return,
                    }
                    if *cancelled.borrow()
                        || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                    {
                        return;
                    }
                    let path = &load.paths[path_index % load.paths.len()];
                    path_index += 1;
                    let url = format!("http://{}{path}", target.address);
                    let mut request = Outgoing::get(&url, Duration::from_secs(10));
                    request.headers = target.headers.clone();
                    request.headers.extend(
                        load.headers
                            .iter()
                            .map(|h| (h.name.clone(), h.value.clone())),
                    );
                    let _ = http_client::send(request).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    join_all(tasks).await;
    tracing::info!(
        "rollout {name}: load test done: {} requests in {:.0}s",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// Asks every `confirm-promotion` webhook until all answer 2xx, then confirms.
async fn confirm_promotion(
    daemon: Arc<Daemon>,
    name: String,
    spec: RolloutSpec,
    revision: Revision,
) {
    let hooks: Vec<_> = spec
        .strategy
        .webhooks
        .iter()
        .filter(|hook| hook.kind == WebhookKind::ConfirmPromotion)
        .cloned()
        .collect();
    loop {
        let mut confirmed = true;
        for hook in &hooks {
            let body = payload(&name, &spec, revision, "Paused", "WaitingPromotion");
            match http_client::send(Outgoing::post_json(&hook.url, body, hook.timeout)).await {
                Ok(answer) if answer.status.is_success() => {}
                Ok(answer) => {
                    tracing::debug!(
                        "rollout {name}: confirm-promotion webhook \"{}\" answered {}",
                        hook.name,
                        answer.status
                    );
                    confirmed = false;
                }
                Err(error) => {
                    tracing::debug!(
                        "rollout {name}: confirm-promotion webhook \"{}\": {error}",
                        hook.name
                    );
                    confirmed = false;
                }
            }
        }
        if confirmed {
            let event = Event::PromotionConfirmed { revision };
            if let Err(error) = daemon.command(&name, "webhook", event).await {
                tracing::warn!("rollout {name}: {error}");
            }
            return;
        }
        tokio::time::sleep(GATE_POLL).await;
    }
}

/// The JSON teal posts to webhooks and notifications (Flagger's fields, teal's names).
fn payload(
    name: &str,
    spec: &RolloutSpec,
    revision: Revision,
    phase: &str,
    reason: &str,
) -> String {
    json!({
        "rollout": name,
        "revision": revision,
        "checksum": spec.template.hash(),
        "phase": phase,
        "reason": reason,
    })
    .to_string()
}

/// Posts a phase change to every notification URL of the rollout (in the background;
/// a failure is logged with the host only, since URLs may carry secrets).
pub(super) fn notify(spec: &RolloutSpec, before: &Status, after: &Status) {
    if spec.strategy.notifications.is_empty() || before.phase() == after.phase() {
        return;
    }
    let policy = teal_core::rollout::Policy::from(spec);
    let (phase, reason) = after.phase();
    let message = after.message(&policy);
    let revision = after.revision;
    let name = spec.name.clone();
    for notification in &spec.strategy.notifications {
        let body = match notification.format {
            NotificationFormat::Json => json!({
                "rollout": name,
                "revision": revision,
                "checksum": spec.template.hash(),
                "phase": phase.to_string(),
                "reason": reason,
                "message": message,
                "at": now_ms(),
            }),
            NotificationFormat::Slack => json!({
                "text": format!(
                    "teal: rollout *{name}* revision {revision} is {phase}{}: {message}",
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
            }),
        }
        .to_string();
        let url = notification.url.clone();
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(error) =
                http_client::send(Outgoing::post_json(&url, body, Duration::from_secs(10))).await
            {
                tracing::warn!("rollout {name}: notification not delivered: {error}");
            }
        });
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
