//! `config.yaml`: parsed once into typed values, with errors that point at the mistake.
//!
//! Unknown keys are errors. Values are typed newtypes that validate while deserialising, so a
//! syntax or type error names the file, line and column; cross-field errors (checked after)
//! name the key path. Every key is documented in `configs/reference.yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use peerup_resolver::Label;
use serde::Deserialize;

mod sections;
mod types;
mod unique;
mod validate;

pub use sections::{
    Dns, Limits, MAX_CIRCUIT_DURATION, MAX_STREAMS_TOTAL, MAX_THREADS, Network, Registry, Relay,
    RelayLimits, Service, Socks,
};
use sections::{default_authorized_keys, default_listen};
pub use types::{
    Addr, DnsPool, Dur, HostLabel, HostPort, NameKey, NameValue, NetworkName, PeerKey,
    RegistrarKey, RelayAddr, ServiceName, Suffix,
};
use unique::unique_map;

/// The config `peerup init` writes, and the defaults it documents.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/peerup.yaml");

/// The default suffix under which names are ours (`dns.suffix` sets another).
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
    pub(crate) fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
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
    #[serde(default, deserialize_with = "unique_map")]
    pub services: BTreeMap<ServiceName, Service>,
    /// Local names, `HOST.NETWORK: peer-id-or-multiaddr`.
    #[serde(default, deserialize_with = "unique_map")]
    pub names: BTreeMap<NameKey, NameValue>,
    #[serde(default)]
    pub limits: Limits,
    /// Networks this node belongs to, by name: their relays.
    #[serde(default, deserialize_with = "unique_map")]
    pub networks: BTreeMap<NetworkName, Network>,
    /// Announce and discover peers on the LAN (it announces our peer ID: opt-in).
    #[serde(default)]
    pub mdns: bool,
    /// Read by `peerup relay` only.
    #[serde(default)]
    pub relay: Relay,
    #[serde(default)]
    pub dns: Dns,
    /// Secure channels for TCP and relayed connections, in order of preference.
    #[serde(default = "default_security")]
    pub security: Vec<SecureChannel>,
}

/// A secure channel libp2p connections can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureChannel {
    /// TLS 1.3, AES-128-GCM first where the CPU accelerates AES.
    Tls,
    /// Noise XX, ChaCha20-Poly1305.
    Noise,
}

fn default_security() -> Vec<SecureChannel> {
    vec![SecureChannel::Tls, SecureChannel::Noise]
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
            security: default_security(),
            dns: Dns::default(),
        }
    }
}

impl Config {
    /// Parse and validate a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        check_nesting(text, path)?;
        let config: Config = if is_empty_document(text) {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| syntax_error(path, text, &e))?
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Load `path`; a missing file means the embedded defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match crate::files::read_checked_text(path, crate::files::Kind::Config) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.is_not_found() => Ok(Config::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// The proxy credentials of `socks.auth`, the password read from its file (0600, a
    /// trailing newline dropped); `None` when the proxy asks for none.
    pub fn proxy_credentials(
        &self,
        home: &crate::files::Home,
    ) -> Result<Option<peerup_proxy::Credentials>, ConfigError> {
        let Some(auth) = &self.socks.auth else { return Ok(None) };
        let file = home.join(&auth.password_file);
        let bytes = crate::files::read_checked(&file, crate::files::Kind::Secret)?;
        let password = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let password = password.strip_suffix(b"\r").unwrap_or(password);
        if password.is_empty() || password.len() > 255 || std::str::from_utf8(password).is_err() {
            return Err(ConfigError::invalid(
                &file,
                "socks.auth.password_file",
                "the password must be UTF-8 text of 1 to 255 bytes (the SOCKS5 limit)",
            ));
        }
        Ok(Some(peerup_proxy::Credentials {
            username: auth.username.clone().into_bytes(),
            password: password.to_vec(),
        }))
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

/// Flow collections (`[` `{`) nested deeper than this are refused before parsing: the YAML
/// parser takes quadratic time on deep nesting (500,000 `[` took 8 minutes), and no config of
/// ours nests more than a few levels.
const MAX_FLOW_DEPTH: usize = 64;

/// Refuse deeply nested flow collections, pointing at where the limit was passed. A cheap
/// linear scan that skips quoted strings and comments.
fn check_nesting(text: &str, path: &Path) -> Result<(), ConfigError> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let (mut quote, mut comment, mut escaped, mut previous) = (None, false, false, ' ');
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            (line, column, comment) = (line + 1, 0, false);
        } else if comment {
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' => quote = Some(c),
                '#' if previous.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        let message = format!("nested deeper than {MAX_FLOW_DEPTH} levels");
                        return Err(ConfigError::Syntax {
                            path: path.to_owned(),
                            line,
                            column,
                            message,
                        });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

/// A YAML document holding only comments and blank lines.
fn is_empty_document(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

pub(crate) fn syntax_error(path: &Path, text: &str, error: &serde_yaml_ng::Error) -> ConfigError {
    let (line, column) = error.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // serde_yaml_ng appends " at line L column C"; the prefix already says where.
    let message = error.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    // A repeated key is reported where its mapping starts: point at the repeat instead.
    let (line, column) =
        unique::locate_duplicate(text, &message, line, column).unwrap_or((line, column));
    ConfigError::Syntax { path: path.to_owned(), line, column, message }
}

/// `names.yaml`: a mapping of `HOST.NETWORK` to a peer, like `names:` in config.yaml.
pub fn parse_names_file(
    text: &str,
    path: &Path,
) -> Result<BTreeMap<NameKey, NameValue>, ConfigError> {
    check_nesting(text, path)?;
    if is_empty_document(text) {
        return Ok(BTreeMap::new());
    }
    unique_map(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(|e| syntax_error(path, text, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("config.yaml"))
    }

    #[test]
    fn a_dns_address_the_config_sets_is_marked_so_and_null_turns_dns_off() {
        let default = parse("mdns: false\n").unwrap().dns.listen;
        assert_eq!((default.addr.map(|a| a.port()), default.explicit), (Some(1053), false));
        let set = parse("dns: { listen: 127.0.0.1:5353 }\n").unwrap().dns.listen;
        assert_eq!((set.addr.map(|a| a.port()), set.explicit), (Some(5353), true));
        let off = parse("dns: { listen: null }\n").unwrap().dns.listen;
        assert_eq!((off.addr, off.explicit), (None, true));
        assert!(parse("dns: { pool: 127.0.0.0/8 }\n").is_err(), "a pool over 127.0.0.1");
        assert!(parse("dns: { suffix: \"not a label\" }\n").is_err());
    }

    #[test]
    fn the_shipped_default_config_parses_to_the_defaults() {
        let config = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.socks.listen, sections::default_socks_listen());
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
    fn deep_nesting_is_refused_before_parsing_and_quoted_brackets_do_not_count() {
        // The pre-scan's error (at the 65th bracket), not the YAML parser's, which is quadratic.
        let deep = format!("names: {}", "[".repeat(500_000));
        let error = parse(&deep).unwrap_err().to_string();
        assert!(error.starts_with("config.yaml:1:72: nested deeper than 64"), "{error}");
        let quoted = format!(
            "# {}\nnames: {{}}\nsocks: {{ listen: \"127.0.0.1:1080\" }}\n",
            "[".repeat(100)
        );
        assert!(parse(&quoted).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<Dur>().unwrap().0, Duration::from_millis(500));
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("ten".parse::<Dur>().is_err() && "5d".parse::<Dur>().is_err());
        let config = parse("limits: { connect_timeout: 3 }\n").unwrap();
        assert_eq!(config.limits.connect_timeout.0, Duration::from_secs(3));
    }

    #[test]
    fn threads_default_to_half_the_cpus_and_are_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::default().limits.threads(), (cpus / 2).max(1));
        assert_eq!(parse("limits: { threads: 3 }\n").unwrap().limits.threads(), 3);
        let error = parse("limits: { threads: 100000 }\n").unwrap_err().to_string();
        assert!(error.contains("limits.threads"), "{error}");
    }
}
