//! Keeping a reservation on every configured relay.
//!
//! A reservation is a listener on `<relay>/p2p-circuit`: the relay client dials the relay and
//! asks for a slot, renews it, and closes the listener when the connection to the relay is lost
//! (the relay restarted, the network changed). A closed listener is opened again after a
//! backoff that starts at 250 ms and doubles up to 4 s, so a relay that comes back is used again
//! within a few seconds.
//!
//! One reservation per relay peer: a relay listed with several addresses (TCP and QUIC, say)
//! gets one reservation on one connection, and a failed attempt moves on to its next address.
//! (Two reservations on one relay would share a connection and displace each other.)
//!
//! Once a reservation is held, the relay's addresses on the other transports are dialled too
//! ([`Reservations::on_listen_addr`] returns them): each connection teaches identify the address
//! the relay sees for that transport, and hole punching tries every transport it has an address
//! for. This matters for TCP: when one side's NAT lets any packet in (full cone, or no NAT), its
//! listener can accept the other side's punch before its own dial leaves, and both ends of that
//! connection then wait as listeners until the handshake times out. QUIC has no such race (the
//! side that punches only sends noise and waits to be dialled), so with both addresses the punch
//! succeeds on whichever transport gets through first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, PeerId, Swarm};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::swarm::transport_of;
use crate::config::RelayAddr;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

#[derive(Debug)]
struct Slot {
    /// The relay's addresses, all for the same peer; `current` is in use or tried next.
    addrs: Vec<RelayAddr>,
    current: usize,
    relay: RelayAddr,
    listener: Option<ListenerId>,
    reserved_since: Option<SystemTime>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Why the last attempt failed, until a reservation is held again (shown by `status`).
    error: Option<String>,
    /// What went wrong during the attempt under way (becomes `error` when it fails).
    attempt_error: Option<String>,
    /// Reasons already logged as warnings since the last reservation (a relay listed with two
    /// addresses alternates between two reasons: each is warned about once).
    warned: Vec<String>,
}

/// Distinct reasons remembered per relay for the once-only warning.
const WARNED_REASONS: usize = 8;

/// Why each configured relay has no reservation, if it has none: read when a dial through a
/// relay fails, so the failure says why (relay down, not a member) instead of libp2p's
/// "oneshot canceled". Holds at most one entry per configured relay.
#[derive(Debug, Clone, Default)]
pub struct RelayHealth(Arc<RwLock<HashMap<PeerId, String>>>);

impl RelayHealth {
    /// The reason `relay` has no reservation, if we know it.
    pub fn problem(&self, relay: &PeerId) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(relay).cloned()
    }

    #[cfg(test)]
    pub fn set_for_test(&self, relay: PeerId, problem: &str) {
        self.set(relay, Some(problem.to_owned()));
    }

    fn set(&self, relay: PeerId, problem: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(problem) => map.insert(relay, problem),
            None => map.remove(&relay),
        };
    }
}

/// A reservation as `peerup status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReservationStatus {
    pub relay: String,
    pub addr: String,
    /// `reserved`, `pending` or `retrying`.
    pub state: String,
    pub age_secs: u64,
    /// Why the last attempt failed (while not reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reservations of one node.
#[derive(Debug, Default)]
pub struct Reservations {
    slots: Vec<Slot>,
    health: RelayHealth,
}

impl Reservations {
    pub fn new(relays: Vec<RelayAddr>) -> Self {
        let mut slots: Vec<Slot> = Vec::new();
        for relay in relays {
            match slots.iter_mut().find(|s| s.relay.peer == relay.peer) {
                Some(slot) => slot.addrs.push(relay),
                None => slots.push(Slot {
                    addrs: vec![relay.clone()],
                    current: 0,
                    relay,
                    listener: None,
                    reserved_since: None,
                    failures: 0,
                    retry_at: Some(Instant::now()),
                    error: None,
                    attempt_error: None,
                    warned: Vec::new(),
                }),
            }
        }
        Reservations { slots, health: RelayHealth::default() }
    }

    /// The shared view of why relays have no reservation.
    pub fn health(&self) -> RelayHealth {
        self.health.clone()
    }

    /// Whether `relay` is one of ours with a reservation still being asked for.
    pub fn is_pending(&self, relay: &PeerId) -> bool {
        self.slots.iter().any(|s| s.relay.peer == *relay && s.reserved_since.is_none())
    }

    /// What went wrong on the way to `relay` (a failed dial, a connection it closed): the
    /// reason the reservation attempt under way will fail with.
    pub fn on_relay_problem(&mut self, relay: &PeerId, problem: String) {
        for slot in self.slots.iter_mut().filter(|s| s.relay.peer == *relay) {
            if slot.reserved_since.is_none() {
                slot.attempt_error = Some(problem.clone());
            }
        }
    }

    pub fn relay_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.slots.iter().map(|s| s.relay.peer)
    }

    /// Open the listeners whose retry time has come.
    pub fn open_due<B: NetworkBehaviour>(&mut self, swarm: &mut Swarm<B>, now: Instant) {
        for slot in &mut self.slots {
            if slot.listener.is_some() || slot.retry_at.is_none_or(|at| at > now) {
                continue;
            }
            slot.retry_at = None;
            slot.attempt_error = None;
            slot.relay = slot.addrs[slot.current % slot.addrs.len()].clone();
            let addr = slot.relay.full().with(Protocol::P2pCircuit);
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    debug!(%addr, "asking the relay for a reservation");
                    slot.listener = Some(id);
                }
                Err(error) => {
                    warn!(%addr, %error, "cannot listen through the relay");
                    schedule(slot, now);
                }
            }
        }
    }

    /// The earliest pending retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.retry_at).min()
    }

    /// A listener reported an address: for a relay listener, the reservation is in place.
    /// Returns, when it was just taken, the relay's addresses on the other transports (one each),
    /// for the caller to dial.
    pub fn on_listen_addr(&mut self, id: ListenerId) -> Option<(PeerId, Vec<Multiaddr>)> {
        let slot = self.slots.iter_mut().find(|s| s.listener == Some(id))?;
        slot.failures = 0;
        if slot.reserved_since.is_some() {
            return None;
        }
        info!(relay = %slot.relay.peer, addr = %slot.relay.addr, "reservation held");
        slot.reserved_since = Some(SystemTime::now());
        slot.error = None;
        slot.warned.clear();
        self.health.set(slot.relay.peer, None);
        let mut seen = vec![transport_of(&slot.relay.addr)];
        let others = slot
            .addrs
            .iter()
            .filter(|relay| {
                let transport = transport_of(&relay.addr);
                let new = !seen.contains(&transport);
                if new {
                    seen.push(transport);
                }
                new
            })
            .map(|relay| relay.full())
            .collect();
        Some((slot.relay.peer, others))
    }

    /// A listener closed: for a relay listener, schedule the next attempt. A new reason is
    /// logged as a warning naming the relay; the same reason again only at debug level.
    pub fn on_listener_closed(&mut self, id: ListenerId, reason: &str) {
        let now = Instant::now();
        let Some(slot) = self.slots.iter_mut().find(|s| s.listener == Some(id)) else { return };
        let was_reserved = slot.reserved_since.is_some();
        if !was_reserved {
            // This address did not work: try the relay's next one.
            slot.current = (slot.current + 1) % slot.addrs.len();
        }
        slot.listener = None;
        slot.reserved_since = None;
        schedule(slot, now);
        let problem = match slot.attempt_error.take() {
            Some(problem) => problem,
            None if reason == "closed" => "the relay did not grant a reservation".to_owned(),
            None => reason.to_owned(),
        };
        let retry = slot.retry_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let relay = slot.relay.peer;
        let new = !slot.warned.contains(&problem);
        if new && slot.warned.len() < WARNED_REASONS {
            slot.warned.push(problem.clone());
        }
        if was_reserved {
            warn!(%relay, reason = %problem, ?retry, "reservation lost; asking again");
        } else if new {
            warn!(%relay, reason = %problem, ?retry, "no reservation on the relay; asking again");
        } else {
            debug!(%relay, reason = %problem, failures = slot.failures, "reservation attempt failed");
        }
        slot.error = Some(problem.clone());
        self.health.set(relay, Some(problem));
    }

    pub fn status(&self) -> Vec<ReservationStatus> {
        let now = SystemTime::now();
        self.slots
            .iter()
            .map(|s| {
                let state = match (s.reserved_since, s.listener) {
                    (Some(_), _) => "reserved",
                    (None, Some(_)) => "pending",
                    (None, None) => "retrying",
                };
                ReservationStatus {
                    relay: s.relay.peer.to_base58(),
                    addr: s.relay.full().to_string(),
                    state: state.into(),
                    age_secs: s
                        .reserved_since
                        .and_then(|t| now.duration_since(t).ok())
                        .map_or(0, |d| d.as_secs()),
                    error: if s.reserved_since.is_some() { None } else { s.error.clone() },
                }
            })
            .collect()
    }
}

fn schedule(slot: &mut Slot, now: Instant) {
    let backoff = FIRST_BACKOFF.saturating_mul(1 << slot.failures.min(5)).min(MAX_BACKOFF);
    slot.failures = slot.failures.saturating_add(1);
    slot.retry_at = Some(now + backoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_that_fails_two_ways_in_turn_is_warned_about_once_per_reason() {
        let relay = PeerId::random();
        let addrs: Vec<RelayAddr> = ["/ip4/192.0.2.1/tcp/4101", "/ip4/192.0.2.1/udp/4101/quic-v1"]
            .iter()
            .map(|a| RelayAddr { addr: a.parse().unwrap(), peer: relay })
            .collect();
        let mut reservations = Reservations::new(addrs);
        for round in 0..6 {
            let id = ListenerId::next();
            reservations.slots[0].listener = Some(id);
            let reason = if round % 2 == 0 { "refused" } else { "timed out" };
            reservations.on_relay_problem(&relay, reason.to_owned());
            reservations.on_listener_closed(id, "closed");
            assert_eq!(reservations.health().problem(&relay).as_deref(), Some(reason));
            assert_eq!(reservations.status()[0].error.as_deref(), Some(reason));
        }
        assert_eq!(reservations.slots[0].warned, ["refused", "timed out"], "each warned once");
    }
}
