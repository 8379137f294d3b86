//! The libp2p node: one task owns the swarm; everything else talks to it through channels.
//!
//! - [`gate`]: who may connect (closed at the handshake otherwise) and whom we dial.
//! - [`tunnel`]: our stream behaviour for `/peerup/tunnel/1.0.0`, and the [`Control`] handle
//!   that opens streams on the connection we pick.
//!
//! Transports: TCP with TLS or Noise (TLS preferred), then yamux; QUIC. Identify and ping run
//! on every connection.

pub mod gate;
pub mod reservations;
pub mod tunnel;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, identify, mdns, noise, ping, relay, tcp, tls, yamux,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::config::RelayAddr;
use reservations::{ReservationStatus, Reservations};
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

/// A request for a status snapshot, answered with JSON.
pub type StatusRequest = oneshot::Sender<serde_json::Value>;

/// The yamux configuration every connection uses.
pub(crate) fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}

/// QUIC notices a dead path (a relay that was killed, a network that changed) within
/// `max_idle_timeout`; quinn's default of 10 s is most of a connect timeout.
pub(crate) fn quic_config(mut config: libp2p::quic::Config) -> libp2p::quic::Config {
    config.max_idle_timeout = 5_000;
    config.keep_alive_interval = Duration::from_secs(1);
    config
}

/// Pings every connection; a connection whose pings fail is closed (see `on_behaviour_event`),
/// so a TCP path that died silently does not hold tunnels for minutes.
pub(crate) fn ping_config() -> ping::Config {
    ping::Config::new().with_interval(Duration::from_secs(5)).with_timeout(Duration::from_secs(10))
}

/// Identify, as every node of ours runs it. No address cache: identify would offer a peer's
/// every listen address to our dials, and we dial only the addresses we chose.
pub(crate) fn identify_behaviour(key: &Keypair, agent: &str) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new("/peerup/1.0.0".into(), key.public())
            .with_agent_version(format!("{agent}/{}", env!("CARGO_PKG_VERSION")))
            .with_cache_size(0),
    )
}

/// The composed behaviour. Field order matters: the gate decides first.
#[allow(missing_debug_implementations)] // identify's behaviour has no Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gate: gate::Gate,
    tunnel: tunnel::Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("building the libp2p transport: {0}")]
    Build(String),
    #[error("could not listen on any libp2p address: {0}")]
    Listen(String),
}

/// What the node needs besides its key.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Relays to keep a reservation on (every network's).
    pub relays: Vec<RelayAddr>,
    /// LAN discovery.
    pub mdns: bool,
}

/// What `peerup status` shows for a gateway.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub role: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    pub reservations: Vec<ReservationStatus>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub relay: bool,
    pub connections: Vec<ConnStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConnStatus {
    /// `direct` or `relayed`.
    pub path: String,
    /// `tcp` or `quic`.
    pub transport: String,
    pub remote: String,
    /// `in` or `out`.
    pub direction: String,
    pub age_secs: u64,
}

#[derive(Debug)]
struct ConnInfo {
    peer: PeerId,
    endpoint: ConnectedPoint,
    since: SystemTime,
}

/// A built node, not yet running.
pub struct Node {
    swarm: Swarm<Behaviour>,
    addrs: watch::Sender<Vec<Multiaddr>>,
    reservations: Reservations,
    connections: HashMap<ConnectionId, ConnInfo>,
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
        options: NodeOptions,
    ) -> Result<(Node, Control), NodeError> {
        let (tunnel, control) = tunnel::Behaviour::new(inbound);
        let build_error = |e: &dyn std::fmt::Display| NodeError::Build(e.to_string());
        let peer = keypair.public().to_peer_id();
        let mdns = match options.mdns {
            true => Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| build_error(&e))?,
            ),
            false => None,
        };
        let mut autonat = autonat::Behaviour::new(
            peer,
            autonat::Config { only_global_ips: false, ..Default::default() },
        );
        // One address per relay (the first listed), as for reservations and circuits: a relay
        // reached on a second transport would give us public addresses of the wrong kind for
        // hole punching (see `connect::Gateway::relays_for`).
        let mut servers = HashSet::new();
        for relay in options.relays.iter().filter(|r| servers.insert(r.peer)) {
            autonat.add_server(relay.peer, Some(relay.full()));
        }
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (tls::Config::new, noise::Config::new),
                yamux_config,
            )
            .map_err(|e| build_error(&e))?
            .with_quic_config(quic_config)
            .with_relay_client((tls::Config::new, noise::Config::new), yamux_config)
            .map_err(|e| build_error(&e))?
            .with_behaviour(move |key, relay_client| Behaviour {
                gate: gate::Gate::new(access),
                tunnel,
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
                autonat,
                identify: identify_behaviour(key, "peerup"),
                ping: ping::Behaviour::new(ping_config()),
                mdns: Toggle::from(mdns),
            })
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                    .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND)
            })
            .build();
        let (addrs, _) = watch::channel(Vec::new());
        let node = Node {
            swarm,
            addrs,
            reservations: Reservations::new(options.relays),
            connections: HashMap::new(),
        };
        Ok((node, control))
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Bound listen addresses, updated as interfaces come and go.
    pub fn addresses(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.addrs.subscribe()
    }

    /// Start every listener and wait until each reported an address.
    pub async fn listen(&mut self, addrs: &[Multiaddr]) -> Result<(), NodeError> {
        start_listeners(&mut self.swarm, addrs).await?;
        self.publish_addresses();
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
    /// Status requests are answered from `status`.
    pub async fn run(mut self, stop: CancellationToken, mut status: mpsc::Receiver<StatusRequest>) {
        loop {
            self.reservations.open_due(&mut self.swarm, Instant::now());
            let retry = self.reservations.next_retry();
            let retry_sleep = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return self.close_all().await,
                () = retry_sleep => {}
                Some(reply) = status.recv() => {
                    let _ = reply.send(serde_json::to_value(self.status()).unwrap_or_default());
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    /// A snapshot for `peerup status`.
    pub fn status(&self) -> NodeStatus {
        let now = SystemTime::now();
        let relays: HashSet<PeerId> = self.reservations.relay_peers().collect();
        let mut peers: HashMap<PeerId, Vec<ConnStatus>> = HashMap::new();
        for info in self.connections.values() {
            let remote = info.endpoint.get_remote_address();
            peers.entry(info.peer).or_default().push(ConnStatus {
                path: if info.endpoint.is_relayed() { "relayed" } else { "direct" }.into(),
                transport: transport_of(remote).into(),
                remote: remote.to_string(),
                direction: if info.endpoint.is_dialer() { "out" } else { "in" }.into(),
                age_secs: now.duration_since(info.since).map_or(0, |d| d.as_secs()),
            });
        }
        let mut peers: Vec<PeerStatus> = peers
            .into_iter()
            .map(|(peer, connections)| PeerStatus {
                peer: peer.to_base58(),
                relay: relays.contains(&peer),
                connections,
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        NodeStatus {
            role: "gateway".into(),
            peer_id: self.peer_id().to_base58(),
            listen: self.swarm.listeners().map(ToString::to_string).collect(),
            reservations: self.reservations.status(),
            peers,
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
            SwarmEvent::NewListenAddr { listener_id, address } => {
                info!(%address, "listening");
                self.reservations.on_listen_addr(listener_id);
                self.publish_addresses();
            }
            SwarmEvent::ExpiredListenAddr { .. } => self.publish_addresses(),
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                let reason = match &reason {
                    Ok(()) => "closed".to_owned(),
                    Err(e) => e.to_string(),
                };
                self.reservations.on_listener_closed(listener_id, &reason);
                self.publish_addresses();
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed = endpoint.is_relayed(), "connected");
                let info = ConnInfo { peer: peer_id, endpoint, since: SystemTime::now() };
                self.connections.insert(connection_id, info);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                self.connections.remove(&connection_id);
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                debug!(remote = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outbound connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => info!(peer = %remote_peer_id, "direct connection by hole punching"),
                Err(error) => {
                    info!(peer = %remote_peer_id, %error, "hole punching failed; staying relayed")
                }
            },
            BehaviourEvent::RelayClient(event) => debug!(?event, "relay client"),
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(error) }) => {
                info!(%peer, %error, "ping failed: closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                info!(status = ?new, "NAT status");
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    debug!(%peer, %addr, "found on the LAN");
                    self.swarm.add_peer_address(peer, addr);
                }
            }
            _ => {}
        }
    }
}

/// `quic` or `tcp`, from the first transport protocol in an address.
fn transport_of(addr: &Multiaddr) -> &'static str {
    for protocol in addr.iter() {
        match protocol {
            Protocol::QuicV1 | Protocol::Quic => return "quic",
            Protocol::Tcp(_) => return "tcp",
            _ => {}
        }
    }
    "other"
}

/// Start every listener and wait until each reported an address. An address that cannot be
/// bound is skipped with a warning; none at all is an error.
pub(crate) async fn start_listeners<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<(), NodeError> {
    let mut pending = HashSet::new();
    let mut errors = Vec::new();
    for addr in addrs {
        match swarm.listen_on(addr.clone()) {
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
            event = swarm.select_next_some() => event,
            () = &mut deadline => return Err(NodeError::Listen("listeners did not start in time".into())),
        };
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                info!(%address, "listening");
                pending.remove(&listener_id);
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                warn!(?addresses, ?reason, "listener closed");
                pending.remove(&listener_id);
            }
            _ => {}
        }
    }
    if swarm.listeners().next().is_none() {
        return Err(NodeError::Listen(errors.join("; ")));
    }
    Ok(())
}
