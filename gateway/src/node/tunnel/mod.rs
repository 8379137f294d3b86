//! The tunnel behaviour: our own stream plumbing for `/peerup/tunnel/1.0.0`.
//!
//! Why not libp2p-stream: it hands inbound streams over a zero-capacity channel and drops them
//! when the accept loop lags, and it opens each outbound stream on a random connection to the
//! peer. Here every inbound stream is handed over on a bounded channel, and when that is full
//! it is answered "busy" rather than dropped; every outbound stream goes on the connection we
//! pick (a direct one over a relayed one, the newest first).
//!
//! A [`Control`] asks the behaviour for a stream to a peer. Without a connection the behaviour
//! dials the addresses given, and queues the request until the connection is up. A connection
//! that closes before any tunnel stream succeeded on it fails its pending requests with
//! [`OpenError::ClosedAtHandshake`]: that is how the peer's handshake gate looks from here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

use crate::protocol::{self, Request, Response, Status};

mod handler;

pub use handler::{Handler, HandlerIn, HandlerOut};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new(protocol::PROTOCOL);

/// Open requests queued between the connector and the swarm task.
const REQUEST_QUEUE: usize = 1024;

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
    #[error("the peer does not speak {PROTOCOL}")]
    Unsupported,
    #[error("the peer did not accept the stream in time")]
    Timeout,
    #[error("stream error: {0}")]
    Io(String),
    #[error("the node is shutting down")]
    Shutdown,
}

#[derive(Debug)]
struct OpenRequest {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    reply: oneshot::Sender<Result<Stream, OpenError>>,
}

/// A handle to open tunnel streams; cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    requests: mpsc::Sender<OpenRequest>,
    connected: Connected,
}

/// Peers with at least one connection, shared between the behaviour and its controls.
type Connected = Arc<RwLock<HashSet<PeerId>>>;

impl Control {
    /// Open a stream to `peer`, dialing `addrs` if no connection exists.
    pub async fn open(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<Stream, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(OpenRequest { peer, addrs, reply })
            .await
            .map_err(|_| OpenError::Shutdown)?;
        answer.await.map_err(|_| OpenError::Shutdown)?
    }

    /// Whether a connection to `peer` exists (to tell "no path" from "no answer").
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.read().unwrap_or_else(|e| e.into_inner()).contains(peer)
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

type Reply = oneshot::Sender<Result<Stream, OpenError>>;

/// The behaviour; see the module docs.
#[derive(Debug)]
pub struct Behaviour {
    requests: mpsc::Receiver<OpenRequest>,
    inbound: mpsc::Sender<Inbound>,
    connections: HashMap<PeerId, Vec<Conn>>,
    /// Requests waiting for a connection to their peer.
    waiting: HashMap<PeerId, Vec<Reply>>,
    /// Our dials in flight.
    dials: HashMap<ConnectionId, PeerId>,
    /// Requests handed to a connection's handler, by request id.
    in_flight: HashMap<u64, (ConnectionId, Reply)>,
    next_id: u64,
    events: VecDeque<ToSwarm<(), HandlerIn>>,
    /// Addresses learned for peers (LAN discovery), added to our dials.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    connected: Connected,
}

/// Addresses remembered per peer, and peers remembered (anyone on the LAN can announce one).
const KNOWN_ADDRS_PER_PEER: usize = 8;
const KNOWN_PEERS: usize = 1024;

impl Behaviour {
    /// A behaviour delivering inbound streams on `inbound`, and the control to open streams.
    pub fn new(inbound: mpsc::Sender<Inbound>) -> (Behaviour, Control) {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let connected = Connected::default();
        let behaviour = Behaviour {
            requests: rx,
            inbound,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            dials: HashMap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            events: VecDeque::new(),
            known: HashMap::new(),
            connected: connected.clone(),
        };
        (behaviour, Control { requests: tx, connected })
    }

    /// The connection new streams to `peer` go on: direct before relayed, newest first.
    fn pick(&self, peer: &PeerId) -> Option<ConnectionId> {
        let conns = self.connections.get(peer)?;
        let direct = conns.iter().rev().find(|c| !c.relayed);
        direct.or(conns.last()).map(|c| c.id)
    }

    fn handle_request(&mut self, request: OpenRequest) {
        let OpenRequest { peer, mut addrs, reply } = request;
        for addr in self.known.get(&peer).into_iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        if let Some(connection) = self.pick(&peer) {
            return self.send_to_handler(peer, connection, reply);
        }
        let dialing = self.dials.values().any(|p| *p == peer);
        if !dialing {
            if addrs.is_empty() {
                let _ = reply.send(Err(OpenError::NoAddress));
                return;
            }
            let opts =
                DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Always).build();
            self.dials.insert(opts.connection_id(), peer);
            self.events.push_back(ToSwarm::Dial { opts });
        }
        self.waiting.entry(peer).or_default().push(reply);
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
        match self.inbound.try_send(inbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(inbound)) => {
                warn!(%peer, "inbound tunnel queue full: answering busy");
                tokio::spawn(refuse(inbound.stream, Status::Busy, "node is at its stream limit"));
            }
            Err(mpsc::error::TrySendError::Closed(inbound)) => {
                tokio::spawn(refuse(inbound.stream, Status::Busy, "node is shutting down"));
            }
        }
    }
}

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
            FromSwarm::ConnectionEstablished(e) => {
                self.dials.remove(&e.connection_id);
                let relayed = e.endpoint.is_relayed();
                let conn = Conn {
                    id: e.connection_id,
                    relayed,
                    dialer: e.endpoint.is_dialer(),
                    since: Instant::now(),
                    proven: false,
                };
                self.connections.entry(e.peer_id).or_default().push(conn);
                self.connected.write().unwrap_or_else(|e| e.into_inner()).insert(e.peer_id);
                if let Some(waiting) = self.waiting.remove(&e.peer_id) {
                    let connection = self.pick(&e.peer_id).unwrap_or(e.connection_id);
                    for reply in waiting {
                        self.send_to_handler(e.peer_id, connection, reply);
                    }
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                let mut gate = false;
                if let Some(conns) = self.connections.get_mut(&e.peer_id) {
                    if let Some(pos) = conns.iter().position(|c| c.id == e.connection_id) {
                        gate = conns.remove(pos).closed_at_handshake();
                    }
                    if conns.is_empty() {
                        self.connections.remove(&e.peer_id);
                        self.connected
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&e.peer_id);
                    }
                }
                let error =
                    if gate { OpenError::ClosedAtHandshake } else { OpenError::ConnectionLost };
                let failed: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(_, (c, _))| *c == e.connection_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in failed {
                    if let Some((_, reply)) = self.in_flight.remove(&id) {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            FromSwarm::NewExternalAddrOfPeer(e) => {
                if self.known.len() >= KNOWN_PEERS && !self.known.contains_key(&e.peer_id) {
                    return;
                }
                let known = self.known.entry(e.peer_id).or_default();
                if !known.contains(e.addr) {
                    if known.len() == KNOWN_ADDRS_PER_PEER {
                        known.remove(0);
                    }
                    known.push(e.addr.clone());
                }
            }
            FromSwarm::DialFailure(e) => {
                let Some(peer) = self.dials.remove(&e.connection_id) else { return };
                if self.connections.contains_key(&peer) {
                    return;
                }
                debug!(%peer, error = %e.error, "dial failed");
                for reply in self.waiting.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(OpenError::Dial(e.error.to_string())));
                }
            }
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
                if let Some(conn) = self.conn_mut(&peer, connection) {
                    conn.proven = true;
                }
                if let Some((_, reply)) = self.in_flight.remove(&id) {
                    let _ = reply.send(Ok(stream));
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
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            match self.requests.poll_recv(cx) {
                Poll::Ready(Some(request)) => self.handle_request(request),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
