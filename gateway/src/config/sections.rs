//! The sections of `config.yaml` below the top level, with their named defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use std::collections::BTreeMap;

use super::{Addr, DnsPool, Dur, HostLabel, HostPort, PeerKey, RegistrarKey, RelayAddr, Suffix};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The network's relays, each a multiaddr ending in /p2p/<relay-peer-id>.
    #[serde(default)]
    pub relays: Vec<RelayAddr>,
    /// The key that signs the network's names (one of its relays): HOST.NETWORK names are
    /// looked up in the network's registry only when it is set.
    #[serde(default)]
    pub registrar: Option<PeerKey>,
    /// Register this node as HOST in the network (needs `registrar`).
    #[serde(default)]
    pub register_as: Option<HostLabel>,
}

/// A relay's name registry (`relay.registry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// The network's registrar: `self` (or this relay's own peer ID) makes it the registrar.
    #[serde(default)]
    pub registrar: Option<RegistrarKey>,
    /// The network's name that `peerup id` suggests to members.
    #[serde(default = "default_network_name")]
    pub network: HostLabel,
    /// Names the operator assigns: HOST: peer-id. Editing one rebinds the name.
    #[serde(default, deserialize_with = "super::unique::unique_map")]
    pub names: BTreeMap<HostLabel, PeerKey>,
    /// How long a record lives; members renew at half of it.
    #[serde(default = "default_record_lifetime")]
    pub lifetime: Dur,
    /// How long after its record expired a name stays its holder's.
    #[serde(default = "default_record_grace")]
    pub grace: Dur,
    /// Names one key may hold.
    #[serde(default = "default_max_names_per_key")]
    pub max_names_per_key: usize,
    /// The network's other relays (multiaddrs ending in /p2p/<peer-id>): admitted for
    /// replication only, and the relays records are replicated to.
    #[serde(default)]
    pub peers: Vec<RelayAddr>,
    /// How often records are published and replicated again among the relays.
    #[serde(default = "default_republish")]
    pub republish: Dur,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            registrar: None,
            network: default_network_name(),
            names: BTreeMap::new(),
            lifetime: default_record_lifetime(),
            grace: default_record_grace(),
            max_names_per_key: default_max_names_per_key(),
            peers: Vec::new(),
            republish: default_republish(),
        }
    }
}

pub(super) fn default_network_name() -> HostLabel {
    HostLabel("home".parse().unwrap_or_else(|_| unreachable!("a valid label")))
}
pub(super) fn default_record_lifetime() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
pub(super) fn default_record_grace() -> Dur {
    Dur(Duration::from_secs(30 * 24 * 3600))
}
pub(super) fn default_republish() -> Dur {
    Dur(Duration::from_secs(3600))
}
pub(super) fn default_max_names_per_key() -> usize {
    4
}

/// The relay server's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    #[serde(default = "default_listen")]
    pub listen: Vec<Addr>,
    /// Public addresses to advertise; by default, the bound non-loopback listen addresses.
    #[serde(default)]
    pub external_addresses: Vec<Addr>,
    /// The relay's members: only they may reserve, open circuits, or connect at all.
    #[serde(default = "default_relay_keys")]
    pub authorized_keys: PathBuf,
    #[serde(default)]
    pub limits: RelayLimits,
    #[serde(default)]
    pub registry: Registry,
}

/// Relay limits, sized for real traffic between members (libp2p's defaults are for signalling).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayLimits {
    #[serde(default = "default_max_reservations")]
    pub max_reservations: usize,
    #[serde(default = "default_max_circuits")]
    pub max_circuits: usize,
    #[serde(default = "default_max_circuits_per_peer")]
    pub max_circuits_per_peer: usize,
    #[serde(default = "default_reservation_duration")]
    pub reservation_duration: Dur,
    /// Lifetime of one circuit; at most u32::MAX seconds (the protocol's field).
    #[serde(default = "default_circuit_duration")]
    pub circuit_duration: Dur,
    /// Bytes one circuit may carry; 0 is unlimited.
    #[serde(default)]
    pub circuit_bytes: u64,
    /// Reservation requests one peer may make per minute (burst: as many).
    #[serde(default = "default_reservations_per_minute")]
    pub reservations_per_minute: u32,
    /// Circuits one peer may open per minute (burst: as many).
    #[serde(default = "default_circuits_per_minute")]
    pub circuits_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socks {
    #[serde(default = "default_socks_listen")]
    pub listen: SocketAddr,
    /// Connect non-`.p2p` targets directly.
    #[serde(default = "yes")]
    pub direct: bool,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// SOCKS clients served at once; more wait in the listen backlog until one ends.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Serve only programs of the user running the gateway (Linux; other systems: ignored).
    #[serde(default = "yes")]
    pub same_user: bool,
    /// A username and password every proxy client must present.
    #[serde(default)]
    pub auth: Option<ProxyAuth>,
}

/// Proxy credentials: SOCKS5 username/password and HTTP `Proxy-Authorization: Basic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuth {
    pub username: String,
    /// A file (0600, like a key) holding the password; relative to the home.
    pub password_file: PathBuf,
}

/// The local DNS server for `.p2p` names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// UDP and TCP; `null` turns the server off.
    #[serde(default)]
    pub listen: DnsListen,
    /// Loopback addresses handed out, one per name.
    #[serde(default = "default_dns_pool")]
    pub pool: DnsPool,
    /// TTL of every answer.
    #[serde(default = "default_dns_ttl")]
    pub ttl: Dur,
    /// The suffix under which names are ours, for DNS, SOCKS and every command.
    #[serde(default = "default_suffix")]
    pub suffix: Suffix,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            listen: DnsListen::default(),
            pool: default_dns_pool(),
            ttl: default_dns_ttl(),
            suffix: default_suffix(),
        }
    }
}

/// Where the DNS server listens, and whether the config said so: the default address may be
/// taken (another daemon in another home), which then costs only the DNS server, while an
/// address the user chose must be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsListen {
    pub addr: Option<SocketAddr>,
    pub explicit: bool,
}

impl Default for DnsListen {
    fn default() -> Self {
        DnsListen { addr: Some(SocketAddr::from(([127, 0, 0, 1], 1053))), explicit: false }
    }
}

impl<'de> Deserialize<'de> for DnsListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let addr = Option::<SocketAddr>::deserialize(deserializer)?;
        Ok(DnsListen { addr, explicit: true })
    }
}
pub(super) fn default_dns_pool() -> DnsPool {
    DnsPool("127.80.0.0/12".parse().unwrap_or_else(|_| unreachable!("a valid network")))
}
pub(super) fn default_suffix() -> Suffix {
    Suffix(super::suffix())
}
pub(super) fn default_dns_ttl() -> Dur {
    Dur(Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub local_address: HostPort,
    /// The port peers ask for; defaults to the port of `local_address`.
    pub port: Option<u16>,
    /// When set, this file alone decides who reaches the service.
    pub authorized_keys: Option<PathBuf>,
}

impl Service {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.local_address.port)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Tunnel streams served at once for one peer.
    #[serde(default = "default_streams_per_peer")]
    pub streams_per_peer: usize,
    /// Tunnel streams served at once in total.
    #[serde(default = "default_streams_total")]
    pub streams_total: usize,
    /// Time to resolve a name, reach its peer and hear the peer's answer (opening side).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time a service's local address has to accept (serving side); keep it below the
    /// openers' connect_timeout so they hear "the service did not accept in time".
    #[serde(default = "default_service_timeout")]
    pub service_timeout: Dur,
    /// A ping on every connection this often...
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: Dur,
    /// ...failed after this long without an answer: the path is dead, its tunnels are reset.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// How long open tunnels may take to finish after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// Worker threads of the daemon; 0: half the CPUs, at least one ([`Limits::threads`]).
    #[serde(default)]
    pub threads: usize,
}

impl Limits {
    /// Worker threads to run with. Half the CPUs by default: every byte a tunnel carries also
    /// passes through the app and the kernel on this machine, and one connection's streams go
    /// through one task anyway; fewer threads wake each other less (docs/benchmarks.md).
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }
}

pub(super) fn default_listen() -> Vec<Addr> {
    [
        "/ip4/0.0.0.0/tcp/4101",
        "/ip4/0.0.0.0/udp/4101/quic-v1",
        "/ip6/::/tcp/4101",
        "/ip6/::/udp/4101/quic-v1",
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .collect()
}
pub(super) fn default_socks_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1080))
}
pub(super) fn default_authorized_keys() -> PathBuf {
    PathBuf::from(crate::files::AUTHORIZED_KEYS_FILE)
}
pub(super) fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
pub(super) fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
pub(super) fn default_service_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
pub(super) fn default_keepalive_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
pub(super) fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
pub(super) fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
pub(super) fn default_streams_per_peer() -> usize {
    256
}
pub(super) fn default_streams_total() -> usize {
    4096
}
pub(super) fn default_max_clients() -> usize {
    4096
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_relay_keys() -> PathBuf {
    PathBuf::from("relay_authorized_keys")
}
pub(super) fn default_max_reservations() -> usize {
    1024
}
pub(super) fn default_max_circuits() -> usize {
    4096
}
pub(super) fn default_max_circuits_per_peer() -> usize {
    256
}
pub(super) fn default_reservation_duration() -> Dur {
    Dur(Duration::from_secs(3600))
}
/// Far more tunnel streams than a machine can carry, far fewer than a semaphore can count.
pub const MAX_STREAMS_TOTAL: usize = 1 << 20;
/// More worker threads than any machine this runs on has CPUs.
pub const MAX_THREADS: usize = 1024;

/// The longest circuit the relay protocol can express.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(u32::MAX as u64);
pub(super) fn default_circuit_duration() -> Dur {
    Dur(MAX_CIRCUIT_DURATION)
}
pub(super) fn default_reservations_per_minute() -> u32 {
    60
}
pub(super) fn default_circuits_per_minute() -> u32 {
    600
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            listen: default_listen(),
            external_addresses: Vec::new(),
            authorized_keys: default_relay_keys(),
            limits: RelayLimits::default(),
            registry: Registry::default(),
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: default_max_reservations(),
            max_circuits: default_max_circuits(),
            max_circuits_per_peer: default_max_circuits_per_peer(),
            reservation_duration: default_reservation_duration(),
            circuit_duration: default_circuit_duration(),
            circuit_bytes: 0,
            reservations_per_minute: default_reservations_per_minute(),
            circuits_per_minute: default_circuits_per_minute(),
        }
    }
}

impl Default for Socks {
    fn default() -> Self {
        Socks {
            listen: default_socks_listen(),
            direct: true,
            handshake_timeout: default_handshake_timeout(),
            max_clients: default_max_clients(),
            same_user: true,
            auth: None,
        }
    }
}

impl Limits {
    /// The keep-alive every connection runs (see `node::swarm::Keepalive`).
    pub fn keepalive(&self) -> crate::node::Keepalive {
        crate::node::Keepalive {
            interval: self.keepalive_interval.0,
            timeout: self.keepalive_timeout.0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            streams_per_peer: default_streams_per_peer(),
            streams_total: default_streams_total(),
            connect_timeout: default_connect_timeout(),
            service_timeout: default_service_timeout(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            shutdown_grace: default_shutdown_grace(),
            threads: 0,
        }
    }
}
