//! What our connections put between the socket and the secure channel: a security upgrade
//! ([`Layered`]) whose socket is first wrapped in a layer of ours ([`SocketLayer`]).
//!
//! - [`ReadAhead`], for TCP: rustls asks its socket for at most 4 KiB more than it holds at a
//!   time, so a receiving gateway made ~96k `recvfrom` calls per GiB. Read through a 64 KiB
//!   buffer, each call takes whatever the kernel holds.
//! - [`GatherWrites`], for connections through a relay circuit: TLS writes each record (up to
//!   16 KiB) on its own, and every write to the circuit's stream became a frame of the relay
//!   connection's yamux and three records of its TLS (frame header, 16 KiB, the rest), each
//!   decrypted again at the relay and at the far end. Gathered until the channel flushes, an
//!   inner frame's records cross as one write.

use futures::io::BufReader;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

use super::muxer::Coalesce;

/// Bytes a TCP connection reads from its socket at once, at most.
pub const READ_AHEAD: usize = 64 * 1024;

/// Bytes a relayed connection gathers from its secure channel's writes before they go to the
/// circuit, at most.
pub const CIRCUIT_GATHER: usize = 256 * 1024;

/// A wrapper put around a connection's socket before its security upgrade runs.
pub trait SocketLayer<C> {
    type Socket;
    fn wrap(&self, socket: C) -> Self::Socket;
}

/// Reads through a buffer of this many bytes.
#[derive(Debug, Clone, Copy)]
pub struct ReadAhead(pub usize);

impl<C: AsyncRead + AsyncWrite> SocketLayer<C> for ReadAhead {
    type Socket = BufReader<C>;
    fn wrap(&self, socket: C) -> Self::Socket {
        BufReader::with_capacity(self.0, socket)
    }
}

/// Writes gathered up to this many bytes, until a flush ([`Coalesce::with_limit`]).
#[derive(Debug, Clone, Copy)]
pub struct GatherWrites(pub usize);

impl<C: AsyncRead + AsyncWrite> SocketLayer<C> for GatherWrites {
    type Socket = Coalesce<C>;
    fn wrap(&self, socket: C) -> Self::Socket {
        Coalesce::with_limit(socket, self.0)
    }
}

/// The security upgrade `inner`, run over the socket as `layer` wraps it.
#[derive(Debug, Clone)]
pub struct Layered<U, L> {
    inner: U,
    layer: L,
}

impl<U, L> Layered<U, L> {
    pub fn new(inner: U, layer: L) -> Self {
        Layered { inner, layer }
    }
}

impl<U: UpgradeInfo, L> UpgradeInfo for Layered<U, L> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.inner.protocol_info()
    }
}

impl<C, L, U> InboundConnectionUpgrade<C> for Layered<U, L>
where
    L: SocketLayer<C>,
    U: InboundConnectionUpgrade<L::Socket>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.inner.upgrade_inbound(self.layer.wrap(socket), info)
    }
}

impl<C, L, U> OutboundConnectionUpgrade<C> for Layered<U, L>
where
    L: SocketLayer<C>,
    U: OutboundConnectionUpgrade<L::Socket>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.inner.upgrade_outbound(self.layer.wrap(socket), info)
    }
}
