//! The local front end of peerup: a SOCKS5 listener and the byte bridge behind it.
//!
//! This crate knows SOCKS and sockets, nothing of libp2p or names. The gateway hands it a
//! [`Connector`] that turns a [`Target`] into a connected byte stream (a tunnel to a peer or a
//! direct TCP connection) or a [`ConnectError`] whose [`FailureKind`] decides the reply code.
//!
//! # Layout
//! - [`failure`]: the failure vocabulary shared with the gateway, and the single place where a
//!   failure becomes a SOCKS5 reply code.
//! - [`target`]: what a client asked to reach.
//! - [`socks`]: the bound SOCKS5 server, its accept loop and per-connection handshake.
//! - [`client`]: a SOCKS5 client for the CLI's `connect`.
//! - [`dial`]: a TCP connection with a deadline (direct targets, services' local addresses).
//! - [`bridge`]: copying bytes both ways with large buffers, half-close passed through, and
//!   abnormal ends passed on as resets.
//!
//! # Invariants
//! - The success reply is sent only after the connector returned a connected stream.
//! - Bytes a client sends before the reply stay in its socket: the handshake reads exactly the
//!   bytes of the SOCKS messages, never more, so nothing is buffered and lost.
//! - Every accepted connection completes its SOCKS handshake within the handshake timeout or is
//!   closed; established streams have no idle timeout.

pub mod bridge;
pub mod client;
pub mod dial;
pub mod failure;
pub mod socks;
pub mod target;

pub use bridge::{Aborted, BRIDGE_BUFFER, Carried, Leg, Plain, Side, bridge, log_tunnel_end};
pub use failure::{ConnectError, FailureKind};
pub use socks::{Connector, SocksConfig, SocksServer};
pub use target::Target;
