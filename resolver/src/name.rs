//! The grammar of names under the suffix.
//!
//! - `HOST.NETWORK.p2p` — a host in a network (resolved through the tiers; `HOST` may also be a
//!   peer label, read last);
//! - `PEERLABEL.p2p` — a peer ID written as a label;
//! - anything else under the suffix is "no such name".
//!
//! Labels are case-insensitive `[a-z0-9-]`, 1 to 63 bytes. The host part is also kept verbatim,
//! because a base58 peer ID passed untouched (a SOCKS5 hostname) is case-sensitive.

use std::fmt;
use std::str::FromStr;

use libp2p_identity::PeerId;

use crate::label::parse_peer;

/// A DNS label, lowercased: 1 to 63 of `[a-z0-9-]`, not starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(String);

impl Label {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Label {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, NameError> {
        let bad = |why| NameError::BadLabel { label: text.to_owned(), why };
        if text.is_empty() || text.len() > 63 {
            return Err(bad("must be 1 to 63 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("may hold only letters, digits and '-'"));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(bad("may not start or end with '-'"));
        }
        Ok(Label(text.to_ascii_lowercase()))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed name under the suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Name {
    /// `HOST.NETWORK.suffix`.
    Host { host: Label, network: Label, verbatim_host: String },
    /// `PEERLABEL.suffix`.
    Peer { peer: PeerId },
}

/// Why a name under the suffix names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("bad label {label:?}: {why}")]
    BadLabel { label: String, why: &'static str },
    #[error("{0:?} is neither HOST.NETWORK.p2p nor a peer label")]
    Shape(String),
    #[error("{0:?} is not a peer ID label")]
    NotAPeer(String),
}

impl Name {
    /// Parse `hostname` if it lies under `suffix`. `Ok(None)`: not ours (an ordinary host).
    pub fn parse(hostname: &str, suffix: &Label) -> Result<Option<Name>, NameError> {
        let trimmed = hostname.strip_suffix('.').unwrap_or(hostname);
        let mut labels: Vec<&str> = trimmed.split('.').collect();
        match labels.pop() {
            Some(last) if last.eq_ignore_ascii_case(suffix.as_str()) => {}
            _ => return Ok(None),
        }
        match labels.as_slice() {
            [peer] => {
                let peer = parse_peer(peer).map_err(|_| NameError::NotAPeer(hostname.into()))?;
                Ok(Some(Name::Peer { peer }))
            }
            [host, network] => Ok(Some(Name::Host {
                host: host.parse()?,
                network: network.parse()?,
                verbatim_host: (*host).to_owned(),
            })),
            _ => Err(NameError::Shape(hostname.into())),
        }
    }

    /// The network a name points into, if it names one.
    pub fn network(&self) -> Option<&Label> {
        match self {
            Name::Host { network, .. } => Some(network),
            Name::Peer { .. } => None,
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Host { host, network, .. } => write!(f, "{host}.{network}"),
            Name::Peer { peer } => write!(f, "{}", crate::label::peer_label(peer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p2p() -> Label {
        "p2p".parse().unwrap()
    }

    #[test]
    fn host_network_is_case_insensitive_and_may_end_in_a_dot() {
        let name = Name::parse("Home.ALICE.p2p.", &p2p()).unwrap().unwrap();
        assert_eq!(name.to_string(), "home.alice");
        assert_eq!(name.network().map(Label::as_str), Some("alice"));
    }

    #[test]
    fn other_hosts_are_not_ours() {
        for host in ["example.com", "p2p.example.com", "localhost", "alice.p2p.com"] {
            assert_eq!(Name::parse(host, &p2p()), Ok(None), "{host}");
        }
    }

    #[test]
    fn malformed_names_under_the_suffix_are_errors() {
        for host in ["p2p", "a.b.c.p2p", "home.p2p", "-x.alice.p2p", "x_y.alice.p2p", ".p2p"] {
            assert!(Name::parse(host, &p2p()).is_err(), "{host}");
        }
        let long = format!("{}.alice.p2p", "a".repeat(64));
        assert!(Name::parse(&long, &p2p()).is_err());
    }

    #[test]
    fn a_peer_label_alone_names_a_peer() {
        let peer = PeerId::random();
        let text = format!("{}.p2p", crate::peer_label(&peer));
        assert_eq!(Name::parse(&text, &p2p()), Ok(Some(Name::Peer { peer })));
        let b58 = format!("{peer}.p2p");
        assert_eq!(Name::parse(&b58, &p2p()), Ok(Some(Name::Peer { peer })));
    }
}
