//! peerup: reach your own machines by name from any app, without root.
//!
//! This crate owns the libp2p node, services, access control, config and the CLI, and wires
//! the two other crates together: `peerup-proxy` (the SOCKS5 front end and byte bridge) and
//! `peerup-resolver` (names and tiers). The `peerup` binary is a thin wrapper over [`cli`].
//!
//! # Layout
//! - [`cli`]: the command line, and the one place where failures become exit codes.
//! - [`runtime`]: what `run` and `relay` share — state.json, signals, control socket, reload,
//!   and the owner of their background tasks.
//! - [`daemon`]: `peerup run` — load, bind, serve, reload, drain on a signal.
//! - [`relay`]: `peerup relay` — a circuit relay for a network's members.
//! - [`names`]: a network's names — the registrar's store and protocol (on the relay), the
//!   registry tier, pins and registration (on members).
//! - [`node`]: the libp2p swarm, its command channel, the connection gate and our tunnel
//!   stream behaviour.
//! - [`service`]: serving inbound tunnel streams to local services, with per-stream checks.
//! - [`connect`]: reaching a target (tunnel or direct) for the SOCKS front end.
//! - [`tunnels`]: every live tunnel and its kill switch; a tunnel stream as a framed bridge leg.
//! - [`protocol`]: `/peerup/tunnel/2.0.0` — the header and the frames, pure encode/decode.
//! - [`reload`]: allow lists, names and services follow their files without a restart.
//! - [`control`]: the control socket (`peerup status`, reloads).
//! - [`auth`]: authorized_keys files and the access decisions made with them.
//! - [`config`], [`identity`], [`files`]: the home directory and what is in it.
//!
//! # Data path
//! app → SOCKS5 (proxy) → [`connect::Gateway`] → resolver tiers → [`node::Handle::open`] →
//! one yamux stream on an authenticated connection → the serving peer's [`service`] host →
//! its local TCP service. Each TCP connection is one stream carrying frames; bytes are bridged
//! with 64 KiB buffers, half-close passes through end to end, and an abnormal end anywhere is a
//! TCP reset at both ends.

pub mod auth;
pub mod cli;
pub mod config;
pub mod connect;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod files;
pub mod identity;
pub mod logging;
pub mod names;
pub mod node;
pub mod protocol;
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod tunnels;
