//! What `peerup run` and `peerup relay` share around their swarms: the ready file
//! (state.json), signals, the control socket, live reload, and the tasks that own them.
//!
//! A daemon is a composition: it loads its home, builds its node, then hands the node's task
//! and its [`Reload`] to [`Runtime::start`], which binds nothing new but spawns and owns the
//! background tasks (state.json upkeep, control socket, reload loop). [`Runtime::wait`] returns
//! on SIGINT/SIGTERM (or when the node's task ended on its own); [`Runtime::stop`] cancels and
//! joins every task it owns, then removes state.json.

use std::net::SocketAddr;
use std::path::PathBuf;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::auth::access::AccessError;
use crate::config::ConfigError;
use crate::control::ControlServer;
use crate::files::{self, FileError, Home};
use crate::identity::IdentityError;
use crate::node::{Handle, NodeError};
use crate::reload::{self, Reload};

/// Anything that stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("the libp2p node stopped unexpectedly ({0}); the daemon cannot serve without it")]
    NodeStopped(String),
    #[error(
        "the relay has no member list at {path}; add members with `peerup auth add PEER --relay`",
        path = .0.display()
    )]
    NoMembers(PathBuf),
    #[error("cannot bind the SOCKS listener {addr}: {source}")]
    Socks { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error(transparent)]
    Pins(#[from] crate::names::pins::PinsError),
    #[error(transparent)]
    Names(#[from] crate::names::store::StoreError),
}

impl StartError {
    /// Which part of the start-up failed, for the one line that says so.
    pub fn part(&self) -> &'static str {
        match self {
            StartError::Config(_) => "config",
            StartError::Identity(_) => "identity key",
            StartError::Access(_) => "authorized_keys",
            StartError::File(_) => "file",
            StartError::Node(_) | StartError::NodeStopped(_) => "libp2p node",
            StartError::Control(_) => "control socket",
            StartError::NoMembers(_) => "relay members",
            StartError::Socks { .. } => "SOCKS listener",
            StartError::Dns(_) => "DNS server",
            StartError::Pins(_) => "known_names",
            StartError::Names(_) => "names store",
        }
    }
}

/// What `state.json` says about a running daemon.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct State {
    /// `gateway` or `relay`.
    pub role: String,
    pub pid: u32,
    pub peer_id: String,
    pub peer_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks: Option<SocketAddr>,
    pub libp2p: Vec<String>,
    pub control: PathBuf,
    /// The DNS server (UDP and TCP), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<SocketAddr>,
}

impl State {
    /// The state of the daemon running in `home`, if one is.
    pub fn read(home: &Home) -> Option<State> {
        let text = std::fs::read_to_string(home.state()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn new(
        role: &str,
        peer: PeerId,
        socks: Option<SocketAddr>,
        control: &std::path::Path,
    ) -> State {
        State {
            role: role.into(),
            pid: std::process::id(),
            peer_id: peer.to_base58(),
            peer_label: peerup_resolver::peer_label(&peer),
            socks,
            libp2p: Vec::new(),
            control: control.to_owned(),
            dns: None,
        }
    }
}

/// Why the daemon stopped serving.
#[derive(Debug)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Signal,
    /// The swarm's task ended on its own; the daemon cannot serve without it.
    NodeStopped(String),
}

/// A daemon's shared runtime: its ready file, background tasks and the swarm's task.
#[derive(Debug)]
pub struct Runtime {
    home: Home,
    state: State,
    /// Cancelled to stop the background tasks and the node.
    stop: CancellationToken,
    background: TaskTracker,
    node: JoinHandle<()>,
}

/// What a daemon hands to [`Runtime::start`].
#[derive(Debug)]
pub struct Parts {
    pub home: Home,
    pub state: State,
    pub control: ControlServer,
    pub node: Handle,
    /// The swarm's task, already spawned, stopping when `stop` is cancelled.
    pub node_task: JoinHandle<()>,
    pub stop: CancellationToken,
    pub addrs: Option<watch::Receiver<Vec<Multiaddr>>>,
}

impl Runtime {
    /// Write state.json (the daemon is ready) and spawn the background tasks.
    pub fn start<R: Reload>(parts: Parts, reloader: R) -> Runtime {
        let Parts { home, state, control, node, node_task, stop, addrs } = parts;
        // Before state.json: an edit made the moment the daemon is ready is an edit.
        let baseline = reload::Baseline::of(&reloader);
        write_state(&home, &state);
        let background = TaskTracker::new();
        let (reload_tx, reload_rx) = mpsc::channel(8);
        background.spawn(reload::run(reloader, baseline, reload_rx, stop.clone()));
        background.spawn(control.run(node, reload_tx, stop.clone()));
        if let Some(addrs) = addrs {
            background.spawn(keep_state(home.clone(), state.clone(), addrs, stop.clone()));
        }
        background.close();
        Runtime { home, state, stop, background, node: node_task }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Wait for SIGINT/SIGTERM, or for the swarm's task to end on its own.
    pub async fn wait(&mut self) -> Ended {
        tokio::select! {
            () = shutdown_signal() => Ended::Signal,
            ended = &mut self.node => Ended::NodeStopped(match ended {
                Ok(()) => "it ended".into(),
                Err(e) => e.to_string(),
            }),
        }
    }

    /// Stop the node and every background task, wait for them, remove state.json.
    pub async fn stop(self) {
        self.stop.cancel();
        if !self.node.is_finished() {
            let _ = self.node.await;
        }
        self.background.wait().await;
        let _ = std::fs::remove_file(self.home.state());
    }
}

/// Daemons never need root; say so when run as root.
pub(crate) fn warn_if_root() {
    if files::my_uid() == 0 {
        warn!("running as root: peerup never needs root; run it as your user");
    }
}

/// Rewrite state.json whenever the listen addresses change.
async fn keep_state(
    home: Home,
    mut state: State,
    mut addrs: watch::Receiver<Vec<Multiaddr>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = addrs.changed() => if changed.is_err() { return },
        }
        state.libp2p = addrs.borrow_and_update().iter().map(ToString::to_string).collect();
        write_state(&home, &state);
    }
}

pub(crate) fn write_state(home: &Home, state: &State) {
    match serde_json::to_vec_pretty(state) {
        Ok(json) => {
            if let Err(error) = files::write_atomic(&home.state(), &json, 0o600) {
                warn!(%error, "cannot write state.json");
            }
        }
        Err(error) => warn!(%error, "cannot encode state.json"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
