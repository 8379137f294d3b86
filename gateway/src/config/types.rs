//! The typed values of the config: each parses once, while deserialising, so a bad value is
//! reported at its line and column.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use libp2p::Multiaddr;
use peerup_resolver::{Label, NameEntry};
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Deserialise a newtype through its `FromStr`, so a bad value is reported at its position.
macro_rules! from_str_deserialize {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(de::Error::custom)
            }
        }
    };
}

/// A libp2p multiaddr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr(pub Multiaddr);

impl FromStr for Addr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(Addr).map_err(|e| format!("{text:?} is not a multiaddr: {e}"))
    }
}
from_str_deserialize!(Addr);

/// A network's name: one DNS label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkName(pub Label);

impl FromStr for NetworkName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(NetworkName).map_err(|e| format!("network name: {e}"))
    }
}
from_str_deserialize!(NetworkName);

/// A peer ID, base58 (`12D3KooW…`) or base36 (`k51…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKey(pub libp2p::PeerId);

impl FromStr for PeerKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        peerup_resolver::parse_peer(text)
            .map(PeerKey)
            .map_err(|e| format!("{text:?} is not a peer ID: {e}"))
    }
}
from_str_deserialize!(PeerKey);

/// `relay.registry.registrar`: `self` (this relay signs the names) or a peer ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarKey {
    Me,
    Peer(libp2p::PeerId),
}

impl RegistrarKey {
    /// The registrar's peer ID, given this relay's own.
    pub fn peer(self, me: libp2p::PeerId) -> libp2p::PeerId {
        match self {
            RegistrarKey::Me => me,
            RegistrarKey::Peer(peer) => peer,
        }
    }
}

impl FromStr for RegistrarKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "self" {
            return Ok(RegistrarKey::Me);
        }
        peerup_resolver::parse_peer(text)
            .map(RegistrarKey::Peer)
            .map_err(|e| format!("{text:?} is neither `self` nor a peer ID: {e}"))
    }
}
from_str_deserialize!(RegistrarKey);

/// A host label a registry gives out: a DNS label that does not read as a peer ID or label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostLabel(pub Label);

impl FromStr for HostLabel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let label: Label = text.parse().map_err(|e| format!("host name: {e}"))?;
        if crate::names::record::shaped_like_a_peer(label.as_str()) {
            return Err(format!(
                "{text:?} reads as a peer ID or peer label, which name peers themselves; choose a name"
            ));
        }
        Ok(HostLabel(label))
    }
}
from_str_deserialize!(HostLabel);

impl fmt::Display for HostLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The suffix under which names are ours: one DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suffix(pub Label);

impl FromStr for Suffix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(Suffix).map_err(|e| format!("dns.suffix: {e}"))
    }
}
from_str_deserialize!(Suffix);

/// The DNS server's address pool: a loopback network of at least 256 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsPool(pub peerup_resolver::Ipv4Net);

impl FromStr for DnsPool {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(DnsPool).map_err(|e| format!("{e}"))
    }
}
from_str_deserialize!(DnsPool);

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay's address: a multiaddr ending in `/p2p/<relay-peer-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    /// Without the trailing `/p2p/<peer>`.
    pub addr: Multiaddr,
    pub peer: libp2p::PeerId,
}

impl RelayAddr {
    /// The full address, `/p2p/<peer>` included.
    pub fn full(&self) -> Multiaddr {
        self.addr.clone().with(libp2p::multiaddr::Protocol::P2p(self.peer))
    }

    /// The address to dial `target` through this relay.
    pub fn circuit_to(&self, target: libp2p::PeerId) -> Multiaddr {
        use libp2p::multiaddr::Protocol;
        self.full().with(Protocol::P2pCircuit).with(Protocol::P2p(target))
    }
}

impl FromStr for RelayAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        use libp2p::multiaddr::Protocol;
        let bad = || format!("{text:?}: expected a multiaddr ending in /p2p/<relay-peer-id>");
        let mut addr: Multiaddr = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        match addr.pop() {
            Some(Protocol::P2p(peer)) if !addr.is_empty() => Ok(RelayAddr { addr, peer }),
            _ => Err(bad()),
        }
    }
}
from_str_deserialize!(RelayAddr);

/// `host:port` of a local TCP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not host:port (e.g. 127.0.0.1:22)");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(HostPort { host: host.to_owned(), port })
    }
}
from_str_deserialize!(HostPort);

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A service name: 1 to 63 of `[a-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        if text.is_empty() || text.len() > 63 || !text.bytes().all(ok) {
            return Err(format!("service name {text:?}: use 1 to 63 of a-z, 0-9, '-', '_'"));
        }
        Ok(ServiceName(text.to_owned()))
    }
}
from_str_deserialize!(ServiceName);

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A local name's key, `HOST.NETWORK`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameKey {
    pub host: Label,
    pub network: Label,
}

impl FromStr for NameKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (host, network) = text
            .split_once('.')
            .ok_or_else(|| format!("name {text:?}: expected HOST.NETWORK (e.g. nas.alice)"))?;
        let host = host.parse().map_err(|e| format!("name {text:?}: {e}"))?;
        let network = network.parse().map_err(|e| format!("name {text:?}: {e}"))?;
        Ok(NameKey { host, network })
    }
}
from_str_deserialize!(NameKey);

impl fmt::Display for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.host, self.network)
    }
}

/// What a local name points at: one peer ID or multiaddr, or a list of multiaddrs of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameValue(pub NameEntry);

impl<'de> Deserialize<'de> for NameValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(deserializer) {
            Ok(OneOrMany::One(text)) => vec![text],
            Ok(OneOrMany::Many(texts)) => texts,
            Err(_) => {
                return Err(de::Error::custom(
                    "expected a peer ID, a multiaddr ending in /p2p/<peer-id>, or a list of them",
                ));
            }
        };
        let entries = texts
            .iter()
            .map(|t| t.parse::<NameEntry>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(de::Error::custom)?;
        match NameEntry::merge(entries).map_err(de::Error::custom)? {
            Some(entry) => Ok(NameValue(entry)),
            None => Err(de::Error::custom("an empty list names no peer")),
        }
    }
}

/// A duration written `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a duration (e.g. 500ms, 10s, 2m, 1h)");
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let duration = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(Dur(duration))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| de::Error::custom("expected a duration (e.g. 500ms, 10s, 2m)"))?
        {
            Raw::Secs(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::Text(text) => text.parse().map_err(de::Error::custom),
        }
    }
}
