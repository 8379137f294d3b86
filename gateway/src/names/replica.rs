//! Replication of a network's name records among its relays, on libp2p Kademlia.
//!
//! Only relays run it: under a private protocol name per network (`/peerup/names-kad/<registrar>/1.0.0`,
//! never the public DHT's), in server mode, with a routing table filled only from
//! `relay.registry.peers` (manual inserts), no provider records. The registrar puts every
//! record it issues to its listed peers, and every `relay.registry.republish` each relay puts
//! what it holds to them (`put_record_to`: fixed peers, no iterative lookups, so a relay dials
//! only the relays it lists, at their configured addresses); that heals a relay that was down
//! or is new. Every record a relay receives is validated before it
//! is stored (kad's "stored" reply to the sender means nothing: inserts are filtered here):
//! signed by the registrar, under the key derived from the registrar and its host, not expired,
//! and not older than what the relay holds. What a relay holds is kept in memory (kad's store is
//! synchronous) and written behind, off the swarm's task, to `names_replica.json`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, BucketInserts, Mode, RecordKey, StoreInserts};
use libp2p::{PeerId, StreamProtocol};
use tracing::{debug, warn};

use super::protocol::{decode_bytes, encode_bytes};
use super::record::{CLOCK_SKEW_SECS, Record, unix_now};
use super::store::MAX_NAMES;
use crate::files::{self, Kind};

/// The file where a relay keeps the records it holds (the registrar keeps names.json too).
pub const REPLICA_FILE: &str = "names_replica.json";

/// A record's largest size in the store (a signed record is a few hundred bytes).
const MAX_VALUE: usize = 4096;

/// The Kademlia protocol of the network whose registrar is `registrar`.
pub fn protocol(registrar: &PeerId) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/peerup/names-kad/{registrar}/1.0.0"))
        .unwrap_or_else(|_| StreamProtocol::new("/peerup/names-kad/1.0.0"))
}

/// The key of `host`'s record in the network of `registrar`.
pub fn record_key(registrar: &PeerId, host: &str) -> RecordKey {
    RecordKey::new(&format!("/peerup/name/{registrar}/{host}"))
}

/// Kademlia for the relays of one network: private protocol, server mode, manual routing
/// table, no provider records, no iterative queries of its own.
pub fn behaviour(local: PeerId, registrar: &PeerId) -> kad::Behaviour<MemoryStore> {
    let mut config = kad::Config::new(protocol(registrar));
    config
        .set_kbucket_inserts(BucketInserts::Manual)
        .set_record_filtering(StoreInserts::FilterBoth)
        // kad's own jobs re-put every record through an iterative lookup, which dials whatever
        // addresses the answering peers hand out: the relay puts to its listed peers itself
        // (`put_record_to`, fixed peers, no lookups) every `republish` instead.
        .set_replication_interval(None)
        .set_publication_interval(None)
        // Only for records put without an expiry (ours always carry the record's own); a year
        // keeps `Instant` arithmetic far from any overflow.
        .set_record_ttl(Some(Duration::from_secs(365 * 24 * 3600)))
        .set_provider_publication_interval(None)
        .set_provider_record_ttl(None)
        .set_periodic_bootstrap_interval(None)
        .set_max_packet_size(16 * 1024)
        .set_replication_factor(NonZeroUsize::new(20).unwrap_or(NonZeroUsize::MIN));
    let store_config = MemoryStoreConfig {
        max_records: MAX_NAMES,
        max_value_bytes: MAX_VALUE,
        max_providers_per_key: 0,
        max_provided_keys: 0,
    };
    let store = MemoryStore::with_config(local, store_config);
    let mut kad = kad::Behaviour::with_config(local, store, config);
    kad.set_mode(Some(Mode::Server));
    kad
}

/// Why a replicated record is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a name record of this network: {0}")]
    Invalid(String),
    #[error("stored under {0:?}, not under its host's key")]
    WrongKey(String),
    #[error("serial {offered} is older than the {held} held")]
    Older { offered: u64, held: u64 },
    #[error("already held")]
    Same,
}

/// Check a record offered for storage against the network's registrar and what is held.
pub fn validate(
    offered: &kad::Record,
    registrar: &PeerId,
    held: Option<&kad::Record>,
    now: u64,
) -> Result<Record, Refused> {
    let (record, _) = Record::open(&offered.value).map_err(|e| Refused::Invalid(e.to_string()))?;
    let record = Record::verify(&offered.value, registrar, &record.host, now)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    if offered.key != record_key(registrar, &record.host) {
        return Err(Refused::WrongKey(String::from_utf8_lossy(offered.key.as_ref()).into_owned()));
    }
    if let Some(held) = held.and_then(|h| Record::open(&h.value).ok()).map(|(r, _)| r) {
        if held.serial > record.serial {
            return Err(Refused::Older { offered: record.serial, held: held.serial });
        }
        if held.serial == record.serial {
            return Err(Refused::Same);
        }
    }
    Ok(record)
}

/// A record as kad stores it: keyed by host, expiring with the record (plus the skew).
pub fn kad_record(
    registrar: &PeerId,
    record: &Record,
    signed: Vec<u8>,
    publisher: Option<PeerId>,
) -> kad::Record {
    let left = record.expires.saturating_add(CLOCK_SKEW_SECS).saturating_sub(unix_now());
    kad::Record {
        key: record_key(registrar, &record.host),
        value: signed,
        publisher,
        expires: Some(Instant::now() + Duration::from_secs(left)),
    }
}

/// The signed record a relay holds for `host`, if it is still valid.
pub fn held(store: &mut MemoryStore, registrar: &PeerId, host: &str) -> Option<Vec<u8>> {
    let record = store.get(&record_key(registrar, host))?;
    Record::verify(&record.value, registrar, host, unix_now()).ok()?;
    Some(record.value.clone())
}

/// Writes what a relay holds to its home, behind the swarm's task: the task updates a shared
/// map (cheap) and nudges the writer, which writes the whole map (temp file, fsync, rename).
#[derive(Debug, Clone)]
pub struct WriteBehind {
    held: Arc<Mutex<BTreeMap<String, String>>>,
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl WriteBehind {
    /// Start the writer for `path`, holding `initial` (host → signed record).
    pub fn start(
        path: PathBuf,
        initial: BTreeMap<String, Vec<u8>>,
    ) -> (WriteBehind, std::thread::JoinHandle<()>) {
        let held: BTreeMap<String, String> =
            initial.into_iter().map(|(host, bytes)| (host, encode_bytes(&bytes))).collect();
        let held = Arc::new(Mutex::new(held));
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        let shared = held.clone();
        let writer = std::thread::spawn(move || {
            // Ends when every WriteBehind is dropped (the relay stopped).
            while nudged.recv().is_ok() {
                let snapshot = {
                    let mut held = shared.lock().unwrap_or_else(|e| e.into_inner());
                    // Records past their life are not worth keeping: the map stays bounded by
                    // the names alive.
                    let now = unix_now();
                    held.retain(|_, text| {
                        decode_bytes(text)
                            .and_then(|b| Record::open(&b).ok())
                            .is_some_and(|(r, _)| r.expires.saturating_add(CLOCK_SKEW_SECS) >= now)
                    });
                    held.clone()
                };
                match serde_json::to_vec_pretty(&snapshot) {
                    Ok(bytes) => {
                        if let Err(error) = files::write_atomic(&path, &bytes, 0o600) {
                            warn!(%error, "cannot write the names this relay holds");
                        }
                    }
                    Err(error) => warn!(%error, "cannot encode the names this relay holds"),
                }
            }
        });
        (WriteBehind { held, nudge }, writer)
    }

    /// Remember `host`'s record and have it written soon.
    pub fn put(&self, host: &str, signed: &[u8]) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), encode_bytes(signed));
        // Full: a write is already due, and it will take this change too.
        let _ = self.nudge.try_send(());
    }

    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The records a relay held before it stopped, each validated again (expired or foreign ones
/// are dropped). A missing file is none; an unreadable one is an error.
pub fn load(
    path: &Path,
    registrar: &PeerId,
) -> Result<BTreeMap<String, Vec<u8>>, files::FileError> {
    let bytes = match files::read_checked(path, Kind::State) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let saved: BTreeMap<String, String> = match serde_json::from_slice(&bytes) {
        Ok(saved) => saved,
        Err(error) => {
            // Only a copy: the network republishes what it holds.
            warn!(%error, path = %path.display(), "the names this relay held are unreadable: starting empty");
            return Ok(BTreeMap::new());
        }
    };
    let now = unix_now();
    let mut held = BTreeMap::new();
    for (host, text) in saved {
        let Some(signed) = decode_bytes(&text) else { continue };
        match Record::verify(&signed, registrar, &host, now) {
            Ok(_) => {
                held.insert(host, signed);
            }
            Err(why) => debug!(host, %why, "a held record is no longer valid: dropped"),
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn signed(registrar: &Keypair, host: &str, serial: u64, expires: u64) -> (Record, Vec<u8>) {
        let record = Record {
            registrar: registrar.public().to_peer_id().to_base58(),
            host: host.into(),
            owner: Some(PeerId::random().to_base58()),
            serial,
            issued: unix_now() - 10,
            expires,
            why: None,
        };
        let bytes = record.sign(registrar);
        (record, bytes)
    }

    #[test]
    fn only_the_registrars_newer_records_under_their_own_key_are_stored() {
        let registrar = Keypair::generate_ed25519();
        let id = registrar.public().to_peer_id();
        let now = unix_now();
        let (record, bytes) = signed(&registrar, "home", 10, now + 100);
        let good = kad_record(&id, &record, bytes, None);
        assert_eq!(good.key, record_key(&id, "home"));
        assert!(validate(&good, &id, None, now).is_ok());
        assert_eq!(validate(&good, &id, Some(&good), now), Err(Refused::Same));
        let (newer, newer_bytes) = signed(&registrar, "home", 11, now + 100);
        let newer = kad_record(&id, &newer, newer_bytes, None);
        assert!(matches!(validate(&good, &id, Some(&newer), now), Err(Refused::Older { .. })));
        // Forged, expired, or filed under another host's key.
        let (forged, forged_bytes) = signed(&Keypair::generate_ed25519(), "home", 99, now + 100);
        let mut forged = kad_record(&id, &forged, forged_bytes, None);
        forged.key = record_key(&id, "home");
        assert!(matches!(validate(&forged, &id, None, now), Err(Refused::Invalid(_))));
        let (_, expired) = signed(&registrar, "home", 12, now - CLOCK_SKEW_SECS - 1);
        let expired = kad::Record::new(record_key(&id, "home"), expired);
        assert!(matches!(validate(&expired, &id, None, now), Err(Refused::Invalid(_))));
        let mut elsewhere = good.clone();
        elsewhere.key = record_key(&id, "nas");
        assert!(matches!(validate(&elsewhere, &id, None, now), Err(Refused::WrongKey(_))));
    }

    #[test]
    fn held_records_are_written_behind_and_read_back_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REPLICA_FILE);
        let registrar = Keypair::generate_ed25519();
        let id = registrar.public().to_peer_id();
        let (_, bytes) = signed(&registrar, "home", 1, unix_now() + 100);
        let (_, stale) = signed(&registrar, "old", 1, unix_now() - CLOCK_SKEW_SECS - 100);
        let (writer, thread) = WriteBehind::start(path.clone(), BTreeMap::new());
        writer.put("home", &bytes);
        writer.put("old", &stale);
        drop(writer);
        thread.join().unwrap();
        let held = load(&path, &id).unwrap();
        assert_eq!(held.keys().collect::<Vec<_>>(), vec!["home"], "the expired one is dropped");
        assert!(load(&path, &PeerId::random()).unwrap().is_empty(), "another network's: none");
    }
}
