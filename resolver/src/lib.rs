//! Names for peerup: what `home.alice.p2p` means and how it becomes a peer.
//!
//! This crate knows names, peer labels and resolution tiers, nothing of SOCKS or of the libp2p
//! node. The gateway parses each hostname once into a [`Name`], then asks [`Tiers`] for a
//! [`Resolution`]: the peer ID to reach, any addresses known for it, and which tier answered.
//!
//! # Layout
//! - [`label`]: a peer ID as a DNS-safe label (CIDv1, libp2p-key, base36) and back.
//! - [`name`]: the grammar of names under the suffix (`HOST.NETWORK.p2p`, `PEERLABEL.p2p`,
//!   `PEERLABEL.NETWORK.p2p`).
//! - [`tier`]: the [`Resolve`] trait every tier implements, the local names tier, and [`Tiers`],
//!   which asks them in order and falls back to reading a peer label.
//! - [`pool`]: the fake-IP pool (a loopback address per answered name, and back).
//! - [`dns`]: the local DNS server answering `.p2p` names from the tiers and the pool.

pub mod cache;
pub mod dns;
pub mod label;
pub mod name;
pub mod pool;
pub mod tier;

pub use dns::{DnsHandler, DnsOptions, DnsServer, Warm};
pub use label::{PeerLabelError, parse_peer, peer_label};
pub use name::{Label, Name, NameError};
pub use pool::{Ipv4Net, Pool, PoolError};
pub use tier::{
    LocalNames, NameEntry, NameEntryError, ReloadableNames, Resolution, Resolve, ResolveError,
    Tier, TierAnswer, Tiers,
};

pub use libp2p_identity::PeerId;
pub use multiaddr::Multiaddr;
