//! `peerup relay`: load the relay's config and members, bind, write state.json, serve.

use std::sync::Arc;

use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::RelayNode;
use crate::auth::Access;
use crate::auth::access::{AccessLists, load_keys};
use crate::config::Config;
use crate::control::ControlServer;
use crate::daemon::{StartError, State, join, until_signal_or_failure, warn_if_root, write_state};
use crate::files::Home;
use crate::identity;

/// Run the relay until SIGINT or SIGTERM.
pub async fn run(home: Home) -> Result<(), StartError> {
    warn_if_root();
    let mut relay = RelayDaemon::start(home).await?;
    let outcome = until_signal_or_failure(&mut relay.node).await;
    relay.shutdown().await;
    outcome
}

/// A running relay.
#[derive(Debug)]
pub struct RelayDaemon {
    home: Home,
    state: State,
    stop: CancellationToken,
    node: tokio::task::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
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
        let access = Arc::new(Access::new(AccessLists::members(&members)));
        let control = ControlServer::bind(&home).await?;
        let peer = keypair.public().to_peer_id();
        let mut node = RelayNode::build(keypair, access, &config.relay.limits)?;
        let listen: Vec<Multiaddr> = config.relay.listen.iter().map(|a| a.0.clone()).collect();
        let external: Vec<Multiaddr> =
            config.relay.external_addresses.iter().map(|a| a.0.clone()).collect();
        node.listen(&listen, &external).await?;

        let mut state = State::new("relay", peer, None, control.path());
        state.libp2p = node.listen_addresses().iter().map(ToString::to_string).collect();
        write_state(&home, &state);
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = mpsc::channel(8);
        let node = tokio::spawn(node.run(stop.clone(), status_rx));
        let control = tokio::spawn(control.run(status_tx, stop.clone()));
        info!(%peer, members = members.entries().count(), "ready");
        Ok(RelayDaemon { home, state, stop, node, control })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub async fn shutdown(self) {
        info!("shutting down");
        self.stop.cancel();
        join(self.node).await;
        join(self.control).await;
        let _ = std::fs::remove_file(self.home.state());
        info!("stopped");
    }
}
