//! `peerup run`: load everything, bind every listener, serve until a signal, then drain.
//!
//! Start-up order: config, identity, access lists and names are loaded and checked first (any
//! error stops the daemon before it binds anything); then the libp2p listeners and the SOCKS
//! listener are bound; then `<home>/state.json` is written with every bound address, which is
//! the signal that the daemon is ready. Shutdown: stop accepting (new SOCKS clients and new
//! inbound streams), give open tunnels `limits.shutdown_grace` to finish, stop the swarm,
//! remove state.json.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use peerup_proxy::{SocksConfig, SocksServer};
use peerup_resolver::{LocalNames, Resolve, Tiers};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Access;
use crate::auth::access::{AccessError, AccessLists};
use crate::config::{Config, ConfigError, NameKey, NameValue, parse_names_file};
use crate::connect::Gateway;
use crate::control::ControlServer;
use crate::files::{self, FileError, Home};
use crate::identity::{self, IdentityError};
use crate::node::{Node, NodeError, NodeOptions};
use crate::service::{ServiceHost, ServiceTable, StreamLimits};

/// Inbound streams queued between the swarm and the service host before "busy" answers.
const INBOUND_QUEUE: usize = 256;

/// Anything that stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}\nhint: create an identity with `peerup init`")]
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
}

/// Everything read from a home, validated.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub keypair: Keypair,
    pub lists: AccessLists,
    pub names: LocalNames,
}

/// Load and check config, identity, access lists and names.
pub fn load(home: &Home) -> Result<Loaded, StartError> {
    home.check()?;
    let config = Config::load(&home.config())?;
    let keypair = identity::load(&home.identity())?;
    let lists = AccessLists::load(home, &config)?;
    let names = load_names(home, &config)?;
    Ok(Loaded { config, keypair, lists, names })
}

/// `names:` from config.yaml merged with names.yaml; a name in both is an error.
pub fn load_names(home: &Home, config: &Config) -> Result<LocalNames, ConfigError> {
    let path = home.join(files::NAMES_FILE.as_ref());
    let mut names: BTreeMap<NameKey, NameValue> = config.names.clone();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for (key, value) in parse_names_file(&text, &path)? {
                if names.contains_key(&key) {
                    return Err(ConfigError::Invalid {
                        path: path.clone(),
                        key: key.to_string(),
                        message: "also defined under names: in config.yaml".into(),
                    });
                }
                names.insert(key, value);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileError::io(&path, e).into()),
    }
    Ok(LocalNames::new(names.into_iter().map(|(k, v)| ((k.host, k.network), v.0))))
}

/// The resolution tiers built from a home's local names (`names:` and names.yaml).
pub fn local_tiers(home: &Home, config: &Config) -> Result<Tiers, ConfigError> {
    let names = load_names(home, config)?;
    Ok(Tiers::new(vec![Arc::new(names) as Arc<dyn Resolve>]))
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
}

/// Run the gateway until SIGINT or SIGTERM, then drain.
pub async fn run(home: Home) -> Result<(), StartError> {
    warn_if_root();
    let mut daemon = Daemon::start(home).await?;
    let outcome = until_signal_or_failure(&mut daemon.node).await;
    daemon.shutdown().await;
    outcome
}

/// Daemons never need root; say so when run as root.
pub(crate) fn warn_if_root() {
    if files::my_uid() == 0 {
        warn!("running as root: peerup never needs root; run it as your user");
    }
}

/// Wait for SIGINT/SIGTERM, or for the swarm's task to end on its own: then the daemon can no
/// longer serve, and says so instead of running on with a stale state.json.
pub(crate) async fn until_signal_or_failure(
    node: &mut tokio::task::JoinHandle<()>,
) -> Result<(), StartError> {
    tokio::select! {
        () = shutdown_signal() => Ok(()),
        ended = node => Err(StartError::NodeStopped(match ended {
            Ok(()) => "it ended".into(),
            Err(e) => e.to_string(),
        })),
    }
}

/// Wait for a task unless it already ended (a JoinHandle must not be polled after completion).
pub(crate) async fn join(task: tokio::task::JoinHandle<()>) {
    if !task.is_finished() {
        let _ = task.await;
    }
}

/// A running gateway: every listener bound, state.json written.
#[derive(Debug)]
pub struct Daemon {
    home: Home,
    state: State,
    grace: std::time::Duration,
    accepting: CancellationToken,
    stop_node: CancellationToken,
    tasks: TaskTracker,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    /// The swarm's task; watched, since the daemon is useless without it.
    node: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Load `home`, bind every listener, write state.json, and start serving.
    pub async fn start(home: Home) -> Result<Daemon, StartError> {
        let Loaded { config, keypair, lists, names } = load(&home)?;
        let control_server = ControlServer::bind(&home).await?;
        let peer = keypair.public().to_peer_id();
        let access = Arc::new(Access::new(lists));
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let options = NodeOptions { relays: config.all_relays(), mdns: config.mdns };
        let (mut node, control) = Node::build(keypair, access.clone(), inbound_tx, options)?;
        let listen: Vec<Multiaddr> = config.listen.iter().map(|a| a.0.clone()).collect();
        node.listen(&listen).await?;
        let socks_config = SocksConfig {
            handshake_timeout: config.socks.handshake_timeout.0,
            ..SocksConfig::default()
        };
        let socks_error = |source| StartError::Socks { addr: config.socks.listen, source };
        let socks =
            SocksServer::bind(config.socks.listen, socks_config).await.map_err(socks_error)?;
        let socks_addr = socks.local_addr().map_err(socks_error)?;
        if !socks_addr.ip().is_loopback() {
            warn!(%socks_addr, "the SOCKS listener is not on loopback: other machines can use it");
        }

        let limits = StreamLimits {
            per_peer: config.limits.streams_per_peer,
            total: config.limits.streams_total,
            connect_timeout: config.limits.connect_timeout.0,
        };
        let host = ServiceHost::new(ServiceTable::from_config(&config), access.clone(), limits);
        let gateway = Arc::new(Gateway {
            tiers: Tiers::new(vec![Arc::new(names) as Arc<dyn Resolve>]),
            control,
            access,
            suffix: crate::config::suffix(),
            direct: config.socks.direct,
            connect_timeout: config.limits.connect_timeout.0,
            relays: config
                .networks
                .iter()
                .map(|(name, network)| (name.0.clone(), network.relays.clone()))
                .collect::<HashMap<_, _>>(),
        });

        let accepting = CancellationToken::new();
        let stop_node = CancellationToken::new();
        let tasks = TaskTracker::new();
        let addrs = node.addresses();
        let mut state = State::new("gateway", peer, Some(socks_addr), control_server.path());
        state.libp2p = addrs.borrow().iter().map(ToString::to_string).collect();
        write_state(&home, &state);
        let (status_tx, status_rx) = mpsc::channel(8);
        let node = tokio::spawn(node.run(stop_node.clone(), status_rx));
        let background = vec![
            tokio::spawn(keep_state(home.clone(), state.clone(), addrs, stop_node.clone())),
            tokio::spawn(control_server.run(status_tx, stop_node.clone())),
        ];
        let accept_loops = vec![
            tokio::spawn(host.run(inbound_rx, accepting.clone(), tasks.clone())),
            tokio::spawn(socks.run(gateway, accepting.clone(), tasks.clone())),
        ];
        info!(%peer, socks = %socks_addr, services = config.services.len(), "ready");
        Ok(Daemon {
            home,
            state,
            grace: config.limits.shutdown_grace.0,
            accepting,
            stop_node,
            tasks,
            accept_loops,
            node,
            background,
        })
    }

    /// Bound addresses and identity, as written to state.json.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Stop accepting, give open tunnels the grace period, stop the node, remove state.json.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.accepting.cancel();
        for task in self.accept_loops {
            let _ = task.await;
        }
        self.tasks.close();
        info!(open = self.tasks.len(), grace = ?self.grace, "no longer accepting; draining open tunnels");
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
            warn!(open = self.tasks.len(), "tunnels still open at the deadline: closing them");
        }
        self.stop_node.cancel();
        join(self.node).await;
        for task in self.background {
            join(task).await;
        }
        let _ = std::fs::remove_file(self.home.state());
        info!("stopped");
    }
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
        }
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

pub(crate) async fn shutdown_signal() {
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
