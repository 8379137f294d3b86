//! The registrar's decisions and its store (`names.json` in the relay's home).
//!
//! Every decision is written to disk (a new file, fsynced, renamed over the old one) before it
//! is answered, so a `kill -9` loses nothing a member was told. Decisions:
//! - a name goes to the first key that claims it, unless `relay.registry.names` reserves it for
//!   another key; the holder keeps it while its record lives and for the grace period after;
//! - renewals by the holder issue a new record (a higher serial, a later expiry);
//! - a release (by the holder, or by the operator) issues a tombstone and frees the name;
//! - a record found expired at a lookup becomes a tombstone (`lapsed`); the name stays the
//!   holder's until the grace period ends;
//! - a reservation for a key that does not hold the name rebinds it: a record for that key.
//!
//! Serials are microseconds since the Unix epoch, or one more than the last issued: they never
//! go backwards, even across a restore of an older file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use peerup_resolver::{Label, parse_peer};
use serde::{Deserialize, Serialize};

use super::protocol::Refusal;
use super::record::{Action, CLOCK_SKEW_SECS, Claim, Record, shaped_like_a_peer, unix_micros};
use crate::files::{self, FileError, Kind};

/// The store's file in the relay's home.
pub const STORE_FILE: &str = "names.json";
/// Names held at most (the file stays well below the state-file size limit).
pub const MAX_NAMES: usize = 10_000;

/// The registrar's rules, from `relay.registry`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a record lives (members renew at half of it).
    pub lifetime_secs: u64,
    /// How long after its record expired a name stays its holder's.
    pub grace_secs: u64,
    /// Names one key may hold.
    pub max_per_key: usize,
    /// Names the operator assigned to keys.
    pub reserved: BTreeMap<String, PeerId>,
}

impl Policy {
    /// The rules `relay.registry` sets.
    pub fn of(settings: &crate::config::Registry) -> Policy {
        Policy {
            lifetime_secs: settings.lifetime.0.as_secs(),
            grace_secs: settings.grace.0.as_secs(),
            max_per_key: settings.max_names_per_key,
            reserved: reserved_names(&settings.names),
        }
    }
}

/// What the store keeps for one name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The latest record, and its signed bytes as issued (base64).
    record: Record,
    signed: String,
    /// The key that holds the name (none after a release) and until when (Unix seconds).
    holder: Option<String>,
    held_until: u64,
    /// The claim that the record answered, if a member's (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
    /// The key that released the name itself: the tombstone counts against its cap while it
    /// lives, so releasing and registering again cannot fill the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    released_by: Option<String>,
    /// The key the operator released the name from: it may not take it again until
    /// `barred_until` (the grace period), so freeing a squatted name sticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    barred: Option<String>,
    #[serde(default)]
    barred_until: u64,
}

impl Entry {
    /// A tombstone that has expired, whose name nobody holds or is barred from: every record
    /// issued for it has expired too, so there is nothing left to replay and nothing to keep.
    fn forgettable(&self, now: u64) -> bool {
        self.record.owner.is_none()
            && now > self.record.expires
            && (self.holder.is_none() || now > self.held_until)
            && (self.barred.is_none() || now > self.barred_until)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    last_serial: u64,
    names: BTreeMap<String, Entry>,
}

/// One line of `peerup relay names list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub host: String,
    pub owner: Option<String>,
    pub holder: Option<String>,
    pub serial: u64,
    pub expires: u64,
    pub state: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: not a names store ({message}); move it aside to start an empty one", path = path.display())]
    Malformed { path: PathBuf, message: String },
}

/// A refusal as the protocol carries it.
pub type Refused = (Refusal, String);

/// The registrar: its key, rules and decisions.
#[derive(Debug)]
pub struct Registry {
    key: Keypair,
    id: PeerId,
    path: PathBuf,
    saved: Saved,
    policy: Policy,
    /// Records issued since the last [`Registry::take_issued`]: to be put to the other relays.
    issued: Vec<(String, Vec<u8>)>,
}

impl Registry {
    /// Open the store at `path` (a missing file is an empty store; a malformed one is an
    /// error, never silently replaced: it holds who owns what).
    pub fn open(path: &Path, key: Keypair, policy: Policy) -> Result<Registry, StoreError> {
        let saved = match files::read_checked(path, Kind::State) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.is_not_found() => Saved::default(),
            Err(e) => return Err(e.into()),
        };
        let id = key.public().to_peer_id();
        Ok(Registry { key, id, path: path.to_owned(), saved, policy, issued: Vec::new() })
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The records issued since the last call (host, signed bytes).
    pub fn take_issued(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.issued)
    }

    /// Every record that has not expired (tombstones too: they must replace older records
    /// elsewhere), as host and signed bytes.
    pub fn live_records(&self, now: u64) -> Vec<(String, Vec<u8>)> {
        self.saved
            .names
            .iter()
            .filter(|(_, e)| now <= e.record.expires)
            .filter_map(|(host, e)| Some((host.clone(), super::protocol::decode_bytes(&e.signed)?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.saved.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.saved.names.is_empty()
    }

    /// A member's claim: register (or renew) or release a name for the key that sent it.
    pub fn claim(&mut self, bytes: &[u8], from: PeerId, now: u64) -> Result<Vec<u8>, Refused> {
        let bad = |why: String| (Refusal::BadClaim, why);
        let (claim, signer) = Claim::open(bytes).map_err(|e| bad(format!("the claim: {e}")))?;
        if signer != from {
            return Err(bad(format!("the claim is signed by {signer}, not by the sender")));
        }
        if claim.registrar != self.id.to_base58() {
            return Err(bad(format!("the claim is for registrar {}", claim.registrar)));
        }
        if claim.issued.abs_diff(now) > CLOCK_SKEW_SECS {
            return Err(bad(format!(
                "the claim's time ({}) is more than {CLOCK_SKEW_SECS} s from the registrar's ({now}): check the clock",
                claim.issued
            )));
        }
        let host = host_label(&claim.host)?;
        let claim_text = super::protocol::encode_bytes(bytes);
        match claim.action {
            Action::Register => self.register(&host, signer, claim_text, now),
            Action::Release => self.release_by(&host, signer, now),
        }
    }

    fn register(
        &mut self,
        host: &str,
        owner: PeerId,
        claim: String,
        now: u64,
    ) -> Result<Vec<u8>, Refused> {
        let owner_text = owner.to_base58();
        if let Some(reserved) = self.policy.reserved.get(host)
            && *reserved != owner
        {
            return Err((Refusal::Taken, format!("{host} is reserved for another key")));
        }
        if let Some(entry) = self.saved.names.get(host)
            && let Some(holder) = &entry.holder
            && *holder != owner_text
            && now <= entry.held_until
        {
            return Err((Refusal::Taken, format!("{host} is held by another key")));
        }
        if let Some(entry) = self.saved.names.get(host)
            && entry.barred.as_deref() == Some(owner_text.as_str())
            && now <= entry.barred_until
        {
            let days = entry.barred_until.saturating_sub(now).div_ceil(86_400);
            return Err((
                Refusal::Taken,
                format!(
                    "{host} was released from this key by the registrar's operator, and this key may not take it again for {days} more day(s)"
                ),
            ));
        }
        let mine = |e: &Entry| {
            (e.holder.as_deref() == Some(owner_text.as_str()) && now <= e.held_until)
                || (e.released_by.as_deref() == Some(owner_text.as_str())
                    && now <= e.record.expires)
        };
        let held =
            self.saved.names.iter().filter(|(name, e)| name.as_str() != host && mine(e)).count();
        if held >= self.policy.max_per_key {
            return Err((
                Refusal::TooMany,
                format!(
                    "this key already holds {held} names, counting those it released in the last {} s (relay.registry.max_names_per_key)",
                    self.policy.lifetime_secs
                ),
            ));
        }
        self.issue(host, Some(owner), None, Some(claim), now)
    }

    fn release_by(&mut self, host: &str, from: PeerId, now: u64) -> Result<Vec<u8>, Refused> {
        let holds = self.saved.names.get(host).and_then(|e| e.holder.clone());
        if holds.as_deref() != Some(from.to_base58().as_str()) {
            return Err((Refusal::Taken, format!("{host} is not held by this key")));
        }
        let (mut next, signed) = self.prepare(host, None, Some("released"), None, now)?;
        if let Some(entry) = next.names.get_mut(host) {
            entry.released_by = Some(from.to_base58());
        }
        self.commit(next, now)?;
        self.issued.push((host.to_owned(), signed.clone()));
        Ok(signed)
    }

    /// The operator frees a name (`peerup relay names release HOST`): a tombstone, and the key
    /// that held it may not take it again for the grace period.
    pub fn release(&mut self, host: &str, now: u64) -> Result<Record, Refused> {
        let Some(entry) = self.saved.names.get(host) else {
            return Err((Refusal::BadHost, format!("no name {host:?} in the registry")));
        };
        if self.policy.reserved.contains_key(host) {
            return Err((
                Refusal::BadHost,
                format!("{host} is assigned in relay.registry.names: edit or remove it there"),
            ));
        }
        let barred = entry.holder.clone().filter(|_| now <= entry.held_until);
        let (mut next, signed) = self.prepare(host, None, Some("released"), None, now)?;
        if let Some(entry) = next.names.get_mut(host) {
            entry.barred_until = now.saturating_add(self.policy.grace_secs);
            entry.barred = barred;
        }
        self.commit(next, now)?;
        self.issued.push((host.to_owned(), signed));
        self.record(host).ok_or((Refusal::Unavailable, "not stored".into()))
    }

    /// The record to answer a lookup with: a lapsed record becomes a tombstone, a reserved
    /// name is issued to its key, an expired tombstone of a free name is forgotten.
    pub fn lookup(&mut self, host: &str, now: u64) -> Result<Option<Vec<u8>>, Refused> {
        let Ok(host) = host_label(host) else { return Ok(None) };
        if let Some(key) = self.policy.reserved.get(&host).copied()
            && !self.live_for(&host, &key, now)
        {
            return self.issue(&host, Some(key), None, None, now).map(Some);
        }
        let Some(entry) = self.saved.names.get(&host) else { return Ok(None) };
        if now <= entry.record.expires {
            return Ok(super::protocol::decode_bytes(&entry.signed));
        }
        if entry.record.owner.is_some() {
            return self.issue(&host, None, Some("lapsed"), None, now).map(Some);
        }
        if !entry.forgettable(now) {
            let why = entry.record.why.clone().unwrap_or_else(|| "lapsed".into());
            return self.issue(&host, None, Some(&why), None, now).map(Some);
        }
        // Every record ever issued for it has expired: nothing to replay, nothing to keep.
        self.commit(self.saved.clone(), now)?;
        Ok(None)
    }

    /// Apply `relay.registry.names` (at start and after an edit): each reserved name that is not
    /// its key's gets a record for that key. Returns the names rebound.
    pub fn apply_reservations(
        &mut self,
        reserved: BTreeMap<String, PeerId>,
        now: u64,
    ) -> Result<Vec<String>, Refused> {
        self.policy.reserved = reserved;
        let due: Vec<(String, PeerId)> = self
            .policy
            .reserved
            .iter()
            .filter(|(host, key)| !self.live_for(host, key, now))
            .map(|(host, key)| (host.clone(), *key))
            .collect();
        for (host, key) in &due {
            self.issue(host, Some(*key), None, None, now)?;
        }
        Ok(due.into_iter().map(|(host, _)| host).collect())
    }

    fn live_for(&self, host: &str, key: &PeerId, now: u64) -> bool {
        self.saved.names.get(host).is_some_and(|e| {
            e.record.owner.as_deref() == Some(key.to_base58().as_str()) && now <= e.record.expires
        })
    }

    /// Every name, for the operator.
    pub fn list(&self, now: u64) -> Vec<Listed> {
        self.saved
            .names
            .iter()
            .map(|(host, e)| {
                let state = match (&e.record.owner, &e.record.why) {
                    _ if now > e.record.expires && e.record.owner.is_some() => "lapsed".to_owned(),
                    (Some(_), _) if self.policy.reserved.contains_key(host) => "reserved".into(),
                    (Some(_), _) => "registered".into(),
                    (None, Some(why)) => why.clone(),
                    (None, None) => "free".into(),
                };
                Listed {
                    host: host.clone(),
                    owner: e.record.owner.clone(),
                    holder: e.holder.clone().filter(|_| now <= e.held_until),
                    serial: e.record.serial,
                    expires: e.record.expires,
                    state,
                }
            })
            .collect()
    }

    /// The latest record for `host`.
    pub fn record(&self, host: &str) -> Option<Record> {
        self.saved.names.get(host).map(|e| e.record.clone())
    }

    /// Sign and store a new record for `host` (a tombstone when `owner` is `None`), written to
    /// disk before it is returned.
    fn issue(
        &mut self,
        host: &str,
        owner: Option<PeerId>,
        why: Option<&str>,
        claim: Option<String>,
        now: u64,
    ) -> Result<Vec<u8>, Refused> {
        let (next, signed) = self.prepare(host, owner, why, claim, now)?;
        self.commit(next, now)?;
        self.issued.push((host.to_owned(), signed.clone()));
        Ok(signed)
    }

    /// The state after a new record for `host`, and the record's signed bytes.
    fn prepare(
        &self,
        host: &str,
        owner: Option<PeerId>,
        why: Option<&str>,
        claim: Option<String>,
        now: u64,
    ) -> Result<(Saved, Vec<u8>), Refused> {
        let mut next = self.saved.clone();
        next.names.retain(|_, e| !e.forgettable(now));
        if !next.names.contains_key(host) && next.names.len() >= MAX_NAMES {
            return Err((
                Refusal::Unavailable,
                format!("the registry is full ({MAX_NAMES} names)"),
            ));
        }
        let Some(serial) = next.last_serial.checked_add(1).map(|s| s.max(unix_micros())) else {
            return Err((Refusal::Unavailable, "the registry's serials are exhausted".into()));
        };
        next.last_serial = serial;
        let record = Record {
            registrar: self.id.to_base58(),
            host: host.to_owned(),
            owner: owner.map(|o| o.to_base58()),
            serial,
            issued: now,
            expires: now.saturating_add(self.policy.lifetime_secs),
            why: why.map(str::to_owned),
        };
        let signed = record.sign(&self.key);
        let previous = next.names.get(host);
        let (holder, held_until) = match (owner, why) {
            (Some(owner), _) => {
                (Some(owner.to_base58()), record.expires.saturating_add(self.policy.grace_secs))
            }
            // A lapse keeps the holder; a release frees the name at once.
            (None, Some("released")) => (None, 0),
            (None, _) => previous.map_or((None, 0), |p| (p.holder.clone(), p.held_until)),
        };
        // A lapse keeps who released it and who is barred; a new owner starts afresh.
        let (released_by, barred, barred_until) = match (owner, previous) {
            (None, Some(p)) => (p.released_by.clone(), p.barred.clone(), p.barred_until),
            _ => (None, None, 0),
        };
        let entry = Entry {
            record,
            signed: super::protocol::encode_bytes(&signed),
            holder,
            held_until,
            claim,
            released_by,
            barred,
            barred_until,
        };
        next.names.insert(host.to_owned(), entry);
        Ok((next, signed))
    }

    /// Write `next` (without the tombstones there is no reason to keep) to disk, then make it
    /// the state; a failed write changes nothing.
    fn commit(&mut self, mut next: Saved, now: u64) -> Result<(), Refused> {
        next.names.retain(|_, e| !e.forgettable(now));
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| (Refusal::Unavailable, format!("encoding the store: {e}")))?;
        files::write_atomic(&self.path, &bytes, 0o600).map_err(|e| {
            tracing::warn!(error = %e, "the names store could not be written");
            (Refusal::Unavailable, "the registrar cannot store decisions now".to_owned())
        })?;
        self.saved = next;
        Ok(())
    }
}

/// A host label the registry gives out, lowercased.
fn host_label(text: &str) -> Result<String, Refused> {
    let label: Label = text.parse().map_err(|e| (Refusal::BadHost, format!("{e}")))?;
    if shaped_like_a_peer(label.as_str()) {
        return Err((
            Refusal::BadHost,
            format!("{text:?} reads as a peer ID or peer label, which name peers themselves"),
        ));
    }
    Ok(label.as_str().to_owned())
}

/// `relay.registry.names` as the store wants it.
pub fn reserved_names(
    names: &BTreeMap<crate::config::HostLabel, crate::config::PeerKey>,
) -> BTreeMap<String, PeerId> {
    names.iter().map(|(host, key)| (host.0.as_str().to_owned(), key.0)).collect()
}

/// Read a peer ID in either spelling (for the operator's commands).
pub fn peer_of(text: &str) -> Option<PeerId> {
    parse_peer(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: u64 = 1000;
    const GRACE: u64 = 500;

    fn policy() -> Policy {
        Policy { lifetime_secs: LIFE, grace_secs: GRACE, max_per_key: 2, reserved: BTreeMap::new() }
    }

    fn registry(dir: &Path) -> Registry {
        Registry::open(&dir.join(STORE_FILE), Keypair::generate_ed25519(), policy()).unwrap()
    }

    fn claim(
        member: &Keypair,
        registry: &Registry,
        host: &str,
        action: Action,
        now: u64,
    ) -> Vec<u8> {
        let host: Label = host.parse().unwrap();
        Claim::new(member, registry.id(), &host, action, now).sign(member)
    }

    fn register(
        r: &mut Registry,
        member: &Keypair,
        host: &str,
        now: u64,
    ) -> Result<Record, Refused> {
        let bytes = claim(member, r, host, Action::Register, now);
        let signed = r.claim(&bytes, member.public().to_peer_id(), now)?;
        Ok(Record::verify(&signed, &r.id(), host, now).unwrap())
    }

    #[test]
    fn first_key_wins_renewals_raise_the_serial_and_others_wait_out_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let first = register(&mut r, &a, "home", 100).unwrap();
        assert_eq!(first.owner_peer(), Some(a.public().to_peer_id()));
        assert_eq!(register(&mut r, &b, "home", 110).unwrap_err().0, Refusal::Taken);
        let renewed = register(&mut r, &a, "home", 600).unwrap();
        assert!(renewed.serial > first.serial && renewed.expires == 600 + LIFE);
        // Past the record's life the name lapses at a lookup, but stays A's for the grace.
        let lapsed = r.lookup("home", 600 + LIFE + 1).unwrap().unwrap();
        let lapsed = Record::verify(&lapsed, &r.id(), "home", 600 + LIFE + 1).unwrap();
        assert_eq!((lapsed.owner, lapsed.why.as_deref()), (None, Some("lapsed")));
        assert!(lapsed.serial > renewed.serial);
        let during_grace = 600 + LIFE + GRACE - 10;
        assert_eq!(register(&mut r, &b, "home", during_grace).unwrap_err().0, Refusal::Taken);
        let after = register(&mut r, &b, "home", 600 + LIFE + GRACE + 1).unwrap();
        assert_eq!(after.owner_peer(), Some(b.public().to_peer_id()));
    }

    #[test]
    fn a_release_is_a_tombstone_and_frees_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let held = register(&mut r, &a, "home", 100).unwrap();
        let not_b = claim(&b, &r, "home", Action::Release, 100);
        assert_eq!(r.claim(&not_b, b.public().to_peer_id(), 100).unwrap_err().0, Refusal::Taken);
        let release = claim(&a, &r, "home", Action::Release, 101);
        let tomb = r.claim(&release, a.public().to_peer_id(), 101).unwrap();
        let tomb = Record::verify(&tomb, &r.id(), "home", 101).unwrap();
        assert!(tomb.owner.is_none() && tomb.serial > held.serial);
        assert!(register(&mut r, &b, "home", 102).is_ok());
    }

    #[test]
    fn claims_are_checked_and_keys_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let a = Keypair::generate_ed25519();
        let peer_label = peerup_resolver::peer_label(&PeerId::random());
        assert_eq!(register(&mut r, &a, &peer_label, 100).unwrap_err().0, Refusal::BadHost);
        // Sent by someone else than the signer, stale, or for another registrar.
        let bytes = claim(&a, &r, "home", Action::Register, 100);
        assert_eq!(r.claim(&bytes, PeerId::random(), 100).unwrap_err().0, Refusal::BadClaim);
        let stale = claim(&a, &r, "home", Action::Register, 100);
        let late = 100 + CLOCK_SKEW_SECS + 1;
        assert_eq!(
            r.claim(&stale, a.public().to_peer_id(), late).unwrap_err().0,
            Refusal::BadClaim
        );
        let elsewhere =
            Claim::new(&a, PeerId::random(), &"home".parse().unwrap(), Action::Register, 100);
        let refused = r.claim(&elsewhere.sign(&a), a.public().to_peer_id(), 100);
        assert_eq!(refused.unwrap_err().0, Refusal::BadClaim);
        register(&mut r, &a, "one", 100).unwrap();
        register(&mut r, &a, "two", 100).unwrap();
        assert_eq!(register(&mut r, &a, "three", 100).unwrap_err().0, Refusal::TooMany);
        assert!(register(&mut r, &a, "two", 200).is_ok(), "renewing is not a new name");
    }

    #[test]
    fn decisions_survive_a_reopen_and_serials_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::generate_ed25519();
        let policy = policy();
        let path = dir.path().join(STORE_FILE);
        let mut r = Registry::open(&path, key.clone(), policy.clone()).unwrap();
        let a = Keypair::generate_ed25519();
        let first = register(&mut r, &a, "home", 100).unwrap();
        drop(r);
        let mut r = Registry::open(&path, key, policy.clone()).unwrap();
        assert_eq!(r.record("home").unwrap(), first);
        let b = Keypair::generate_ed25519();
        assert_eq!(register(&mut r, &b, "home", 101).unwrap_err().0, Refusal::Taken);
        let again = register(&mut r, &a, "home", 102).unwrap();
        assert!(again.serial > first.serial);
        std::fs::write(&path, b"{ not json").unwrap();
        let reopened = Registry::open(&path, Keypair::generate_ed25519(), policy);
        assert!(matches!(reopened, Err(StoreError::Malformed { .. })), "never silently emptied");
    }

    #[test]
    fn a_reservation_rebinds_the_name_to_its_key_with_a_higher_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let held = register(&mut r, &a, "home", 100).unwrap();
        let b_id = b.public().to_peer_id();
        let rebound = r.apply_reservations([("home".to_owned(), b_id)].into(), 110).unwrap();
        assert_eq!(rebound, vec!["home".to_owned()]);
        let now = r.record("home").unwrap();
        assert_eq!(now.owner_peer(), Some(b_id));
        assert!(now.serial > held.serial);
        assert_eq!(register(&mut r, &a, "home", 120).unwrap_err().0, Refusal::Taken);
        assert!(register(&mut r, &b, "home", 120).is_ok());
        assert!(r.apply_reservations([("home".to_owned(), b_id)].into(), 130).unwrap().is_empty());
    }

    #[test]
    fn releasing_and_registering_again_cannot_fill_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let a = Keypair::generate_ed25519();
        let me = a.public().to_peer_id();
        for (i, host) in ["one", "two"].iter().enumerate() {
            let now = 100 + i as u64;
            register(&mut r, &a, host, now).unwrap();
            let release = claim(&a, &r, host, Action::Release, now);
            r.claim(&release, me, now).unwrap();
        }
        // The two tombstones count against the cap (2) while they live...
        assert_eq!(register(&mut r, &a, "three", 110).unwrap_err().0, Refusal::TooMany);
        // ...and once they expired they are forgotten at the next decision.
        let later = 110 + LIFE + 1;
        register(&mut r, &a, "three", later).unwrap();
        assert_eq!(r.len(), 1, "expired tombstones of free names are not kept");
    }

    #[test]
    fn the_operators_release_frees_a_name_from_its_holder_for_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let (squatter, owner) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        register(&mut r, &squatter, "home", 100).unwrap();
        let tomb = r.release("home", 110).unwrap();
        assert!(tomb.owner.is_none());
        let again = register(&mut r, &squatter, "home", 120).unwrap_err();
        assert_eq!(again.0, Refusal::Taken, "{}", again.1);
        assert!(register(&mut r, &owner, "home", 130).is_ok());
        assert_eq!(r.release("nosuch", 140).unwrap_err().0, Refusal::BadHost);
        r.apply_reservations([("nas".to_owned(), owner.public().to_peer_id())].into(), 150)
            .unwrap();
        assert!(r.release("nas", 160).unwrap_err().1.contains("relay.registry.names"));
    }

    #[test]
    fn exhausted_serials_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        std::fs::write(&path, format!("{{\"last_serial\":{},\"names\":{{}}}}", u64::MAX)).unwrap();
        let mut r = Registry::open(&path, Keypair::generate_ed25519(), policy()).unwrap();
        let a = Keypair::generate_ed25519();
        assert_eq!(register(&mut r, &a, "home", 100).unwrap_err().0, Refusal::Unavailable);
    }

    #[test]
    fn a_store_that_is_a_dangling_symlink_is_refused_not_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        std::os::unix::fs::symlink(dir.path().join("gone/names.json"), &path).unwrap();
        let opened = Registry::open(&path, Keypair::generate_ed25519(), policy());
        let error = opened.unwrap_err().to_string();
        assert!(error.contains("symlink to nothing"), "{error}");
    }
}
