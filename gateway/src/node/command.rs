//! The one way into the swarm's task: a bounded channel of [`Command`]s, sent through a
//! [`Handle`]. The swarm is owned by one task (gateway or relay); everything else — the SOCKS
//! connector, the control socket, access reloads — asks it through this channel.

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, Stream};
use tokio::sync::{mpsc, oneshot};

use super::tunnel::OpenError;
use crate::names::{NamesRequest, NamesResponse};

/// Commands queued for the swarm's task before senders wait.
pub const COMMAND_QUEUE: usize = 1024;

/// A stream the node opened, and where.
#[derive(Debug)]
pub struct Opened {
    pub stream: Stream,
    pub connection: ConnectionId,
    pub relayed: bool,
}

/// What the swarm's task is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Open a tunnel stream to `peer`, dialling `addrs` if no connection exists.
    Open { peer: PeerId, addrs: Vec<Multiaddr>, reply: oneshot::Sender<Result<Opened, OpenError>> },
    /// Connect to `peer` ahead of an open (a DNS answer for its name): dial `addrs` unless a
    /// connection or a dial exists.
    Warm { peer: PeerId, addrs: Vec<Multiaddr> },
    /// The access lists changed: close the connections of peers no list allows any more.
    AccessChanged,
    /// Close every connection to `peer`, resetting its tunnels first.
    Disconnect(PeerId),
    /// A status snapshot as JSON.
    Status(oneshot::Sender<serde_json::Value>),
    /// A relay: put a record the registrar just issued to the network's other relays.
    PublishName { host: String, record: Vec<u8> },
    /// Ask `peer` (a relay; dialled on `addrs` if needed) over `/peerup/names/1.0.0`.
    Names {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: NamesRequest,
        reply: oneshot::Sender<Result<NamesResponse, String>>,
    },
}

/// A handle to the swarm's task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

/// The node's task is gone (it stopped, or is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Stopped;

impl Handle {
    /// A handle and the receiving end for the swarm's task.
    pub fn new() -> (Handle, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        (Handle { commands }, receiver)
    }

    pub async fn send(&self, command: Command) -> Result<(), Stopped> {
        self.commands.send(command).await.map_err(|_| Stopped)
    }

    /// Open a stream to `peer`, dialling `addrs` if no connection exists.
    pub async fn open(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<Opened, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Open { peer, addrs, reply }).await.map_err(|_| OpenError::Shutdown)?;
        answer.await.map_err(|_| OpenError::Shutdown)?
    }

    /// Ask for a connection to `peer` ahead of use, if the queue has room (a warm-up is an
    /// optimisation: it never waits). Returns whether it was queued.
    pub fn warm(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> bool {
        self.commands.try_send(Command::Warm { peer, addrs }).is_ok()
    }

    /// Send a names request to `peer` and wait for its answer (the request's own timeout
    /// bounds the wait); an error says why no answer came.
    pub async fn names(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: NamesRequest,
    ) -> Result<NamesResponse, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = |_| "the node is shutting down".to_owned();
        self.send(Command::Names { peer, addrs, request, reply }).await.map_err(stopped)?;
        answer.await.map_err(|_| "the node is shutting down".to_owned())?
    }

    /// Queue a command from a thread outside the runtime (the registrar's), waiting for room;
    /// the swarm's task never waits on that thread, so this cannot deadlock.
    pub fn blocking_send(&self, command: Command) -> Result<(), Stopped> {
        self.commands.blocking_send(command).map_err(|_| Stopped)
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<serde_json::Value, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Status(reply)).await?;
        answer.await.map_err(|_| Stopped)
    }

    /// Tell the node that the access lists changed.
    pub async fn access_changed(&self) -> Result<(), Stopped> {
        self.send(Command::AccessChanged).await
    }
}
