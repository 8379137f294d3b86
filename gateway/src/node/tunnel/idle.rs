//! Tunnel streams kept open between tunnels, for the next tunnel to the same peer.
//!
//! Opening a stream costs a yamux (or QUIC) stream set-up, a protocol negotiation, a trip
//! through the node's task and the connection's handler on both sides, and a close: on a warm
//! path that was most of a tunnel's cost. A stream whose tunnel ended cleanly both ways (each
//! side sent and read an END frame) comes back here, and the next tunnel to that peer sends its
//! request on it once the serving peer said it finished its side too (its NEXT frame: it may
//! still be writing our last bytes into its service when we read its END). The serving peer
//! reads the next request on the same stream (`service`).
//!
//! Only streams on the connection the node would open a new stream on are handed out: a
//! connection that closed, was found dead, or was superseded (a direct connection after a
//! relayed one) takes its idle streams with it. A stream idle for [`IDLE_FOR`] is closed (the
//! node's task sweeps: see [`IdleStreams::next_expiry`]); one the peer closed, or that carries
//! anything but NEXT, is noticed when it is taken. What is kept is bounded per peer and in
//! total.

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
use crate::protocol::frame::{HEADER, Header};

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
    /// The serving peer's NEXT frame, as far as it was read.
    next: [u8; HEADER],
    got: usize,
}

/// Whether a kept stream can carry the next request.
#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    /// The serving peer's NEXT came, and nothing after it: send the request.
    Ready,
    /// The serving peer is still finishing the last tunnel.
    NotYet,
    /// Closed by the peer, or something other than NEXT came: close it.
    Gone,
}

impl Idle {
    /// [`Idle::readiness`] of a stream still on `preferred` and not expired; gone otherwise.
    fn usable(&mut self, preferred: Option<libp2p::swarm::ConnectionId>) -> Readiness {
        if preferred != Some(self.opened.connection) || self.since.elapsed() >= IDLE_FOR {
            return Readiness::Gone;
        }
        self.readiness()
    }

    fn readiness(&mut self) -> Readiness {
        readiness(&mut self.opened.stream, &mut self.next, &mut self.got)
    }
}

/// Read what the serving peer sent on `stream` since the tunnel ended, without waiting: its
/// NEXT frame into `next` (`got` bytes of it so far), and nothing after it.
fn readiness<S: AsyncRead + Unpin>(
    stream: &mut S,
    next: &mut [u8; HEADER],
    got: &mut usize,
) -> Readiness {
    let mut cx = Context::from_waker(Waker::noop());
    let mut stream = std::pin::Pin::new(stream);
    while *got < HEADER {
        match stream.as_mut().poll_read(&mut cx, &mut next[*got..]) {
            Poll::Pending => return Readiness::NotYet,
            Poll::Ready(Ok(0) | Err(_)) => return Readiness::Gone,
            Poll::Ready(Ok(n)) => *got += n,
        }
    }
    if Header::decode(*next) != Ok(Header::Next) {
        return Readiness::Gone;
    }
    // Nothing follows NEXT before our request: an EOF means the peer closed it since.
    let mut byte = [0u8; 1];
    match stream.poll_read(&mut cx, &mut byte) {
        Poll::Pending => Readiness::Ready,
        Poll::Ready(_) => Readiness::Gone,
    }
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

    /// Streams kept for `peer` that are ready for a next tunnel now (streams found closed or on
    /// a connection new streams no longer go on are dropped on the way).
    pub fn count(&self, peer: &PeerId) -> usize {
        let preferred = self.connected.preferred(peer);
        let mut idle = self.lock();
        let Some(streams) = idle.get_mut(peer) else { return 0 };
        let mut ready = 0;
        streams.retain_mut(|s| match s.usable(preferred) {
            Readiness::Ready => {
                ready += 1;
                true
            }
            Readiness::NotYet => true,
            Readiness::Gone => false,
        });
        if streams.is_empty() {
            idle.remove(peer);
        }
        ready
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
        streams.push(Idle { opened, since: Instant::now(), next: [0; HEADER], got: 0 });
        if total == 0 {
            self.put.notify_one();
        }
    }

    /// A kept stream to `peer` that is ready for the next request, the most recently used
    /// first. Streams found closed, expired or on another connection are dropped on the way;
    /// ones whose NEXT has not come yet stay.
    pub fn take(&self, peer: &PeerId) -> Option<Opened> {
        let preferred = self.connected.preferred(peer)?;
        let mut idle = self.lock();
        let streams = idle.get_mut(peer)?;
        let mut taken = None;
        for i in (0..streams.len()).rev() {
            match streams[i].usable(Some(preferred)) {
                Readiness::NotYet => continue,
                Readiness::Ready => {
                    taken = Some(streams.remove(i).opened);
                    break;
                }
                Readiness::Gone => drop(streams.remove(i)),
            }
        }
        if streams.is_empty() {
            idle.remove(peer);
        }
        taken
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::Reason;
    use tokio::io::AsyncWriteExt;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    #[tokio::test]
    async fn a_kept_stream_is_ready_only_once_the_serving_peers_next_came() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = ours.compat();
        let (mut next, mut got) = ([0u8; HEADER], 0);
        let mut check = |stream: &mut _| readiness(stream, &mut next, &mut got);
        assert_eq!(check(&mut ours), Readiness::NotYet, "the serving peer is still finishing");
        theirs.write_all(&Header::Next.encode()[..2]).await.unwrap();
        assert_eq!(check(&mut ours), Readiness::NotYet, "half a NEXT");
        theirs.write_all(&Header::Next.encode()[2..]).await.unwrap();
        assert_eq!(check(&mut ours), Readiness::Ready);
        assert_eq!(check(&mut ours), Readiness::Ready, "still, with nothing after it");
        drop(theirs);
        assert_eq!(check(&mut ours), Readiness::Gone, "closed after its NEXT");
    }

    #[tokio::test]
    async fn a_kept_stream_that_carries_anything_but_next_is_gone() {
        let late_reset = Header::Reset(Reason::SocketFailed).encode().to_vec();
        let next_and_more = [&Header::Next.encode()[..], b"x"].concat();
        for (wire, close) in [(late_reset, false), (next_and_more, false), (Vec::new(), true)] {
            let (ours, mut theirs) = tokio::io::duplex(64);
            let mut ours = ours.compat();
            theirs.write_all(&wire).await.unwrap();
            if close {
                drop(theirs);
            }
            let (mut next, mut got) = ([0u8; HEADER], 0);
            assert_eq!(readiness(&mut ours, &mut next, &mut got), Readiness::Gone, "{wire:?}");
        }
    }
}
