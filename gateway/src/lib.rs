//! peerup: reach your own machines by name from any app, without root.
//!
//! This crate owns the libp2p node, services, access control, config and the CLI, and wires
//! the two other crates together: `peerup-proxy` (the SOCKS5 front end and byte bridge) and
//! `peerup-resolver` (names and tiers). The `peerup` binary is a thin wrapper over [`cli`].
//!
//! # Layout
//! - [`cli`]: the command line, and the one place where failures become exit codes.
//! - [`daemon`]: `peerup run` — load, bind, write state.json, serve, drain on a signal.
//! - [`node`]: the libp2p swarm, the connection gate and our tunnel stream behaviour.
//! - [`service`]: serving inbound tunnel streams to local services, with per-stream checks.
//! - [`connect`]: reaching a target (tunnel or direct) for the SOCKS front end.
//! - [`protocol`]: the `/peerup/tunnel/1.0.0` header, pure encode/decode.
//! - [`auth`]: authorized_keys files and the access decisions made with them.
//! - [`config`], [`identity`], [`files`]: the home directory and what is in it.
//!
//! # Data path
//! app → SOCKS5 (proxy) → [`connect::Gateway`] → resolver tiers → [`node::Control::open`] →
//! one yamux stream on an authenticated connection → the serving peer's [`service`] host →
//! its local TCP service. Each TCP connection is one stream; bytes are bridged with 64 KiB
//! buffers and half-close passes through end to end.

pub mod auth;
pub mod cli;
pub mod config;
pub mod connect;
pub mod control;
pub mod daemon;
pub mod files;
pub mod identity;
pub mod node;
pub mod protocol;
pub mod relay;
pub mod service;
