//! Reaching a target: the gateway's [`Connector`] for the SOCKS front end.
//!
//! A `.p2p` name is parsed, resolved through the tiers, and reached over a tunnel stream: the
//! stream opens on a connection to the resolved peer (dialled if needed), the request names
//! the port, and the serving peer's answer decides success. Other targets go out directly when
//! `socks.direct` is on. `.p2p` names never fall back to a direct connection.
//!
//! One deadline (`limits.connect_timeout`) covers resolving the name, reaching the peer and
//! hearing its answer. An established tunnel is registered in [`Tunnels`] and framed
//! ([`Framed`]), so its end is the truth on both sides.
//! A stream kept from an earlier tunnel to the same peer ([`IdleStreams`]) is tried first.
//!
//! [`failure_of_open`] and [`failure_of_status`] are the one place where node and protocol
//! outcomes become the user-visible [`FailureKind`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Stream;
use peerup_proxy::dial::{self, DialError};
use peerup_proxy::{ConnectError, Connector, FailureKind, Target};
use peerup_resolver::{Label, Name, ResolveError, Tiers};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::either::Either;
use tracing::debug;

use crate::auth::Access;
use crate::config::RelayAddr;
use crate::node::swarm::one_per_relay;
use crate::node::{Connected, Handle, IdleStreams, OpenError, Opened};
use crate::protocol::{Request, Response, Status};
use crate::tunnels::{self, Direction, Framed, Tunnels};

/// The longest pause between dial attempts (100, 200, 400, 800, 1600 ms: five retries).
const MAX_DIAL_BACKOFF: Duration = Duration::from_millis(1600);

/// A tunnel stream after the serving peer accepted it, ready for frames.
pub type Tunnel = Framed<Compat<Stream>>;

/// Connects SOCKS targets: tunnels for `.p2p` names, direct TCP for the rest.
#[derive(Debug)]
pub struct Gateway {
    pub tiers: Tiers,
    pub node: Handle,
    pub connected: Connected,
    /// Streams kept from ended tunnels, for the next tunnel to the same peer.
    pub idle: Arc<IdleStreams>,
    pub tunnels: Arc<Tunnels>,
    pub access: Arc<Access>,
    pub suffix: Label,
    pub direct: bool,
    pub connect_timeout: Duration,
    /// The DNS server's address pool: a CONNECT to one of its addresses goes to its name.
    pub pool: Option<Arc<std::sync::Mutex<peerup_resolver::Pool>>>,
    /// Each network's relays; a name in that network is also dialled through them.
    pub relays: HashMap<Label, Vec<RelayAddr>>,
    /// Peers warmed lately (at most [`WARMED`]), and the rate of warm-ups in total.
    pub warmed: Warmed,
}

/// Peers remembered as warmed lately; one warm-up per peer per [`WARM_AGAIN`].
const WARMED: usize = 1024;
const WARM_AGAIN: Duration = Duration::from_secs(10);
/// Warm-ups started per second at most, whatever the queries.
const WARMS_PER_SECOND: u32 = 20;

/// The bounds on warm-ups: a flood of queries for random names must not become a flood of dials.
#[derive(Debug)]
pub struct Warmed {
    recent: std::sync::Mutex<HashMap<libp2p::PeerId, tokio::time::Instant>>,
    rate: governor::DefaultDirectRateLimiter,
}

impl Default for Warmed {
    fn default() -> Self {
        let per_second =
            std::num::NonZeroU32::new(WARMS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
        Warmed {
            recent: std::sync::Mutex::new(HashMap::new()),
            rate: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
        }
    }
}

impl Warmed {
    /// May `peer` be warmed now? Records it if so.
    fn admit(&self, peer: libp2p::PeerId) -> bool {
        let now = tokio::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.get(&peer).is_some_and(|at| now.duration_since(*at) < WARM_AGAIN) {
            return false;
        }
        if recent.len() >= WARMED {
            recent.retain(|_, at| now.duration_since(*at) < WARM_AGAIN);
            if recent.len() >= WARMED {
                return false;
            }
        }
        if self.rate.check().is_err() {
            return false;
        }
        recent.insert(peer, now);
        true
    }
}

impl Gateway {
    /// A DNS answer for `name`: start connecting to its peer, so the connect that follows finds
    /// a path ready. Bounded per peer and in total; never waits.
    pub fn warm(&self, name: &Name, resolution: &peerup_resolver::Resolution) {
        let peer = resolution.peer;
        if self.connected.contains(&peer) || !self.warmed.admit(peer) {
            return;
        }
        self.access.choose(peer);
        let mut addrs = resolution.addrs.clone();
        addrs.extend(self.relays_for(name).map(|relay| relay.circuit_to(peer)));
        if !self.node.warm(peer, addrs) {
            debug!(%peer, "warm-up skipped: the node is busy");
        }
    }

    /// Resolve `name` and open a tunnel to its service on `port`, all within one deadline.
    pub async fn tunnel(&self, name: &Name, port: u16) -> Result<Tunnel, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        match tokio::time::timeout_at(deadline, self.reach(name, port)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::new(
                FailureKind::TimedOut,
                format!("{name}: no answer within {:?}", self.connect_timeout),
            )),
        }
    }

    async fn reach(&self, name: &Name, port: u16) -> Result<Tunnel, ConnectError> {
        let resolution = self.tiers.resolve(name).await.map_err(|e| {
            let kind = match &e {
                ResolveError::NoSuchName(_) => FailureKind::NoSuchName,
                // A registry that cannot be asked now: not "no such name".
                ResolveError::Unavailable { .. } => FailureKind::NameServiceUnreachable,
                // A pinned name answered with another peer.
                ResolveError::Refused { .. } => FailureKind::NotAllowed,
            };
            ConnectError::new(kind, e.to_string())
        })?;
        let peer = resolution.peer;
        debug!(%name, %peer, tier = %resolution.tier, "resolved");
        tracing::Span::current().record("peer", tracing::field::display(peer));
        self.access.choose(peer);
        let mut addrs = resolution.addrs;
        addrs.extend(self.relays_for(name).map(|relay| relay.circuit_to(peer)));
        // A stream kept from an earlier tunnel first; if the peer closed it meanwhile (the
        // request or its answer fails), a new one: nothing of the app's was sent yet.
        if let Some(opened) = self.idle.take(&peer) {
            match self.request(name, peer, port, opened).await {
                Ok(result) => return result,
                Err(error) => debug!(%peer, %error, "a kept stream failed; opening a new one"),
            }
        }
        let mut last_error = None;
        let attempt = self.open(peer, addrs, &mut last_error);
        let opened = match tokio::time::timeout(self.open_budget(), attempt).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                return Err(ConnectError::new(failure_of_open(&error), format!("{name}: {error}")));
            }
            Err(_) if self.connected.contains(&peer) => {
                let message = format!("{name}: {peer} did not accept a stream in time");
                return Err(ConnectError::new(FailureKind::TimedOut, message));
            }
            Err(_) => {
                let last = last_error.map(|e| format!(" (last attempt: {e})")).unwrap_or_default();
                let message =
                    format!("{name}: no path to {peer} within {:?}{last}", self.connect_timeout);
                return Err(ConnectError::new(FailureKind::Unreachable, message));
            }
        };
        self.request(name, peer, port, opened).await.unwrap_or_else(|error| {
            Err(ConnectError::new(FailureKind::Unreachable, format!("{name}: {error}")))
        })
    }

    /// Ask for `port` on `opened` and read the answer. `Err` when the stream failed before an
    /// answer came; otherwise the tunnel, or the failure the answer means. A tunnel that ends
    /// cleanly both ways leaves its stream for the next one ([`IdleStreams`]).
    async fn request(
        &self,
        name: &Name,
        peer: libp2p::PeerId,
        port: u16,
        opened: Opened,
    ) -> std::io::Result<Result<Tunnel, ConnectError>> {
        let Opened { stream, connection, relayed } = opened;
        let guard = self.tunnels.register(tunnels::Info {
            peer,
            connection,
            direction: Direction::Out,
            service: None,
            local: None,
        });
        let mut stream = stream.compat();
        let sent = stream.write_all(&Request::Port(port).encode()).await;
        // Even when the write failed, the peer may have answered before closing: read it.
        let response = match Response::read(&mut stream).await {
            Ok(response) => response,
            Err(error) => return Err(sent.err().unwrap_or_else(|| std::io::Error::other(error))),
        };
        Ok(match failure_of_status(response.status) {
            None => {
                let idle = self.idle.clone();
                let recycle = move |stream: Compat<Stream>| {
                    idle.put(peer, Opened { stream: stream.into_inner(), connection, relayed });
                };
                Ok(Framed::new(stream, Some(guard)).reusable(recycle))
            }
            Some(kind) => {
                Err(ConnectError::new(kind, format!("{name}:{port}: {}", response.reason)))
            }
        })
    }

    /// Reaching the peer may take the whole deadline but a moment: when it runs out, the
    /// answer says whether a path existed (0x06) or not (0x04).
    fn open_budget(&self) -> Duration {
        self.connect_timeout.saturating_sub(self.connect_timeout / 20)
    }

    /// Open a stream, trying again after a failed dial or a connection that died under the
    /// attempt: a dial through a relay fails when our connection to that relay failed or is
    /// still being made while another relay of the same dial failed (the node holds a dial
    /// only while every relay it could take is being connected to), and a connection through a
    /// relay that was restarted dies once the path is found dead; a moment later a new dial
    /// works.
    /// The caller bounds the whole attempt.
    /// `last_error` keeps the latest failure, for the message when the deadline cuts retries.
    async fn open(
        &self,
        peer: libp2p::PeerId,
        addrs: Vec<libp2p::Multiaddr>,
        last_error: &mut Option<OpenError>,
    ) -> Result<Opened, OpenError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.node.open(peer, addrs.clone()).await {
                Err(error @ (OpenError::Dial(_) | OpenError::ConnectionLost))
                    if backoff <= MAX_DIAL_BACKOFF =>
                {
                    debug!(%peer, %error, ?backoff, "dial failed; trying again");
                    *last_error = Some(error);
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                result => return result,
            }
        }
    }

    /// The relays to reach `name` through: its network's, or every network's for a bare peer
    /// label; one address per relay (see [`one_per_relay`]).
    fn relays_for<'a>(&'a self, name: &Name) -> impl Iterator<Item = &'a RelayAddr> + 'a {
        let candidates: Box<dyn Iterator<Item = &'a RelayAddr> + 'a> = match name.network() {
            Some(network) => Box::new(self.relays.get(network).into_iter().flatten()),
            None => Box::new(self.relays.values().flatten()),
        };
        one_per_relay(candidates)
    }

    async fn direct(&self, target: &Target) -> Result<TcpStream, ConnectError> {
        if !self.direct {
            return Err(ConnectError::new(
                FailureKind::NotAllowed,
                "direct connections are off (socks.direct)",
            ));
        }
        let (host, port) = match target {
            Target::Addr(addr) => (addr.ip().to_string(), addr.port()),
            Target::Name { host, port } => (host.clone(), *port),
        };
        match dial::connect(&host, port, self.connect_timeout).await {
            Ok(socket) => Ok(socket),
            Err(DialError::Refused) => {
                Err(ConnectError::new(FailureKind::Refused, format!("{target}: refused")))
            }
            Err(e @ DialError::TimedOut(_)) => {
                Err(ConnectError::new(FailureKind::TimedOut, format!("{target}: {e}")))
            }
            Err(DialError::Other(e)) => {
                Err(ConnectError::new(FailureKind::Unreachable, format!("{target}: {e}")))
            }
        }
    }
}

impl Connector for Gateway {
    type Stream = Either<TcpStream, Tunnel>;

    async fn connect(&self, target: Target) -> Result<Self::Stream, ConnectError> {
        let target = self.unmap(target)?;
        if let Target::Name { host, port } = &target {
            match Name::parse(host, &self.suffix) {
                Ok(Some(name)) => return self.tunnel(&name, *port).await.map(Either::Right),
                Ok(None) => {}
                Err(e) => return Err(ConnectError::new(FailureKind::NoSuchName, e.to_string())),
            }
        }
        self.direct(&target).await.map(Either::Left)
    }
}

impl Gateway {
    /// An address from the DNS pool becomes the name it was given to; an address of the pool
    /// that no name holds is "no such name" (never a direct connection).
    fn unmap(&self, target: Target) -> Result<Target, ConnectError> {
        let addr = match &target {
            Target::Addr(std::net::SocketAddr::V4(addr)) => *addr,
            // The same address, IPv4-mapped.
            Target::Addr(std::net::SocketAddr::V6(addr)) => match addr.ip().to_ipv4_mapped() {
                Some(ip) => std::net::SocketAddrV4::new(ip, addr.port()),
                None => return Ok(target),
            },
            // A SOCKS client may send an address as a hostname (a trailing dot too).
            Target::Name { host, port } => match host.trim_end_matches('.').parse() {
                Ok(ip) => std::net::SocketAddrV4::new(ip, *port),
                Err(_) => return Ok(target),
            },
        };
        let Some(pool) = &self.pool else { return Ok(target) };
        let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.net().contains(*addr.ip()) {
            return Ok(target);
        }
        match pool.name_of(*addr.ip()) {
            Some(name) => Ok(Target::Name { host: name.to_owned(), port: addr.port() }),
            None => Err(ConnectError::new(
                FailureKind::NoSuchName,
                format!(
                    "{} is in the DNS pool but no name holds it (ask the DNS server again)",
                    addr.ip()
                ),
            )),
        }
    }
}

/// How a failure to open a stream looks to the app.
pub fn failure_of_open(error: &OpenError) -> FailureKind {
    match error {
        OpenError::NoAddress | OpenError::Dial(_) | OpenError::ConnectionLost => {
            FailureKind::Unreachable
        }
        OpenError::ClosedAtHandshake => FailureKind::NotAllowed,
        OpenError::Timeout => FailureKind::TimedOut,
        OpenError::Unsupported => FailureKind::NoSuchService,
        OpenError::Io(_) | OpenError::Shutdown => FailureKind::General,
    }
}

/// How the serving peer's answer looks to the app; `None` is success.
pub fn failure_of_status(status: Status) -> Option<FailureKind> {
    match status {
        Status::Ok => None,
        Status::NotAuthorized => Some(FailureKind::NotAllowed),
        Status::NoSuchService => Some(FailureKind::NoSuchService),
        Status::Refused => Some(FailureKind::Refused),
        Status::ServiceTimeout => Some(FailureKind::ServiceTimeout),
        Status::Busy => Some(FailureKind::Busy),
        Status::BadRequest | Status::Unknown(_) => Some(FailureKind::General),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_answers_for_random_peers_starts_few_warm_ups() {
        let warmed = Warmed::default();
        let admitted = (0..1000).filter(|_| warmed.admit(libp2p::PeerId::random())).count();
        assert!(admitted <= WARMS_PER_SECOND as usize, "{admitted} warm-ups for 1000 answers");
        assert!(admitted > 0, "some warm up");
        let peer = libp2p::PeerId::random();
        let again = Warmed::default();
        assert!(again.admit(peer));
        assert!(!again.admit(peer), "one warm-up per peer per {WARM_AGAIN:?}");
        assert!(warmed.recent.lock().unwrap().len() <= WARMED);
    }
}
