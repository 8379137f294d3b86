//! The connection gate: who gets a connection at all.
//!
//! Inbound, a peer in none of our lists (global, any service's, the configured relays) is
//! refused right after the security handshake proved its peer ID, before any stream: the
//! connection is closed and the refusal logged. One exception: a peer we chose to reach (we
//! resolved a name to it) *while we already have a connection to it* is let in too. Hole
//! punching has both ends dial at once over the relayed connection's coordination, so the direct
//! connection may arrive as inbound. Without a connection to it the rule above holds, so a name
//! looked up once (any local SOCKS client can make us look one up) lets nobody in later. The
//! admitted peer gets a connection, not a service: every stream is still checked. Outbound, we only dial peers we chose (see
//! [`Access::may_dial`]). Per-service checks happen again on every stream (the service host).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use tracing::{debug, info, warn};

use crate::auth::Access;

/// The reason a connection was denied, as libp2p reports it.
#[derive(Debug)]
pub struct NotAllowed {
    peer: Option<PeerId>,
    inbound: bool,
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.inbound, self.peer) {
            (true, Some(peer)) => write!(f, "peer {peer} is in no allow list"),
            (false, Some(peer)) => write!(f, "peer {peer} is not one we chose to dial"),
            (_, None) => write!(f, "dials without a peer ID are not allowed"),
        }
    }
}

impl std::error::Error for NotAllowed {}

/// The gate behaviour.
pub struct Gate {
    access: Arc<Access>,
    connected: HashMap<PeerId, usize>,
    /// When each refused peer was last logged at info level: a peer that keeps knocking is
    /// logged once a minute, not once a connection.
    refusals_logged: HashMap<PeerId, Instant>,
}

const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
const REFUSALS_REMEMBERED: usize = 1024;

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").field("connected", &self.connected.len()).finish()
    }
}

impl Gate {
    pub fn new(access: Arc<Access>) -> Self {
        Gate { access, connected: HashMap::new(), refusals_logged: HashMap::new() }
    }

    fn should_log_refusal(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        if self.refusals_logged.len() >= REFUSALS_REMEMBERED {
            self.refusals_logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        match self.refusals_logged.get(&peer) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
            _ => {
                if self.refusals_logged.len() < REFUSALS_REMEMBERED {
                    self.refusals_logged.insert(peer, now);
                }
                true
            }
        }
    }

    fn check_outbound(&self, peer: Option<PeerId>) -> Result<(), ConnectionDenied> {
        match peer {
            Some(peer) if self.access.may_dial(&peer, self.connected.contains_key(&peer)) => Ok(()),
            peer => {
                let denied = NotAllowed { peer, inbound: false };
                warn!(reason = %denied, "refused to dial");
                Err(ConnectionDenied::new(denied))
            }
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A peer we chose, over a path we already have to it: hole punching's inbound half.
        let punching = self.access.chose(&peer) && self.connected.contains_key(&peer);
        if self.access.may_connect(&peer) || punching {
            return Ok(dummy::ConnectionHandler);
        }
        if self.should_log_refusal(peer) {
            info!(%peer, %remote, "refused connection at the handshake: peer is in no allow list");
        } else {
            debug!(%peer, %remote, "refused connection at the handshake (again)");
        }
        Err(ConnectionDenied::new(NotAllowed { peer: Some(peer), inbound: true }))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.check_outbound(peer).map(|()| Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_outbound(Some(peer)).map(|()| dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                *self.connected.entry(e.peer_id).or_default() += 1;
            }
            FromSwarm::ConnectionClosed(e) if e.remaining_established == 0 => {
                self.connected.remove(&e.peer_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
