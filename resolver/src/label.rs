//! Peer IDs as DNS labels.
//!
//! A base58 peer ID (`12D3KooW…`) is case-sensitive, and DNS and ssh's `%h` lowercase names. The
//! DNS-safe form is the peer ID as a CIDv1 with the libp2p-key codec, in lowercase base36
//! (multibase prefix `k`): 62 characters for an Ed25519 key, inside DNS's 63-byte label limit.

use libp2p_identity::PeerId;
use multibase::Base;

/// CID version 1, as an unsigned varint.
const CID_V1: u8 = 0x01;
/// The multicodec `libp2p-key` (0x72), as an unsigned varint.
const LIBP2P_KEY: u8 = 0x72;

/// Why a string is not a peer ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerLabelError {
    #[error("not a peer ID in base58 (12D3KooW…) or base36 (k51…)")]
    Malformed,
    #[error("a CID, but not of a libp2p key")]
    NotALibp2pKey,
}

/// The base36 DNS label of a peer ID, e.g. `k51qzi5uqu5d…`.
pub fn peer_label(peer: &PeerId) -> String {
    let mut bytes = Vec::with_capacity(2 + 38);
    bytes.extend_from_slice(&[CID_V1, LIBP2P_KEY]);
    bytes.extend_from_slice(&peer.to_bytes());
    multibase::encode(Base::Base36Lower, bytes)
}

/// Read a peer ID written as a base36 label (any case) or in base58 (exact case).
pub fn parse_peer(text: &str) -> Result<PeerId, PeerLabelError> {
    if text.len() > 1 && text.as_bytes()[0].eq_ignore_ascii_case(&b'k') {
        let lower = text.to_ascii_lowercase();
        let (base, bytes) = multibase::decode(&lower).map_err(|_| PeerLabelError::Malformed)?;
        if base != Base::Base36Lower {
            return Err(PeerLabelError::Malformed);
        }
        return match bytes.as_slice() {
            [CID_V1, LIBP2P_KEY, multihash @ ..] => {
                PeerId::from_bytes(multihash).map_err(|_| PeerLabelError::Malformed)
            }
            [CID_V1, ..] => Err(PeerLabelError::NotALibp2pKey),
            _ => Err(PeerLabelError::Malformed),
        };
    }
    text.parse::<PeerId>().map_err(|_| PeerLabelError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fixed vector: the peer ID of the Ed25519 key with secret bytes [1; 32].
    fn fixed_peer() -> PeerId {
        let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes([1u8; 32]).unwrap();
        let keypair = libp2p_identity::ed25519::Keypair::from(secret);
        PeerId::from_public_key(&libp2p_identity::PublicKey::from(keypair.public()))
    }

    #[test]
    fn ed25519_label_is_62_lowercase_chars_and_round_trips() {
        let peer = fixed_peer();
        let label = peer_label(&peer);
        assert_eq!(label.len(), 62, "{label}");
        assert!(label.starts_with("k51qzi5uqu5d"), "{label}");
        assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(parse_peer(&label), Ok(peer));
        assert_eq!(parse_peer(&label.to_ascii_uppercase()), Ok(peer), "DNS may change case");
    }

    #[test]
    fn base58_is_accepted_verbatim_but_not_lowercased() {
        let peer = fixed_peer();
        let b58 = peer.to_base58();
        assert_eq!(parse_peer(&b58), Ok(peer));
        assert!(parse_peer(&b58.to_ascii_lowercase()).is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        for text in ["", "k", "kkkk", "home", "12D3KooW", "k51qzi5uqu5d!!", "bafy"] {
            assert!(parse_peer(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_cid_of_another_codec_is_not_a_peer() {
        // CIDv1, codec raw (0x55), identity multihash of 2 bytes.
        let text = multibase::encode(Base::Base36Lower, [0x01, 0x55, 0x00, 0x02, 0xab, 0xcd]);
        assert_eq!(parse_peer(&text), Err(PeerLabelError::NotALibp2pKey));
    }
}
