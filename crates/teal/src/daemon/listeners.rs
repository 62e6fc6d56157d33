//! A rollout's active and preview listeners.
//!
//! Binding is separate from serving so an apply can bind every new address first and
//! be rejected, with nothing changed, when one is taken. A daemon that takes over from
//! a running one serves the sockets it was handed instead of binding (see
//! `crate::handoff`), and keeps a duplicate of every socket it serves to hand on.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use anyhow::Context;
use teal_core::spec::{RolloutSpec, TlsFiles};
use teal_proxy::{Proxy, Role, Tls, TlsSetting};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    /// Changed in place when a spec keeps the address but not the certificate.
    tls: TlsSetting,
    /// A duplicate of the listening socket, for a daemon that takes over (None if it
    /// could not be duplicated: that successor binds the address itself).
    socket: Option<OwnedFd>,
    /// The accept loop; it ends once its connections are done after the stop.
    task: JoinHandle<()>,
    _stop: oneshot::Sender<()>,
}

/// The sockets a previous daemon served for one rollout, each with the address it was
/// configured for.
#[derive(Default)]
pub struct Handed {
    /// The active route's socket.
    pub active: Option<(SocketAddr, TcpListener)>,
    /// The preview route's socket.
    pub preview: Option<(SocketAddr, TcpListener)>,
}

/// A served socket, duplicated for a daemon that takes over.
pub struct HandoffSocket {
    /// The address the spec asks for (port 0 included).
    pub configured: SocketAddr,
    /// Where it is bound.
    pub bound: SocketAddr,
    /// The listening socket itself.
    pub socket: OwnedFd,
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
    /// Keep the socket serving the same configured address; new connections get this
    /// TLS (None: plain).
    Update(Option<Tls>),
    /// Serve this newly bound socket instead, with this TLS.
    Serve(SocketAddr, TcpListener, Option<Tls>),
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

    /// Whether the active and the preview listener serve TLS now.
    pub fn tls(&self) -> (bool, bool) {
        let serves_tls = |served: &Option<Served>| {
            served
                .as_ref()
                .is_some_and(|served| served.tls.current().is_some())
        };
        (serves_tls(&self.active), serves_tls(&self.preview))
    }

    /// Binds what `spec` needs that `current` does not already serve; any failure
    /// refuses the whole spec.
    pub async fn bind(spec: &RolloutSpec, current: Option<&Addresses>) -> anyhow::Result<Pending> {
        let strategy = &spec.strategy;
        let active = plan(
            Some(strategy.active_listen),
            current.and_then(|c| c.active),
            None,
            strategy.active_tls.as_ref(),
            "active",
        )
        .await?;
        let preview = plan(
            strategy.preview_listen,
            current.and_then(|c| c.preview),
            None,
            strategy.preview_tls.as_ref(),
            "preview",
        )
        .await?;
        Ok(Pending { active, preview })
    }

    /// What a stored rollout listens on when the daemon starts: the `handed` sockets
    /// (a takeover) where they were configured for the address the spec asks for, new
    /// ones elsewhere. A handed socket that cannot be served (its certificate files no
    /// longer load) is an error, and the takeover must be refused: the daemon that
    /// handed it serves it still. An address that cannot be bound is only warned
    /// about; the reconciler keeps trying.
    pub async fn start(name: &str, spec: &RolloutSpec, handed: Handed) -> anyhow::Result<Pending> {
        let strategy = &spec.strategy;
        let active = start_role(
            name,
            Some(strategy.active_listen),
            handed.active,
            strategy.active_tls.as_ref(),
            "active",
        )
        .await?;
        let preview = start_role(
            name,
            strategy.preview_listen,
            handed.preview,
            strategy.preview_tls.as_ref(),
            "preview",
        )
        .await?;
        Ok(Pending { active, preview })
    }

    /// Duplicates of the served sockets, (active, preview), for a daemon that takes over.
    pub fn handoff_sockets(&self) -> (Option<HandoffSocket>, Option<HandoffSocket>) {
        let duplicate = |served: &Option<Served>| {
            let served = served.as_ref()?;
            let socket = served.socket.as_ref()?.try_clone().ok()?;
            Some(HandoffSocket {
                configured: served.configured,
                bound: served.bound,
                socket,
            })
        };
        (duplicate(&self.active), duplicate(&self.preview))
    }

    /// Stops accepting (the socket stays open wherever else it is held, as in a
    /// successor daemon); returns the accept loops, which end once the connections
    /// they serve are done (within the proxy's `shutdown_grace`).
    pub fn close(&mut self) -> Vec<JoinHandle<()>> {
        [self.active.take(), self.preview.take()]
            .into_iter()
            .flatten()
            .map(|served| served.task)
            .collect()
    }
}

async fn start_role(
    name: &str,
    wanted: Option<SocketAddr>,
    handed: Option<(SocketAddr, TcpListener)>,
    tls: Option<&TlsFiles>,
    role: &str,
) -> anyhow::Result<Plan> {
    let serves_handed = handed
        .as_ref()
        .is_some_and(|(configured, _)| Some(*configured) == wanted);
    match plan(wanted, None, handed, tls, role).await {
        Ok(plan) => Ok(plan),
        Err(error) if serves_handed => Err(error.context(format!(
            "rollout {name}: cannot serve the {role} socket the running daemon handed over"
        ))),
        Err(error) => {
            tracing::warn!("rollout {name}: {error:#}; the reconciler keeps trying to bind it");
            Ok(Plan::Keep)
        }
    }
}

async fn plan(
    wanted: Option<SocketAddr>,
    current: Option<SocketAddr>,
    handed: Option<(SocketAddr, TcpListener)>,
    tls: Option<&TlsFiles>,
    role: &str,
) -> anyhow::Result<Plan> {
    let Some(wanted) = wanted else {
        return Ok(Plan::Close);
    };
    // Loaded on every apply, so files that do not hold a usable certificate and key
    // refuse the apply before anything changes.
    let tls = tls
        .map(|files| Tls::load(&files.cert_file, &files.key_file))
        .transpose()
        .with_context(|| format!("cannot serve HTTPS on {wanted} for the {role} route"))?;
    if Some(wanted) == current {
        return Ok(Plan::Update(tls));
    }
    if let Some((configured, listener)) = handed
        && configured == wanted
    {
        return Ok(Plan::Serve(wanted, listener, tls));
    }
    let listener = TcpListener::bind(wanted)
        .await
        .with_context(|| format!("cannot listen on {wanted} for the {role} route"))?;
    Ok(Plan::Serve(wanted, listener, tls))
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
        Plan::Update(tls) => {
            if let Some(served) = slot {
                served.tls.set(tls);
            }
        }
        Plan::Close => *slot = None,
        Plan::Serve(configured, listener, tls) => {
            let bound = listener.local_addr().unwrap_or(configured);
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let proxy = proxy.clone();
            let tls = TlsSetting::new(tls);
            let setting = tls.clone();
            let socket = listener
                .as_fd()
                .try_clone_to_owned()
                .inspect_err(|error| {
                    tracing::warn!(
                        "cannot duplicate the {role:?} listener on {bound} ({error}); a daemon that takes over binds it anew"
                    );
                })
                .ok();
            let task = tokio::spawn(async move {
                if let Err(error) =
                    teal_proxy::serve_tls(listener, proxy, role, setting, shutdown).await
                {
                    tracing::error!("{role:?} listener on {bound} failed: {error}");
                }
            });
            *slot = Some(Served {
                configured,
                bound,
                tls,
                socket,
                task,
                _stop: stop,
            });
        }
    }
}
