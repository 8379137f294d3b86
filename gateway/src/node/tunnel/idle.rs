//! Tunnel streams kept open between tunnels, for the next tunnel to the same peer.
//!
//! Opening a stream costs a yamux (or QUIC) stream set-up, a protocol negotiation, a trip
//! through the node's task and the connection's handler on both sides, and a close: on a warm
//! path that was most of a tunnel's cost. A stream whose tunnel ended cleanly both ways (each
//! side sent and read an END frame) comes back here, and the next tunnel to that peer sends its
//! request on it. The serving peer reads the next request on the same stream (`service`).
//!
//! Only streams on the connection the node would open a new stream on are handed out: a
//! connection that closed, was found dead, or was superseded (a direct connection after a
//! relayed one) takes its idle streams with it. A stream idle for [`IDLE_FOR`] is closed (the
//! node's task sweeps: see [`IdleStreams::next_expiry`]); one the peer closed is noticed when
//! it is taken. What is kept is bounded per peer and in total.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::AsyncRead;
use libp2p::PeerId;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Connected;
use crate::node::command::Opened;

/// How long a stream is kept unused. The serving side waits longer for the next request
/// (`service::NEXT_REQUEST_TIMEOUT`), so a stream handed out here is normally still served.
pub const IDLE_FOR: Duration = Duration::from_secs(10);
/// Idle streams kept per peer: as many tunnels as run at once to it, up to this.
pub const IDLE_PER_PEER: usize = 16;
/// Idle streams kept in total.
pub const IDLE_TOTAL: usize = 1024;

struct Idle {
    opened: Opened,
    since: Instant,
}

/// See the module docs.
pub struct IdleStreams {
    connected: Connected,
    idle: Mutex<HashMap<PeerId, Vec<Idle>>>,
    /// A stream was put in an empty pool: the sweeper's deadline moved.
    put: Notify,
}

impl std::fmt::Debug for IdleStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStreams").field("count", &self.len()).finish()
    }
}

impl IdleStreams {
    pub fn new(connected: Connected) -> Self {
        IdleStreams { connected, idle: Mutex::new(HashMap::new()), put: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams kept now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams kept for `peer` now.
    pub fn count(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).map_or(0, Vec::len)
    }

    /// Keep `opened`, whose tunnel ended cleanly both ways, for the next tunnel to `peer`.
    /// Dropped (closed) instead when its connection is no longer the one new streams go on or
    /// the bounds are reached.
    pub fn put(&self, peer: PeerId, opened: Opened) {
        if self.connected.preferred(&peer) != Some(opened.connection) {
            return;
        }
        let mut idle = self.lock();
        let total: usize = idle.values().map(Vec::len).sum();
        let streams = idle.entry(peer).or_default();
        if streams.len() >= IDLE_PER_PEER || total >= IDLE_TOTAL {
            return;
        }
        streams.push(Idle { opened, since: Instant::now() });
        if total == 0 {
            self.put.notify_one();
        }
    }

    /// A kept stream to `peer` that is still open, the most recently used first.
    pub fn take(&self, peer: &PeerId) -> Option<Opened> {
        let preferred = self.connected.preferred(peer)?;
        loop {
            let mut idle = {
                let mut idle = self.lock();
                let streams = idle.get_mut(peer)?;
                let next = streams.pop();
                if streams.is_empty() {
                    idle.remove(peer);
                }
                next?
            };
            if idle.opened.connection == preferred
                && idle.since.elapsed() < IDLE_FOR
                && still_open(&mut idle.opened.stream)
            {
                return Some(idle.opened);
            }
        }
    }

    /// Close the streams kept past [`IDLE_FOR`] or on a connection that is no longer the
    /// preferred one.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.retain(|peer, streams| {
            let preferred = self.connected.preferred(peer);
            streams.retain(|s| {
                Some(s.opened.connection) == preferred && now.duration_since(s.since) < IDLE_FOR
            });
            !streams.is_empty()
        });
    }

    /// Close every kept stream (shutting down).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// When the oldest kept stream expires (then [`IdleStreams::sweep`]); `None` when none is
    /// kept.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.lock().values().flatten().map(|s| s.since + IDLE_FOR).min()
    }

    /// Resolves when a stream is put into an empty pool (the next expiry moved).
    pub async fn changed(&self) {
        self.put.notified().await;
    }
}

/// Whether a kept stream is still open: nothing to read yet. A stream the peer closed reads an
/// EOF or an error; bytes before our request break the protocol. Either way it is not used.
fn still_open(stream: &mut libp2p::Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    matches!(std::pin::Pin::new(stream).poll_read(&mut cx, &mut byte), Poll::Pending)
}
