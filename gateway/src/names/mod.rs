//! A network's names: members register `HOST`, every member resolves `HOST.NETWORK.p2p`.
//!
//! - [`record`]: the signed claim a member sends and the signed record the registrar returns.
//! - [`protocol`]: `/peerup/names/1.0.0`, request-response between members and relays.
//! - [`store`]: the registrar's decisions, persisted in its home before they are answered.
//! - [`registrar`]: the relay's side: a thread that owns the store and answers requests.
//! - [`replica`]: the relays' replication of records (Kademlia among the relays only).
//! - [`tier`]: the member's side of lookups: the registry tier of the name chain.
//! - [`pins`]: `known_names`, registry answers pinned on first use.
//! - [`register`]: the member's task that keeps its `register_as` name registered.
//!
//! Trust: a network is anchored on its registrar's key (`networks.<net>.registrar`). A member
//! accepts only records signed by that key, for the host it asked, not expired, and takes the
//! highest serial any relay gives; a relay can hide a name but not forge one, and a rebind by
//! the registrar is caught by the pin. docs/security.md says more.

pub mod pins;
pub mod protocol;
pub mod record;
pub mod register;
pub mod registrar;
pub mod replica;
pub mod store;
pub mod tier;

pub use pins::Pins;
pub use protocol::{NamesRequest, NamesResponse, Refusal};
pub use record::{Claim, Record};
pub use register::{Registration, Registrations};
pub use registrar::RegistryHandle;
pub use tier::RegistryTier;
