//! A rollout's active and preview listeners.
//!
//! Binding is separate from serving so an apply can bind every new address first and
//! be rejected, with nothing changed, when one is taken.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use teal_core::spec::RolloutSpec;
use teal_proxy::{Proxy, Role};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The configured addresses a rollout listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    active: Option<SocketAddr>,
    preview: Option<SocketAddr>,
}

impl Addresses {
    /// True when these are the addresses `spec` asks for.
    pub fn matches(&self, spec: &RolloutSpec) -> bool {
        self.active == Some(spec.strategy.active_listen)
            && self.preview == spec.strategy.preview_listen
    }
}

/// One listener being served; dropping it stops accepting.
struct Served {
    configured: SocketAddr,
    bound: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// The listeners a rollout serves now.
#[derive(Default)]
pub struct Listeners {
    active: Option<Served>,
    preview: Option<Served>,
}

/// What one listener should become.
enum Plan {
    /// Keep the one already serving the same configured address.
    Keep,
    /// Serve this newly bound socket instead.
    Serve(SocketAddr, TcpListener),
    /// Stop listening.
    Close,
}

/// Sockets bound for a spec, not yet served.
pub struct Pending {
    active: Plan,
    preview: Plan,
}

impl Listeners {
    /// No listeners.
    pub fn none() -> Listeners {
        Listeners::default()
    }

    /// The configured addresses.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            active: self.active.as_ref().map(|s| s.configured),
            preview: self.preview.as_ref().map(|s| s.configured),
        }
    }

    /// Where the active listener is bound.
    pub fn active_bound(&self) -> Option<SocketAddr> {
        self.active.as_ref().map(|s| s.bound)
    }

    /// Where the preview listener is bound.
    pub fn preview_bound(&self) -> Option<SocketAddr> {
        self.preview.as_ref().map(|s| s.bound)
    }

    /// Binds what `spec` needs that `current` does not already serve.
    pub async fn bind(spec: &RolloutSpec, current: Option<&Addresses>) -> anyhow::Result<Pending> {
        let strategy = &spec.strategy;
        let active = plan(
            Some(strategy.active_listen),
            current.and_then(|c| c.active),
            "active",
        )
        .await?;
        let preview = plan(
            strategy.preview_listen,
            current.and_then(|c| c.preview),
            "preview",
        )
        .await?;
        Ok(Pending { active, preview })
    }
}

async fn plan(
    wanted: Option<SocketAddr>,
    current: Option<SocketAddr>,
    role: &str,
) -> anyhow::Result<Plan> {
    match wanted {
        None => Ok(Plan::Close),
        Some(wanted) if Some(wanted) == current => Ok(Plan::Keep),
        Some(wanted) => {
            let listener = TcpListener::bind(wanted)
                .await
                .with_context(|| format!("cannot listen on {wanted} for the {role} route"))?;
            Ok(Plan::Serve(wanted, listener))
        }
    }
}

impl Pending {
    /// Starts serving the new sockets through `proxy`, replacing what `listeners` held.
    pub fn serve(self, proxy: &Arc<Proxy>, listeners: &mut Listeners) {
        apply(self.active, &mut listeners.active, proxy, Role::Active);
        apply(self.preview, &mut listeners.preview, proxy, Role::Preview);
    }
}

fn apply(plan: Plan, slot: &mut Option<Served>, proxy: &Arc<Proxy>, role: Role) {
    match plan {
        Plan::Keep => {}
        Plan::Close => *slot = None,
        Plan::Serve(configured, listener) => {
            let bound = listener.local_addr().unwrap_or(configured);
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                if let Err(error) = teal_proxy::serve(listener, proxy, role, shutdown).await {
                    tracing::error!("{role:?} listener on {bound} failed: {error}");
                }
            });
            *slot = Some(Served {
                configured,
                bound,
                _stop: stop,
            });
        }
    }
}

impl Pending {
    /// Changes nothing (a stored rollout whose address could not be bound).
    pub fn nothing() -> Pending {
        Pending {
            active: Plan::Keep,
            preview: Plan::Keep,
        }
    }
}
