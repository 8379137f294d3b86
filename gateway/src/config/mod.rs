//! `config.yaml`: parsed once into typed values, with errors that point at the mistake.
//!
//! Unknown keys are errors. Values are typed newtypes that validate while deserialising, so a
//! syntax or type error names the file, line and column; cross-field errors (checked after)
//! name the key path. Every key is documented in `configs/reference.yaml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerup_resolver::Label;
use serde::Deserialize;

mod types;

pub use types::{Addr, Dur, HostPort, NameKey, NameValue, NetworkName, RelayAddr, ServiceName};

/// The config `peerup init` writes, and the defaults it documents.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/peerup.yaml");

/// The name suffix under which names are ours.
pub fn suffix() -> Label {
    "p2p".parse().expect("p2p is a valid label")
}

/// Where a config is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}:{line}:{column}: {message}", path = path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {key}: {message}", path = path.display())]
    Invalid { path: PathBuf, key: String, message: String },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

impl ConfigError {
    fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: path.to_owned(), key: key.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// libp2p listen addresses (TCP and QUIC, IPv4 and IPv6).
    #[serde(default = "default_listen")]
    pub listen: Vec<Addr>,
    #[serde(default)]
    pub socks: Socks,
    /// The global allow list, relative to the home.
    #[serde(default = "default_authorized_keys")]
    pub authorized_keys: PathBuf,
    #[serde(default)]
    pub services: BTreeMap<ServiceName, Service>,
    /// Local names, `HOST.NETWORK: peer-id-or-multiaddr`.
    #[serde(default)]
    pub names: BTreeMap<NameKey, NameValue>,
    #[serde(default)]
    pub limits: Limits,
    /// Networks this node belongs to, by name: their relays.
    #[serde(default)]
    pub networks: BTreeMap<NetworkName, Network>,
    /// Announce and discover peers on the LAN (it announces our peer ID: opt-in).
    #[serde(default)]
    pub mdns: bool,
    /// Read by `peerup relay` only.
    #[serde(default)]
    pub relay: Relay,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The network's relays, each a multiaddr ending in /p2p/<relay-peer-id>.
    #[serde(default)]
    pub relays: Vec<RelayAddr>,
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
}

fn default_listen() -> Vec<Addr> {
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
fn default_socks_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1080))
}
fn default_authorized_keys() -> PathBuf {
    PathBuf::from(crate::files::AUTHORIZED_KEYS_FILE)
}
fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_service_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_keepalive_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_streams_per_peer() -> usize {
    256
}
fn default_streams_total() -> usize {
    4096
}
fn yes() -> bool {
    true
}
fn default_relay_keys() -> PathBuf {
    PathBuf::from("relay_authorized_keys")
}
fn default_max_reservations() -> usize {
    1024
}
fn default_max_circuits() -> usize {
    4096
}
fn default_max_circuits_per_peer() -> usize {
    256
}
fn default_reservation_duration() -> Dur {
    Dur(Duration::from_secs(3600))
}
/// Far more tunnel streams than a machine can carry, far fewer than a semaphore can count.
pub const MAX_STREAMS_TOTAL: usize = 1 << 20;

/// The longest circuit the relay protocol can express.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(u32::MAX as u64);
fn default_circuit_duration() -> Dur {
    Dur(MAX_CIRCUIT_DURATION)
}
fn default_reservations_per_minute() -> u32 {
    60
}
fn default_circuits_per_minute() -> u32 {
    600
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            listen: default_listen(),
            external_addresses: Vec::new(),
            authorized_keys: default_relay_keys(),
            limits: RelayLimits::default(),
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
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            socks: Socks::default(),
            authorized_keys: default_authorized_keys(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
            limits: Limits::default(),
            networks: BTreeMap::new(),
            mdns: false,
            relay: Relay::default(),
        }
    }
}

impl Config {
    /// Parse and validate a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = if is_empty_document(text) {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| syntax_error(path, &e))?
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Load `path`; a missing file means the embedded defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(crate::files::FileError::io(path, e).into()),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(path, "listen", "needs at least one address"));
        }
        if self.socks.direct && !self.socks.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                path,
                "socks.listen",
                format!(
                    "{} is not loopback and socks.direct is true: that would be an open proxy; \
                     bind 127.0.0.1 or set socks.direct: false",
                    self.socks.listen
                ),
            ));
        }
        let mut ports: BTreeMap<u16, &ServiceName> = BTreeMap::new();
        for (name, service) in &self.services {
            if let Some(other) = ports.insert(service.port(), name) {
                return Err(ConfigError::invalid(
                    path,
                    format!("services.{name}.port"),
                    format!("port {} is already the port of service {other}", service.port()),
                ));
            }
        }
        let limits = &self.limits;
        if limits.streams_per_peer == 0 || limits.streams_per_peer > limits.streams_total {
            return Err(ConfigError::invalid(
                path,
                "limits.streams_per_peer",
                "must be at least 1 and at most limits.streams_total",
            ));
        }
        for (key, value) in [
            ("socks.handshake_timeout", self.socks.handshake_timeout),
            ("limits.connect_timeout", limits.connect_timeout),
            ("limits.service_timeout", limits.service_timeout),
            ("limits.keepalive_interval", limits.keepalive_interval),
            ("limits.keepalive_timeout", limits.keepalive_timeout),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(path, key, "must be more than 0"));
            }
        }
        if limits.streams_total > MAX_STREAMS_TOTAL {
            return Err(ConfigError::invalid(
                path,
                "limits.streams_total",
                format!("at most {MAX_STREAMS_TOTAL}"),
            ));
        }
        let relay = &self.relay.limits;
        for (key, value) in [
            ("relay.limits.circuit_duration", relay.circuit_duration),
            ("relay.limits.reservation_duration", relay.reservation_duration),
        ] {
            if value.0.is_zero() || value.0 > MAX_CIRCUIT_DURATION {
                return Err(ConfigError::invalid(
                    path,
                    key,
                    format!("must be more than 0 and at most {} seconds (u32::MAX)", u32::MAX),
                ));
            }
        }
        for (key, value) in [
            ("relay.limits.reservations_per_minute", relay.reservations_per_minute),
            ("relay.limits.circuits_per_minute", relay.circuits_per_minute),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(path, key, "must be at least 1"));
            }
        }
        if self.relay.listen.is_empty() {
            return Err(ConfigError::invalid(path, "relay.listen", "needs at least one address"));
        }
        Ok(())
    }

    /// Every relay of every network, in config order, without repeats.
    pub fn all_relays(&self) -> Vec<RelayAddr> {
        let mut all: Vec<RelayAddr> = Vec::new();
        for relay in self.networks.values().flat_map(|n| &n.relays) {
            if !all.contains(relay) {
                all.push(relay.clone());
            }
        }
        all
    }
}

/// A YAML document holding only comments and blank lines.
fn is_empty_document(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

pub(crate) fn syntax_error(path: &Path, error: &serde_yaml_ng::Error) -> ConfigError {
    let (line, column) = error.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // serde_yaml_ng appends " at line L column C"; the prefix already says where.
    let message = error.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    ConfigError::Syntax { path: path.to_owned(), line, column, message }
}

/// `names.yaml`: a mapping of `HOST.NETWORK` to a peer, like `names:` in config.yaml.
pub fn parse_names_file(
    text: &str,
    path: &Path,
) -> Result<BTreeMap<NameKey, NameValue>, ConfigError> {
    if is_empty_document(text) {
        return Ok(BTreeMap::new());
    }
    serde_yaml_ng::from_str(text).map_err(|e| syntax_error(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("config.yaml"))
    }

    #[test]
    fn the_shipped_default_config_parses_to_the_defaults() {
        let config = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.socks.listen, default_socks_listen());
        assert_eq!(config.listen, default_listen());
        assert!(config.socks.direct);
        assert!(parse("").is_ok() && parse("# nothing\n").is_ok());
    }

    #[test]
    fn type_errors_name_line_and_column() {
        let text =
            "socks:\n  listen: 127.0.0.1:1080\nservices:\n  web:\n    local_address: nowhere\n";
        let error = parse(text).unwrap_err().to_string();
        assert!(error.starts_with("config.yaml:5:5: "), "{error}");
        assert!(error.contains("not host:port"), "{error}");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_position() {
        let error = parse("socks:\n  lisen: 127.0.0.1:1080\n").unwrap_err().to_string();
        assert!(error.starts_with("config.yaml:2:3: "), "{error}");
        assert!(error.contains("unknown field `lisen`"), "{error}");
    }

    #[test]
    fn cross_field_errors_name_the_key_path() {
        let text = "services:\n  a: { local_address: 127.0.0.1:80 }\n  b: { local_address: 127.0.0.1:8080, port: 80 }\n";
        let error = parse(text).unwrap_err().to_string();
        assert_eq!(error, "config.yaml: services.b.port: port 80 is already the port of service a");
        let error = parse("socks: { listen: 0.0.0.0:1080 }\n").unwrap_err().to_string();
        assert!(error.starts_with("config.yaml: socks.listen: "), "{error}");
    }

    #[test]
    fn names_take_a_peer_or_multiaddrs_of_one_peer() {
        let peer = libp2p::PeerId::random();
        let text = format!(
            "names:\n  nas.alice: {peer}\n  box.lab: [/ip4/192.0.2.1/tcp/4101/p2p/{peer}, /ip4/192.0.2.1/udp/4101/quic-v1/p2p/{peer}]\n"
        );
        let config = parse(&text).unwrap();
        let boxed = &config.names[&"box.lab".parse().unwrap()].0;
        assert_eq!((boxed.peer, boxed.addrs.len()), (peer, 2));
        let error = parse("names:\n  nas: 12D3\n").unwrap_err().to_string();
        assert!(error.starts_with("config.yaml:2:3: "), "{error}");
    }

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<Dur>().unwrap().0, Duration::from_millis(500));
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("ten".parse::<Dur>().is_err() && "5d".parse::<Dur>().is_err());
        let config = parse("limits: { connect_timeout: 3 }\n").unwrap();
        assert_eq!(config.limits.connect_timeout.0, Duration::from_secs(3));
    }
}
