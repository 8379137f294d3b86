//! The registry tier: `HOST.NETWORK` looked up with the network's relays.
//!
//! Each of the network's configured relays is asked at once (about one round trip); of the
//! records they return, only those signed by the network's registrar, for the host asked and
//! not expired count, and the highest serial wins. A tombstone winning means "no such name".
//! A relay that answered with a record we refuse is logged and counts as not answering. When
//! no relay gave a usable answer the tier is unavailable (DNS SERVFAIL, SOCKS 0x04), never "no
//! such name", which an OS would cache. The winner is checked against the pins.
//!
//! A lookup for one network goes only to that network's relays.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use libp2p::PeerId;
use peerup_resolver::{Label, Resolution, Resolve, ResolveError, Tier, TierAnswer};
use tracing::{debug, warn};

use super::pins::{Pins, Verdict};
use super::protocol::{NamesRequest, NamesResponse};
use super::record::{Record, shaped_like_a_peer, unix_now};
use crate::config::{Config, RelayAddr};
use crate::logging::escaped;
use crate::node::Handle;
use crate::node::swarm::one_per_relay;

/// How long one relay has to answer a lookup (dialling it included).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A network whose names its registry signs.
#[derive(Debug, Clone)]
pub struct NetworkRegistry {
    pub registrar: PeerId,
    /// One address per relay.
    pub relays: Vec<RelayAddr>,
}

/// The networks with a registrar, from the config.
pub fn networks_of(config: &Config) -> HashMap<Label, NetworkRegistry> {
    config
        .networks
        .iter()
        .filter_map(|(name, network)| {
            let registrar = network.registrar?.0;
            let relays = one_per_relay(&network.relays).cloned().collect();
            Some((name.0.clone(), NetworkRegistry { registrar, relays }))
        })
        .collect()
}

/// Tier 2 of the name chain.
#[derive(Debug)]
pub struct RegistryTier {
    networks: RwLock<HashMap<Label, NetworkRegistry>>,
    node: Handle,
    pins: Arc<Pins>,
    /// The longest a registry answer is cached.
    ttl: Duration,
}

/// What one relay's answer was worth.
enum Heard {
    Record(Record),
    Nothing,
    Failed(String),
}

impl RegistryTier {
    pub fn new(
        networks: HashMap<Label, NetworkRegistry>,
        node: Handle,
        pins: Arc<Pins>,
        ttl: Duration,
    ) -> Self {
        RegistryTier { networks: RwLock::new(networks), node, pins, ttl }
    }

    /// New networks after a reload.
    pub fn replace(&self, networks: HashMap<Label, NetworkRegistry>) {
        *self.networks.write().unwrap_or_else(|e| e.into_inner()) = networks;
    }

    pub fn pins(&self) -> &Arc<Pins> {
        &self.pins
    }

    async fn ask(&self, relay: &RelayAddr, registrar: &PeerId, host: &str) -> Heard {
        let request = NamesRequest::Lookup { host: host.to_owned() };
        let asked = self.node.names(relay.peer, vec![relay.full()], request);
        let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Heard::Failed(format!("relay {}: {error}", relay.peer)),
            Err(_) => {
                return Heard::Failed(format!(
                    "relay {}: no answer within {LOOKUP_TIMEOUT:?}",
                    relay.peer
                ));
            }
        };
        match answer {
            NamesResponse::NotFound => Heard::Nothing,
            NamesResponse::Refused { message, .. } => {
                // The relay's words, escaped: they reach `peerup resolve` on a terminal.
                Heard::Failed(format!("relay {} refused: {}", relay.peer, escaped(&message)))
            }
            NamesResponse::Record { record } => {
                match Record::from_wire(&record, registrar, host, unix_now()) {
                    Ok(record) => Heard::Record(record),
                    Err(why) => {
                        warn!(relay = %relay.peer, host, why, "refused a name record from a relay");
                        Heard::Failed(format!("relay {} gave a record that {why}", relay.peer))
                    }
                }
            }
        }
    }

    async fn lookup(
        &self,
        host: &Label,
        network: &Label,
    ) -> Result<Option<Resolution>, ResolveError> {
        let registry =
            self.networks.read().unwrap_or_else(|e| e.into_inner()).get(network).cloned();
        let Some(registry) = registry else { return Ok(None) };
        // A peer-shaped host is never a registered name (the peer-label tier reads it).
        if shaped_like_a_peer(host.as_str()) {
            return Ok(None);
        }
        let name = format!("{host}.{network}");
        let heard = join_all(
            registry.relays.iter().map(|relay| self.ask(relay, &registry.registrar, host.as_str())),
        )
        .await;
        let mut best: Option<Record> = None;
        let (mut answered, mut problems) = (false, Vec::new());
        for answer in heard {
            match answer {
                Heard::Record(record) => {
                    answered = true;
                    if best.as_ref().is_none_or(|b| record.serial > b.serial) {
                        best = Some(record);
                    }
                }
                Heard::Nothing => answered = true,
                Heard::Failed(why) => problems.push(why),
            }
        }
        let Some(record) = best else {
            if answered {
                return Ok(None);
            }
            let reason = match problems.is_empty() {
                true => "the network has no relays to ask".to_owned(),
                false => format!("name service unreachable: {}", problems.join("; ")),
            };
            return Err(ResolveError::Unavailable { name, reason });
        };
        let Some(owner) = record.owner_peer() else {
            debug!(
                name,
                serial = record.serial,
                why = record.why.as_deref().unwrap_or(""),
                "the name's latest record is a tombstone"
            );
            return Ok(None);
        };
        if let Verdict::Mismatch { pinned } = self.pins.check(&name, owner) {
            warn!(
                name,
                %pinned,
                answered = %owner,
                "the registry now names another peer than the one pinned: refused; if the change is expected, run `peerup resolve --forget {name}`"
            );
            return Err(ResolveError::Refused {
                name: name.clone(),
                reason: format!(
                    "pinned to {pinned}, but the registry now answers {owner}; if that is expected, run `peerup resolve --forget {name}`"
                ),
            });
        }
        // Cached well below the record's life, so renewals and rebinds show soon.
        let left = record.expires.saturating_sub(unix_now());
        let ttl = self.ttl.min(Duration::from_secs(left / 4).max(Duration::from_secs(1)));
        Ok(Some(Resolution { peer: owner, addrs: Vec::new(), tier: Tier::Registry, ttl }))
    }
}

impl Resolve for RegistryTier {
    fn resolve<'a>(&'a self, host: &'a Label, network: &'a Label) -> TierAnswer<'a> {
        Box::pin(self.lookup(host, network))
    }
}
