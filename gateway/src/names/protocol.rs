//! `/peerup/names/1.0.0`: request-response between a member and a network's relays.
//!
//! One request and one response per stream, each a JSON object (libp2p's JSON codec, sizes
//! capped at [`MAX_MESSAGE`]). Signed envelopes travel as multibase base64 (`m…`) strings.

use std::time::Duration;

use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport};
use serde::{Deserialize, Serialize};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerup/names/1.0.0");

/// The largest request or response read; a record or claim is a few hundred bytes.
pub const MAX_MESSAGE: u64 = 8 * 1024;

/// How long a request may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a member asks a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NamesRequest {
    /// Register or renew a name (a signed claim with action `register`): registrar only.
    Register { claim: String },
    /// Give a name up (a signed claim with action `release`): registrar only.
    Release { claim: String },
    /// The record a relay holds for `host`.
    Lookup { host: String },
}

/// A relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NamesResponse {
    /// A signed record (a tombstone after a release).
    Record { record: String },
    /// This relay holds no record for the host.
    NotFound,
    /// The request was refused.
    Refused { code: Refusal, message: String },
}

/// Why a registrar refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Another key holds the name (or the operator reserved it for another key).
    Taken,
    /// Only the registrar's members may register or look up.
    NotMember,
    /// Not a host label we give out (malformed, or shaped like a peer ID or peer label).
    BadHost,
    /// The key already holds as many names as allowed.
    TooMany,
    /// This relay is not the network's registrar.
    NotRegistrar,
    /// The claim was malformed, not signed by the requester, for another registrar, or stale.
    BadClaim,
    /// The registry cannot answer now (its store failed, or it is full).
    Unavailable,
}

/// Bytes as they travel in a message: multibase base64.
pub fn encode_bytes(bytes: &[u8]) -> String {
    multibase::encode(multibase::Base::Base64, bytes)
}

pub fn decode_bytes(text: &str) -> Option<Vec<u8>> {
    match multibase::decode(text) {
        Ok((multibase::Base::Base64, bytes)) => Some(bytes),
        _ => None,
    }
}

pub type Codec = request_response::json::codec::Codec<NamesRequest, NamesResponse>;
pub type Behaviour = request_response::Behaviour<Codec>;

/// The names behaviour: a gateway asks (outbound), a relay answers (inbound).
pub fn behaviour(support: ProtocolSupport) -> Behaviour {
    let codec = Codec::default()
        .set_request_size_maximum(MAX_MESSAGE)
        .set_response_size_maximum(MAX_MESSAGE);
    let config = request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(256);
    request_response::Behaviour::with_codec(codec, [(PROTOCOL, support)], config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_json_shape() {
        let lookup = NamesRequest::Lookup { host: "home".into() };
        assert_eq!(serde_json::to_string(&lookup).unwrap(), r#"{"lookup":{"host":"home"}}"#);
        assert_eq!(serde_json::to_string(&NamesResponse::NotFound).unwrap(), r#""not_found""#);
        let refused = NamesResponse::Refused { code: Refusal::Taken, message: "x".into() };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"refused":{"code":"taken","message":"x"}}"#
        );
        assert_eq!(decode_bytes(&encode_bytes(b"\x01\x02")), Some(vec![1, 2]));
        assert_eq!(decode_bytes("zabc"), None, "only base64");
        assert!(serde_json::from_str::<NamesRequest>(r#"{"lookup":{"host":"a","x":1}}"#).is_err());
    }
}
