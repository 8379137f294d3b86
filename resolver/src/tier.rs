//! Resolution tiers: first answer wins.
//!
//! Each tier implements [`Resolve`]. [`Tiers`] asks them in order for `HOST.NETWORK` names and,
//! when none knows the name, reads `HOST` as a peer label (the last tier). A bare
//! `PEERLABEL.p2p` needs no tier at all. The order, as the daemon builds it:
//!
//! 1. local names (`names:` in config.yaml and names.yaml), [`ReloadableNames`];
//! 2. the network's registry (its members' registered hosts, records signed by the network's
//!    registrar; the gateway's `names` module);
//! 3. further tiers behind the same trait, each asked only for what the ones before did not
//!    know — for example a blockchain naming tier that maps `HOST.NETWORK` to a peer ID stored
//!    on chain (not built);
//! 4. the peer label itself.
//!
//! A tier answers `Ok(Some(_))` (a peer), `Ok(None)` (not mine: ask the next) or
//! `Err(Unavailable)` (it should know but cannot be asked now: the DNS server says SERVFAIL and
//! nothing is cached). Answers are cached and identical lookups merged in [`crate::cache`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

use crate::cache::Cache;
use crate::label::parse_peer;
use crate::name::{Label, Name};

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `names:` in config.yaml and `names.yaml`.
    Local,
    /// The network's registry (a record signed by its registrar).
    Registry,
    /// The name itself is a peer label.
    PeerLabel,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Local => "local",
            Tier::Registry => "registry",
            Tier::PeerLabel => "peer-label",
        })
    }
}

/// A resolved name: the peer to reach and what is known of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub peer: PeerId,
    /// Addresses to dial, without the trailing `/p2p/<peer>`. May be empty.
    pub addrs: Vec<Multiaddr>,
    pub tier: Tier,
    /// How long the answer may be cached.
    pub ttl: Duration,
}

/// Why resolution gave no peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no such name: {0}")]
    NoSuchName(String),
    /// A tier that should know could not be asked (not the same as "no such name": callers
    /// must not cache it).
    #[error("cannot resolve {name} now: {reason}")]
    Unavailable { name: String, reason: String },
    /// An answer that must not be used: a pinned name answered with a different peer.
    #[error("{name}: {reason}")]
    Refused { name: String, reason: String },
}

/// The answer a tier gives: `Ok(None)` passes the name on to the next tier.
pub type TierAnswer<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Resolution>, ResolveError>> + Send + 'a>>;

/// One resolution tier.
pub trait Resolve: Send + Sync + fmt::Debug {
    fn resolve<'a>(&'a self, host: &'a Label, network: &'a Label) -> TierAnswer<'a>;

    /// Addresses this tier knows for `peer`, for a name that is the peer's label: a peer the
    /// user named with an address is reached by its label (or base58 ID) too.
    fn addresses_of(&self, _peer: &PeerId) -> Vec<Multiaddr> {
        Vec::new()
    }
}

/// The TTL of answers from local names and peer labels: they change only when the user edits
/// them, but short answers let edits show quickly.
pub const LOCAL_TTL: Duration = Duration::from_secs(60);

/// What a local name points at: a peer, optionally with addresses to dial it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// Why a local name's value is not a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameEntryError {
    #[error("{0:?} is neither a peer ID nor a multiaddr ending in /p2p/<peer-id>")]
    Malformed(String),
    #[error("addresses name different peers ({0})")]
    MixedPeers(String),
}

impl FromStr for NameEntry {
    type Err = NameEntryError;

    /// A peer ID (base58 or base36), or a multiaddr ending in `/p2p/<peer-id>`.
    fn from_str(text: &str) -> Result<Self, NameEntryError> {
        if let Ok(peer) = parse_peer(text) {
            return Ok(NameEntry { peer, addrs: Vec::new() });
        }
        let malformed = || NameEntryError::Malformed(text.to_owned());
        let mut addr: Multiaddr = text.parse().map_err(|_| malformed())?;
        match addr.pop() {
            Some(Protocol::P2p(peer)) if !addr.is_empty() => {
                Ok(NameEntry { peer, addrs: vec![addr] })
            }
            _ => Err(malformed()),
        }
    }
}

impl NameEntry {
    /// Combine several values for one name; all must name the same peer.
    pub fn merge(
        values: impl IntoIterator<Item = NameEntry>,
    ) -> Result<Option<Self>, NameEntryError> {
        let mut merged: Option<NameEntry> = None;
        for value in values {
            match &mut merged {
                None => merged = Some(value),
                Some(entry) if entry.peer == value.peer => entry.addrs.extend(value.addrs),
                Some(entry) => {
                    let peers = format!("{} and {}", entry.peer, value.peer);
                    return Err(NameEntryError::MixedPeers(peers));
                }
            }
        }
        Ok(merged)
    }
}

/// Tier 1: names the user wrote down, keyed `HOST.NETWORK`.
#[derive(Debug, Default, Clone)]
pub struct LocalNames {
    names: HashMap<(Label, Label), NameEntry>,
}

impl LocalNames {
    pub fn new(names: impl IntoIterator<Item = ((Label, Label), NameEntry)>) -> Self {
        LocalNames { names: names.into_iter().collect() }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl LocalNames {
    fn lookup(&self, host: &Label, network: &Label) -> Option<Resolution> {
        self.names.get(&(host.clone(), network.clone())).map(|entry| Resolution {
            peer: entry.peer,
            addrs: entry.addrs.clone(),
            tier: Tier::Local,
            ttl: LOCAL_TTL,
        })
    }
}

impl Resolve for LocalNames {
    fn resolve<'a>(&'a self, host: &'a Label, network: &'a Label) -> TierAnswer<'a> {
        Box::pin(std::future::ready(Ok(self.lookup(host, network))))
    }

    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for entry in self.names.values().filter(|entry| entry.peer == *peer) {
            for addr in &entry.addrs {
                if !addrs.contains(addr) {
                    addrs.push(addr.clone());
                }
            }
        }
        addrs
    }
}

/// Local names that a reload replaces while lookups go on.
#[derive(Debug, Default)]
pub struct ReloadableNames(RwLock<Arc<LocalNames>>);

impl ReloadableNames {
    pub fn new(names: LocalNames) -> Self {
        ReloadableNames(RwLock::new(Arc::new(names)))
    }

    pub fn replace(&self, names: LocalNames) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
    }
}

impl Resolve for ReloadableNames {
    fn resolve<'a>(&'a self, host: &'a Label, network: &'a Label) -> TierAnswer<'a> {
        let names = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(std::future::ready(Ok(names.lookup(host, network))))
    }

    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).addresses_of(peer)
    }
}

/// The tiers in order, with one answer cache shared by every clone (see [`crate::cache`]).
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    tiers: Vec<Arc<dyn Resolve>>,
    cache: Arc<Cache>,
}

impl Tiers {
    pub fn new(tiers: Vec<Arc<dyn Resolve>>) -> Self {
        Tiers { tiers, cache: Arc::default() }
    }

    /// Resolve a parsed name: a cached answer, or the first tier with one (identical lookups in
    /// flight share one).
    pub async fn resolve(&self, name: &Name) -> Result<Resolution, ResolveError> {
        self.cache.get_or_lookup(name, self.lookup(name)).await
    }

    /// Forget cached answers (a tier's names changed).
    pub fn invalidate(&self) {
        self.cache.clear();
    }

    async fn lookup(&self, name: &Name) -> Result<Resolution, ResolveError> {
        let (host, network, verbatim) = match name {
            Name::Peer { peer } => return Ok(self.peer_label_answer(*peer)),
            Name::Host { host, network, verbatim_host } => (host, network, verbatim_host),
        };
        for tier in &self.tiers {
            if let Some(answer) = tier.resolve(host, network).await? {
                return Ok(answer);
            }
        }
        parse_peer(verbatim)
            .map(|peer| self.peer_label_answer(peer))
            .map_err(|_| ResolveError::NoSuchName(name.to_string()))
    }

    /// A peer named by its label, with the addresses any tier knows for it.
    fn peer_label_answer(&self, peer: PeerId) -> Resolution {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for addr in self.tiers.iter().flat_map(|tier| tier.addresses_of(&peer)) {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Resolution { peer, addrs, tier: Tier::PeerLabel, ttl: LOCAL_TTL }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Label {
        s.parse().unwrap()
    }

    fn tiers_with(host: &str, network: &str, entry: NameEntry) -> Tiers {
        let local = LocalNames::new([((label(host), label(network)), entry)]);
        Tiers::new(vec![Arc::new(local)])
    }

    #[tokio::test]
    async fn local_name_wins_and_carries_its_addresses() {
        let peer = PeerId::random();
        let entry: NameEntry = format!("/ip4/192.0.2.5/tcp/4101/p2p/{peer}").parse().unwrap();
        let tiers = tiers_with("box", "lab", entry);
        let name = Name::parse("box.lab.p2p", &label("p2p")).unwrap().unwrap();
        let answer = tiers.resolve(&name).await.unwrap();
        assert_eq!(answer.peer, peer);
        assert_eq!(answer.tier, Tier::Local);
        assert_eq!(answer.addrs, vec!["/ip4/192.0.2.5/tcp/4101".parse::<Multiaddr>().unwrap()]);
    }

    #[tokio::test]
    async fn unknown_host_is_no_such_name_but_a_peer_label_host_resolves() {
        let tiers = tiers_with("box", "lab", NameEntry { peer: PeerId::random(), addrs: vec![] });
        let unknown = Name::parse("nas.lab.p2p", &label("p2p")).unwrap().unwrap();
        assert_eq!(tiers.resolve(&unknown).await, Err(ResolveError::NoSuchName("nas.lab".into())));
        let peer = PeerId::random();
        let text = format!("{}.lab.p2p", crate::peer_label(&peer));
        let by_label = Name::parse(&text, &label("p2p")).unwrap().unwrap();
        let answer = tiers.resolve(&by_label).await.unwrap();
        assert_eq!((answer.peer, answer.tier), (peer, Tier::PeerLabel));
    }

    #[tokio::test]
    async fn a_peer_label_or_base58_id_carries_the_addresses_its_names_give() {
        let peer = PeerId::random();
        let entry: NameEntry = format!("/ip4/192.0.2.5/tcp/4101/p2p/{peer}").parse().unwrap();
        let tiers = tiers_with("box", "lab", entry);
        let want = vec!["/ip4/192.0.2.5/tcp/4101".parse::<Multiaddr>().unwrap()];
        for text in
            [format!("{}.p2p", crate::peer_label(&peer)), format!("{}.p2p", peer.to_base58())]
        {
            let name = Name::parse(&text, &label("p2p")).unwrap().unwrap();
            let answer = tiers.resolve(&name).await.unwrap();
            assert_eq!(
                (answer.peer, answer.tier, &answer.addrs),
                (peer, Tier::PeerLabel, &want),
                "{text}"
            );
        }
    }

    #[test]
    fn name_entries_parse_peer_ids_and_p2p_multiaddrs_only() {
        let peer = PeerId::random();
        assert_eq!(peer.to_string().parse::<NameEntry>().unwrap().peer, peer);
        for bad in ["/ip4/1.2.3.4/tcp/1", "nonsense", &format!("/p2p/{peer}")] {
            assert!(bad.parse::<NameEntry>().is_err(), "{bad}");
        }
        let other = NameEntry { peer: PeerId::random(), addrs: vec![] };
        let mine = NameEntry { peer, addrs: vec![] };
        assert!(NameEntry::merge([mine, other]).is_err());
    }
}
