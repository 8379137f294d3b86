//! Our muxer adapter: yamux with our frame size, whose close cannot stall.
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

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

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

/// The yamux upgrade every connection of ours uses, producing [`Bounded`] [`YamuxMuxer`]s.
///
/// Ours rather than libp2p-yamux's, whose config exposes only the stream limit: the frame size
/// ([`FRAME_SIZE`]) is ours to set here. yamux cuts every write into frames of at most that
/// size, and each frame costs a header, a trip through the muxer and (under TLS) a record of
/// its own; 16 KiB frames capped throughput well below what the cipher allows.
#[derive(Debug, Clone)]
pub struct Yamux {
    config: yamux::Config,
    /// Each stream's writes gathered up to this many bytes (0: none); see
    /// [`Yamux::gathering_stream_writes`].
    stream_gather: usize,
}

/// Bytes per yamux data frame. Larger frames cut per-frame costs (1 GiB through two gateways
/// on loopback: 16 KiB frames ~265 MB/s, 64 KiB ~350, 128 KiB ~385, debug build); a frame as
/// large as the initial 256 KiB stream window would stall a stream until the window is updated.
/// A tunnel's bridge reads one buffer less its frame header, so each full read is one frame.
pub const FRAME_SIZE: usize = 128 * 1024;
const _: () = assert!(FRAME_SIZE == peerup_proxy::BRIDGE_BUFFER);

/// Window a connection may hand out beyond each stream's first 256 KiB, shared by its busy
/// streams. yamux grows a stream's window (doubling, up to this budget) when the reader
/// drains it within two round trips; with no budget every stream stays at 256 KiB and a fast
/// download waits on window updates (1 GiB through two release-build gateways on loopback:
/// 400–450 MB/s without, 465–530 with, run side by side). It bounds memory too: a
/// connection holds at most 256 KiB per open stream plus this much data that its local
/// apps have not read yet.
pub const WINDOW_GROWTH: usize = 32 * 1024 * 1024;

impl Yamux {
    /// At most `max_streams` streams at once on a connection, each with yamux's 256 KiB
    /// initial window, plus [`WINDOW_GROWTH`] to share.
    pub fn new(max_streams: usize) -> Self {
        let mut config = yamux::Config::default();
        config.set_max_num_streams(max_streams);
        config.set_split_send_size(FRAME_SIZE);
        config.set_max_connection_receive_window(Some(
            max_streams * yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH,
        ));
        Yamux { config, stream_gather: 0 }
    }

    /// Streams whose writes are gathered up to `limit` bytes until they are flushed, so that a
    /// writer that writes little at a time still sends large frames. For the relay: libp2p's
    /// circuit copies 8 KiB at a time (its buffer is not ours to size), and each copy was a
    /// frame, a TLS record and a socket write of its own. Only for streams whose users flush
    /// (libp2p's protocols and its circuit copy do).
    pub fn gathering_stream_writes(mut self, limit: usize) -> Self {
        self.stream_gather = limit;
        self
    }
}

impl UpgradeInfo for Yamux {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Bounded<YamuxMuxer<C>>;
    type Error = std::io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(YamuxMuxer::new(socket, self, yamux::Mode::Server)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Bounded<YamuxMuxer<C>>;
    type Error = std::io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(YamuxMuxer::new(socket, self, yamux::Mode::Client)))
    }
}

/// Inbound streams held while nobody asks for them; beyond this, new ones are dropped (reset).
/// A peer of ours stops opening streams at yamux's ACK backlog (256) anyway.
const INBOUND_BUFFER: usize = 256;

/// A yamux connection as a libp2p [`StreamMuxer`].
///
/// yamux makes progress only through `poll_next_inbound`, which libp2p drives from
/// [`StreamMuxer::poll`]; streams that arrive there are held (bounded) until
/// [`StreamMuxer::poll_inbound`] takes them.
#[derive(Debug)]
pub struct YamuxMuxer<C> {
    connection: yamux::Connection<Coalesce<C>>,
    inbound: std::collections::VecDeque<yamux::Stream>,
    inbound_waker: Option<std::task::Waker>,
    /// See [`Yamux::gathering_stream_writes`].
    stream_gather: usize,
}

impl<C: AsyncRead + AsyncWrite + Unpin> YamuxMuxer<C> {
    fn new(socket: C, config: Yamux, mode: yamux::Mode) -> Bounded<Self> {
        let connection =
            yamux::Connection::new(Coalesce::for_connection(socket), config.config, mode);
        Bounded::new(YamuxMuxer {
            connection,
            inbound: std::collections::VecDeque::new(),
            inbound_waker: None,
            stream_gather: config.stream_gather,
        })
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, YamuxError>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Ok(stream)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(YamuxError(e))),
            Poll::Ready(None) => Poll::Ready(Err(YamuxError(yamux::ConnectionError::Closed))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes gathered from yamux's writes before they go to the secure channel: one TLS record's
/// worth of plaintext.
const COALESCE: usize = 16 * 1024;

/// yamux's writes, gathered until it flushes (or [`COALESCE`] bytes are waiting).
///
/// yamux writes each frame's 12-byte header and its body as two writes and flushes after every
/// frame; under TLS each write became a record and a socket write of its own (opening a tunnel
/// took ten records between the gateways, each a syscall on one side and a decryption on the
/// other). Gathered, a small frame's header and body leave as one record. Writes of [`COALESCE`]
/// bytes or more (bulk data) pass straight through once what was gathered before them is
/// written: no extra copy.
///
/// Under a yamux connection ([`Coalesce::for_connection`]) a flush is also put off until the
/// connection next reads: yamux flushes after every frame it takes from a stream, then takes the
/// next one if a stream queued more, and reads the socket only once no stream has anything to
/// send. A tunnel that writes its END frame and closes its stream, or several tunnels active at
/// once, then leave in one record and one socket write instead of one each.
///
/// The same gathering, with a larger limit, serves where a writer makes many small writes that
/// each would become a frame of their own (see [`Coalesce::with_limit`]).
#[derive(Debug)]
pub struct Coalesce<C> {
    inner: C,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    sent: usize,
    /// Writes are gathered while they fit in this many bytes; 0 passes every write through.
    limit: usize,
    /// Flushes wait for the next read (a yamux connection's socket; see the type's docs).
    flush_at_read: bool,
    /// A flush was asked for and put off.
    flush_owed: bool,
}

impl<C> Coalesce<C> {
    /// Under a yamux connection: gathered up to [`COALESCE`] bytes, flushed when yamux next
    /// reads (see the type's docs).
    fn for_connection(inner: C) -> Self {
        Coalesce { flush_at_read: true, ..Coalesce::with_limit(inner, COALESCE) }
    }

    /// Writes gathered up to `limit` bytes, until a flush or a write that does not fit. The
    /// buffer is given back at each flush, so an idle stream holds none.
    pub(crate) fn with_limit(inner: C, limit: usize) -> Self {
        Coalesce { inner, buf: Vec::new(), sent: 0, limit, flush_at_read: false, flush_owed: false }
    }
}

impl<C: AsyncWrite + Unpin> Coalesce<C> {
    /// Write everything gathered to `inner` and flush it.
    fn poll_flush_now(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        if self.limit > COALESCE {
            self.buf = Vec::new();
        }
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.flush_owed = false;
        Poll::Ready(Ok(()))
    }

    /// Write everything gathered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.buf.len() {
            match std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])
            ) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.flush_owed {
            // Pending: the socket is full and wakes this task once it takes more; every poll
            // of the connection reads again, and tries again.
            if let Poll::Ready(result) = self.as_mut().poll_flush_now(cx) {
                result?;
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Coalesce<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > this.limit {
            std::task::ready!(this.poll_drain(cx))?;
        }
        if total >= this.limit {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.flush_at_read {
            self.flush_owed = true;
            return Poll::Ready(Ok(()));
        }
        self.poll_flush_now(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A yamux connection's error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct YamuxError(yamux::ConnectionError);

impl From<YamuxError> for std::io::Error {
    fn from(e: YamuxError) -> Self {
        match e.0 {
            yamux::ConnectionError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin + 'static> StreamMuxer for YamuxMuxer<C> {
    type Substream = Coalesce<yamux::Stream>;
    type Error = YamuxError;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let gather = self.stream_gather;
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(Coalesce::with_limit(stream, gather)));
        }
        if let Poll::Ready(next) = self.poll_next(cx) {
            return Poll::Ready(next.map(|stream| Coalesce::with_limit(stream, gather)));
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let gather = self.stream_gather;
        let stream =
            std::task::ready!(self.connection.poll_new_outbound(cx)).map_err(YamuxError)?;
        Poll::Ready(Ok(Coalesce::with_limit(stream, gather)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx).map_err(YamuxError)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = match this.poll_next(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if this.inbound.len() >= INBOUND_BUFFER {
            tracing::warn!(stream = %stream.id(), "too many inbound streams waiting: dropping one");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Come back at once: other streams and frames may be ready.
        cx.waker().wake_by_ref();
        Poll::Pending
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

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A socket with nothing to read yet.
    impl AsyncRead for Writes {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
    }

    #[test]
    fn under_a_connection_frames_flushed_one_by_one_leave_together_at_the_next_read() {
        use futures::AsyncRead as _;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Coalesce::for_connection(Writes::default());
        // yamux: a frame (header, body), flush; the next stream's frame, flush; then it reads.
        for frame in [[1u8; 16], [2u8; 16]] {
            let write = Pin::new(&mut io).poll_write(&mut cx, &frame[..12]);
            assert!(matches!(write, Poll::Ready(Ok(12))));
            let write = Pin::new(&mut io).poll_write(&mut cx, &frame[12..]);
            assert!(matches!(write, Poll::Ready(Ok(4))));
            assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        }
        assert!(io.inner.0.is_empty(), "a flush waits for the next read");
        let mut buf = [0u8; 8];
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        assert_eq!(io.inner.0, vec![[[1u8; 16], [2u8; 16]].concat()], "one write for both");
        assert!(!io.flush_owed);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        assert_eq!(io.inner.0.len(), 1, "nothing owed, nothing written");
    }

    #[tokio::test]
    async fn a_gathering_stream_sends_small_writes_as_one_until_full_or_flushed() {
        use futures::AsyncWriteExt;
        let mut io = Coalesce::with_limit(Writes::default(), 3 * COALESCE);
        for i in 0..4u8 {
            io.write_all(&vec![i; COALESCE]).await.unwrap();
        }
        // The first three left together when the fourth did not fit.
        assert_eq!(
            io.inner.0,
            vec![[vec![0; COALESCE], vec![1; COALESCE], vec![2; COALESCE]].concat()]
        );
        io.flush().await.unwrap();
        assert_eq!(io.inner.0[1..], [vec![3; COALESCE]]);
        assert_eq!(io.buf.capacity(), 0, "a flushed stream holds no buffer");
        // Vectored writes (TLS hands its records over so) are gathered the same way.
        let parts = [std::io::IoSlice::new(&[5; 4]), std::io::IoSlice::new(&[6; 4])];
        let n = futures::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, 8);
        io.close().await.unwrap();
        assert_eq!(io.inner.0[2..], [[[5; 4], [6; 4]].concat()]);
    }

    #[tokio::test]
    async fn a_stream_without_gathering_passes_every_write_through() {
        use futures::AsyncWriteExt;
        let mut io = Coalesce::with_limit(Writes::default(), 0);
        io.write_all(&[1; 3]).await.unwrap();
        io.write_all(&[2; 5]).await.unwrap();
        assert_eq!(io.inner.0, [vec![1; 3], vec![2; 5]], "each write as it came, before a flush");
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush_and_bulk_passes_through() {
        use futures::AsyncWriteExt;
        let mut io = Coalesce::with_limit(Writes::default(), COALESCE);
        io.write_all(&[1; 12]).await.unwrap();
        io.write_all(&[2; 30]).await.unwrap();
        assert!(io.inner.0.is_empty(), "nothing written before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.0, vec![[[1; 12].as_slice(), &[2; 30]].concat()]);
        // A header, then a body too large to gather: the header leaves first, the body as is.
        io.write_all(&[3; 12]).await.unwrap();
        io.write_all(&vec![4; COALESCE]).await.unwrap();
        io.close().await.unwrap();
        assert_eq!(io.inner.0[1..], [vec![3; 12], vec![4; COALESCE]]);
    }
}
