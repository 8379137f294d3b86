//! `peerup relay`: load the relay's config and members, bind, write state.json, serve. Built
//! from the same runtime pieces as `peerup run` (see [`crate::runtime`]); the member list
//! follows its file (a removed member loses its connections and circuits at once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{NamesSetup, RelayNode};
use crate::auth::Access;
use crate::auth::access::{AccessLists, load_keys};
use crate::config::Config;
use crate::control::ControlServer;
use crate::files::Home;
use crate::identity;
use crate::names::RegistryHandle;
use crate::names::registrar::{self, RegistryThread};
use crate::names::replica::{self, REPLICA_FILE, WriteBehind};
use crate::names::store::{Policy, Registry, STORE_FILE, reserved_names};
use crate::node::Handle;
use crate::reload::Reload;
use crate::runtime::{Ended, Parts, Runtime, StartError, State, warn_if_root};

/// Run the relay until SIGINT or SIGTERM.
pub async fn run(home: Home) -> Result<(), StartError> {
    warn_if_root();
    let mut relay = RelayDaemon::start(home).await?;
    let ended = relay.runtime.wait().await;
    relay.shutdown().await;
    match ended {
        Ended::Signal => Ok(()),
        Ended::NodeStopped(why) => Err(StartError::NodeStopped(why)),
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayDaemon {
    runtime: Runtime,
    registry: Option<RegistryThread>,
    /// The writer of the records held by replication (it ends with the node).
    writer: Option<std::thread::JoinHandle<()>>,
}

impl RelayDaemon {
    pub async fn start(home: Home) -> Result<RelayDaemon, StartError> {
        home.check()?;
        let config = Config::load(&home.config())?;
        let keypair = identity::load(&home.identity())?;
        let members_path = home.join(&config.relay.authorized_keys);
        if !members_path.exists() {
            return Err(StartError::NoMembers(members_path));
        }
        let members = load_keys(&members_path)?;
        let count = members.entries().count();
        let peers: Vec<libp2p::PeerId> =
            config.relay.registry.peers.iter().map(|p| p.peer).collect();
        let access = Arc::new(Access::new(AccessLists::members(&members, peers.clone())));
        let control = ControlServer::bind(&home).await?;
        let peer = keypair.public().to_peer_id();
        let keepalive = config.limits.keepalive();
        let (handle, commands) = Handle::new();
        let registry = open_registry(&home, &config, &keypair)?;
        let mut setup = NamesSetup {
            registrar: config.relay.registry.registrar.map(|r| r.peer(peer)),
            peers: config.relay.registry.peers.clone(),
            republish: config.relay.registry.republish.0,
            ..NamesSetup::default()
        };
        let mut writer_thread = None;
        let (registry, registry_thread) = match registry {
            Some(registry) => {
                setup.records = registry.live_records(crate::names::record::unix_now());
                let (registry, thread) = registrar::start(registry, handle.clone());
                (Some(registry), Some(thread))
            }
            None => {
                // Another relay of the network, with no one to replicate from: it holds no
                // names (and refuses lookups rather than deny names it never saw).
                if setup.registrar.is_some() && setup.peers.is_empty() {
                    warn!(
                        "relay.registry.peers is empty: this relay holds none of the network's names"
                    );
                    setup.registrar = None;
                }
                // Another relay of the network: hold what replication brings, and keep it.
                if let Some(registrar) = setup.registrar {
                    let path = home.join(REPLICA_FILE.as_ref());
                    let held = replica::load(&path, &registrar)?;
                    info!(records = held.len(), %registrar, "names: holding the network's records by replication");
                    setup.records = held.iter().map(|(h, r)| (h.clone(), r.clone())).collect();
                    let (writer, thread) = WriteBehind::start(path, held);
                    setup.write_behind = Some(writer);
                    writer_thread = Some(thread);
                }
                (None, None)
            }
        };
        let control = control.with_registry(registry.clone());
        let mut node = RelayNode::build(
            keypair,
            access.clone(),
            &config.relay.limits,
            keepalive,
            &config.security,
            setup,
        )?
        .with_registry(registry.clone());
        let listen: Vec<Multiaddr> = config.relay.listen.iter().map(|a| a.0.clone()).collect();
        let external: Vec<Multiaddr> =
            config.relay.external_addresses.iter().map(|a| a.0.clone()).collect();
        node.listen(&listen, &external).await?;

        let mut state = State::new("relay", peer, None, control.path());
        state.libp2p = node.listen_addresses().iter().map(ToString::to_string).collect();
        let stop = CancellationToken::new();
        let node_task = tokio::spawn(node.run(stop.clone(), commands));
        // The reserved names, once the node runs: the records they issue go to it to be put to
        // the other relays (the registrar thread waits for room in its queue).
        if let Some(registry) = &registry {
            let reserved = reserved_names(&config.relay.registry.names);
            if let Err(error) = registry.reserve(reserved).await {
                warn!(%error, "relay.registry.names could not be applied");
            }
        }
        let reloader = MembersReload {
            path: members_path,
            config: home.config(),
            access,
            node: handle.clone(),
            registry,
            peers,
        };
        let parts = Parts { home, state, control, node: handle, node_task, stop, addrs: None };
        let runtime = Runtime::start(parts, reloader);
        info!(%peer, members = count, "ready");
        Ok(RelayDaemon { runtime, registry: registry_thread, writer: writer_thread })
    }

    pub fn state(&self) -> &State {
        self.runtime.state()
    }

    pub async fn shutdown(self) {
        info!("shutting down");
        self.runtime.stop().await;
        // Every handle to the registrar went with the node and the control socket.
        if let Some(registry) = self.registry {
            registry.join().await;
        }
        if let Some(writer) = self.writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        info!("stopped");
    }
}

/// The registry of a relay that is its network's registrar (`relay.registry.registrar` is its
/// own peer ID).
fn open_registry(
    home: &Home,
    config: &Config,
    keypair: &libp2p::identity::Keypair,
) -> Result<Option<Registry>, StartError> {
    let settings = &config.relay.registry;
    let me = keypair.public().to_peer_id();
    match settings.registrar.map(|r| r.peer(me)) {
        Some(registrar) if registrar == me => {}
        Some(registrar) => {
            info!(%registrar, "names: another relay is the registrar");
            return Ok(None);
        }
        None => return Ok(None),
    }
    let policy = Policy::of(settings);
    let registry = Registry::open(&home.join(STORE_FILE.as_ref()), keypair.clone(), policy)?;
    info!(names = registry.len(), network = %settings.network, "names: this relay is the registrar");
    Ok(Some(registry))
}

/// The relay reloads its member list, and its reserved names from config.yaml.
#[derive(Debug)]
struct MembersReload {
    path: PathBuf,
    config: PathBuf,
    access: Arc<Access>,
    node: Handle,
    registry: Option<RegistryHandle>,
    /// The network's other relays, admitted for replication (changed at the next start).
    peers: Vec<libp2p::PeerId>,
}

impl Reload for MembersReload {
    fn watched(&self) -> Vec<PathBuf> {
        vec![self.path.clone(), self.config.clone()]
    }

    async fn reload(&self) -> Result<String, String> {
        let members = load_keys(&self.path).map_err(|e| e.to_string())?;
        let count = members.entries().count();
        self.access.replace(AccessLists::members(&members, self.peers.clone()));
        self.enforce().await;
        let mut summary = format!("{count} members");
        // The reserved names, after the members: a bad config edit must not hold up a removal.
        if let Some(registry) = &self.registry {
            let config = Config::load(&self.config)
                .map_err(|e| format!("{summary} applied, but not the config: {e}"))?;
            let rebound = registry.reserve(reserved_names(&config.relay.registry.names)).await?;
            if !rebound.is_empty() {
                summary.push_str(&format!(", names assigned: {}", rebound.join(", ")));
            }
        }
        Ok(summary)
    }

    async fn enforce(&self) {
        let _ = self.node.access_changed().await;
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.access.next_expiry()
    }
}
