//! Cross-field checks of a parsed config, each naming the key path it found wrong.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    Config, ConfigError, MAX_CIRCUIT_DURATION, MAX_STREAMS_TOTAL, MAX_THREADS, ServiceName,
};

impl Config {
    /// Every check, in the order a reader of the file meets the keys.
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_listen(path)?;
        self.check_security(path)?;
        self.check_socks(path)?;
        self.check_service_ports(path)?;
        self.check_limits(path)?;
        self.check_networks(path)?;
        self.check_relay(path)
    }

    fn check_networks(&self, path: &Path) -> Result<(), ConfigError> {
        for (name, network) in &self.networks {
            let Some(host) = &network.register_as else { continue };
            let Some(registrar) = network.registrar else {
                return Err(ConfigError::invalid(
                    path,
                    format!("networks.{name}.register_as"),
                    format!(
                        "registering {host}.{name} needs networks.{name}.registrar (the relay that signs the network's names)"
                    ),
                ));
            };
            if !network.relays.iter().any(|relay| relay.peer == registrar.0) {
                return Err(ConfigError::invalid(
                    path,
                    format!("networks.{name}.registrar"),
                    format!(
                        "{} is not among networks.{name}.relays: a member registers with the registrar as one of its relays",
                        registrar.0
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_listen(&self, path: &Path) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(path, "listen", "needs at least one address"));
        }
        Ok(())
    }

    fn check_security(&self, path: &Path) -> Result<(), ConfigError> {
        if self.security.is_empty() {
            return Err(ConfigError::invalid(path, "security", "needs tls, noise or both"));
        }
        for (i, channel) in self.security.iter().enumerate() {
            if self.security[..i].contains(channel) {
                return Err(ConfigError::invalid(
                    path,
                    "security",
                    format!("{channel:?} is listed twice").to_lowercase(),
                ));
            }
        }
        Ok(())
    }

    fn check_socks(&self, path: &Path) -> Result<(), ConfigError> {
        if self.socks.direct && self.socks.auth.is_none() && !self.socks.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                path,
                "socks.listen",
                format!(
                    "{} is not loopback and socks.direct is true without socks.auth: that would \
                     be an open proxy; bind 127.0.0.1, set socks.auth, or set socks.direct: false",
                    self.socks.listen
                ),
            ));
        }
        if let Some(auth) = &self.socks.auth
            && (auth.username.is_empty()
                || auth.username.len() > 255
                || auth.username.contains(':')
                || auth.username.chars().any(char::is_control))
        {
            return Err(ConfigError::invalid(
                path,
                "socks.auth.username",
                "must be 1 to 255 bytes (the SOCKS5 limit), without ':' (HTTP Basic splits there) \
                 or control characters",
            ));
        }
        Ok(())
    }

    fn check_service_ports(&self, path: &Path) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn check_limits(&self, path: &Path) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.streams_per_peer == 0 || limits.streams_per_peer > limits.streams_total {
            return Err(ConfigError::invalid(
                path,
                "limits.streams_per_peer",
                "must be at least 1 and at most limits.streams_total",
            ));
        }
        if self.socks.max_clients == 0 || self.socks.max_clients > MAX_STREAMS_TOTAL {
            return Err(ConfigError::invalid(
                path,
                "socks.max_clients",
                format!("must be at least 1 and at most {MAX_STREAMS_TOTAL}"),
            ));
        }
        if limits.threads > MAX_THREADS {
            return Err(ConfigError::invalid(
                path,
                "limits.threads",
                format!("at most {MAX_THREADS} (0: half the CPUs)"),
            ));
        }
        if limits.streams_total > MAX_STREAMS_TOTAL {
            return Err(ConfigError::invalid(
                path,
                "limits.streams_total",
                format!("at most {MAX_STREAMS_TOTAL}"),
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
        Ok(())
    }

    fn check_relay(&self, path: &Path) -> Result<(), ConfigError> {
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
        let registry = &self.relay.registry;
        if registry.lifetime.0 < std::time::Duration::from_secs(60)
            || registry.lifetime.0 > MAX_CIRCUIT_DURATION
        {
            return Err(ConfigError::invalid(
                path,
                "relay.registry.lifetime",
                format!(
                    "must be at least 1m (members renew at half of it) and at most {} seconds",
                    u32::MAX
                ),
            ));
        }
        if registry.republish.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                path,
                "relay.registry.republish",
                "must be at least 1s",
            ));
        }
        if !registry.peers.is_empty() && registry.registrar.is_none() {
            return Err(ConfigError::invalid(
                path,
                "relay.registry.peers",
                "replication needs relay.registry.registrar (whose records are replicated)",
            ));
        }
        if registry.max_names_per_key == 0 {
            return Err(ConfigError::invalid(
                path,
                "relay.registry.max_names_per_key",
                "must be at least 1",
            ));
        }
        if self.relay.listen.is_empty() {
            return Err(ConfigError::invalid(path, "relay.listen", "needs at least one address"));
        }
        Ok(())
    }
}
