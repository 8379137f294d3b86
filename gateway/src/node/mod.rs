//! The gateway's libp2p node: one task owns the swarm; everything else talks to it through
//! one command channel ([`Handle`]).
//!
//! - [`swarm`]: what gateway and relay swarms share (transport settings, keep-alive, listening).
//! - [`muxer`]: our yamux adapter, whose close cannot stall on a frozen path.
//! - [`tls`]: our TLS upgrade, libp2p's handshake with AES-GCM first where the CPU has AES.
//! - [`liveness`]: the dead-path clock.
//! - [`command`]: the command channel into the swarm's task.
//! - [`gate`]: who may connect (closed at the handshake otherwise) and whom we dial.
//! - [`tunnel`]: our stream behaviour for `/peerup/tunnel/2.0.0`, and the streams kept between
//!   tunnels ([`tunnel::idle`]).
//! - [`reservations`]: a reservation on every configured relay.
//! - [`status`]: what `peerup status` shows.
//!
//! Transports: TCP with TLS or Noise (TLS preferred), then yamux; QUIC; circuits through
//! relays. Identify and ping run on every connection; a connection whose pings go unanswered
//! for `keepalive_interval + keepalive_timeout` ([`liveness`]) has its tunnels reset and is
//! closed.

pub mod command;
mod dial_error;
pub mod gate;
pub mod liveness;
pub mod muxer;
pub mod reservations;
pub mod socket;
pub mod status;
pub mod swarm;
pub mod tls;
pub mod tunnel;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, mdns, ping, relay, tcp};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::config::{RelayAddr, SecureChannel};
use crate::names::{self, NamesResponse, Registrations};
use crate::protocol::frame::Reason;
use crate::tunnels::Tunnels;
pub use command::{Command, Handle, Opened};
use reservations::Reservations;
use status::{ConnInfo, NodeStatus};
pub use swarm::Keepalive;
pub use tunnel::{Connected, IdleStreams, Inbound, OpenError};

/// Inbound streams in protocol negotiation at once, per connection.
const MAX_NEGOTIATING_INBOUND: usize = 1024;
/// Time for connections to close gracefully at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// After a connection closed, its tunnels have this long to read what it delivered (their
/// last bytes and END frames) before any still open are reset: yamux does not always wake the
/// streams of a connection that closed while closing.
const CLOSED_GRACE: Duration = Duration::from_secs(1);

/// The composed behaviour. Field order matters: the gate decides first.
#[allow(missing_debug_implementations)] // identify's behaviour has no Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gate: gate::Gate,
    tunnel: tunnel::Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    identify: libp2p::identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    names: names::protocol::Behaviour,
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
    /// Secure channels for TCP and relayed connections, preferred first.
    pub security: Vec<SecureChannel>,
    pub keepalive: Keepalive,
    /// Tunnel streams one peer may have open to us at once (`limits.streams_per_peer`).
    pub streams_per_peer: usize,
    /// The outcomes of our name registrations, for `status`.
    pub registrations: Registrations,
}

/// Names requests awaiting an answer at once; more are refused at once.
const MAX_NAMES_PENDING: usize = 1024;

type NamesReply = tokio::sync::oneshot::Sender<Result<NamesResponse, String>>;

/// AutoNAT asking our relays only (one address each, as for reservations and circuits). Not
/// the other peers we are connected to: each of those would dial us back every 90 s (AutoNAT's
/// retry interval), and every dial-back is one more connection to that peer, idle for
/// `IDLE_CONNECTION_TIMEOUT` before it closes (two gateways held ~7 connections to each other).
fn autonat_with_relays(peer: PeerId, relays: &[RelayAddr]) -> autonat::Behaviour {
    let mut autonat = autonat::Behaviour::new(
        peer,
        autonat::Config { only_global_ips: false, use_connected: false, ..Default::default() },
    );
    for relay in swarm::one_per_relay(relays) {
        autonat.add_server(relay.peer, Some(relay.full()));
    }
    autonat
}

/// A relay connection closed within this long of its handshake, with no reservation granted,
/// was refused by the relay.
const RELAY_REFUSAL_WITHIN: Duration = Duration::from_secs(2);

/// A built node, not yet running.
pub struct Node {
    swarm: Swarm<Behaviour>,
    addrs: watch::Sender<Vec<Multiaddr>>,
    reservations: Reservations,
    connections: HashMap<ConnectionId, ConnInfo>,
    liveness: liveness::Liveness,
    /// Connections closed, whose tunnels are reset once [`CLOSED_GRACE`] has passed.
    closed: std::collections::VecDeque<(tokio::time::Instant, PeerId, ConnectionId)>,
    access: Arc<Access>,
    tunnels: Arc<Tunnels>,
    /// Our addresses as others observed them (identify), newest last, at most [`OBSERVED`].
    observed: Vec<Multiaddr>,
    /// Names requests sent, by id, with whom to tell the answer.
    names_pending: HashMap<libp2p::request_response::OutboundRequestId, (PeerId, NamesReply)>,
    registrations: Registrations,
    health: reservations::RelayHealth,
    /// Relays that closed our connection at the handshake lately, and what that means (one
    /// entry per configured relay at most).
    refused_by: HashMap<PeerId, String>,
    /// Tunnel streams kept between tunnels; swept here.
    idle: Arc<IdleStreams>,
}

/// Observed addresses kept for `status`.
const OBSERVED: usize = 16;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("peer", self.swarm.local_peer_id()).finish()
    }
}

impl Node {
    /// Build the swarm. Inbound tunnel streams are delivered on `inbound`; `tunnels` is the
    /// registry whose tunnels the node resets when their connection dies.
    pub fn build(
        keypair: Keypair,
        access: Arc<Access>,
        tunnels: Arc<Tunnels>,
        inbound: mpsc::Sender<Inbound>,
        options: NodeOptions,
    ) -> Result<Node, NodeError> {
        let build_error = |e: &dyn std::fmt::Display| NodeError::Build(e.to_string());
        let peer = keypair.public().to_peer_id();
        let gate = gate::Gate::new(access.clone());
        let mdns = match options.mdns {
            true => Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| build_error(&e))?,
            ),
            false => None,
        };
        let autonat = autonat_with_relays(peer, &options.relays);
        let security = options.security.clone();
        let streams_per_peer = options.streams_per_peer;
        let reservations = Reservations::new(options.relays);
        let health = reservations.health();
        let relay_health = health.clone();
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                |key: &Keypair| {
                    let secure = tls::TlsOrNoise::new(key, &security)?;
                    Ok::<_, tls::SecurityError>(socket::Layered::new(
                        secure,
                        socket::ReadAhead(socket::READ_AHEAD),
                    ))
                },
                swarm::yamux_config,
            )
            .map_err(|e| build_error(&e))?
            .with_quic_config(|quic| swarm::quic_config(quic, streams_per_peer))
            .with_relay_client(
                |key: &Keypair| {
                    let secure = tls::TlsOrNoise::new(key, &security)?;
                    Ok::<_, tls::SecurityError>(socket::Layered::new(
                        secure,
                        socket::GatherWrites(socket::CIRCUIT_GATHER),
                    ))
                },
                swarm::yamux_config,
            )
            .map_err(|e| build_error(&e))?
            .with_behaviour(move |key, relay_client| Behaviour {
                gate,
                tunnel: tunnel::Behaviour::new(inbound, health),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
                autonat,
                identify: swarm::identify_behaviour(key, "peerup"),
                ping: swarm::ping_behaviour(options.keepalive),
                mdns: Toggle::from(mdns),
                names: names::protocol::behaviour(
                    libp2p::request_response::ProtocolSupport::Outbound,
                ),
            })
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(swarm::IDLE_CONNECTION_TIMEOUT)
                    .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND)
            })
            .build();
        let (addrs, _) = watch::channel(Vec::new());
        let idle = Arc::new(IdleStreams::new(swarm.behaviour().tunnel.connected()));
        Ok(Node {
            swarm,
            addrs,
            reservations,
            connections: HashMap::new(),
            liveness: liveness::Liveness::new(options.keepalive),
            closed: std::collections::VecDeque::new(),
            access,
            tunnels,
            observed: Vec::new(),
            names_pending: HashMap::new(),
            registrations: options.registrations,
            health: relay_health,
            refused_by: HashMap::new(),
            idle,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Peers with a connection, shared (read without asking the node's task).
    pub fn connected(&self) -> Connected {
        self.swarm.behaviour().tunnel.connected()
    }

    /// Tunnel streams kept between tunnels, shared with the connector.
    pub fn idle_streams(&self) -> Arc<IdleStreams> {
        self.idle.clone()
    }

    /// Bound listen addresses, updated as interfaces come and go.
    pub fn addresses(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.addrs.subscribe()
    }

    /// Start every listener and wait until each reported an address.
    pub async fn listen(&mut self, addrs: &[Multiaddr]) -> Result<(), NodeError> {
        swarm::start_listeners(&mut self.swarm, addrs).await?;
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

    /// Drive the swarm and answer `commands` until `stop` is cancelled, then close every
    /// connection gracefully.
    pub async fn run(mut self, stop: CancellationToken, mut commands: mpsc::Receiver<Command>) {
        loop {
            self.reservations.open_due(&mut self.swarm, Instant::now());
            let retry = self.reservations.next_retry();
            let retry_sleep = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let silent = self.liveness.next_deadline();
            let silence = async {
                match silent {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let closed_due = self.closed.front().map(|(at, _, _)| *at);
            let closed_sleep = async {
                match closed_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let idle = self.idle.clone();
            let expiry = idle.next_expiry();
            let idle_sleep = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => idle.changed().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return self.close_all().await,
                () = idle_sleep => self.idle.sweep(),
                () = retry_sleep => {}
                () = closed_sleep => self.reset_closed(),
                () = silence => {
                    for (peer, connection) in self.liveness.dead(tokio::time::Instant::now()) {
                        self.path_lost(peer, connection, "no ping answered in time (the peer, the path or this process stalled)");
                    }
                }
                Some(command) = commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Open { peer, addrs, reply } => {
                self.swarm.behaviour_mut().tunnel.open(peer, addrs, reply);
            }
            Command::Warm { peer, addrs } => self.swarm.behaviour_mut().tunnel.warm(peer, addrs),
            Command::AccessChanged => self.enforce_access(),
            Command::Disconnect(peer) => self.disconnect(peer, Reason::Revoked),
            Command::Status(reply) => {
                let _ = reply.send(serde_json::to_value(self.status()).unwrap_or_default());
            }
            // A gateway publishes no names.
            Command::PublishName { .. } => {}
            Command::Names { peer, addrs, request, reply } => {
                if self.names_pending.len() >= MAX_NAMES_PENDING {
                    let _ = reply.send(Err("too many name requests at once".into()));
                    return;
                }
                self.access.choose(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .names
                    .send_request_with_addresses(&peer, request, addrs);
                self.names_pending.insert(id, (peer, reply));
            }
        }
    }

    fn on_names_event(
        &mut self,
        event: libp2p::request_response::Event<names::NamesRequest, NamesResponse>,
    ) {
        use libp2p::request_response::{Event, Message};
        match event {
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                self.refused_by.remove(&peer);
                if let Some((_, reply)) = self.names_pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some((_, reply)) = self.names_pending.remove(&request_id) {
                    let mut why = error.to_string();
                    let problem =
                        self.refused_by.get(&peer).cloned().or_else(|| self.health.problem(&peer));
                    if let Some(problem) = problem {
                        why = format!("{why} ({problem})");
                    }
                    let _ = reply.send(Err(why));
                }
            }
            // A gateway answers no names requests (it supports the protocol outbound only).
            _ => {}
        }
    }

    /// After the lists changed: close the connections of peers no list allows any more, and
    /// keep those of peers we chose to reach (a name we resolved, a relay).
    fn enforce_access(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            if !self.access.may_connect(&peer) && !self.access.may_dial(&peer, false) {
                info!(%peer, "access revoked: closing its connections");
                self.disconnect(peer, Reason::Revoked);
            }
        }
    }

    fn disconnect(&mut self, peer: PeerId, reason: Reason) {
        self.tunnels.reset(|t| t.peer == peer, reason);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// A snapshot for `peerup status`.
    pub fn status(&self) -> NodeStatus {
        let relays: HashSet<PeerId> = self.reservations.relay_peers().collect();
        NodeStatus {
            role: "gateway".into(),
            peer_id: self.peer_id().to_base58(),
            listen: self.swarm.listeners().map(ToString::to_string).collect(),
            observed: self.observed.iter().map(ToString::to_string).collect(),
            reservations: self.reservations.status(),
            peers: status::peers(
                self.connections.values(),
                &relays,
                |p| self.tunnels.count_peer(p),
                |p| self.idle.count(p),
            ),
            tunnels: self.tunnels.len(),
            names: self.registrations.snapshot(),
        }
    }

    /// Close every connection and wait until they are closed: a tunnel that finished has its
    /// last bytes and FIN queued in yamux, and only a graceful close flushes them to the wire.
    async fn close_all(&mut self) {
        self.idle.clear();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            self.disconnect(peer, Reason::Shutdown);
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
                if let Some((relay, addrs)) = self.reservations.on_listen_addr(listener_id) {
                    self.learn_addresses(relay, addrs);
                }
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
                self.liveness.alive(peer_id, connection_id, tokio::time::Instant::now());
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if let Some(info) = self.connections.get(&connection_id) {
                    self.relay_closed_early(peer_id, info.since);
                }
                self.connections.remove(&connection_id);
                // An I/O error, not an idle close or a close of ours: the path or the peer died.
                if matches!(cause, Some(libp2p::swarm::ConnectionError::IO(_))) {
                    self.relay_connection_failed(peer_id);
                }
                self.liveness.closed(connection_id);
                let at = tokio::time::Instant::now() + CLOSED_GRACE;
                self.closed.push_back((at, peer_id, connection_id));
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                debug!(remote = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outbound connection failed");
                if let Some(relay) = peer_id.filter(|p| self.reservations.is_pending(p)) {
                    let problem = dial_error::relay_problem(&error);
                    self.reservations.on_relay_problem(&relay, problem);
                }
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::NewExternalAddrCandidate { address }
                if !self.observed.contains(&address) =>
            {
                debug!(%address, "observed address");
                if self.observed.len() == OBSERVED {
                    self.observed.remove(0);
                }
                self.observed.push(address);
            }
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
            BehaviourEvent::Names(event) => self.on_names_event(event),
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Ok(_) }) => {
                self.liveness.alive(peer, connection, tokio::time::Instant::now());
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(error) }) => {
                self.path_lost(peer, connection, &error.to_string());
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

    /// Dial a relay on its other transports, so identify reports our address on each (see
    /// [`reservations`]). A failure costs nothing: hole punching then has fewer addresses.
    fn learn_addresses(&mut self, relay: PeerId, addrs: Vec<Multiaddr>) {
        for addr in addrs {
            let transport = swarm::transport_of(&addr);
            let have = self.connections.values().any(|c| {
                c.peer == relay
                    && !c.endpoint.is_relayed()
                    && swarm::transport_of(c.endpoint.get_remote_address()) == transport
            });
            if have {
                continue;
            }
            debug!(%relay, %addr, "dialling the relay on another transport");
            let opts = DialOpts::peer_id(relay)
                .addresses(vec![addr])
                .condition(PeerCondition::Always)
                .build();
            if let Err(error) = self.swarm.dial(opts) {
                debug!(%relay, %error, "cannot dial the relay on another transport");
            }
        }
    }

    /// A relay that closes our connection right after the handshake, before granting the
    /// reservation we came for, has refused us: as our relay does for a peer outside its members.
    fn relay_closed_early(&mut self, peer: PeerId, since: SystemTime) {
        let brief = since.elapsed().is_ok_and(|lived| lived < RELAY_REFUSAL_WITHIN);
        if !brief || !self.reservations.relay_peers().any(|relay| relay == peer) {
            return;
        }
        let problem = format!(
            "the relay closed the connection at the handshake: this node is probably not one of its members (on the relay: peerup auth add {} --relay)",
            self.peer_id()
        );
        if self.reservations.is_pending(&peer) {
            self.reservations.on_relay_problem(&peer, problem.clone());
        }
        // A names request that fails on this connection says so too.
        self.refused_by.insert(peer, problem);
    }

    /// A connection to one of our relays failed (an I/O error, not an idle close): the relay most likely
    /// stopped or restarted, so its other connections (the one on its other transport, see
    /// [`Self::learn_addresses`]) are dead too. Close them now: the next reservation request
    /// would otherwise go over one of them and wait for QUIC's idle timeout.
    fn relay_connection_failed(&mut self, peer: PeerId) {
        if !self.reservations.relay_peers().any(|relay| relay == peer) {
            return;
        }
        let others: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, info)| info.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for connection in others {
            debug!(relay = %peer, "closing the relay's other connection: the relay went away");
            self.swarm.close_connection(connection);
        }
    }

    /// Reset the tunnels still open on connections that closed a grace period ago.
    fn reset_closed(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some((at, peer, connection)) = self.closed.front().copied() {
            if at > now {
                break;
            }
            self.closed.pop_front();
            self.tunnels.reset_connection(peer, connection, Reason::PathLost);
        }
    }

    /// A connection's keep-alive failed: its tunnels are reset now (a graceful close would
    /// wait on the dead path), no new stream goes on it, and the next open dials afresh.
    fn path_lost(&mut self, peer: PeerId, connection: ConnectionId, error: &str) {
        info!(%peer, error, "keep-alive failed: resetting the connection's tunnels and closing it");
        self.liveness.closed(connection);
        self.swarm.behaviour_mut().tunnel.retire(&peer, connection);
        self.tunnels.reset_connection(peer, connection, Reason::PathLost);
        self.swarm.close_connection(connection);
    }
}
