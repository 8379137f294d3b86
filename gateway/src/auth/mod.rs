//! Who may connect, and who may reach which service.
//!
//! - [`keys`]: the authorized_keys file format and its edits.
//! - [`access`]: the loaded lists and the three decisions the node makes with them: may this peer
//!   connect at all (the handshake gate), may it open this service (checked on every stream),
//!   and may we dial it.

pub mod access;
pub mod keys;

pub use access::{Access, AccessLists};
pub use keys::{AuthorizedKeys, Entry, Expiry, KeysError};
