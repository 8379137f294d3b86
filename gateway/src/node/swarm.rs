//! What every swarm of ours is built from, gateway and relay alike: the transports' settings,
//! keep-alive, identify, listening, and the one-address-per-relay rule.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use tracing::{info, warn};

use super::NodeError;
use crate::config::RelayAddr;

/// Streams one connection may carry at once (each holds up to a 256 KiB yamux window of
/// unread data: 1 GiB at most per connection, plus [`super::muxer::WINDOW_GROWTH`]).
const MAX_STREAMS_PER_CONNECTION: usize = 4096;
/// Connections with no stream close after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for every listener to report its first address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a dead path is noticed: a ping every `interval`, failed after `timeout` without an
/// answer. A failed ping resets the connection's tunnels and closes it, so a path that died
/// silently (a frozen peer, a dropped NAT mapping) is noticed within `interval + timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { interval: Duration::from_secs(5), timeout: Duration::from_secs(10) }
    }
}

/// The yamux upgrade every connection uses: our stream limit, and a close that cannot stall
/// (see [`super::muxer`]).
pub(crate) fn yamux_config() -> super::muxer::Yamux {
    super::muxer::Yamux::new(MAX_STREAMS_PER_CONNECTION)
}

/// Streams a peer may open to us at once on one QUIC connection besides those our limits let
/// it use for tunnels (or, on a relay, circuits): identify, ping, AutoNAT, hole punching, names.
const QUIC_CONTROL_STREAMS: usize = 32;

/// QUIC notices a dead path (a relay that was killed, a network that changed) only through
/// `max_idle_timeout`: a restarted peer cannot reset our connection, because quinn drops
/// packets whose connection ID an earlier endpoint issued without answering them. quinn's
/// default of 10 s is most of a connect timeout; 3 s is three missed 1 s keep-alives.
///
/// `streams`: how many streams a peer may open to us at once on the connection, besides
/// [`QUIC_CONTROL_STREAMS`] (at most as many as yamux carries on TCP). Kept to what our limits
/// let a peer use, because each of them costs memory for the connection's life: quinn keeps
/// receive state ready for every stream the peer may open next, and recycles a closed stream's
/// state into the slot of the stream that many opens ahead, with the capacity its reassembly
/// queue grew to (56 bytes a packet, up to ~115 KB for a stream whose sender outran its reader
/// by 2048 packets). With 4096 slots a connection that carried bulk uploads grew by ~80 KB per
/// upload for its first 4096 (measured, whatever the stream window); at the default 256 + 32
/// slots it keeps at most ~33 MB of it (docs/benchmarks.md, "Memory bounds").
pub(crate) fn quic_config(
    mut config: libp2p::quic::Config,
    streams: usize,
) -> libp2p::quic::Config {
    config.max_idle_timeout = 3_000;
    config.keep_alive_interval = Duration::from_secs(1);
    let slots = streams.saturating_add(QUIC_CONTROL_STREAMS).min(MAX_STREAMS_PER_CONNECTION);
    config.max_concurrent_stream_limit = u32::try_from(slots).unwrap_or(u32::MAX);
    config
}

pub(crate) fn ping_behaviour(keepalive: Keepalive) -> ping::Behaviour {
    ping::Behaviour::new(
        ping::Config::new().with_interval(keepalive.interval).with_timeout(keepalive.timeout),
    )
}

/// Identify, as every node of ours runs it. No address cache: identify would offer a peer's
/// every listen address to our dials, and we dial only the addresses we chose.
pub(crate) fn identify_behaviour(key: &Keypair, agent: &str) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new("/peerup/1.0.0".into(), key.public())
            .with_agent_version(format!("{agent}/{}", env!("CARGO_PKG_VERSION")))
            .with_cache_size(0),
    )
}

/// One address per relay: the first listed. Reservations, circuits and AutoNAT all reach a
/// relay there, because hole punching needs both peers to learn public addresses of the same
/// transport (TCP with TCP, QUIC with QUIC) from their connections to the relay. A relay's
/// other addresses are alternatives for its reservation only (see `reservations`).
pub fn one_per_relay<'a>(
    relays: impl IntoIterator<Item = &'a RelayAddr>,
) -> impl Iterator<Item = &'a RelayAddr> {
    let mut seen: HashSet<PeerId> = HashSet::new();
    relays.into_iter().filter(move |relay| seen.insert(relay.peer))
}

/// `quic` or `tcp`, from the first transport protocol in an address.
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    for protocol in addr.iter() {
        match protocol {
            Protocol::QuicV1 | Protocol::Quic => return "quic",
            Protocol::Tcp(_) => return "tcp",
            _ => {}
        }
    }
    "other"
}

/// Start every listener and wait until each reported an address. An address that cannot be
/// bound is skipped with a warning; none at all is an error.
pub(crate) async fn start_listeners<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<(), NodeError> {
    let mut pending = HashSet::new();
    let mut errors = Vec::new();
    for addr in addrs {
        match swarm.listen_on(addr.clone()) {
            Ok(id) => {
                pending.insert(id);
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot listen");
                errors.push(format!("{addr}: {e}"));
            }
        }
    }
    if pending.is_empty() {
        return Err(NodeError::Listen(errors.join("; ")));
    }
    let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
    tokio::pin!(deadline);
    while !pending.is_empty() {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            () = &mut deadline => return Err(NodeError::Listen("listeners did not start in time".into())),
        };
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                info!(%address, "listening");
                pending.remove(&listener_id);
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                warn!(?addresses, ?reason, "listener closed");
                pending.remove(&listener_id);
            }
            _ => {}
        }
    }
    if swarm.listeners().next().is_none() {
        return Err(NodeError::Listen(errors.join("; ")));
    }
    Ok(())
}
