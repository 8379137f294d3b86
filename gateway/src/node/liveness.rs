//! Which connections still answer: the dead-path clock.
//!
//! libp2p's ping reports a success per answered ping, but stays silent on the first failure
//! and then waits up to its stream-negotiation timeout before reporting the second, so a frozen
//! peer would be noticed only after two intervals, a ping timeout and ten more seconds. This
//! clock is ours: a connection with no answered ping for `interval + timeout` (counted from its
//! last answer, or from its start) is dead, whatever libp2p reports. Kept in tokio's clock, so
//! its tests run on paused time.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;
use tokio::time::Instant;

use super::swarm::Keepalive;

/// The last sign of life of every connection.
#[derive(Debug)]
pub struct Liveness {
    limit: Duration,
    last: HashMap<ConnectionId, (PeerId, Instant)>,
}

impl Liveness {
    pub fn new(keepalive: Keepalive) -> Self {
        Liveness { limit: keepalive.interval + keepalive.timeout, last: HashMap::new() }
    }

    /// A connection was established, or one of its pings was answered.
    pub fn alive(&mut self, peer: PeerId, connection: ConnectionId, now: Instant) {
        self.last.insert(connection, (peer, now));
    }

    pub fn closed(&mut self, connection: ConnectionId) {
        self.last.remove(&connection);
    }

    /// When the next connection would be due, if none answers before.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.last.values().map(|(_, at)| *at + self.limit).min()
    }

    /// The connections silent for too long, forgotten as they are returned.
    pub fn dead(&mut self, now: Instant) -> Vec<(PeerId, ConnectionId)> {
        let limit = self.limit;
        let dead: Vec<(PeerId, ConnectionId)> = self
            .last
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= limit)
            .map(|(connection, (peer, _))| (*peer, *connection))
            .collect();
        for (_, connection) in &dead {
            self.last.remove(connection);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_dead_after_interval_plus_timeout_without_an_answer() {
        let keepalive =
            Keepalive { interval: Duration::from_secs(5), timeout: Duration::from_secs(10) };
        let mut liveness = Liveness::new(keepalive);
        let (peer, quiet, chatty) =
            (PeerId::random(), ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        liveness.alive(peer, quiet, Instant::now());
        liveness.alive(peer, chatty, Instant::now());
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(5)).await;
            liveness.alive(peer, chatty, Instant::now());
            assert!(liveness.dead(Instant::now()).is_empty());
        }
        assert_eq!(liveness.next_deadline(), Some(Instant::now() + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(liveness.dead(Instant::now()), vec![(peer, quiet)], "15 s of silence");
        assert!(liveness.dead(Instant::now()).is_empty(), "reported once");
        liveness.closed(chatty);
        assert_eq!(liveness.next_deadline(), None);
    }
}
