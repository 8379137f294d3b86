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
}

/// A reservation as `peerup status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReservationStatus {
    pub relay: String,
    pub addr: String,
    /// `reserved`, `pending` or `retrying`.
    pub state: String,
    pub age_secs: u64,
}

/// The reservations of one node.
#[derive(Debug, Default)]
pub struct Reservations {
    slots: Vec<Slot>,
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
                }),
            }
        }
        Reservations { slots }
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

    /// A listener closed: for a relay listener, schedule the next attempt.
    pub fn on_listener_closed(&mut self, id: ListenerId, reason: &str) {
        let now = Instant::now();
        if let Some(slot) = self.slots.iter_mut().find(|s| s.listener == Some(id)) {
            let was_reserved = slot.reserved_since.is_some();
            if !was_reserved {
                // This address did not work: try the relay's next one.
                slot.current = (slot.current + 1) % slot.addrs.len();
            }
            slot.listener = None;
            slot.reserved_since = None;
            schedule(slot, now);
            if was_reserved {
                warn!(relay = %slot.relay.peer, reason, "reservation lost; retrying");
            } else {
                debug!(relay = %slot.relay.peer, reason, failures = slot.failures, "reservation attempt failed");
            }
        }
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
