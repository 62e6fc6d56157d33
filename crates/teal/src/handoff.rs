//! Taking over from a running daemon without refusing a single connection.
//!
//! Every daemon listens on `handoff.sock` in its data directory. A new `teal server`
//! on the same data directory connects to it and takes over:
//!
//! 1. new → old: `Hello`.
//! 2. The old daemon stops every writer ([`Daemon::quiesce`]: the reconcile passes
//!    under way finish, commands wait, analysis stops, the platform stops supervising
//!    without touching a process), then offers its pid, its API socket and every
//!    rollout's listening sockets (passed as `SCM_RIGHTS` ancillary data) with the
//!    addresses they were configured for and where its routes point. It keeps
//!    accepting on them all along.
//! 3. The new daemon adopts the instances (ready when they were handed over ready),
//!    checks that the ones the old daemon routed to are ready, starts its reconcilers
//!    with the old routes, serves the sockets and answers `Ready`.
//! 4. The old daemon answers `Going` and stops accepting. A listening socket has one
//!    queue of pending connections, shared by every process that holds it, so from
//!    then on the new daemon accepts them all and none was ever refused. The old one
//!    answers the requests in flight and finishes the TLS handshakes under way; on
//!    each keep-alive connection it answers the next request with `Connection: close`
//!    (an HTTP/2 client gets a GOAWAY), closes the ones that stay idle for
//!    [`teal_proxy::IDLE_LINGER`], keeps its WebSockets until they end or the rollout's
//!    `upgradedDrainTimeout` passes, and exits without stopping an instance. Clients
//!    reconnect, to the new daemon, without ever meeting a connection cut under a
//!    request. The new daemon stops no color until the old one has exited (or the
//!    drain timeouts have passed).
//!
//! If anything fails before `Ready`, the old daemon carries on as it was and the new
//! one exits with the reason; so does a new daemon whose `Ready` is not answered with
//! `Going` (the old one gave up waiting for it). Only a process of the same user may
//! connect.
//!
//! Receiving descriptors as owned values without `unsafe` (which the workspace
//! forbids) is what `rustix`'s `recvmsg` offers; nix hands out raw descriptors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use teal_core::Color;
use teal_platform::LocalPlatform;
use teal_proxy::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::daemon::{Daemon, Handed, HandoffSocket, Inherited};

/// The socket in the data directory that a running daemon hands over on.
pub const SOCKET_FILE: &str = "handoff.sock";

/// How long a new daemon waits for the offer. The old daemon first lets the reconcile
/// passes under way finish (a color's drain runs beside them; only the stop that
/// follows it is waited for).
const OFFER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the old daemon waits for its successor to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new daemon waits for the adopted instances the old daemon routed to to
/// be ready (they are, unless a probe failed since) before it serves anyway (the old
/// daemon serves meanwhile).
const WARM_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connecting process has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors per message; one message carries at most 253 on Linux.
const FDS_PER_MESSAGE: usize = 64;
/// No message is this large; a longer length means the peer is not a teal daemon.
const MAX_MESSAGE: u32 = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Hello {
        pid: u32,
        version: String,
    },
    Offer(Offer),
    Refused {
        reason: String,
    },
    Ready,
    /// The old daemon's answer to `Ready`: it stops accepting now. Without it (the
    /// old daemon gave up waiting and carries on), the new one exits, so that two
    /// daemons never stay on one data directory.
    Going,
}

/// Everything the old daemon hands over. The descriptors follow the message in the
/// order the sockets appear here: the API first, then each rollout's active and
/// preview sockets.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    pid: u32,
    version: String,
    api: Option<Socket>,
    rollouts: Vec<RolloutOffer>,
    /// The old daemon answers `Ready` with `Going` (daemons from before that message
    /// do not say so, and are not waited for).
    #[serde(default)]
    confirms: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Socket {
    /// The address it was configured for (port 0 included).
    configured: SocketAddr,
    bound: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
struct RolloutOffer {
    name: String,
    active: Option<Socket>,
    preview: Option<Socket>,
    active_backend: Option<BackendOffer>,
    preview_backend: Option<BackendOffer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BackendOffer {
    color: Color,
    revision: u64,
    instances: Vec<SocketAddr>,
}

impl From<&Backend> for BackendOffer {
    fn from(backend: &Backend) -> BackendOffer {
        BackendOffer {
            color: backend.color,
            revision: backend.revision,
            instances: backend.instances.clone(),
        }
    }
}

impl From<BackendOffer> for Backend {
    fn from(offer: BackendOffer) -> Backend {
        Backend {
            color: offer.color,
            revision: offer.revision,
            instances: offer.instances,
        }
    }
}

/// The API's listening socket, as a daemon hands it over.
pub struct ApiSocket {
    /// The address `--api` asked for.
    pub configured: SocketAddr,
    /// Where it is bound.
    pub bound: SocketAddr,
    /// A duplicate of the socket the API serves.
    pub socket: OwnedFd,
}

/// What a running daemon handed over, until the new daemon serves it.
pub struct Takeover {
    stream: UnixStream,
    predecessor: u32,
    api: Option<(Socket, TcpListener)>,
    rollouts: Vec<RolloutOffer>,
    sockets: BTreeMap<String, Handed>,
    /// How many of the listening sockets that came over are served.
    count: usize,
    /// The old daemon confirms `Ready` with `Going`.
    confirms: bool,
}

/// Asks the daemon running on `data_dir`, if there is one, to hand over. None when no
/// daemon answers there; an error when one does but the handover fails (it then
/// carries on as it was).
pub async fn take_over(data_dir: &Path) -> anyhow::Result<Option<Takeover>> {
    let path = data_dir.join(SOCKET_FILE);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot connect to {}", path.display()));
        }
    };
    let peer = check_peer(&stream)?;
    println!(
        "teal: a daemon (pid {}) runs on {}; taking over from it",
        peer.map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
        data_dir.display()
    );
    write(
        &mut stream,
        &Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .await
    .context("cannot ask the running daemon to hand over")?;
    let offer = match tokio::time::timeout(OFFER_TIMEOUT, read(&mut stream)).await {
        Err(_) => bail!(
            "the running daemon did not hand over within {}s",
            OFFER_TIMEOUT.as_secs()
        ),
        Ok(Err(error)) => {
            return Err(error).context("the running daemon did not hand over");
        }
        Ok(Ok(Message::Offer(offer))) => offer,
        Ok(Ok(Message::Refused { reason })) => {
            bail!("the running daemon refused to hand over: {reason}")
        }
        Ok(Ok(other)) => bail!("the running daemon answered {other:?} instead of its sockets"),
    };

    let expected: Vec<Socket> = offer
        .api
        .iter()
        .copied()
        .chain(
            offer
                .rollouts
                .iter()
                .flat_map(|r| r.active.iter().chain(r.preview.iter()).copied()),
        )
        .collect();
    let fds = receive_fds(&stream, expected.len())
        .await
        .context("cannot receive the running daemon's sockets")?;
    let mut listeners = Vec::new();
    for (socket, fd) in expected.iter().zip(fds) {
        listeners.push(listener(socket, fd)?);
    }
    let mut listeners = listeners.into_iter();
    let api = offer
        .api
        .map(|socket| (socket, listeners.next().expect("one listener per socket")));
    let mut sockets = BTreeMap::new();
    for rollout in &offer.rollouts {
        let mut handed = Handed::default();
        if let Some(socket) = rollout.active {
            handed.active = Some((socket.configured, listeners.next().expect("counted")));
        }
        if let Some(socket) = rollout.preview {
            handed.preview = Some((socket.configured, listeners.next().expect("counted")));
        }
        sockets.insert(rollout.name.clone(), handed);
    }
    Ok(Some(Takeover {
        stream,
        predecessor: offer.pid,
        api,
        rollouts: offer.rollouts,
        sockets,
        count: expected.len(),
        confirms: offer.confirms,
    }))
}

/// A received descriptor as the listener the offer says it is.
fn listener(socket: &Socket, fd: OwnedFd) -> anyhow::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    let bound = listener
        .local_addr()
        .context("a socket the running daemon handed over is not a TCP socket")?;
    if bound != socket.bound {
        bail!(
            "the running daemon handed over a socket bound to {bound} for {}",
            socket.bound
        );
    }
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

impl Takeover {
    /// The pid of the daemon handing over.
    pub fn predecessor(&self) -> u32 {
        self.predecessor
    }

    /// The API socket, if the old daemon's was configured for `api` (a different
    /// `--api` binds anew, and the old address closes with the old daemon).
    pub fn api(&mut self, api: SocketAddr) -> Option<TcpListener> {
        let (socket, listener) = self.api.take()?;
        if socket.configured == api {
            return Some(listener);
        }
        self.count -= 1;
        None
    }

    /// Waits until `platform` (which adopted the instances) has every instance the old
    /// daemon routed to ready, so that the new proxy routes as the old one did from its
    /// first request. Gives up after [`WARM_TIMEOUT`] (the reconcilers then route to
    /// whatever is ready).
    pub async fn wait_warm(&self, platform: &LocalPlatform) {
        let wanted: BTreeMap<&str, BTreeSet<SocketAddr>> = self
            .rollouts
            .iter()
            .map(|rollout| {
                let addresses = [&rollout.active_backend, &rollout.preview_backend]
                    .into_iter()
                    .flatten()
                    .flat_map(|backend| backend.instances.iter().copied())
                    .collect();
                (rollout.name.as_str(), addresses)
            })
            .collect();
        let deadline = Instant::now() + WARM_TIMEOUT;
        loop {
            let cold: Vec<&str> = wanted
                .iter()
                .filter(|(name, addresses)| {
                    let ready: BTreeSet<SocketAddr> = platform
                        .observe(name)
                        .iter()
                        .flat_map(|group| &group.instances)
                        .filter(|instance| instance.ready)
                        .map(|instance| instance.addr)
                        .collect();
                    !addresses.is_subset(&ready)
                })
                .map(|(name, _)| *name)
                .collect();
            if cold.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "instances of {} are not ready after {}s; serving anyway",
                    cold.join(", "),
                    WARM_TIMEOUT.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every rollout's sockets and routes, for [`Daemon::start`].
    pub fn rollouts(&mut self) -> BTreeMap<String, Inherited> {
        let mut sockets = std::mem::take(&mut self.sockets);
        self.rollouts
            .iter()
            .map(|rollout| {
                let inherited = Inherited {
                    sockets: sockets.remove(&rollout.name).unwrap_or_default(),
                    routes: (
                        rollout.active_backend.clone().map(Backend::from),
                        rollout.preview_backend.clone().map(Backend::from),
                    ),
                };
                (rollout.name.clone(), inherited)
            })
            .collect()
    }

    /// Tells the old daemon that this one serves: it stops accepting, finishes what is
    /// in flight and exits. Call it once everything listens.
    pub async fn finish(mut self, daemon: Arc<Daemon>) -> anyhow::Result<()> {
        write(&mut self.stream, &Message::Ready)
            .await
            .with_context(|| format!("cannot tell pid {} to go", self.predecessor))?;
        if self.confirms {
            match tokio::time::timeout(HELLO_TIMEOUT, read(&mut self.stream)).await {
                Ok(Ok(Message::Going)) => {}
                _ => bail!(
                    "pid {} did not confirm the takeover (it gave up waiting and carries on); exiting so that one daemon runs",
                    self.predecessor
                ),
            }
        }
        println!(
            "teal: took over {} listeners from pid {}",
            self.count, self.predecessor
        );
        let predecessor = self.predecessor;
        daemon.took_over_from(predecessor);
        let mut stream = self.stream;
        // The old daemon holds the connection until it exits.
        tokio::spawn(async move {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            tracing::info!("pid {predecessor} finished its requests and exited");
            daemon.predecessor_exited();
        });
        Ok(())
    }
}

/// The handoff socket of a running daemon.
pub struct Handoffs {
    path: PathBuf,
    accept: JoinHandle<()>,
    /// Held while a handover is under way.
    busy: Arc<tokio::sync::Mutex<()>>,
    daemon: Arc<Daemon>,
}

impl Handoffs {
    /// Listens on `handoff.sock` in `data_dir`, replacing a stale one (or the one of
    /// the daemon this one took over from, which no longer answers on it), so that a
    /// later `teal server` can take over from `daemon`.
    pub fn listen(
        data_dir: &Path,
        daemon: Arc<Daemon>,
        api: Option<ApiSocket>,
    ) -> anyhow::Result<Handoffs> {
        let path = data_dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot replace {}", path.display()));
            }
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        let busy = Arc::new(tokio::sync::Mutex::new(()));
        let accept = tokio::spawn(accept(listener, daemon.clone(), api, busy.clone()));
        Ok(Handoffs {
            path,
            accept,
            busy,
            daemon,
        })
    }

    /// Refuses takeovers from now on (daemon shutdown). If one is under way, waits for
    /// its outcome: the successor's pid when it took over.
    pub async fn close(self) -> Option<u32> {
        self.accept.abort();
        let _busy = self.busy.lock().await;
        let successor = self.daemon.successor();
        if successor.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
        successor
    }
}

impl Drop for Handoffs {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    api: Option<ApiSocket>,
    busy: Arc<tokio::sync::Mutex<()>>,
) {
    let api = Arc::new(api);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("handoff socket: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let refusal = match busy.clone().try_lock_owned() {
            Err(_) => Err("another teal server is taking over already".to_owned()),
            Ok(_) if daemon.successor().is_some() => {
                Err("this daemon has handed over already".to_owned())
            }
            Ok(guard) => Ok(guard),
        };
        match refusal {
            Err(reason) => {
                tokio::spawn(refuse(stream, reason));
            }
            Ok(guard) => {
                let daemon = daemon.clone();
                let api = api.clone();
                tokio::spawn(async move {
                    if let Err(error) = hand_over(&daemon, api.as_ref().as_ref(), stream).await {
                        tracing::warn!("a takeover failed: {error:#}; carrying on");
                        println!("teal: a takeover failed ({error:#}); carrying on");
                    }
                    drop(guard);
                });
            }
        }
    }
}

async fn refuse(mut stream: UnixStream, reason: String) {
    // Read the hello first, so the refusal is its answer.
    let _ = tokio::time::timeout(HELLO_TIMEOUT, read(&mut stream)).await;
    let _ = write(&mut stream, &Message::Refused { reason }).await;
}

/// One takeover, on the old daemon's side.
async fn hand_over(
    daemon: &Daemon,
    api: Option<&ApiSocket>,
    mut stream: UnixStream,
) -> anyhow::Result<()> {
    check_peer(&stream)?;
    let successor = match tokio::time::timeout(HELLO_TIMEOUT, read(&mut stream)).await {
        Ok(Ok(Message::Hello { pid, version })) => {
            println!(
                "teal: pid {pid} (teal {version}) is taking over; finishing the reconcile passes under way"
            );
            pid
        }
        Ok(Ok(other)) => bail!("a takeover began with {other:?}"),
        Ok(Err(error)) => return Err(error).context("a takeover did not say hello"),
        Err(_) => bail!("a takeover did not say hello"),
    };
    let quiesced = daemon.quiesce().await;
    let offered = async {
        let rollouts = daemon.handover();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let api = api.map(|api| {
            fds.push(api.socket.as_fd());
            Socket {
                configured: api.configured,
                bound: api.bound,
            }
        });
        let mut offers = Vec::new();
        for rollout in &rollouts {
            let active = offer_socket(&rollout.active, &mut fds);
            let preview = offer_socket(&rollout.preview, &mut fds);
            offers.push(RolloutOffer {
                name: rollout.name.clone(),
                active,
                preview,
                active_backend: rollout.routes.active.as_ref().map(BackendOffer::from),
                preview_backend: rollout.routes.preview.as_ref().map(BackendOffer::from),
            });
        }
        let offer = Offer {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api,
            rollouts: offers,
            confirms: true,
        };
        write(&mut stream, &Message::Offer(offer)).await?;
        send_fds(&stream, &fds).await?;
        match tokio::time::timeout(READY_TIMEOUT, read(&mut stream)).await {
            Ok(Ok(Message::Ready)) => write(&mut stream, &Message::Going)
                .await
                .with_context(|| format!("pid {successor} went away after it said it serves")),
            Ok(Ok(other)) => bail!("pid {successor} answered {other:?} instead of Ready"),
            Ok(Err(error)) => {
                Err(error).with_context(|| format!("pid {successor} gave up before serving"))
            }
            Err(_) => bail!(
                "pid {successor} did not serve within {}s",
                READY_TIMEOUT.as_secs()
            ),
        }
    }
    .await;
    match offered {
        Ok(()) => {
            quiesced.hand_over(successor);
            // Held until this process exits: the successor sees the end of it.
            tokio::spawn(async move {
                let _stream = stream;
                std::future::pending::<()>().await;
            });
            Ok(())
        }
        Err(error) => {
            // First, so that a successor still waiting for `Going` gives up at once
            // rather than supervise the instances beside this daemon.
            drop(stream);
            quiesced.resume().await;
            Err(error)
        }
    }
}

/// The socket's entry in the offer; its descriptor joins `fds`.
fn offer_socket<'a>(
    handed: &'a Option<HandoffSocket>,
    fds: &mut Vec<BorrowedFd<'a>>,
) -> Option<Socket> {
    handed.as_ref().map(|handed| {
        fds.push(handed.socket.as_fd());
        Socket {
            configured: handed.configured,
            bound: handed.bound,
        }
    })
}

/// Only a process of the same user (or root) may hand over or take over. Returns the
/// peer's pid.
fn check_peer(stream: &UnixStream) -> anyhow::Result<Option<i32>> {
    let peer = stream
        .peer_cred()
        .context("cannot tell who is at the other end of the handoff socket")?;
    let me = rustix::process::geteuid().as_raw();
    if peer.uid() != me && peer.uid() != 0 {
        bail!(
            "the handoff socket's other end belongs to uid {}, not to this user (uid {me})",
            peer.uid()
        );
    }
    Ok(peer.pid())
}

/// One message: its length (4 bytes, big-endian), then JSON.
async fn write(stream: &mut UnixStream, message: &Message) -> anyhow::Result<()> {
    let json = serde_json::to_vec(message)?;
    let length = u32::try_from(json.len()).context("a handoff message is too long")?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(&json).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads exactly one message and nothing past it (descriptors may follow).
async fn read(stream: &mut UnixStream) -> anyhow::Result<Message> {
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .context("the other end closed the handoff socket")?;
    let length = u32::from_be_bytes(length);
    if length > MAX_MESSAGE {
        bail!("the handoff socket's other end is not a teal daemon");
    }
    let mut json = vec![0u8; length as usize];
    stream.read_exact(&mut json).await?;
    serde_json::from_slice(&json).context("the handoff socket's other end is not this teal")
}

/// Sends descriptors, at most [`FDS_PER_MESSAGE`] per one-byte message.
async fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
                    return Err(std::io::Error::other("too many descriptors in one message"));
                }
                Ok(rustix::net::sendmsg(
                    stream,
                    &[IoSlice::new(b"F")],
                    &mut control,
                    SendFlags::empty(),
                )?)
            })
            .await?;
        if sent != 1 {
            bail!("a descriptor message was not sent");
        }
    }
    Ok(())
}

/// Receives `count` descriptors sent by [`send_fds`], close-on-exec (instances must
/// not inherit the listeners).
async fn receive_fds(stream: &UnixStream, count: usize) -> anyhow::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let received = stream
            .async_io(Interest::READABLE, || {
                let mut byte = [0u8; 1];
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let message = rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut byte)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok((message.bytes, message.flags, fds))
            })
            .await?;
        let (bytes, flags, received) = received;
        if bytes == 0 {
            bail!(
                "the other end closed after {} of {count} sockets",
                fds.len()
            );
        }
        if flags.contains(ReturnFlags::CTRUNC) {
            bail!("sockets were lost in transit (control message truncated)");
        }
        fds.extend(received);
    }
    if fds.len() != count {
        bail!("received {} sockets, expected {count}", fds.len());
    }
    Ok(fds)
}
