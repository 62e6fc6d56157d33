//! One reconciler per rollout: observe, decide (in the core), act, and say when to look
//! again. Every pass is idempotent; it never knows why it was woken.

use std::sync::Arc;
use std::time::Duration;

use teal_core::Color;
use teal_core::rollout::{Event, Policy, Status};
use teal_core::spec::RolloutSpec;
use teal_core::world::{Deployment, Effect, World, converge};
use teal_platform::{GroupKey, GroupSpec, GroupStatus};
use teal_proxy::{Backend, ProxyOptions, RouteTable};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listeners::Listeners;
use super::{Daemon, Runtime, now_ms};

/// Even with nothing to wake it, a reconciler looks again this often.
const RESYNC: Duration = Duration::from_secs(5);

/// The colors being drained and stopped in the background, one slot per color.
///
/// A stop waits for the color's requests (up to `drainTimeoutSeconds`) and then for
/// its WebSockets (up to `proxy.upgradedDrainTimeout`, minutes by default); a pass
/// that waited for that would hold up every other effect and command of the rollout.
#[derive(Default)]
pub(super) struct Stops([Option<PendingStop>; 2]);

struct PendingStop {
    /// Sent `true` to give the stop up before it stops anything.
    cancel: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Stops {
    fn slot(&mut self, color: Color) -> &mut Option<PendingStop> {
        &mut self.0[usize::from(color == Color::Green)]
    }

    /// Gives up every stop still draining (the rollout is deleted or the daemon
    /// shuts down, and stops its instances itself).
    pub(super) fn cancel_all(&mut self) {
        for pending in self.0.iter_mut().filter_map(Option::take) {
            let _ = pending.cancel.send(true);
        }
    }
}

/// Runs until the rollout is deleted or the daemon stops.
pub(super) async fn run(
    daemon: Arc<Daemon>,
    name: String,
    runtime: Arc<Runtime>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut platform_changes = daemon.platform.changed();
    loop {
        let outcome = {
            // A takeover waits for the pass under way and keeps new ones from starting.
            let _pass = daemon.passes.read().await;
            pass(&daemon, &name, &runtime).await
        };
        let wait = match outcome {
            Ok(Some(wake_at)) => {
                Duration::from_millis(wake_at.saturating_sub(now_ms())).min(RESYNC)
            }
            Ok(None) => RESYNC,
            Err(error) => {
                tracing::error!("rollout {name}: reconcile failed: {error:#}");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = runtime.wake.notified() => {}
            _ = platform_changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

/// One pass; returns when time alone will change something.
async fn pass(
    daemon: &Arc<Daemon>,
    name: &str,
    runtime: &Arc<Runtime>,
) -> anyhow::Result<Option<u64>> {
    let Some((spec, status)) = decide(daemon, name, runtime).await? else {
        return Ok(None);
    };
    super::analysis::sync(
        daemon,
        name,
        &mut runtime.analysis.lock().expect("analysis lock"),
        &runtime.proxy,
        &spec,
        &status,
    );
    let policy = Policy::from(&spec);
    let desired = status.world(&policy);
    settle_stops(daemon, name, runtime, &spec, &desired).await;
    let groups = daemon.platform.observe(name);
    let routes = *runtime.routes.lock().expect("routes lock");
    let observed = World {
        blue: deployment_of(&groups, Color::Blue),
        green: deployment_of(&groups, Color::Green),
        active: routes.0,
        preview: routes.1,
    };
    for effect in converge(&desired, &observed) {
        act(daemon, name, runtime, &spec, effect).await?;
    }
    publish_routes(daemon, name, runtime, &spec);
    Ok(status.next_wake(&policy))
}

/// Feeds what the platform sees and the time to the state machine; stores a changed
/// status before acting on it.
async fn decide(
    daemon: &Daemon,
    name: &str,
    runtime: &Runtime,
) -> anyhow::Result<Option<(RolloutSpec, Status)>> {
    let _decision = daemon.decisions.lock().await;
    let Some(stored) = daemon.store.rollout(name)? else {
        return Ok(None);
    };
    ensure_listeners(name, runtime, &stored.spec).await;
    let options = proxy_options(&stored.spec);
    if runtime.proxy.options() != options {
        runtime.proxy.set_options(options);
    }
    let policy = Policy::from(&stored.spec);
    let now = now_ms();
    let mut status = stored.status.clone();
    let mut notes = Vec::new();
    let mut events: Vec<Event> = daemon
        .platform
        .observe(name)
        .iter()
        .map(|group| Event::Observed {
            color: group.color,
            template_hash: group.template_hash.clone(),
            ready: group.instances.iter().filter(|i| i.ready).count() as u32,
            problem: group.instances.iter().find_map(|i| i.problem.clone()),
        })
        .collect();
    events.push(Event::TimePassed);
    for event in events {
        // Observations and time are never refused; a refusal here is a bug worth logging.
        match status.on(event, &policy, now) {
            Ok(transition) => {
                status = transition.status;
                notes.extend(transition.notes);
            }
            Err(refusal) => tracing::error!("rollout {name}: reconciler event refused: {refusal}"),
        }
    }
    if status != stored.status {
        daemon.store.write(|writer| {
            writer.put_rollout(&stored.spec, &status, now)?;
            writer.record(name, "reconciler", &notes, now)
        })?;
        for note in &notes {
            tracing::info!("rollout {name}: {note}");
        }
        super::analysis::notify(&stored.spec, &stored.status, &status);
        daemon.changes.send_modify(|n| *n += 1);
    }
    Ok(Some((stored.spec, status)))
}

/// Binds the listeners the spec asks for that are not served (an address that was
/// taken when the daemon started, say). Runs under `decisions`, so it never races an
/// apply binding the same address.
async fn ensure_listeners(name: &str, runtime: &Runtime, spec: &RolloutSpec) {
    let current = runtime
        .listeners
        .lock()
        .expect("listeners lock")
        .addresses();
    if current.matches(spec) {
        return;
    }
    match Listeners::bind(spec, Some(&current)).await {
        Ok(pending) => {
            pending.serve(
                &runtime.proxy,
                &mut runtime.listeners.lock().expect("listeners lock"),
            );
            tracing::info!("rollout {name}: listening again");
        }
        Err(error) => tracing::warn!("rollout {name}: {error:#}; retrying"),
    }
}

fn deployment_of(groups: &[GroupStatus], color: Color) -> Option<Deployment> {
    groups
        .iter()
        .find(|g| g.color == color)
        .map(|group| Deployment {
            revision: group.revision,
            template_hash: group.template_hash.clone(),
            replicas: group.replicas,
        })
}

async fn act(
    daemon: &Arc<Daemon>,
    name: &str,
    runtime: &Arc<Runtime>,
    spec: &RolloutSpec,
    effect: Effect,
) -> anyhow::Result<()> {
    let key = |color| GroupKey {
        rollout: name.to_owned(),
        color,
    };
    match effect {
        Effect::Start { color, deployment } => {
            let template = daemon
                .store
                .template(name, deployment.revision)?
                .ok_or_else(|| {
                    anyhow::anyhow!("revision {} has no stored template", deployment.revision)
                })?;
            tracing::info!(
                "rollout {name}: starting revision {} in {color} ({} instances)",
                deployment.revision,
                deployment.replicas
            );
            daemon
                .platform
                .start(
                    key(color),
                    GroupSpec {
                        revision: deployment.revision,
                        template_hash: deployment.template_hash,
                        template,
                        replicas: deployment.replicas,
                    },
                )
                .await?;
        }
        Effect::Scale { color, replicas } => daemon.platform.scale(&key(color), replicas).await,
        Effect::Relabel { color, revision } => daemon.platform.relabel(&key(color), revision),
        Effect::Route { active, preview } => {
            *runtime.routes.lock().expect("routes lock") = (active, preview);
            // Publish at once: the stop that may follow drains a color only after no new
            // request can reach it.
            publish_routes(daemon, name, runtime, spec);
        }
        Effect::Stop { color } => {
            let mut stops = runtime.stops.lock().expect("stops lock");
            let slot = stops.slot(color);
            // Every pass asks again until the color is gone: one stop at a time.
            if slot
                .as_ref()
                .is_some_and(|pending| !pending.handle.is_finished())
            {
                return Ok(());
            }
            let (cancel, cancelled) = watch::channel(false);
            let handle = tokio::spawn(drain_and_stop(
                daemon.clone(),
                key(color),
                runtime.clone(),
                spec.strategy.drain_timeout,
                cancelled,
            ));
            *slot = Some(PendingStop { cancel, handle });
        }
    }
    Ok(())
}

/// Drains the color, then stops it and wakes the reconciler; gives up, leaving the
/// color running, when cancelled before it stops anything.
async fn drain_and_stop(
    daemon: Arc<Daemon>,
    key: GroupKey,
    runtime: Arc<Runtime>,
    drain_timeout: Duration,
    mut cancelled: watch::Receiver<bool>,
) {
    let GroupKey {
        rollout: name,
        color,
    } = &key;
    // A dropped sender cancels too: nobody is left to want the stop.
    let drained = tokio::select! {
        drained = runtime.proxy.drain(*color, drain_timeout) => drained,
        _ = cancelled.wait_for(|cancel| *cancel) => return,
    };
    if !drained {
        tracing::warn!(
            "rollout {name}: {color} still had requests or connections open after draining; stopping it anyway"
        );
    }
    tokio::select! {
        () = wait_for_predecessor(&daemon, name, &runtime) => {}
        _ = cancelled.wait_for(|cancel| *cancel) => return,
    }
    // Stopping changes the world: not while a takeover holds the passes.
    let _pass = tokio::select! {
        pass = daemon.passes.read() => pass,
        _ = cancelled.wait_for(|cancel| *cancel) => return,
    };
    if *cancelled.borrow() {
        return;
    }
    tracing::info!("rollout {name}: stopping {color}");
    daemon.platform.stop(&key).await;
    runtime.wake.notify_one();
}

/// Before a pass observes the world: a color that is being stopped but is wanted
/// again is either kept (it runs what is wanted: the stop is given up) or replaced
/// (its WebSockets are closed now rather than waited for, its requests drained, and
/// it is stopped here, so the pass's Start finds the color free).
///
/// The background stop is always cancelled first, never awaited while it might still
/// wait for the passes lock this pass holds (a takeover queued for it would deadlock
/// the three): cancelled, it returns at once, unless it is stopping the color already,
/// which ends on its own.
async fn settle_stops(
    daemon: &Daemon,
    name: &str,
    runtime: &Runtime,
    spec: &RolloutSpec,
    desired: &World,
) {
    for color in Color::ALL {
        let Some(wanted) = desired.deployment(color) else {
            continue;
        };
        let Some(pending) = runtime.stops.lock().expect("stops lock").slot(color).take() else {
            continue;
        };
        if pending.handle.is_finished() {
            continue;
        }
        let _ = pending.cancel.send(true);
        let _ = pending.handle.await;
        let groups = daemon.platform.observe(name);
        let Some(running) = deployment_of(&groups, color) else {
            continue;
        };
        if running.template_hash == wanted.template_hash {
            tracing::info!("rollout {name}: {color} is wanted again; it keeps running");
            continue;
        }
        runtime.proxy.close_upgraded(color);
        if !runtime
            .proxy
            .drain(color, spec.strategy.drain_timeout)
            .await
        {
            tracing::warn!(
                "rollout {name}: {color} still had requests in flight after draining; stopping it anyway"
            );
        }
        // Not waited for here, inside the pass: the color is replaced on purpose, and
        // its WebSockets are closed at once (the old daemon's too, by the stop).
        tracing::info!("rollout {name}: stopping {color} to replace it");
        daemon
            .platform
            .stop(&GroupKey {
                rollout: name.to_owned(),
                color,
            })
            .await;
    }
}

/// Before a color is stopped: the daemon this one took over from may still be
/// answering requests on it, or carrying its WebSockets.
async fn wait_for_predecessor(daemon: &Daemon, name: &str, runtime: &Runtime) {
    let bound = super::predecessor_bound(&runtime.proxy.options());
    if !daemon.wait_for_predecessor(bound).await {
        tracing::warn!(
            "rollout {name}: the daemon this one took over from still runs after {bound:?}; stopping anyway"
        );
    }
}

/// The proxy options a spec asks for: its `proxy` settings over the defaults.
pub(super) fn proxy_options(spec: &RolloutSpec) -> ProxyOptions {
    let settings = &spec.strategy.proxy;
    let mut options = ProxyOptions {
        // A listener that stops (a takeover) gives its requests as long as a switch does.
        shutdown_grace: spec.strategy.drain_timeout,
        ..ProxyOptions::default()
    };
    let limits = &mut options.limits;
    if let Some(timeout) = settings.connect_timeout {
        limits.connect_timeout = timeout;
    }
    if let Some(timeout) = settings.response_header_timeout {
        limits.response_header_timeout = timeout;
    }
    if let Some(timeout) = settings.upstream_idle_timeout {
        limits.upstream_idle_timeout = timeout;
    }
    if let Some(bytes) = settings.max_request_header_bytes {
        limits.max_request_header_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    if let Some(bytes) = settings.max_request_body_bytes {
        limits.max_request_body_bytes = bytes;
    }
    if let Some(failures) = settings.passive_health_failures {
        options.health.consecutive_failures = failures;
    }
    if let Some(cooldown) = settings.passive_health_cooldown {
        options.health.cooldown = cooldown;
    }
    if let Some(protocol) = settings.upstream_protocol {
        options.upstream_protocol = protocol;
    }
    if let Some(timeout) = settings.upgraded_drain_timeout {
        options.upgraded_drain_timeout = timeout;
    }
    options
}

/// Swaps the proxy's route table when the routes or the set of ready instances changed.
fn publish_routes(daemon: &Daemon, name: &str, runtime: &Runtime, spec: &RolloutSpec) {
    let (active, preview) = *runtime.routes.lock().expect("routes lock");
    let groups = daemon.platform.observe(name);
    let backend = |color: Option<Color>| {
        let color = color?;
        let group = groups.iter().find(|g| g.color == color);
        Some(Backend {
            color,
            revision: group.map_or(0, |g| g.revision),
            instances: group
                .map(|g| {
                    g.instances
                        .iter()
                        .filter(|i| i.ready)
                        .map(|i| i.addr)
                        .collect()
                })
                .unwrap_or_default(),
        })
    };
    let table = RouteTable {
        active: backend(active),
        preview: backend(preview),
        preview_match: spec.strategy.preview_match.clone(),
    };
    if *runtime.proxy.routes() != table {
        runtime.proxy.set_routes(table);
    }
}
