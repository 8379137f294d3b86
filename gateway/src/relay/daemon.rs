//! `peerup relay`: load the relay's config and members, bind, write state.json, serve. Built
//! from the same runtime pieces as `peerup run` (see [`crate::runtime`]); the member list
//! follows its file (a removed member loses its connections and circuits at once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::RelayNode;
use crate::auth::Access;
use crate::auth::access::{AccessLists, load_keys};
use crate::config::Config;
use crate::control::ControlServer;
use crate::files::Home;
use crate::identity;
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
        let access = Arc::new(Access::new(AccessLists::members(&members)));
        let control = ControlServer::bind(&home).await?;
        let peer = keypair.public().to_peer_id();
        let keepalive = config.limits.keepalive();
        let mut node = RelayNode::build(keypair, access.clone(), &config.relay.limits, keepalive)?;
        let listen: Vec<Multiaddr> = config.relay.listen.iter().map(|a| a.0.clone()).collect();
        let external: Vec<Multiaddr> =
            config.relay.external_addresses.iter().map(|a| a.0.clone()).collect();
        node.listen(&listen, &external).await?;

        let mut state = State::new("relay", peer, None, control.path());
        state.libp2p = node.listen_addresses().iter().map(ToString::to_string).collect();
        let stop = CancellationToken::new();
        let (handle, commands) = Handle::new();
        let node_task = tokio::spawn(node.run(stop.clone(), commands));
        let reloader = MembersReload { path: members_path, access, node: handle.clone() };
        let parts = Parts { home, state, control, node: handle, node_task, stop, addrs: None };
        let runtime = Runtime::start(parts, reloader);
        info!(%peer, members = count, "ready");
        Ok(RelayDaemon { runtime })
    }

    pub fn state(&self) -> &State {
        self.runtime.state()
    }

    pub async fn shutdown(self) {
        info!("shutting down");
        self.runtime.stop().await;
        info!("stopped");
    }
}

/// The relay reloads its member list.
#[derive(Debug)]
struct MembersReload {
    path: PathBuf,
    access: Arc<Access>,
    node: Handle,
}

impl Reload for MembersReload {
    fn watched(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    async fn reload(&self) -> Result<String, String> {
        let members = load_keys(&self.path).map_err(|e| e.to_string())?;
        let count = members.entries().count();
        self.access.replace(AccessLists::members(&members));
        self.enforce().await;
        Ok(format!("{count} members"))
    }

    async fn enforce(&self) {
        let _ = self.node.access_changed().await;
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.access.next_expiry()
    }
}
