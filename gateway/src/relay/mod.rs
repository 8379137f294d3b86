//! `peerup relay`: a circuit relay v2 server for one network's members.
//!
//! Only members (the relay's `authorized_keys`) get a connection at all: others are closed at
//! the handshake, so they can neither reserve nor be reached. Limits are sized for real traffic
//! (unlimited bytes, circuits that last up to the protocol's u32::MAX-seconds ceiling) and
//! each member is rate limited (governor). Circuits carry end-to-end encrypted connections: the
//! relay sees bytes, never content. [`traffic`] counts those bytes per member and per circuit.

pub mod daemon;
pub mod traffic;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, ping, quic, relay, tcp};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::config::{RelayAddr, RelayLimits};
use crate::names::record::{Record, unix_now};
use crate::names::replica::{self, WriteBehind};
use crate::names::{self, NamesResponse, Refusal, RegistryHandle};
use crate::node::swarm::{self, Keepalive, start_listeners};
use crate::node::{Command, NodeError, OpenError, gate, socket, tls};
use libp2p::kad::{self, store::MemoryStore, store::RecordStore};
use libp2p::swarm::behaviour::toggle::Toggle;
use traffic::{CircuitStatus, Traffic};

/// The relay's behaviours; the gate decides first.
#[allow(missing_debug_implementations)] // identify's behaviour has no Debug
#[derive(NetworkBehaviour)]
pub struct RelayBehaviour {
    gate: gate::Gate,
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    names: names::protocol::Behaviour,
    /// Replication of the network's records among its relays (when it has a registry).
    kad: Toggle<kad::Behaviour<MemoryStore>>,
}

/// What a relay does for its network's names, from `relay.registry`.
#[derive(Debug, Default)]
pub struct NamesSetup {
    /// The network's registrar; `None`: this relay holds no names.
    pub registrar: Option<PeerId>,
    /// The other relays to replicate with.
    pub peers: Vec<RelayAddr>,
    pub republish: std::time::Duration,
    /// Records to start with: the registrar's live records, or what a relay held before.
    pub records: Vec<(String, Vec<u8>)>,
    /// Where a relay that is not the registrar keeps what it holds.
    pub write_behind: Option<WriteBehind>,
}

/// What `peerup status` shows for a relay.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RelayStatus {
    pub role: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    pub external: Vec<String>,
    pub reservations: Vec<ReservationHeld>,
    pub circuits: Vec<CircuitStatus>,
    /// Bytes carried by all circuits since start.
    pub circuit_bytes: u64,
    pub members_connected: usize,
    /// The network's names this relay holds, and its replication peers.
    #[serde(default)]
    pub names: Option<NamesHeld>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NamesHeld {
    pub registrar: String,
    /// Whether this relay is the registrar.
    pub is_registrar: bool,
    /// Records held (tombstones included).
    pub records: usize,
    pub peers: Vec<ReplicationPeer>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReplicationPeer {
    pub peer: String,
    pub connected: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReservationHeld {
    pub peer: String,
    pub age_secs: u64,
}

/// A built relay node, listening.
pub struct RelayNode {
    swarm: Swarm<RelayBehaviour>,
    access: Arc<Access>,
    traffic: Arc<Traffic>,
    reservations: HashMap<PeerId, SystemTime>,
    /// No external addresses configured: advertise routable listen addresses as they come.
    auto_external: bool,
    /// The registrar thread, when this relay signs its network's names.
    registry: Option<RegistryHandle>,
    /// Names requests being answered, each with the channel its answer goes back on.
    answering: futures::stream::FuturesUnordered<Answering>,
    /// Claims per member (each is a write to disk): [`CLAIMS_PER_MINUTE`].
    claims: PerPeer,
    /// The network's registrar, when this relay holds names (as registrar or by replication).
    registrar: Option<PeerId>,
    replication_peers: Vec<PeerId>,
    write_behind: Option<WriteBehind>,
    /// Every record held goes to the listed peers this often.
    republish: std::time::Duration,
    /// Whether this relay has heard from the network (it held records at start, or a peer put
    /// one): until then it cannot say a name does not exist.
    synced: bool,
}

/// Claims (register, renew, release) one member may send per minute, and as many at once.
const CLAIMS_PER_MINUTE: u32 = 30;

/// A names request in the registrar's hands.
type Answering = futures::future::BoxFuture<
    'static,
    (libp2p::request_response::ResponseChannel<NamesResponse>, NamesResponse),
>;

/// Names requests answered at once; past it, a request is refused as busy.
const MAX_ANSWERING: usize = 1024;

impl std::fmt::Debug for RelayNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayNode").field("peer", self.swarm.local_peer_id()).finish()
    }
}

/// Per-peer rate limit for relay requests, backed by governor.
struct PerPeer {
    limiter: governor::DefaultKeyedRateLimiter<PeerId>,
    calls: u32,
}

impl relay::RateLimiter for PerPeer {
    fn try_next(&mut self, peer: PeerId, _: &Multiaddr, _: std::time::Instant) -> bool {
        self.admit(peer)
    }
}

impl PerPeer {
    fn new(per_minute: u32) -> PerPeer {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::per_minute(per_minute);
        PerPeer { limiter: governor::RateLimiter::keyed(quota), calls: 0 }
    }

    /// May `peer` go on now? Forgets idle peers now and then, so the map stays bounded.
    fn admit(&mut self, peer: PeerId) -> bool {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(1024) {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&peer).is_ok()
    }
}

fn per_peer(per_minute: u32) -> Box<dyn relay::RateLimiter> {
    Box::new(PerPeer::new(per_minute))
}

/// Reservations and circuits are for members only: the network's other relays get a connection
/// (for replication) but neither.
struct MembersOnly(Arc<Access>);

impl relay::RateLimiter for MembersOnly {
    fn try_next(&mut self, peer: PeerId, _: &Multiaddr, _: std::time::Instant) -> bool {
        self.0.is_member(&peer)
    }
}

fn relay_config(limits: &RelayLimits, access: &Arc<Access>) -> relay::Config {
    let members = || Box::new(MembersOnly(access.clone())) as Box<dyn relay::RateLimiter>;
    relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: 4,
        reservation_duration: limits.reservation_duration.0,
        reservation_rate_limiters: vec![members(), per_peer(limits.reservations_per_minute)],
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        // The protocol carries the duration in a u32 of seconds; libp2p panics above it.
        max_circuit_duration: limits.circuit_duration.0.min(crate::config::MAX_CIRCUIT_DURATION),
        max_circuit_bytes: limits.circuit_bytes,
        circuit_src_rate_limiters: vec![members(), per_peer(limits.circuits_per_minute)],
    }
}

impl RelayNode {
    /// Build the relay's swarm: TCP (TLS and/or Noise as `security` lists them; yamux) and
    /// QUIC, every connection counted.
    pub fn build(
        keypair: Keypair,
        access: Arc<Access>,
        limits: &RelayLimits,
        keepalive: Keepalive,
        security: &[crate::config::SecureChannel],
        names_setup: NamesSetup,
    ) -> Result<RelayNode, NodeError> {
        let circuits_per_peer = limits.max_circuits_per_peer;
        let traffic = Arc::new(Traffic::default());
        let counted = traffic.clone();
        let peer = keypair.public().to_peer_id();
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(
                move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let (for_tcp, for_quic) = (counted.clone(), counted);
                    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(Version::V1Lazy)
                        .authenticate(socket::Layered::new(
                            tls::TlsOrNoise::new(key, security)?,
                            socket::ReadAhead(socket::READ_AHEAD),
                        ))
                        .multiplex(
                            swarm::yamux_config()
                                .gathering_stream_writes(crate::node::muxer::FRAME_SIZE),
                        )
                        .map(move |(peer, muxer), _| {
                            (peer, for_tcp.wrap(peer, StreamMuxerBox::new(muxer)))
                        });
                    let quic = quic::tokio::Transport::new(swarm::quic_config(
                        quic::Config::new(key),
                        circuits_per_peer,
                    ))
                    .map(move |(peer, conn), _| {
                        (peer, for_quic.wrap(peer, StreamMuxerBox::new(conn)))
                    });
                    Ok(tcp.or_transport(quic).map(|either, _| either.into_inner()))
                },
            )
            .map_err(|e| NodeError::Build(e.to_string()))?
            .with_behaviour(|key| RelayBehaviour {
                gate: gate::Gate::new(access.clone()),
                relay: relay::Behaviour::new(peer, relay_config(limits, &access)),
                identify: swarm::identify_behaviour(key, "peerup-relay"),
                ping: swarm::ping_behaviour(keepalive),
                autonat: autonat::Behaviour::new(
                    peer,
                    autonat::Config { only_global_ips: false, ..Default::default() },
                ),
                names: names::protocol::behaviour(
                    libp2p::request_response::ProtocolSupport::Inbound,
                ),
                kad: Toggle::from(
                    names_setup.registrar.map(|registrar| replica::behaviour(peer, &registrar)),
                ),
            })
            .map_err(|e| NodeError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(swarm::IDLE_CONNECTION_TIMEOUT))
            .build();
        let mut node = RelayNode {
            swarm,
            access,
            traffic,
            reservations: HashMap::new(),
            auto_external: false,
            registry: None,
            answering: Default::default(),
            claims: PerPeer::new(CLAIMS_PER_MINUTE),
            registrar: names_setup.registrar,
            replication_peers: names_setup.peers.iter().map(|p| p.peer).collect(),
            write_behind: names_setup.write_behind,
            republish: names_setup.republish.max(std::time::Duration::from_secs(1)),
            synced: !names_setup.records.is_empty(),
        };
        node.seed_replication(&names_setup.peers, names_setup.records);
        Ok(node)
    }

    /// Fill the routing table from `relay.registry.peers` only, and the store with the records
    /// we start with (the registrar's as their publisher, so they are published again).
    fn seed_replication(&mut self, peers: &[RelayAddr], records: Vec<(String, Vec<u8>)>) {
        let Some(registrar) = self.registrar else { return };
        let me = *self.swarm.local_peer_id();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
        for relay in peers {
            kad.add_address(&relay.peer, relay.addr.clone());
        }
        let publisher = (registrar == me).then_some(me);
        for (host, signed) in records {
            let Ok(record) = Record::verify(&signed, &registrar, &host, unix_now()) else {
                continue;
            };
            let _ =
                kad.store_mut().put(replica::kad_record(&registrar, &record, signed, publisher));
        }
    }

    /// Answer names requests through the registrar thread.
    pub fn with_registry(mut self, registry: Option<RegistryHandle>) -> Self {
        self.registry = registry;
        self
    }

    /// Bind the listeners and advertise external addresses: the configured ones, or else every
    /// bound address that is neither loopback, link-local nor unspecified (also those that
    /// appear later, as interfaces come up).
    pub async fn listen(
        &mut self,
        listen: &[Multiaddr],
        external: &[Multiaddr],
    ) -> Result<(), NodeError> {
        start_listeners(&mut self.swarm, listen).await?;
        self.auto_external = external.is_empty();
        let advertised: Vec<Multiaddr> = if external.is_empty() {
            self.swarm.listeners().filter(|a| is_routable(a)).cloned().collect()
        } else {
            external.to_vec()
        };
        for addr in advertised {
            info!(%addr, "advertising");
            self.swarm.add_external_address(addr);
        }
        self.swarm.behaviour_mut().relay.set_status(Some(relay::Status::Enable));
        Ok(())
    }

    pub fn listen_addresses(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Serve until `stop`, answering `commands`.
    pub async fn run(mut self, stop: CancellationToken, mut commands: mpsc::Receiver<Command>) {
        let mut republish = tokio::time::interval(self.republish);
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = republish.tick(), if self.registrar.is_some() => self.republish_all(),
                Some(command) = commands.recv() => self.on_command(command),
                Some((channel, response)) = self.answering.next(), if !self.answering.is_empty() => {
                    let _ = self.swarm.behaviour_mut().names.send_response(channel, response);
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(serde_json::to_value(self.status()).unwrap_or_default());
            }
            // A member removed from the list loses its connections, and with them its
            // reservation and every circuit through us.
            Command::AccessChanged => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in peers.into_iter().filter(|p| !self.access.may_connect(p)) {
                    info!(%peer, "no longer a member: closing its connections");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Open { reply, .. } => {
                let _ = reply.send(Err(OpenError::Unsupported));
            }
            // A relay opens no tunnels, so it warms no paths, and it asks no names.
            Command::Warm { .. } => {}
            Command::Names { reply, .. } => {
                let _ = reply.send(Err("a relay asks no names".into()));
            }
            Command::PublishName { host, record } => self.publish(&host, record),
        }
    }

    fn status(&mut self) -> RelayStatus {
        let now = SystemTime::now();
        RelayStatus {
            role: "relay".into(),
            peer_id: self.swarm.local_peer_id().to_base58(),
            listen: self.swarm.listeners().map(ToString::to_string).collect(),
            external: self.swarm.external_addresses().map(ToString::to_string).collect(),
            reservations: self
                .reservations
                .iter()
                .map(|(peer, since)| ReservationHeld {
                    peer: peer.to_base58(),
                    age_secs: now.duration_since(*since).map_or(0, |d| d.as_secs()),
                })
                .collect(),
            circuits: self.traffic.circuits(),
            circuit_bytes: self.traffic.circuit_bytes.load(std::sync::atomic::Ordering::Relaxed),
            members_connected: self
                .swarm
                .connected_peers()
                .filter(|p| self.access.is_member(p))
                .count(),
            names: self.names_held(),
        }
    }

    fn on_event(&mut self, event: SwarmEvent<RelayBehaviourEvent>) {
        use relay::Event as R;
        match event {
            SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(event)) => match event {
                R::ReservationReqAccepted { src_peer_id, renewed, .. } => {
                    if !renewed {
                        info!(peer = %src_peer_id, "reservation accepted");
                    }
                    self.reservations.entry(src_peer_id).or_insert_with(SystemTime::now);
                }
                // libp2p's relay says "closed" when any connection of the peer closes, also
                // one that never held the reservation (a second dial that lost the race): the
                // reservation lives on while the peer has a connection here.
                R::ReservationClosed { src_peer_id } if self.swarm.is_connected(&src_peer_id) => {}
                R::ReservationClosed { src_peer_id } | R::ReservationTimedOut { src_peer_id } => {
                    if self.reservations.remove(&src_peer_id).is_some() {
                        info!(peer = %src_peer_id, "reservation ended");
                    }
                }
                R::ReservationReqDenied { src_peer_id, status, .. } => {
                    info!(peer = %src_peer_id, ?status, "reservation denied");
                }
                R::CircuitReqAccepted { src_peer_id, dst_peer_id, .. } => {
                    info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
                    self.traffic.circuit_opened(src_peer_id, dst_peer_id);
                }
                R::CircuitReqDenied { src_peer_id, dst_peer_id, status, .. } => {
                    info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied");
                }
                R::CircuitClosed { src_peer_id, dst_peer_id, error } => {
                    debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "circuit closed");
                    self.traffic.circuit_closed(src_peer_id, dst_peer_id);
                }
                other => debug!(event = ?other, "relay"),
            },
            SwarmEvent::Behaviour(RelayBehaviourEvent::Names(event)) => self.on_names(event),
            SwarmEvent::Behaviour(RelayBehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), member = self.access.is_member(&peer_id), "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                debug!(peer = %peer_id, "disconnected");
                self.traffic.peer_gone(&peer_id);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if self.auto_external && is_routable(&address) {
                    info!(addr = %address, "advertising");
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if self.auto_external => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            _ => {}
        }
    }
}

impl RelayNode {
    /// A member's names request: to the registrar thread, or answered here when this relay
    /// holds no registry or is too busy.
    fn on_names(
        &mut self,
        event: libp2p::request_response::Event<names::NamesRequest, NamesResponse>,
    ) {
        use libp2p::request_response::{Event, Message};
        let Event::Message { peer, message: Message::Request { request, channel, .. }, .. } = event
        else {
            if let Event::InboundFailure { peer, error, .. } = event {
                debug!(%peer, %error, "names request failed");
            }
            return;
        };
        let refuse =
            |code, message: &str| NamesResponse::Refused { code, message: message.to_owned() };
        let immediate = if !self.access.is_member(&peer) {
            Some(refuse(Refusal::NotMember, "only the relay's members may use its names"))
        } else if self.answering.len() >= MAX_ANSWERING {
            Some(refuse(Refusal::Unavailable, "the registrar is busy; try again"))
        } else if !matches!(request, names::NamesRequest::Lookup { .. }) && !self.claims.admit(peer)
        {
            Some(refuse(
                Refusal::Unavailable,
                "too many claims from this key; try again in a minute",
            ))
        } else {
            match (&self.registry, &request) {
                (Some(_), _) => None,
                (None, names::NamesRequest::Lookup { host }) => Some(self.held_answer(host)),
                (None, _) => {
                    Some(refuse(Refusal::NotRegistrar, "this relay is not the network's registrar"))
                }
            }
        };
        if let Some(response) = immediate {
            let _ = self.swarm.behaviour_mut().names.send_response(channel, response);
            return;
        }
        if let Some(registry) = &self.registry {
            let answer = registry.request(peer, request);
            self.answering.push(Box::pin(async move {
                let response = answer.await.unwrap_or(NamesResponse::Refused {
                    code: Refusal::Unavailable,
                    message: "the registrar stopped".into(),
                });
                (channel, response)
            }));
        }
    }
}

impl RelayNode {
    /// The registrar issued `record`: hold it and put it to the network's other relays.
    fn publish(&mut self, host: &str, signed: Vec<u8>) {
        let Some(registrar) = self.registrar else { return };
        let Ok(record) = Record::verify(&signed, &registrar, host, unix_now()) else { return };
        let me = *self.swarm.local_peer_id();
        let peers = self.replication_peers.clone();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
        let record = replica::kad_record(&registrar, &record, signed, Some(me));
        if let Err(error) = kad.store_mut().put(record.clone()) {
            warn!(%error, host, "cannot hold a record for replication");
        }
        if !peers.is_empty() {
            kad.put_record_to(record, peers.into_iter(), kad::Quorum::One);
        }
    }

    /// Put every valid record held to the listed peers (a relay that was down or is new gets
    /// them all within one interval).
    fn republish_all(&mut self) {
        let Some(registrar) = self.registrar else { return };
        let peers = self.replication_peers.clone();
        if peers.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
        let now = unix_now();
        let valid = |r: &kad::Record| {
            Record::open(&r.value)
                .is_ok_and(|(rec, _)| Record::verify(&r.value, &registrar, &rec.host, now).is_ok())
        };
        let records: Vec<kad::Record> =
            kad.store_mut().records().filter(|r| valid(r)).map(|r| r.into_owned()).collect();
        debug!(records = records.len(), "republishing to the network's other relays");
        for record in records {
            kad.put_record_to(record, peers.clone().into_iter(), kad::Quorum::One);
        }
    }

    /// A lookup at a relay that is not the registrar: what it holds by replication. A relay
    /// that holds no names refuses (a "not found" from it would deny a name it never knew).
    fn held_answer(&mut self, host: &str) -> NamesResponse {
        let (Some(registrar), Some(kad)) =
            (self.registrar, self.swarm.behaviour_mut().kad.as_mut())
        else {
            return NamesResponse::Refused {
                code: Refusal::Unavailable,
                message: "this relay holds none of the network's names (ask its registrar)".into(),
            };
        };
        match replica::held(kad.store_mut(), &registrar, host) {
            Some(signed) => {
                NamesResponse::Record { record: names::protocol::encode_bytes(&signed) }
            }
            None if self.synced => NamesResponse::NotFound,
            // Never heard from the network: it cannot tell a missing name from one not yet
            // received.
            None => NamesResponse::Refused {
                code: Refusal::Unavailable,
                message: "this relay has not received the network's names yet".into(),
            },
        }
    }

    /// Kademlia's events: a record offered for storage is validated here, before it is stored.
    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::InboundRequest {
            request: kad::InboundRequest::PutRecord { source, record: Some(offered), .. },
        } = event
        else {
            debug!(?event, "replication");
            return;
        };
        let Some(registrar) = self.registrar else { return };
        // Only the relays this one lists replicate into it (a member may speak the protocol).
        if !self.replication_peers.contains(&source) {
            info!(from = %source, "replicated record refused: not one of relay.registry.peers");
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
        let held = kad.store_mut().get(&offered.key).map(|r| r.into_owned());
        match replica::validate(&offered, &registrar, held.as_ref(), unix_now()) {
            Ok(record) => {
                let host = record.host.clone();
                let stored =
                    replica::kad_record(&registrar, &record, offered.value, offered.publisher);
                if let Err(error) = kad.store_mut().put(stored) {
                    warn!(%error, host, "cannot hold a replicated record");
                    return;
                }
                debug!(from = %source, host, serial = record.serial, "replicated record stored");
                self.synced = true;
                if let Some(writer) = &self.write_behind
                    && let Some(signed) = replica::held(kad.store_mut(), &registrar, &host)
                {
                    writer.put(&host, &signed);
                }
            }
            Err(replica::Refused::Same) => self.synced = true,
            Err(why) => info!(from = %source, %why, "replicated record refused"),
        }
    }

    fn names_held(&mut self) -> Option<NamesHeld> {
        let registrar = self.registrar?;
        let me = *self.swarm.local_peer_id();
        let peers = self
            .replication_peers
            .iter()
            .map(|p| ReplicationPeer { peer: p.to_base58(), connected: self.swarm.is_connected(p) })
            .collect();
        let records =
            self.swarm.behaviour_mut().kad.as_mut().map_or(0, |k| k.store_mut().records().count());
        Some(NamesHeld {
            registrar: registrar.to_base58(),
            is_registrar: registrar == me,
            records,
            peers,
        })
    }
}

/// An address others could reach: not loopback, link-local or unspecified.
fn is_routable(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local(),
        Protocol::Ip6(ip) => {
            !ip.is_loopback() && !ip.is_unspecified() && (ip.segments()[0] & 0xffc0) != 0xfe80
        }
        _ => true,
    })
}
