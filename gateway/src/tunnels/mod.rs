//! Every live tunnel, and the kill switch of each.
//!
//! A tunnel registers here once it is established, on either side (the opener's app
//! connection, the serving peer's service connection), with its peer, the libp2p connection it
//! runs on and, when serving, the service. Whoever learns that tunnels must end flips their
//! switches: the node when a connection's keep-alive fails or the connection closes (yamux does
//! not always wake a stream whose connection died), access reloads when a peer loses a service,
//! shutdown at the end of the grace period. A flipped tunnel resets both its sockets and sends a
//! RESET frame with the reason. Registration is bounded by the stream limits, and a tunnel
//! leaves the registry when its [`Guard`] drops, however it ended.

mod framed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use framed::Framed;

use crate::config::{HostPort, ServiceName};
use crate::protocol::frame::Reason;

/// Which way a tunnel goes, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We opened it for a local app.
    Out,
    /// A peer opened it to one of our services.
    In,
}

/// What the registry knows of one tunnel.
#[derive(Debug, Clone)]
pub struct Info {
    pub peer: PeerId,
    pub connection: ConnectionId,
    pub direction: Direction,
    /// Serving: the service, and the local address its tunnel connected.
    pub service: Option<ServiceName>,
    pub local: Option<HostPort>,
}

#[derive(Debug)]
struct Entry {
    info: Info,
    switch: Switch,
}

/// A tunnel's kill switch: the token, and why it was flipped.
#[derive(Debug, Clone, Default)]
pub struct Switch {
    token: CancellationToken,
    reason: Arc<AtomicU32>,
}

impl Switch {
    pub fn flip(&self, reason: Reason) {
        if !self.token.is_cancelled() {
            self.reason.store(reason.code(), Ordering::Relaxed);
            self.token.cancel();
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the switch was flipped, if it was.
    pub fn reason(&self) -> Option<Reason> {
        self.token.is_cancelled().then(|| Reason::from_code(self.reason.load(Ordering::Relaxed)))
    }
}

/// The registry of live tunnels; shared by the node, the service host and the connector.
#[derive(Debug, Default)]
pub struct Tunnels {
    live: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
#[derive(Debug)]
pub struct Guard {
    id: u64,
    tunnels: Arc<Tunnels>,
    switch: Switch,
}

impl Guard {
    pub fn switch(&self) -> &Switch {
        &self.switch
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.tunnels.lock().remove(&self.id);
    }
}

impl Tunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a tunnel; it stays until the guard drops.
    pub fn register(self: &Arc<Self>, info: Info) -> Guard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let switch = Switch::default();
        self.lock().insert(id, Entry { info, switch: switch.clone() });
        Guard { id, tunnels: self.clone(), switch }
    }

    /// Flip the switch of every tunnel `which` selects; returns how many.
    pub fn reset(&self, which: impl Fn(&Info) -> bool, reason: Reason) -> usize {
        let live = self.lock();
        let mut count = 0;
        for entry in live.values().filter(|e| which(&e.info)) {
            if !entry.switch.token.is_cancelled() {
                entry.switch.flip(reason);
                count += 1;
            }
        }
        count
    }

    /// Reset every tunnel on `connection`.
    pub fn reset_connection(&self, peer: PeerId, connection: ConnectionId, reason: Reason) {
        let count = self.reset(|t| t.connection == connection, reason);
        if count > 0 {
            info!(%peer, tunnels = count, %reason, "resetting the tunnels of a connection");
        }
    }

    /// Live tunnels.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live tunnels with `peer`.
    pub fn count_peer(&self, peer: &PeerId) -> usize {
        self.lock().values().filter(|e| e.info.peer == *peer).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(peer: PeerId, connection: ConnectionId) -> Info {
        Info { peer, connection, direction: Direction::In, service: None, local: None }
    }

    #[test]
    fn a_reset_flips_only_the_selected_tunnels_and_guards_unregister() {
        let tunnels = Arc::new(Tunnels::default());
        let (p, q) = (PeerId::random(), PeerId::random());
        let (c1, c2) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        let a = tunnels.register(info(p, c1));
        let b = tunnels.register(info(q, c2));
        assert_eq!(tunnels.reset(|t| t.connection == c1, Reason::PathLost), 1);
        assert_eq!(a.switch().reason(), Some(Reason::PathLost));
        assert_eq!(b.switch().reason(), None);
        assert_eq!(tunnels.reset(|t| t.connection == c1, Reason::Revoked), 0, "flipped once");
        drop(a);
        assert_eq!((tunnels.len(), tunnels.count_peer(&q)), (1, 1));
        drop(b);
        assert!(tunnels.is_empty());
    }
}
