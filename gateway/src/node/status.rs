//! What `peerup status` shows of a gateway node: its peers, each connection's path, its
//! reservations, and how many tunnels are open.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use libp2p::PeerId;
use libp2p::core::ConnectedPoint;
use serde::{Deserialize, Serialize};

use super::reservations::ReservationStatus;
use super::swarm::transport_of;

/// What `peerup status` shows for a gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub role: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    /// Our addresses as peers (relays) saw them: what hole punching offers the other side.
    #[serde(default)]
    pub observed: Vec<String>,
    pub reservations: Vec<ReservationStatus>,
    pub peers: Vec<PeerStatus>,
    /// Tunnels open now, both ways.
    #[serde(default)]
    pub tunnels: usize,
    /// The names this node registers (`networks.<net>.register_as`), and how that went.
    #[serde(default)]
    pub names: Vec<crate::names::register::RegistrationStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub relay: bool,
    pub connections: Vec<ConnStatus>,
    /// Tunnels open with this peer.
    #[serde(default)]
    pub tunnels: usize,
    /// Streams to this peer kept open after their tunnels ended and ready for the next tunnels
    /// (the peer's NEXT came).
    #[serde(default)]
    pub idle_streams: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// One established connection, as the node's task tracks it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub peer: PeerId,
    pub endpoint: ConnectedPoint,
    pub since: SystemTime,
}

impl ConnInfo {
    fn status(&self, now: SystemTime) -> ConnStatus {
        let remote = self.endpoint.get_remote_address();
        ConnStatus {
            path: if self.endpoint.is_relayed() { "relayed" } else { "direct" }.into(),
            transport: transport_of(remote).into(),
            remote: remote.to_string(),
            direction: if self.endpoint.is_dialer() { "out" } else { "in" }.into(),
            age_secs: now.duration_since(self.since).map_or(0, |d| d.as_secs()),
        }
    }
}

/// Group connections by peer, sorted by peer ID.
pub(crate) fn peers<'a>(
    connections: impl Iterator<Item = &'a ConnInfo>,
    relays: &HashSet<PeerId>,
    tunnels_of: impl Fn(&PeerId) -> usize,
    idle_of: impl Fn(&PeerId) -> usize,
) -> Vec<PeerStatus> {
    let now = SystemTime::now();
    let mut by_peer: HashMap<PeerId, Vec<ConnStatus>> = HashMap::new();
    for info in connections {
        by_peer.entry(info.peer).or_default().push(info.status(now));
    }
    let mut peers: Vec<PeerStatus> = by_peer
        .into_iter()
        .map(|(peer, connections)| PeerStatus {
            peer: peer.to_base58(),
            relay: relays.contains(&peer),
            tunnels: tunnels_of(&peer),
            idle_streams: idle_of(&peer),
            connections,
        })
        .collect();
    peers.sort_by(|a, b| a.peer.cmp(&b.peer));
    peers
}
