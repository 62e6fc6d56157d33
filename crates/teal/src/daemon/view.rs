//! Rollouts as people see them: the stored status joined with what runs.

use teal_core::Color;
use teal_core::api::{ColorView, InstanceView, RolloutView, RoutesView};
use teal_core::rollout::{Policy, Stage};

use super::Daemon;
use crate::store::{StoredRollout, StoredRun};

pub(super) fn run_view(run: &StoredRun) -> teal_core::api::AnalysisRunView {
    teal_core::api::AnalysisRunView::new(run.id, run.kind, run.revision, &run.run, run.updated_at)
}

impl Daemon {
    pub(super) fn view(&self, name: &str, stored: &StoredRollout) -> RolloutView {
        let spec = &stored.spec;
        let status = &stored.status;
        let policy = Policy::from(spec);
        let (phase, reason) = status.phase();
        let world = status.world(&policy);
        let groups = self.platform.observe(name);
        let runtime = self.runtime(name);
        let ((active_bound, preview_bound), (active_tls, preview_tls)) = runtime
            .as_ref()
            .map(|r| {
                let listeners = r.listeners.lock().expect("listeners lock");
                (
                    (listeners.active_bound(), listeners.preview_bound()),
                    listeners.tls(),
                )
            })
            // Not served (yet): what the spec asks for.
            .unwrap_or((
                (None, None),
                (
                    spec.strategy.active_tls.is_some(),
                    spec.strategy.preview_tls.is_some(),
                ),
            ));

        let role = |color: Color| -> &'static str {
            if status.stable.as_ref().is_some_and(|s| s.color == color) {
                "active"
            } else if let Some(candidate) =
                status.candidate.as_ref().filter(|c| c.slot.color == color)
            {
                if matches!(candidate.stage, Stage::Aborted { .. }) {
                    "aborted"
                } else {
                    "preview"
                }
            } else if status
                .retiring
                .as_ref()
                .is_some_and(|r| r.slot.color == color)
            {
                "warm"
            } else {
                "stopping"
            }
        };
        let instances_of = |group: &teal_platform::GroupStatus| -> Vec<InstanceView> {
            group
                .instances
                .iter()
                .map(|i| InstanceView {
                    id: i.id.clone(),
                    addr: i.addr.to_string(),
                    pid: i.pid,
                    ready: i.ready,
                    restarts: i.restarts,
                    problem: i.problem.clone(),
                })
                .collect()
        };
        let colors = Color::ALL
            .into_iter()
            .filter_map(|color| {
                let Some(deployment) = world.deployment(color) else {
                    // Not wanted any more but still running: its stop is draining
                    // requests and WebSockets in the background.
                    let group = groups
                        .iter()
                        .find(|g| g.color == color && !g.instances.is_empty())?;
                    let instances = instances_of(group);
                    return Some(ColorView {
                        color,
                        revision: group.revision,
                        role: "stopping".to_owned(),
                        replicas: 0,
                        ready: instances.iter().filter(|i| i.ready).count() as u32,
                        instances,
                    });
                };
                let instances: Vec<InstanceView> = groups
                    .iter()
                    .find(|g| g.color == color && g.template_hash == deployment.template_hash)
                    .map(instances_of)
                    .unwrap_or_default();
                Some(ColorView {
                    color,
                    revision: deployment.revision,
                    role: role(color).to_owned(),
                    replicas: deployment.replicas,
                    ready: instances.iter().filter(|i| i.ready).count() as u32,
                    instances,
                })
            })
            .collect();

        let preview_match = {
            let matcher = &spec.strategy.preview_match;
            let mut lines = Vec::new();
            if let Some(cookie) = &matcher.cookie {
                lines.push(format!("cookie {}={}", cookie.name, cookie.value));
            }
            if let Some(header) = &matcher.header {
                lines.push(format!("header {}: {}", header.name, header.value));
            }
            lines
        };

        RolloutView {
            name: name.to_owned(),
            phase,
            reason: reason.map(str::to_owned),
            message: status.message(&policy),
            revision: status.revision,
            active_color: status.stable.as_ref().map(|s| s.color),
            active_revision: status.stable.as_ref().map(|s| s.revision),
            preview_revision: status
                .candidate
                .as_ref()
                .filter(|c| !matches!(c.stage, Stage::Aborted { .. }))
                .map(|c| c.slot.revision),
            active_listen: active_bound
                .unwrap_or(spec.strategy.active_listen)
                .to_string(),
            active_tls,
            preview_listen: preview_bound
                .or(spec.strategy.preview_listen)
                .map(|a| a.to_string()),
            preview_tls,
            preview_match,
            routes: runtime
                .as_ref()
                .map(|r| {
                    let (active, preview) = *r.routes.lock().expect("routes lock");
                    RoutesView { active, preview }
                })
                .unwrap_or_default(),
            colors,
            updated_at_ms: stored.updated_at,
            traffic: runtime
                .as_ref()
                .map(|r| r.traffic.lock().expect("traffic lock").summary())
                .unwrap_or_default(),
            status: status.clone(),
            analysis: self
                .store
                .analysis_runs(name, Some(status.revision))
                .ok()
                .and_then(|mut runs| runs.pop())
                .map(|run| run_view(&run)),
        }
    }
}
