//! The access lists in force and the decisions made with them.
//!
//! Inbound: a peer may connect when it is in the global list, in any service's list, or is a
//! configured relay; otherwise the connection is closed at the handshake, before any stream.
//! Per stream: a service that names its own file is reached only by peers in that file;
//! other services by peers in the global list. Outbound: we dial only peers we chose (a name we
//! resolved, a configured relay) or peers already connected and allowed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use libp2p::PeerId;
use time::OffsetDateTime;

use super::keys::{AuthorizedKeys, Entry};
use crate::config::{Config, ServiceName};
use crate::files::{self, FileError, Home};

/// One allow list: peers and when their access ends.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    peers: HashMap<PeerId, Entry>,
}

impl KeySet {
    fn from_keys(keys: &AuthorizedKeys) -> Self {
        KeySet { peers: keys.entries().map(|e| (e.peer, e.clone())).collect() }
    }

    pub fn allows(&self, peer: &PeerId, now: OffsetDateTime) -> bool {
        self.peers.get(peer).is_some_and(|entry| entry.allows_at(now))
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The first moment after `now` at which an entry's access ends.
    fn next_expiry(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.peers
            .values()
            .filter_map(|e| e.expires.map(|x| x.ends_at()))
            .filter(|end| *end > now)
            .min()
    }
}

/// Why the lists could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Keys(#[from] super::keys::KeysError),
}

/// Every list the node enforces, loaded together.
#[derive(Debug, Clone, Default)]
pub struct AccessLists {
    pub global: KeySet,
    /// Services that name their own file; others use `global`.
    pub services: HashMap<ServiceName, KeySet>,
    pub relays: HashSet<PeerId>,
}

impl AccessLists {
    /// Load the global list and every service's own list named in `config`.
    pub fn load(home: &Home, config: &Config) -> Result<Self, AccessError> {
        let global_path = home.join(&config.authorized_keys);
        let global = match load_keys(&global_path) {
            Ok(keys) => KeySet::from_keys(&keys),
            Err(AccessError::File(FileError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(path = %global_path.display(), "no global authorized_keys: nobody may connect unless a service lists them");
                KeySet::default()
            }
            Err(e) => return Err(e),
        };
        let mut services = HashMap::new();
        for (name, service) in &config.services {
            if let Some(file) = &service.authorized_keys {
                let keys = load_keys(&home.join(file))?;
                services.insert(name.clone(), KeySet::from_keys(&keys));
            }
        }
        let relays = config.all_relays().into_iter().map(|r| r.peer).collect();
        Ok(AccessLists { global, services, relays })
    }
}

impl AccessLists {
    /// A relay's lists: its members, and the network's other relays (`peers`), admitted for
    /// replication only.
    pub fn members(keys: &AuthorizedKeys, peers: impl IntoIterator<Item = PeerId>) -> Self {
        AccessLists {
            global: KeySet::from_keys(keys),
            relays: peers.into_iter().collect(),
            ..AccessLists::default()
        }
    }
}

/// Read (through the checked reader) and parse an authorized_keys file.
pub fn load_keys(path: &Path) -> Result<AuthorizedKeys, AccessError> {
    let text = files::read_checked_text(path, files::Kind::Keys)?;
    Ok(AuthorizedKeys::parse(&text, path)?)
}

impl AccessLists {
    /// The first moment after `now` at which some entry's access ends (`expires=`).
    pub fn next_expiry(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        std::iter::once(&self.global)
            .chain(self.services.values())
            .filter_map(|set| set.next_expiry(now))
            .min()
    }
}

/// Peers remembered as chosen (names we resolved). Past this, the oldest are forgotten: a
/// forgotten peer is chosen again the next time its name is resolved.
const CHOSEN_KEPT: usize = 4096;

/// The decisions, shared by the gate, the service host and the connector.
#[derive(Debug)]
pub struct Access {
    lists: RwLock<Arc<AccessLists>>,
    chosen: Mutex<Chosen>,
}

/// Peers we chose to reach, oldest first, bounded.
#[derive(Debug, Default)]
struct Chosen {
    set: HashSet<PeerId>,
    order: std::collections::VecDeque<PeerId>,
}

impl Chosen {
    fn insert(&mut self, peer: PeerId) {
        if self.set.insert(peer) {
            self.order.push_back(peer);
            while self.order.len() > CHOSEN_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl Access {
    pub fn new(lists: AccessLists) -> Self {
        Access { lists: RwLock::new(Arc::new(lists)), chosen: Mutex::new(Chosen::default()) }
    }

    /// The lists in force now.
    pub fn lists(&self) -> Arc<AccessLists> {
        self.lists.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The next moment (wall clock) at which some access in force ends.
    pub fn next_expiry(&self) -> Option<std::time::SystemTime> {
        self.lists().next_expiry(OffsetDateTime::now_utc()).map(std::time::SystemTime::from)
    }

    /// Put new lists in force (a reload); the caller then resets what they no longer allow.
    pub fn replace(&self, lists: AccessLists) {
        *self.lists.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(lists);
    }

    /// The handshake gate: is this peer in any list?
    pub fn may_connect(&self, peer: &PeerId) -> bool {
        let lists = self.lists();
        let now = OffsetDateTime::now_utc();
        lists.relays.contains(peer)
            || lists.global.allows(peer, now)
            || lists.services.values().any(|set| set.allows(peer, now))
    }

    /// A relay's member (its global list): may reserve, open circuits and use names. The
    /// network's other relays get a connection but are no members.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.lists().global.allows(peer, OffsetDateTime::now_utc())
    }

    /// The per-stream check: may this peer open `service`?
    pub fn may_use(&self, service: &ServiceName, peer: &PeerId) -> bool {
        let lists = self.lists();
        let now = OffsetDateTime::now_utc();
        match lists.services.get(service) {
            Some(own) => own.allows(peer, now),
            None => lists.global.allows(peer, now),
        }
    }

    /// Record that we resolved a name to this peer, so dialing it is our choice.
    pub fn choose(&self, peer: PeerId) {
        self.chosen.lock().unwrap_or_else(|e| e.into_inner()).insert(peer);
    }

    /// Did we resolve a name to this peer (and so chose to reach it)?
    pub fn chose(&self, peer: &PeerId) -> bool {
        self.chosen.lock().unwrap_or_else(|e| e.into_inner()).set.contains(peer)
    }

    /// May we dial this peer? `connected` says whether a connection to it already exists.
    pub fn may_dial(&self, peer: &PeerId, connected: bool) -> bool {
        self.chose(peer)
            || self.lists().relays.contains(peer)
            || (connected && self.may_connect(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn set(text: &str) -> KeySet {
        KeySet::from_keys(&AuthorizedKeys::parse(text, Path::new("k")).unwrap())
    }

    #[test]
    fn a_service_with_its_own_file_ignores_the_global_list() {
        let (web_only, everyone) = (PeerId::random(), PeerId::random());
        let web: ServiceName = "web".parse().unwrap();
        let ssh: ServiceName = "ssh".parse().unwrap();
        let lists = AccessLists {
            global: set(&format!("{everyone}\n")),
            services: HashMap::from([(web.clone(), set(&format!("{web_only}\n")))]),
            relays: HashSet::new(),
        };
        let access = Access::new(lists);
        assert!(access.may_connect(&web_only) && access.may_connect(&everyone));
        assert!(access.may_use(&web, &web_only) && !access.may_use(&web, &everyone));
        assert!(access.may_use(&ssh, &everyone) && !access.may_use(&ssh, &web_only));
        assert!(!access.may_connect(&PeerId::random()));
    }

    #[test]
    fn expired_entries_allow_nothing() {
        let peer = PeerId::random();
        let access = Access::new(AccessLists {
            global: set(&format!("{peer} expires=2001-01-01\n")),
            ..AccessLists::default()
        });
        assert!(!access.may_connect(&peer));
    }

    #[test]
    fn we_dial_only_peers_we_chose_or_allowed_connected_ones() {
        let (chosen, allowed, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let access =
            Access::new(AccessLists { global: set(&format!("{allowed}\n")), ..Default::default() });
        access.choose(chosen);
        assert!(access.may_dial(&chosen, false));
        assert!(!access.may_dial(&allowed, false) && access.may_dial(&allowed, true));
        assert!(!access.may_dial(&stranger, true));
    }

    #[test]
    fn the_chosen_set_is_bounded() {
        let access = Access::new(AccessLists::default());
        let first = PeerId::random();
        access.choose(first);
        for _ in 0..CHOSEN_KEPT {
            access.choose(PeerId::random());
        }
        let chosen = access.chosen.lock().unwrap();
        assert_eq!((chosen.set.len(), chosen.order.len()), (CHOSEN_KEPT, CHOSEN_KEPT));
        assert!(!chosen.set.contains(&first), "the oldest is forgotten first");
    }

    #[test]
    fn the_next_expiry_is_the_earliest_future_one() {
        use time::macros::datetime;
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let lists = AccessLists {
            global: set(&format!("{a} expires=2030-01-31\n{b}\n")),
            services: HashMap::from([(
                "web".parse().unwrap(),
                set(&format!("{c} expires=2030-01-01T12:00:00Z\n")),
            )]),
            relays: HashSet::new(),
        };
        let now = datetime!(2029-06-01 00:00 UTC);
        assert_eq!(lists.next_expiry(now), Some(datetime!(2030-01-01 12:00 UTC)));
        let later = datetime!(2030-01-02 00:00 UTC);
        assert_eq!(lists.next_expiry(later), Some(datetime!(2030-02-01 00:00 UTC)));
        assert_eq!(lists.next_expiry(datetime!(2031-01-01 00:00 UTC)), None);
    }
}
