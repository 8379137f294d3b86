//! Our muxer adapter: yamux whose close cannot stall.
//!
//! libp2p closes a connection by awaiting its muxer's close with no deadline, and yamux's close
//! flushes its queued frames to the socket first. On a frozen path (the peer stopped reading,
//! the socket buffer full) that wait lasts until TCP gives up, minutes later, and the
//! connection lingers in "closing" all that time. libp2p-yamux exposes no such knob, so every
//! yamux connection of ours (TCP and relayed, gateway and relay) is wrapped: its close gets
//! [`CLOSE_DEADLINE`], then the connection is dropped (aborted). Tunnels on it were reset by
//! their registry already; nothing waits on a graceful end that cannot come.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, TryFutureExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::yamux;

/// The longest a connection's close may take before it is aborted.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// A muxer whose close ends within [`CLOSE_DEADLINE`].
#[derive(Debug)]
pub struct Bounded<M> {
    inner: M,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<M> Bounded<M> {
    pub fn new(inner: M) -> Self {
        Bounded { inner, deadline: None }
    }
}

impl<M: StreamMuxer + Unpin> StreamMuxer for Bounded<M> {
    type Substream = M::Substream;
    type Error = M::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner).poll_inbound(cx)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner).poll_outbound(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Poll::Ready(result) = Pin::new(&mut self.inner).poll_close(cx) {
            return Poll::Ready(result);
        }
        let deadline =
            self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_DEADLINE)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("connection close did not finish in time: aborting it");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// The yamux upgrade every connection of ours uses, producing [`Bounded`] muxers.
#[derive(Debug, Clone)]
pub struct Yamux(yamux::Config);

impl Yamux {
    pub fn new(config: yamux::Config) -> Self {
        Yamux(config)
    }
}

impl UpgradeInfo for Yamux {
    type Info = <yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

type Upgraded<C> = futures::future::MapOk<
    <yamux::Config as InboundConnectionUpgrade<C>>::Future,
    fn(yamux::Muxer<C>) -> Bounded<yamux::Muxer<C>>,
>;

impl<C> InboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Bounded<yamux::Muxer<C>>;
    type Error = std::io::Error;
    type Future = Upgraded<C>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(socket, info).map_ok(Bounded::new as fn(_) -> _)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Bounded<yamux::Muxer<C>>;
    type Error = std::io::Error;
    type Future = Upgraded<C>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(socket, info).map_ok(Bounded::new as fn(_) -> _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::muxing::StreamMuxerExt;

    /// A muxer whose close never finishes, as yamux's on a frozen path.
    struct Stuck;

    impl StreamMuxer for Stuck {
        type Substream = futures::io::Cursor<Vec<u8>>;
        type Error = std::io::Error;

        fn poll_inbound(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<Self::Substream, Self::Error>> {
            Poll::Pending
        }
        fn poll_outbound(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<Self::Substream, Self::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn poll(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_stalls_is_aborted_at_the_deadline() {
        let started = tokio::time::Instant::now();
        Bounded::new(Stuck).close().await.unwrap();
        assert_eq!(started.elapsed(), CLOSE_DEADLINE);
    }
}
