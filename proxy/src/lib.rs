//! The local front end of peerup: one proxy port for SOCKS5, SOCKS4/4a and HTTP, and the byte
//! bridge behind it.
//!
//! This crate knows proxy protocols and sockets, nothing of libp2p or names. The gateway hands
//! it a [`Connector`] that turns a [`Target`] into a connected byte stream (a tunnel to a peer
//! or a direct TCP connection) or a [`ConnectError`] whose [`FailureKind`] decides the reply.
//!
//! # Layout
//! - [`failure`]: the failure vocabulary shared with the gateway, and the single place where a
//!   failure becomes a SOCKS5 or SOCKS4 code or an HTTP status.
//! - [`target`]: what a client asked to reach.
//! - [`server`]: the bound listener, its accept loop, the same-user guard, the choice of
//!   protocol by the first byte, and the replies.
//! - `socks`, `http`: the SOCKS5/SOCKS4 handshakes, and the HTTP proxy (CONNECT, plain
//!   requests, the PAC file, failure pages).
//! - [`wire`]: I/O-free parsers (SOCKS4/4a requests, HTTP heads, chunked framing).
//! - [`peer_uid`]: which local user owns the other end of a loopback TCP connection.
//! - [`buffered`]: a client socket with the bytes read ahead during its handshake.
//! - [`client`]: a SOCKS5 client for the CLI's `connect` and `forward`.
//! - [`dial`]: a TCP connection with a deadline (direct targets, services' local addresses).
//! - [`bridge`]: copying bytes both ways with large buffers, half-close passed through, and
//!   abnormal ends passed on as resets.
//!
//! # Invariants
//! - The success reply is sent only after the connector returned a connected stream.
//! - Bytes a client sends before the reply are never lost: SOCKS5 is read message by message,
//!   and whatever SOCKS4 and HTTP parsing read past a head stays buffered for the bridge.
//! - Every accepted connection completes its handshake within the handshake timeout or is
//!   closed; established streams have no idle timeout.

pub mod bridge;
pub mod buffered;
pub mod client;
pub mod dial;
pub mod failure;
mod http;
pub mod peer_uid;
pub mod server;
mod socks;
pub mod target;
pub mod wire;

pub use bridge::{Aborted, BRIDGE_BUFFER, Carried, Leg, Plain, Side, bridge, log_tunnel_end};
pub use failure::{ConnectError, FailureKind};
pub use http::PAC_PATH;
pub use server::{Connector, Credentials, ProxyConfig, ProxyServer, SameUser};
pub use target::Target;
