//! The libp2p node: one task owns the swarm; everything else talks to it through channels.
//!
//! - [`gate`]: who may connect (closed at the handshake otherwise) and whom we dial.
//! - [`tunnel`]: our stream behaviour for `/peerup/tunnel/1.0.0`, and the [`Control`] handle
//!   that opens streams on the connection we pick.
//!
//! Transports: TCP with TLS or Noise (TLS preferred), then yamux; QUIC. Identify and ping run
//! on every connection.

pub mod gate;
pub mod tunnel;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, ping, tcp, tls, yamux};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Access;
pub use tunnel::{Control, Inbound, OpenError};

/// Streams one connection may carry at once. yamux needs a 256 KiB window per stream inside
/// its 1 GiB connection window, which caps this at 4096.
const MAX_STREAMS_PER_CONNECTION: usize = 1024;
/// Connections with no stream close after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Inbound streams in protocol negotiation at once, per connection.
const MAX_NEGOTIATING_INBOUND: usize = 1024;
/// Time for connections to close gracefully at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for every listener to report its first address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The composed behaviour. Field order matters: the gate decides first.
#[allow(missing_debug_implementations)] // identify's behaviour has no Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gate: gate::Gate,
    tunnel: tunnel::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("building the libp2p transport: {0}")]
    Build(String),
    #[error("could not listen on any libp2p address: {0}")]
    Listen(String),
}

/// A built node, not yet running.
pub struct Node {
    swarm: Swarm<Behaviour>,
    addrs: watch::Sender<Vec<Multiaddr>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("peer", self.swarm.local_peer_id()).finish()
    }
}

impl Node {
    /// Build the swarm. Inbound tunnel streams are delivered on `inbound`.
    pub fn build(
        keypair: Keypair,
        access: Arc<Access>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<(Node, Control), NodeError> {
        let (tunnel, control) = tunnel::Behaviour::new(inbound);
        let build_error = |e: &dyn std::fmt::Display| NodeError::Build(e.to_string());
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (tls::Config::new, noise::Config::new),
                || {
                    let mut config = yamux::Config::default();
                    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
                    config
                },
            )
            .map_err(|e| build_error(&e))?
            .with_quic()
            .with_behaviour(move |key| Behaviour {
                gate: gate::Gate::new(access),
                tunnel,
                identify: identify::Behaviour::new(
                    identify::Config::new("/peerup/1.0.0".into(), key.public())
                        .with_agent_version(format!("peerup/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::default(),
            })
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                    .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND)
            })
            .build();
        let (addrs, _) = watch::channel(Vec::new());
        Ok((Node { swarm, addrs }, control))
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Bound listen addresses, updated as interfaces come and go.
    pub fn addresses(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.addrs.subscribe()
    }

    /// Start every listener and wait until each reported an address. An address that cannot
    /// be bound is skipped with a warning; none at all is an error.
    pub async fn listen(&mut self, addrs: &[Multiaddr]) -> Result<(), NodeError> {
        let mut pending = HashSet::new();
        let mut errors = Vec::new();
        for addr in addrs {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    pending.insert(id);
                }
                Err(e) => {
                    warn!(%addr, error = %e, "cannot listen");
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        if pending.is_empty() {
            return Err(NodeError::Listen(errors.join("; ")));
        }
        let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
        tokio::pin!(deadline);
        while !pending.is_empty() {
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                () = &mut deadline => return Err(NodeError::Listen("listeners did not start in time".into())),
            };
            match event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    pending.remove(&listener_id);
                }
                SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                    warn!(?addresses, ?reason, "listener closed");
                    pending.remove(&listener_id);
                }
                other => self.on_event(other),
            }
            self.publish_addresses();
        }
        if self.swarm.listeners().next().is_none() {
            return Err(NodeError::Listen(errors.join("; ")));
        }
        Ok(())
    }

    fn publish_addresses(&self) {
        let now: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        self.addrs.send_if_modified(|addrs| {
            let changed = *addrs != now;
            *addrs = now;
            changed
        });
    }

    /// Drive the swarm until `stop` is cancelled, then close every connection gracefully.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return self.close_all().await,
                event = self.swarm.select_next_some() => event,
            };
            let listener_change = matches!(
                event,
                SwarmEvent::NewListenAddr { .. }
                    | SwarmEvent::ExpiredListenAddr { .. }
                    | SwarmEvent::ListenerClosed { .. }
            );
            self.on_event(event);
            if listener_change {
                self.publish_addresses();
            }
        }
    }

    /// Close every connection and wait until they are closed: a tunnel that finished has its
    /// last bytes and FIN queued in yamux, and only a graceful close flushes them to the wire.
    async fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let closing = async {
            while self.swarm.network_info().num_peers() > 0 {
                let event = self.swarm.select_next_some().await;
                self.on_event(event);
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            warn!("connections did not close in time");
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed = endpoint.is_relayed(), "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                debug!(remote = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outbound connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            _ => {}
        }
    }
}
