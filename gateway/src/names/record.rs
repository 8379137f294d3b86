//! Claims and records: what a member asks for and what the registrar signs.
//!
//! Both travel as libp2p signed envelopes (the key, a domain string mixed into the signature,
//! a payload type, the payload) whose payload is a JSON object. A member signs a [`Claim`]
//! (`HOST` → its own peer ID, or a release); the registrar answers with a [`Record`]
//! `{registrar, host, owner, serial, issued, expires}` signed with its key. A record without an
//! owner is a tombstone: the name was released, lapsed or rebound at that serial, so an older
//! record for it cannot be replayed. docs/protocol.md has the layouts and test vectors.

use libp2p::PeerId;
use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use peerup_resolver::{Label, parse_peer};
use serde::{Deserialize, Serialize};

/// The domain string and payload type of a record.
pub const RECORD_DOMAIN: &str = "peerup-name-record";
pub const RECORD_TYPE: &[u8] = b"/peerup/names/record/1";
/// The domain string and payload type of a claim.
pub const CLAIM_DOMAIN: &str = "peerup-name-claim";
pub const CLAIM_TYPE: &[u8] = b"/peerup/names/claim/1";

/// How far clocks may disagree: a record is accepted this long past its expiry, and one issued
/// this far in the future.
pub const CLOCK_SKEW_SECS: u64 = 600;

/// A signed name record, as the registrar issues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The registrar's peer ID (base58): the key that must have signed this record.
    pub registrar: String,
    /// The host label, lowercase.
    pub host: String,
    /// The peer the name points at (base58); `None` in a tombstone.
    pub owner: Option<String>,
    /// Time-based (microseconds since the Unix epoch, or one more than the last), never reused.
    pub serial: u64,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds; past it (and the clock skew) the record is not used.
    pub expires: u64,
    /// Why a tombstone was issued: `released`, `lapsed` or `rebound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What a claim asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Register,
    Release,
}

/// A member's signed request for a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub registrar: String,
    pub host: String,
    pub owner: String,
    pub action: Action,
    /// Unix seconds; a claim far from the registrar's clock is refused.
    pub issued: u64,
}

/// Why an envelope is not a usable record or claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a signed envelope of ours: {0}")]
    Malformed(String),
    #[error("signed by {0}, not by the network's registrar")]
    WrongSigner(PeerId),
    #[error("names registrar {0}, not the network's")]
    WrongRegistrar(String),
    #[error("is for host {0:?}, not the one asked for")]
    WrongHost(String),
    #[error("expired at {0} (Unix time)")]
    Expired(u64),
    #[error("issued in the future ({0}, Unix time)")]
    FromTheFuture(u64),
    #[error("claims owner {0}, but was signed by another key")]
    WrongOwner(String),
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Microseconds since the Unix epoch, now: the base of serials.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn seal<T: Serialize>(key: &Keypair, domain: &str, kind: &[u8], payload: &T) -> Vec<u8> {
    let payload = serde_json::to_vec(payload).unwrap_or_default();
    match SignedEnvelope::new(key, domain.to_owned(), kind.to_vec(), payload) {
        Ok(envelope) => envelope.into_protobuf_encoding(),
        // Signing with an Ed25519 key does not fail.
        Err(_) => Vec::new(),
    }
}

fn open<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    domain: &str,
    kind: &[u8],
) -> Result<(T, PeerId), Invalid> {
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes)
        .map_err(|e| Invalid::Malformed(e.to_string()))?;
    let (payload, key) = envelope
        .payload_and_signing_key(domain.to_owned(), kind)
        .map_err(|e| Invalid::Malformed(e.to_string()))?;
    let value = serde_json::from_slice(payload).map_err(|e| Invalid::Malformed(e.to_string()))?;
    Ok((value, key.to_peer_id()))
}

impl Record {
    /// Sign this record with the registrar's key: the bytes that travel and are stored.
    pub fn sign(&self, registrar: &Keypair) -> Vec<u8> {
        seal(registrar, RECORD_DOMAIN, RECORD_TYPE, self)
    }

    /// Read a signed record, returning it with the key that signed it (not yet checked against
    /// anything: see [`Record::verify`]).
    pub fn open(bytes: &[u8]) -> Result<(Record, PeerId), Invalid> {
        open(bytes, RECORD_DOMAIN, RECORD_TYPE)
    }

    /// Read a record and check it as a member must before using it: signed by `registrar`,
    /// naming it, for `host`, issued no later than `now` (plus skew) and not expired.
    pub fn verify(
        bytes: &[u8],
        registrar: &PeerId,
        host: &str,
        now: u64,
    ) -> Result<Record, Invalid> {
        let (record, signer) = Record::open(bytes)?;
        if signer != *registrar {
            return Err(Invalid::WrongSigner(signer));
        }
        if record.registrar != registrar.to_base58() {
            return Err(Invalid::WrongRegistrar(record.registrar));
        }
        if record.host != host {
            return Err(Invalid::WrongHost(record.host));
        }
        if record.issued > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(Invalid::FromTheFuture(record.issued));
        }
        if now > record.expires.saturating_add(CLOCK_SKEW_SECS) {
            return Err(Invalid::Expired(record.expires));
        }
        if let Some(owner) = &record.owner
            && parse_peer(owner).is_err()
        {
            return Err(Invalid::Malformed(format!("owner {owner:?} is not a peer ID")));
        }
        Ok(record)
    }

    /// A record as it travels in a message (multibase base64), verified as [`Record::verify`]
    /// does; the reason it is refused comes escaped (it may quote the sender's text).
    pub fn from_wire(
        text: &str,
        registrar: &PeerId,
        host: &str,
        now: u64,
    ) -> Result<Record, String> {
        let bytes =
            super::protocol::decode_bytes(text).ok_or_else(|| "is not base64".to_owned())?;
        Record::verify(&bytes, registrar, host, now)
            .map_err(|e| crate::logging::escaped(&e.to_string()))
    }

    /// The owner as a peer ID (`None` for a tombstone).
    pub fn owner_peer(&self) -> Option<PeerId> {
        self.owner.as_deref().and_then(|o| parse_peer(o).ok())
    }
}

impl Claim {
    pub fn new(key: &Keypair, registrar: PeerId, host: &Label, action: Action, now: u64) -> Claim {
        Claim {
            registrar: registrar.to_base58(),
            host: host.as_str().to_owned(),
            owner: key.public().to_peer_id().to_base58(),
            action,
            issued: now,
        }
    }

    pub fn sign(&self, key: &Keypair) -> Vec<u8> {
        seal(key, CLAIM_DOMAIN, CLAIM_TYPE, self)
    }

    /// Read a claim and check that the key that signed it is the owner it names.
    pub fn open(bytes: &[u8]) -> Result<(Claim, PeerId), Invalid> {
        let (claim, signer): (Claim, PeerId) = open(bytes, CLAIM_DOMAIN, CLAIM_TYPE)?;
        if parse_peer(&claim.owner).ok() != Some(signer) {
            return Err(Invalid::WrongOwner(claim.owner));
        }
        Ok((claim, signer))
    }
}

/// A host label a registry never gives out: one that reads as a peer ID or peer label, which
/// would shadow `PEERLABEL.NETWORK.p2p`.
pub fn shaped_like_a_peer(host: &str) -> bool {
    if parse_peer(host).is_ok() {
        return true;
    }
    let lower = host.to_ascii_lowercase();
    lower.len() >= 40 && ["k51", "12d3koo", "qm", "bafz"].iter().any(|p| lower.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(registrar: &Keypair, host: &str, owner: Option<PeerId>, serial: u64) -> Record {
        Record {
            registrar: registrar.public().to_peer_id().to_base58(),
            host: host.into(),
            owner: owner.map(|o| o.to_base58()),
            serial,
            issued: 1_000,
            expires: 2_000,
            why: None,
        }
    }

    #[test]
    fn a_member_accepts_only_the_registrars_record_for_the_host_asked_while_it_lives() {
        let registrar = Keypair::generate_ed25519();
        let id = registrar.public().to_peer_id();
        let owner = PeerId::random();
        let good = record(&registrar, "home", Some(owner), 7).sign(&registrar);
        let accepted = Record::verify(&good, &id, "home", 1_500).unwrap();
        assert_eq!(accepted.owner_peer(), Some(owner));

        let other = Keypair::generate_ed25519();
        let forged = record(&registrar, "home", Some(owner), 7).sign(&other);
        assert!(matches!(
            Record::verify(&forged, &id, "home", 1_500),
            Err(Invalid::WrongSigner(_))
        ));
        assert!(matches!(Record::verify(&good, &id, "nas", 1_500), Err(Invalid::WrongHost(_))));
        let late = 2_000 + CLOCK_SKEW_SECS + 1;
        assert_eq!(Record::verify(&good, &id, "home", late), Err(Invalid::Expired(2_000)));
        assert!(Record::verify(&good, &id, "home", 2_000 + CLOCK_SKEW_SECS).is_ok(), "skew");
        assert!(Record::verify(&good, &id, "home", 1_000 - CLOCK_SKEW_SECS).is_ok(), "skew");
        assert!(matches!(
            Record::verify(&good, &id, "home", 1_000 - CLOCK_SKEW_SECS - 1),
            Err(Invalid::FromTheFuture(_))
        ));
        // A claim signed the same way is not a record (another domain and payload type).
        let claim = Claim::new(&registrar, id, &"home".parse().unwrap(), Action::Register, 1_000);
        assert!(matches!(
            Record::verify(&claim.sign(&registrar), &id, "home", 1_000),
            Err(Invalid::Malformed(_))
        ));
        assert!(matches!(
            Record::verify(b"\x00garbage", &id, "home", 1_000),
            Err(Invalid::Malformed(_))
        ));
    }

    #[test]
    fn a_claim_names_the_key_that_signed_it() {
        let member = Keypair::generate_ed25519();
        let registrar = PeerId::random();
        let claim = Claim::new(&member, registrar, &"home".parse().unwrap(), Action::Register, 5);
        let (opened, signer) = Claim::open(&claim.sign(&member)).unwrap();
        assert_eq!((opened, signer), (claim.clone(), member.public().to_peer_id()));
        let thief = Keypair::generate_ed25519();
        assert!(matches!(Claim::open(&claim.sign(&thief)), Err(Invalid::WrongOwner(_))));
    }

    #[test]
    fn peer_shaped_labels_are_never_host_names() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        assert!(shaped_like_a_peer(&peerup_resolver::peer_label(&peer)));
        assert!(shaped_like_a_peer(&peer.to_base58()));
        assert!(shaped_like_a_peer(&peer.to_base58().to_ascii_lowercase()));
        assert!(shaped_like_a_peer(&format!("k51{}", "a".repeat(50))));
        for fine in ["home", "nas", "k51", "qmail", "build-server-01"] {
            assert!(!shaped_like_a_peer(fine), "{fine}");
        }
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    /// The keys of docs/protocol.md's vectors: Ed25519 secret keys of 32 bytes 0x01 and 0x02.
    pub(super) fn keys() -> (Keypair, Keypair) {
        let registrar = Keypair::ed25519_from_bytes([1u8; 32]).unwrap();
        let member = Keypair::ed25519_from_bytes([2u8; 32]).unwrap();
        (registrar, member)
    }

    pub(super) fn record(registrar: &Keypair, member: &Keypair) -> Record {
        Record {
            registrar: registrar.public().to_peer_id().to_base58(),
            host: "home".into(),
            owner: Some(member.public().to_peer_id().to_base58()),
            serial: 1_764_806_400_000_000,
            issued: 1_764_806_400,
            expires: 1_764_892_800,
            why: None,
        }
    }

    /// The signed envelopes of docs/protocol.md, byte for byte (Ed25519 signatures are
    /// deterministic).
    const RECORD_HEX: &str = "0a24080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c12162f7065657275702f6e616d65732f7265636f72642f311ad4017b22726567697374726172223a22313244334b6f6f574b3939566f56784e4537587a79427758457a573778684b37477076383572394633563366794b53554b504835222c22686f7374223a22686f6d65222c226f776e6572223a22313244334b6f6f574a576f61715a6844616f454673684637526831627059396f68696846687a6357366436394c72324e41537571222c2273657269616c223a313736343830363430303030303030302c22697373756564223a313736343830363430302c2265787069726573223a313736343839323830307d2a40350653b6c06e088a1e5d495871e55996a7a46f2d9d1dae1d0e654aeeea6475b9b86b4113f9552d89f343a9819193334282c1ad833ac0186bd4190916e6dbc000";
    const CLAIM_HEX: &str = "0a24080112208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b39412152f7065657275702f6e616d65732f636c61696d2f311ab9017b22726567697374726172223a22313244334b6f6f574b3939566f56784e4537587a79427758457a573778684b37477076383572394633563366794b53554b504835222c22686f7374223a22686f6d65222c226f776e6572223a22313244334b6f6f574a576f61715a6844616f454673684637526831627059396f68696846687a6357366436394c72324e41537571222c22616374696f6e223a227265676973746572222c22697373756564223a313736343830363430307d2a402b4dca38390fc20dd2681a823f9d8e64a8d3310d847b85717a064296acc719b211505f60c3e4185bb2adb82a3cfa84a593177f1e7fd8e850139312f9751c0305";

    #[test]
    fn the_documented_vectors_are_what_we_sign_and_verify() {
        let (registrar, member) = keys();
        let registrar_id = registrar.public().to_peer_id();
        assert_eq!(
            registrar_id.to_base58(),
            "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
        );
        let record = record(&registrar, &member);
        assert_eq!(hex(&record.sign(&registrar)), RECORD_HEX);
        let claim = Claim::new(
            &member,
            registrar_id,
            &"home".parse().unwrap(),
            Action::Register,
            1_764_806_400,
        );
        assert_eq!(hex(&claim.sign(&member)), CLAIM_HEX);
        let bytes = unhex(RECORD_HEX);
        assert_eq!(Record::verify(&bytes, &registrar_id, "home", 1_764_806_400).unwrap(), record);
        let (opened, signer) = Claim::open(&unhex(CLAIM_HEX)).unwrap();
        assert_eq!((opened, signer), (claim, member.public().to_peer_id()));
        // One bit flipped in the payload: the signature no longer holds.
        let mut bent = bytes.clone();
        bent[100] ^= 1;
        assert!(Record::verify(&bent, &registrar_id, "home", 1_764_806_400).is_err());
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    pub(super) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
