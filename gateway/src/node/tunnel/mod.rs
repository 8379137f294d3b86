//! The tunnel behaviour: our own stream plumbing for `/peerup/tunnel/2.0.0`.
//!
//! Why not libp2p-stream: it hands inbound streams over a zero-capacity channel and drops them
//! when the accept loop lags, and it opens each outbound stream on a random connection to the
//! peer. Here every inbound stream is handed over on a bounded channel, and when that is full
//! it is answered "busy" rather than dropped; every outbound stream goes on the connection we
//! pick (a direct one over a relayed one, the newest first).
//!
//! The node's task hands it open requests ([`Behaviour::open`]). Without a connection the
//! behaviour dials the addresses given, and queues the request until the connection is up. A
//! connection that closes before any tunnel stream succeeded on it fails its pending requests
//! with [`OpenError::ClosedAtHandshake`]: that is how the peer's handshake gate looks from here.
//! A connection found dead ([`Behaviour::retire`]) gets no new streams; the next open dials
//! again. A dial whose every address goes through a relay we are still connecting to (at
//! start-up, the reservation's dial) waits until one of those connections is made or all of
//! them failed: libp2p's relay client would fail it at once, as it will not dial a relay that is
//! being dialled. Refusals (the inbound queue is full) are answered by tasks this behaviour owns: at
//! most [`MAX_REFUSALS`] at once, aborted when the behaviour is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, Stream,
    StreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::command::Opened;
use super::dial_error::{describe, relay_of};
use super::reservations::RelayHealth;
use crate::protocol::{self, Request, Response, Status};

mod handler;
pub mod idle;

pub use handler::{Handler, HandlerIn, HandlerOut};
pub use idle::IdleStreams;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new(protocol::PROTOCOL);

/// Refusals being answered at once; past this, a stream is dropped (the opener sees a reset).
pub const MAX_REFUSALS: usize = 256;

/// An inbound tunnel stream, for the service host.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub connection: ConnectionId,
    pub relayed: bool,
    pub stream: Stream,
}

/// Why no stream could be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("no address is known for the peer")]
    NoAddress,
    #[error("could not connect: {0}")]
    Dial(String),
    #[error("the peer closed the connection before any stream: it does not authorize us")]
    ClosedAtHandshake,
    #[error("the connection closed")]
    ConnectionLost,
    #[error("the peer does not speak {PROTOCOL} (an older peerup speaks 1.0.0: upgrade it)")]
    Unsupported,
    #[error("the peer did not accept the stream in time")]
    Timeout,
    #[error("stream error: {0}")]
    Io(String),
    #[error("the node is shutting down")]
    Shutdown,
}

/// Peers with at least one connection, and the connection new streams to each go on; shared
/// between the behaviour, the connector (to tell "no path" from "no answer" when a deadline
/// passes) and the idle streams (kept only on that connection).
#[derive(Debug, Clone, Default)]
pub struct Connected(Arc<RwLock<HashMap<PeerId, Option<ConnectionId>>>>);

impl Connected {
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains_key(peer)
    }

    /// The connection new streams to `peer` go on, if any is usable.
    pub fn preferred(&self, peer: &PeerId) -> Option<ConnectionId> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(peer).copied().flatten()
    }

    /// `peer` is connected (`Some`: new streams go on `preferred`) or not (`None`).
    fn set(&self, peer: PeerId, state: Option<Option<ConnectionId>>) {
        let mut peers = self.0.write().unwrap_or_else(|e| e.into_inner());
        match state {
            Some(preferred) => peers.insert(peer, preferred),
            None => peers.remove(&peer),
        };
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    relayed: bool,
    /// We dialled it (as opposed to accepting it).
    dialer: bool,
    since: Instant,
    /// A tunnel stream succeeded on it, either way.
    proven: bool,
    /// Found dead (keep-alive failed) and being closed: no new streams.
    retired: bool,
}

impl Conn {
    /// Closing now looks like the remote's handshake gate: a connection we dialled, closed by
    /// the peer moments after it was set up, before any stream. Any other close is a lost
    /// connection, and worth another try.
    fn closed_at_handshake(&self) -> bool {
        self.dialer && !self.proven && self.since.elapsed() < GATE_CLOSE_WINDOW
    }
}

/// How soon after set-up a close counts as the remote's gate refusing us.
const GATE_CLOSE_WINDOW: Duration = Duration::from_secs(2);

type Reply = oneshot::Sender<Result<Opened, OpenError>>;

/// The behaviour; see the module docs.
#[derive(Debug)]
pub struct Behaviour {
    inbound: mpsc::Sender<Inbound>,
    /// Why relays have no reservation, for the reason of a failed dial through one.
    health: RelayHealth,
    connections: HashMap<PeerId, Vec<Conn>>,
    /// Requests waiting for a connection to their peer.
    waiting: HashMap<PeerId, Vec<Reply>>,
    /// Our dials in flight (or parked).
    dials: HashMap<ConnectionId, PeerId>,
    /// Every outbound connection attempt in flight, ours or another behaviour's, by peer.
    outbound: HashMap<ConnectionId, PeerId>,
    /// Our dials through relays, waiting for a connection to one of them being made: the
    /// peer, the addresses and the dial (at most one per peer, as `dials`).
    parked: Vec<(PeerId, Vec<Multiaddr>, DialOpts)>,
    /// Requests handed to a connection's handler, by request id.
    in_flight: HashMap<u64, (ConnectionId, Reply)>,
    next_id: u64,
    events: VecDeque<ToSwarm<(), HandlerIn>>,
    /// Addresses learned for peers (LAN discovery), added to our dials.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    connected: Connected,
    refusals: JoinSet<()>,
}

/// Addresses remembered per peer, and peers remembered (anyone on the LAN can announce one).
const KNOWN_ADDRS_PER_PEER: usize = 8;
const KNOWN_PEERS: usize = 1024;

impl Behaviour {
    /// A behaviour delivering inbound streams on `inbound`.
    pub fn new(inbound: mpsc::Sender<Inbound>, health: RelayHealth) -> Behaviour {
        Behaviour {
            inbound,
            health,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            dials: HashMap::new(),
            outbound: HashMap::new(),
            parked: Vec::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            events: VecDeque::new(),
            known: HashMap::new(),
            connected: Connected::default(),
            refusals: JoinSet::new(),
        }
    }

    /// Who is connected, shared.
    pub fn connected(&self) -> Connected {
        self.connected.clone()
    }

    /// The connection new streams to `peer` go on: direct before relayed, newest first, never
    /// one found dead.
    fn pick(&self, peer: &PeerId) -> Option<ConnectionId> {
        let conns = self.connections.get(peer)?;
        let mut alive = conns.iter().filter(|c| !c.retired);
        let direct = alive.clone().rev().find(|c| !c.relayed);
        direct.or(alive.next_back()).map(|c| c.id)
    }

    /// Tell the connector and the idle streams which connection new streams to `peer` go on.
    fn publish(&self, peer: PeerId) {
        let state = self.connections.contains_key(&peer).then(|| self.pick(&peer));
        self.connected.set(peer, state);
    }

    /// Stop opening streams on `connection`: it was found dead and is being closed.
    pub fn retire(&mut self, peer: &PeerId, connection: ConnectionId) {
        if let Some(conn) = self.conn_mut(peer, connection) {
            conn.retired = true;
        }
        self.publish(*peer);
    }

    /// Open a tunnel stream to `peer`, dialling `addrs` if no usable connection exists.
    pub fn open(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>, reply: Reply) {
        for addr in self.known.get(&peer).into_iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        if let Some(connection) = self.pick(&peer) {
            return self.send_to_handler(peer, connection, reply);
        }
        let dialing = self.dials.values().any(|p| *p == peer);
        if let Some(waiting) = self.waiting.get_mut(&peer) {
            // Requesters that gave up (their deadline passed) hold no place.
            waiting.retain(|reply| !reply.is_closed());
        }
        if self.waiting.get(&peer).is_some_and(|w| w.len() >= MAX_WAITING_PER_PEER) {
            let _ = reply.send(Err(OpenError::Dial("too many opens waiting for this peer".into())));
            return;
        }
        if !dialing {
            if addrs.is_empty() {
                let _ = reply.send(Err(OpenError::NoAddress));
                return;
            }
            self.dial(peer, addrs);
        }
        self.waiting.entry(peer).or_default().push(reply);
    }

    /// Dial `peer` ahead of an open, unless a connection or a dial to it exists.
    pub fn warm(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        if self.pick(&peer).is_some() || self.dials.values().any(|p| *p == peer) {
            return;
        }
        for addr in self.known.get(&peer).into_iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        if addrs.is_empty() {
            return;
        }
        debug!(%peer, "warming a path");
        self.dial(peer, addrs);
    }

    /// Dial `peer` at `addrs`, or park the dial while every address goes through a relay we
    /// are connecting to (see [`Behaviour::must_wait`]).
    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        // A parked dial keeps its addresses (libp2p keeps `DialOpts`' own private).
        let parked = self.must_wait(&addrs).then(|| addrs.clone());
        let opts =
            DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Always).build();
        self.dials.insert(opts.connection_id(), peer);
        match parked {
            Some(addrs) => {
                debug!(%peer, "waiting for a connection to a relay before dialling through it");
                self.parked.push((peer, addrs, opts));
            }
            None => self.events.push_back(ToSwarm::Dial { opts }),
        }
    }

    /// Whether a dial to `addrs` must wait: all of them are circuits, and a connection to each
    /// of their relays is being made, none made yet. libp2p's relay client fails such a dial
    /// at once (it will not dial a relay that is being dialled); a circuit through a relay not
    /// being dialled is dialled with it, so a dial with one of those goes ahead.
    fn must_wait(&self, addrs: &[Multiaddr]) -> bool {
        let Some(relays) = addrs.iter().map(relay_of).collect::<Option<Vec<PeerId>>>() else {
            return false;
        };
        let connected = |relay: &PeerId| {
            self.connections.get(relay).is_some_and(|conns| conns.iter().any(|c| !c.relayed))
        };
        let dialling = |relay: &PeerId| self.outbound.values().any(|p| p == relay);
        !relays.is_empty() && relays.iter().all(|relay| !connected(relay) && dialling(relay))
    }

    /// An outbound attempt ended or a connection was made: the parked dials that need not wait
    /// any more go ahead, and those whose peer got connected meanwhile are dropped.
    fn unpark(&mut self) {
        for (peer, addrs, opts) in std::mem::take(&mut self.parked) {
            if self.pick(&peer).is_some() {
                self.dials.remove(&opts.connection_id());
            } else if self.must_wait(&addrs) {
                self.parked.push((peer, addrs, opts));
            } else {
                self.events.push_back(ToSwarm::Dial { opts });
            }
        }
    }

    fn send_to_handler(&mut self, peer: PeerId, connection: ConnectionId, reply: Reply) {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, (connection, reply));
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: HandlerIn::Open(id),
        });
    }

    fn conn_mut(&mut self, peer: &PeerId, id: ConnectionId) -> Option<&mut Conn> {
        self.connections.get_mut(peer)?.iter_mut().find(|c| c.id == id)
    }

    fn deliver_inbound(&mut self, peer: PeerId, connection: ConnectionId, stream: Stream) {
        let relayed = self.conn_mut(&peer, connection).is_some_and(|c| c.relayed);
        let inbound = Inbound { peer, connection, relayed, stream };
        let (stream, reason) = match self.inbound.try_send(inbound) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(inbound)) => {
                warn!(%peer, "inbound tunnel queue full: answering busy");
                (inbound.stream, "node is at its stream limit")
            }
            Err(mpsc::error::TrySendError::Closed(inbound)) => {
                (inbound.stream, "node is shutting down")
            }
        };
        if self.refusals.len() < MAX_REFUSALS {
            self.refusals.spawn(refuse(stream, Status::Busy, reason));
        }
    }
}

impl Behaviour {
    /// A new connection: remember it, and hand it the opens that waited for it.
    fn on_established(&mut self, e: libp2p::swarm::behaviour::ConnectionEstablished<'_>) {
        self.dials.remove(&e.connection_id);
        self.outbound.remove(&e.connection_id);
        let conn = Conn {
            id: e.connection_id,
            relayed: e.endpoint.is_relayed(),
            dialer: e.endpoint.is_dialer(),
            since: Instant::now(),
            proven: false,
            retired: false,
        };
        self.connections.entry(e.peer_id).or_default().push(conn);
        self.publish(e.peer_id);
        if let Some(waiting) = self.waiting.remove(&e.peer_id) {
            let connection = self.pick(&e.peer_id).unwrap_or(e.connection_id);
            for reply in waiting {
                self.send_to_handler(e.peer_id, connection, reply);
            }
        }
        self.unpark();
    }

    /// A connection closed: fail the opens in flight on it, as the remote's gate refusing us
    /// when that is what it looks like.
    fn on_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let mut gate = false;
        if let Some(conns) = self.connections.get_mut(&peer) {
            if let Some(pos) = conns.iter().position(|c| c.id == connection) {
                gate = conns.remove(pos).closed_at_handshake();
            }
            if conns.is_empty() {
                self.connections.remove(&peer);
            }
        }
        self.publish(peer);
        let error = if gate { OpenError::ClosedAtHandshake } else { OpenError::ConnectionLost };
        let failed: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (c, _))| *c == connection)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some((_, reply)) = self.in_flight.remove(&id) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    /// An address learned for a peer (LAN discovery), bounded per peer and in peers.
    fn learn_address(&mut self, peer: PeerId, addr: &Multiaddr) {
        if self.known.len() >= KNOWN_PEERS && !self.known.contains_key(&peer) {
            return;
        }
        let known = self.known.entry(peer).or_default();
        if !known.contains(addr) {
            if known.len() == KNOWN_ADDRS_PER_PEER {
                known.remove(0);
            }
            known.push(addr.clone());
        }
    }

    fn on_dial_failure(&mut self, dial: ConnectionId, error: &libp2p::swarm::DialError) {
        if self.outbound.remove(&dial).is_some() {
            self.unpark();
        }
        let Some(peer) = self.dials.remove(&dial) else { return };
        if self.connections.contains_key(&peer) {
            return;
        }
        let said = describe(error, &self.health);
        debug!(%peer, %said, "dial failed");
        for reply in self.waiting.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(OpenError::Dial(said.clone())));
        }
    }
}

/// Opens waiting for a connection to one peer.
const MAX_WAITING_PER_PEER: usize = 1024;

/// Outbound attempts remembered (past this, a dial through a relay being connected to goes
/// ahead at once, and is tried again by the connector when it fails).
const MAX_OUTBOUND_TRACKED: usize = 4096;

/// Answer a stream we will not serve, so the opener gets a reason instead of a reset. The
/// request is read first: answering and closing before the opener finished writing it would
/// fail the opener's write instead of delivering our answer.
pub async fn refuse(stream: Stream, status: Status, reason: &'static str) {
    let mut stream = stream.compat();
    let answer = async {
        let _ = Request::read(&mut stream).await;
        Response::new(status, reason).refuse(&mut stream).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer
            && self.outbound.len() < MAX_OUTBOUND_TRACKED
        {
            self.outbound.insert(connection, peer);
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.on_established(e),
            FromSwarm::ConnectionClosed(e) => self.on_closed(e.peer_id, e.connection_id),
            FromSwarm::NewExternalAddrOfPeer(e) => self.learn_address(e.peer_id, e.addr),
            FromSwarm::DialFailure(e) => self.on_dial_failure(e.connection_id, e.error),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            HandlerOut::Inbound(stream) => {
                if let Some(conn) = self.conn_mut(&peer, connection) {
                    conn.proven = true;
                }
                self.deliver_inbound(peer, connection, stream);
            }
            HandlerOut::Opened(id, stream) => {
                let mut relayed = false;
                if let Some(conn) = self.conn_mut(&peer, connection) {
                    conn.proven = true;
                    relayed = conn.relayed;
                }
                if let Some((_, reply)) = self.in_flight.remove(&id) {
                    let _ = reply.send(Ok(Opened { stream, connection, relayed }));
                }
            }
            HandlerOut::Failed(id, error) => {
                if let Some((_, reply)) = self.in_flight.remove(&id) {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
        // Reap finished refusals (their outcome is of no interest).
        while let Poll::Ready(Some(_)) = self.refusals.poll_join_next(cx) {}
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use libp2p::core::ConnectedPoint;
    use libp2p::swarm::behaviour::{ConnectionEstablished, DialFailure};
    use libp2p::swarm::{DialError, NetworkBehaviour};

    use super::*;

    fn circuit(relay: PeerId, target: PeerId) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}").parse().unwrap()
    }

    /// The dials the behaviour asks the swarm for now.
    fn dial_opts(behaviour: &mut Behaviour) -> Vec<DialOpts> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut dials = Vec::new();
        while let Poll::Ready(event) = behaviour.poll(&mut cx) {
            if let ToSwarm::Dial { opts } = event {
                dials.push(opts);
            }
        }
        dials
    }

    /// The peers the behaviour asks the swarm to dial now.
    fn dials(behaviour: &mut Behaviour) -> Vec<Option<PeerId>> {
        dial_opts(behaviour).iter().map(DialOpts::get_peer_id).collect()
    }

    fn failed(behaviour: &mut Behaviour, peer: PeerId, connection: ConnectionId) {
        behaviour.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(peer),
            error: &DialError::Aborted,
            connection_id: connection,
        }));
    }

    fn behaviour() -> Behaviour {
        let (inbound, _) = mpsc::channel(1);
        Behaviour::new(inbound, RelayHealth::default())
    }

    /// A connection id of the test's own, apart from those `DialOpts` draws (from 0 up).
    fn id(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(usize::MAX / 2 + n)
    }

    fn attempt(behaviour: &mut Behaviour, n: usize, peer: PeerId) -> ConnectionId {
        let connection = id(n);
        let pending = behaviour.handle_pending_outbound_connection(
            connection,
            Some(peer),
            &[],
            Endpoint::Dialer,
        );
        assert!(pending.is_ok());
        connection
    }

    fn established(behaviour: &mut Behaviour, peer: PeerId, connection: ConnectionId) {
        let endpoint = ConnectedPoint::Dialer {
            address: "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        behaviour.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: connection,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    #[test]
    fn a_dial_through_a_relay_being_connected_to_waits_for_that_connection() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let mut b = behaviour();
        let to_relay = attempt(&mut b, 1, relay);
        let (reply, _answer) = oneshot::channel();
        b.open(target, vec![circuit(relay, target)], reply);
        assert_eq!(dials(&mut b), vec![], "dialled through the relay before reaching it");
        established(&mut b, relay, to_relay);
        assert_eq!(dials(&mut b), vec![Some(target)]);
        // A second open while that dial is out joins it.
        let (reply, _answer) = oneshot::channel();
        b.open(target, vec![circuit(relay, target)], reply);
        assert_eq!(dials(&mut b), vec![]);
    }

    #[test]
    fn a_parked_dial_goes_ahead_when_the_relay_cannot_be_reached() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let mut b = behaviour();
        let first = attempt(&mut b, 1, relay);
        let second = attempt(&mut b, 2, relay);
        let (reply, _answer) = oneshot::channel();
        b.warm(target, vec![circuit(relay, target)]);
        b.open(target, vec![circuit(relay, target)], reply);
        failed(&mut b, relay, first);
        assert_eq!(dials(&mut b), vec![], "one attempt to the relay is still under way");
        failed(&mut b, relay, second);
        assert_eq!(dials(&mut b), vec![Some(target)]);
    }

    #[test]
    fn a_dial_waits_only_while_every_relay_it_could_take_is_being_connected_to() {
        let (r1, r2, target) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut b = behaviour();
        attempt(&mut b, 1, r1);
        let to_r2 = attempt(&mut b, 2, r2);
        b.warm(target, vec![circuit(r1, target), circuit(r2, target)]);
        assert_eq!(dials(&mut b), vec![]);
        // One of them connects: the dial goes, and takes that relay.
        established(&mut b, r2, to_r2);
        assert_eq!(dials(&mut b), vec![Some(target)]);
        // A relay nobody is dialling yet: the relay client dials it along with the circuit.
        let (r3, other) = (PeerId::random(), PeerId::random());
        b.warm(other, vec![circuit(r1, other), circuit(r3, other)]);
        assert_eq!(dials(&mut b), vec![Some(other)]);
    }

    #[test]
    fn the_opens_waiting_on_a_parked_dial_hear_how_it_ended() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let mut b = behaviour();
        let to_relay = attempt(&mut b, 1, relay);
        let (reply, mut answer) = oneshot::channel();
        b.open(target, vec![circuit(relay, target)], reply);
        failed(&mut b, relay, to_relay);
        let released = dial_opts(&mut b);
        assert_eq!(released.len(), 1);
        failed(&mut b, target, released[0].connection_id());
        assert!(matches!(answer.try_recv(), Ok(Err(OpenError::Dial(_)))));
        // Connected another way while parked: the parked dial is dropped, the open served.
        let to_relay = attempt(&mut b, 2, relay);
        let (reply, _answer) = oneshot::channel();
        b.open(target, vec![circuit(relay, target)], reply);
        established(&mut b, target, id(3));
        failed(&mut b, relay, to_relay);
        assert_eq!(dials(&mut b), vec![]);
        assert!(b.dials.is_empty() && b.parked.is_empty());
        assert_eq!(b.in_flight.len(), 1, "the open went to the new connection");
    }

    #[test]
    fn dials_go_at_once_when_nothing_is_to_be_waited_for() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let mut b = behaviour();
        // No attempt to the relay under way: the relay client dials it itself.
        b.warm(target, vec![circuit(relay, target)]);
        assert_eq!(dials(&mut b), vec![Some(target)]);
        // A direct address among them: that one may work without the relay.
        let other = PeerId::random();
        attempt(&mut b, 1, relay);
        let direct = "/ip4/127.0.0.1/tcp/4002".parse().unwrap();
        b.warm(other, vec![circuit(relay, other), direct]);
        assert_eq!(dials(&mut b), vec![Some(other)]);
        // Connected to the relay already (and dialling it again): through the connection made.
        let third = PeerId::random();
        let to_relay = attempt(&mut b, 2, relay);
        established(&mut b, relay, to_relay);
        attempt(&mut b, 3, relay);
        b.warm(third, vec![circuit(relay, third)]);
        assert_eq!(dials(&mut b), vec![Some(third)]);
    }
}
