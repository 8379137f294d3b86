//! Copy bytes both ways between two legs of a connection, and end it truthfully.
//!
//! Each direction ends on its own: a clean end read on one leg (EOF) becomes a clean end written
//! to the other (a TCP half-close, a tunnel's end frame), and the other direction keeps flowing.
//! The bridge ends when both directions ended cleanly — then each leg is [`Leg::finish`]ed — or
//! as soon as anything fails on either leg, or `stop` is cancelled — then each leg is
//! [`Leg::abort`]ed, which a TCP peer sees as a reset (RST), never as a clean EOF. So a transfer
//! cut short anywhere is visibly cut short at both ends, and nothing stays open behind it.
//!
//! Buffers are large because copy size dominates throughput on this path (8 KiB buffers cost
//! 25–50%). The bridge is one future that polls both directions (no locks, no extra tasks).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// Bytes buffered per direction once a transfer fills its first buffer: 128 KiB reads and
/// frames carried one stream 15–20% faster than 64 KiB (fewer frames, records and syscalls).
pub const BRIDGE_BUFFER: usize = 128 * 1024;
/// Bytes buffered per direction at first: an interactive tunnel never needs more.
const FIRST_BUFFER: usize = 16 * 1024;

/// One side of a bridged connection: a socket, a tunnel stream, stdin/stdout.
///
/// Reads return `Ok(0)` only for a clean end; an abnormal end (a reset, a tunnel that died) is
/// an error. `poll_shutdown` writes a clean end of our direction and leaves reading open.
pub trait Leg: AsyncRead + AsyncWrite + Unpin + Send {
    /// Called once before bytes flow (a TCP socket arms its reset-on-crash here).
    fn start(&mut self) {}

    /// A tunnel to a peer, whose end the front end logs at INFO (a plain socket's at DEBUG).
    fn is_tunnel(&self) -> bool {
        false
    }

    /// A direct TCP connection's local and peer addresses (the proxy refuses to dial itself).
    fn addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        None
    }

    /// An abnormal end noticed outside reads and writes: a kill switch (access revoked, path
    /// lost), or the far end failing after its clean end was read. Polled on every wake.
    fn poll_abnormal(&mut self, _cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Pending
    }

    /// Bytes this leg puts in front of what it writes (a tunnel's frame header). The bridge
    /// reads into its buffer that far in, so that [`Leg::poll_write_after`] can frame the
    /// bytes where they lie instead of copying them behind a header.
    fn headroom(&self) -> usize {
        0
    }

    /// Write `buf[self.headroom()..]`; the bytes in front of it are the leg's to overwrite.
    /// Returns how many of the bytes after the headroom were taken, as `poll_write` does.
    fn poll_write_after(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let room = self.headroom();
        Pin::new(self).poll_write(cx, &buf[room..])
    }

    /// Both directions ended cleanly (each writer was shut down): release the leg gracefully.
    fn finish(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }

    /// The connection ended abnormally: make the far side see a reset, not a clean end.
    fn abort(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// A TCP socket: after [`Leg::start`], dropping it (or our process dying) sends RST; a clean
/// finish restores the normal close first.
impl Leg for TcpStream {
    fn addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        Some((self.local_addr().ok()?, self.peer_addr().ok()?))
    }

    fn start(&mut self) {
        // Zero linger in advance: if this process is killed, the kernel resets the socket
        // instead of closing it with a FIN the app would take for a complete transfer.
        let _ = self.set_zero_linger();
    }

    async fn finish(self) {
        // Our direction's FIN went out when its copy shut the writer down; closing now sends
        // nothing more, once the reset-on-crash is disarmed.
        let _ = socket2::SockRef::from(&self).set_linger(None);
    }

    async fn abort(self) {
        let _ = self.set_zero_linger();
        drop(self);
    }
}

impl<L: Leg, R: Leg> Leg for Either<L, R> {
    fn start(&mut self) {
        match self {
            Either::Left(l) => l.start(),
            Either::Right(r) => r.start(),
        }
    }

    fn is_tunnel(&self) -> bool {
        match self {
            Either::Left(l) => l.is_tunnel(),
            Either::Right(r) => r.is_tunnel(),
        }
    }

    fn addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Either::Left(l) => l.addrs(),
            Either::Right(r) => r.addrs(),
        }
    }

    fn poll_abnormal(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self {
            Either::Left(l) => l.poll_abnormal(cx),
            Either::Right(r) => r.poll_abnormal(cx),
        }
    }

    fn headroom(&self) -> usize {
        match self {
            Either::Left(l) => l.headroom(),
            Either::Right(r) => r.headroom(),
        }
    }

    fn poll_write_after(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Either::Left(l) => l.poll_write_after(cx, buf),
            Either::Right(r) => r.poll_write_after(cx, buf),
        }
    }

    async fn finish(self) {
        match self {
            Either::Left(l) => l.finish().await,
            Either::Right(r) => r.finish().await,
        }
    }

    async fn abort(self) {
        match self {
            Either::Left(l) => l.abort().await,
            Either::Right(r) => r.abort().await,
        }
    }
}

/// For a wrapper around a leg that changes only what is read: `AsyncWrite` and [`Leg`] go
/// straight to its `inner` field.
macro_rules! delegate_leg {
    ($wrapper:ident) => {
        impl<L: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<L> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }

        impl<L: $crate::bridge::Leg> $crate::bridge::Leg for $wrapper<L> {
            fn start(&mut self) {
                self.inner.start();
            }

            fn is_tunnel(&self) -> bool {
                self.inner.is_tunnel()
            }

            fn addrs(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
                self.inner.addrs()
            }

            fn poll_abnormal(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Error> {
                self.inner.poll_abnormal(cx)
            }

            fn headroom(&self) -> usize {
                self.inner.headroom()
            }

            fn poll_write_after(
                &mut self,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.inner.poll_write_after(cx, buf)
            }

            async fn finish(self) {
                self.inner.finish().await;
            }

            async fn abort(self) {
                self.inner.abort().await;
            }
        }
    };
}
pub(crate) use delegate_leg;

/// Any byte stream with no way to signal a reset (stdin/stdout of `peerup connect`): an
/// abnormal end just closes it, and the caller reports the failure another way.
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Plain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Plain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Leg for Plain<T> {}

/// Bytes carried by a bridge, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Which leg an abnormal end came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
    /// The stop token: the owner ended the connection (revoked, path lost, shutting down).
    Stop,
}

/// How a bridge ended abnormally, and what it had carried by then.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Aborted {
    pub side: Side,
    pub error: io::Error,
    pub carried: Carried,
}

/// One direction's copy state, as in tokio's `copy_bidirectional`.
struct Copy {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    amount: u64,
}

impl Copy {
    fn new() -> Self {
        Copy {
            buf: vec![0; FIRST_BUFFER].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            done: false,
            amount: 0,
        }
    }

    /// Copy until `reader` ends and `writer` is shut down. Errors say which side failed.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), (bool, io::Error)>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: Leg + ?Sized,
    {
        // Reads land this far in, so the writer's header fits in front of what it writes
        // (and in front of what is left after a partial write: those bytes went out).
        let room = writer.headroom();
        loop {
            if self.pos == self.cap && !self.read_done {
                // A read that filled the buffer means bulk data: grow it, once, while empty.
                if self.cap == self.buf.len() && self.buf.len() < BRIDGE_BUFFER {
                    self.buf = vec![0; BRIDGE_BUFFER].into_boxed_slice();
                }
                let mut buf = ReadBuf::new(&mut self.buf[room..]);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = room;
                            self.cap = room + n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((true, e))),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(|e| (false, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(writer.poll_write_after(cx, &mut self.buf[self.pos - room..self.cap]))
                        .map_err(|e| (false, e))?;
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write returned zero");
                    return Poll::Ready(Err((false, e)));
                }
                self.pos += n;
                self.amount += n as u64;
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(|e| (false, e))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copy `a` → `b` and `b` → `a` until both directions ended cleanly, then finish both legs;
/// on any failure, or when `stop` is cancelled, abort both legs (see the module docs).
pub async fn bridge<A: Leg, B: Leg>(
    mut a: A,
    mut b: B,
    stop: &CancellationToken,
) -> Result<Carried, Aborted> {
    a.start();
    b.start();
    let (mut ab, mut ba) = (Copy::new(), Copy::new());
    let stopped = stop.cancelled();
    let mut stopped = std::pin::pin!(stopped);
    let outcome = poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            let error = io::Error::new(io::ErrorKind::ConnectionAborted, "ended by the gateway");
            return Poll::Ready(Err((Side::Stop, error)));
        }
        if let Poll::Ready(e) = a.poll_abnormal(cx) {
            return Poll::Ready(Err((Side::A, e)));
        }
        if let Poll::Ready(e) = b.poll_abnormal(cx) {
            return Poll::Ready(Err((Side::B, e)));
        }
        if !ab.done
            && let Poll::Ready(Err((reading, e))) = ab.poll(cx, &mut a, &mut b)
        {
            return Poll::Ready(Err((if reading { Side::A } else { Side::B }, e)));
        }
        if !ba.done
            && let Poll::Ready(Err((reading, e))) = ba.poll(cx, &mut b, &mut a)
        {
            return Poll::Ready(Err((if reading { Side::B } else { Side::A }, e)));
        }
        if ab.done && ba.done { Poll::Ready(Ok(())) } else { Poll::Pending }
    })
    .await;
    let carried = Carried { a_to_b: ab.amount, b_to_a: ba.amount };
    match outcome {
        Ok(()) => {
            tokio::join!(a.finish(), b.finish());
            Ok(carried)
        }
        Err((side, error)) => {
            tokio::join!(a.abort(), b.abort());
            Err(Aborted { side, error, carried })
        }
    }
}

/// One INFO line when a tunnel ends, on either side (the caller's span names the peer and the
/// service or target): bytes sent to and received from the peer, how long it lasted, and how it
/// ended; for a reset, `at` says where it began (`here`: a kill switch or our shutdown;
/// `tunnel`: the peer or the path; `socket`: the local app or service). `tunnel` is the
/// bridge's side that is the tunnel stream.
pub fn log_tunnel_end(outcome: &Result<Carried, Aborted>, started: Instant, tunnel: Side) {
    let duration = format!("{:.3}s", started.elapsed().as_secs_f64());
    let carried = match outcome {
        Ok(carried) => carried,
        Err(aborted) => &aborted.carried,
    };
    let (received, sent) = match tunnel {
        Side::B => (carried.b_to_a, carried.a_to_b),
        Side::A | Side::Stop => (carried.a_to_b, carried.b_to_a),
    };
    match outcome {
        Ok(_) => tracing::info!(sent, received, duration, "tunnel closed"),
        Err(aborted) => {
            // A kill switch (revoked, path lost) surfaces through the tunnel leg as "aborted".
            let here = aborted.error.kind() == io::ErrorKind::ConnectionAborted;
            let at = match aborted.side {
                _ if here => "here",
                Side::Stop => "here",
                side if side == tunnel => "tunnel",
                _ => "socket",
            };
            tracing::info!(sent, received, duration, at, error = %aborted.error, "tunnel reset");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Copies `reader` into a sink with one [`Copy`]; the bytes and the buffer size it ended with.
    async fn copy_all(mut reader: impl AsyncRead + Unpin) -> (Vec<u8>, usize) {
        let mut copy = Copy::new();
        let mut out = Plain(tokio::io::join(tokio::io::empty(), Vec::new()));
        std::future::poll_fn(|cx| copy.poll(cx, &mut reader, &mut out)).await.unwrap();
        (out.0.into_inner().1, copy.buf.len())
    }

    /// A writer that frames in place: 4 bytes of headroom it scribbles over, at most 1,000
    /// bytes taken per write, each write refused once (Pending) before it is taken.
    #[derive(Default)]
    struct Framing {
        taken: Vec<u8>,
        writes: usize,
        refused: bool,
    }

    impl AsyncRead for Framing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Framing {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            unreachable!("a leg with headroom is written through poll_write_after")
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Leg for Framing {
        fn headroom(&self) -> usize {
            4
        }

        fn poll_write_after(
            &mut self,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.refused = !self.refused;
            if self.refused {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.writes += 1;
            buf[..4].copy_from_slice(b"HEAD");
            let n = (buf.len() - 4).min(1000);
            self.taken.extend_from_slice(&buf[4..4 + n]);
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_writer_with_headroom_gets_it_in_front_of_every_write() {
        let bulk: Vec<u8> = (0..3 * BRIDGE_BUFFER + 17).map(|i| (i % 251) as u8).collect();
        let mut reader = &bulk[..];
        let mut copy = Copy::new();
        let mut out = Framing::default();
        std::future::poll_fn(|cx| copy.poll(cx, &mut reader, &mut out)).await.unwrap();
        assert!(out.taken == bulk, "every byte, in order, none overwritten by a header");
        assert_eq!(copy.amount, bulk.len() as u64);
        assert!(out.writes > bulk.len() / 1000, "partial writes resumed: {}", out.writes);
    }

    #[tokio::test]
    async fn the_buffer_grows_for_bulk_data_only() {
        let (small, size) = copy_all(&[7u8; 1000][..]).await;
        assert_eq!((small.len(), size), (1000, FIRST_BUFFER), "a small exchange keeps 16 KiB");
        let bulk: Vec<u8> = (0..3 * BRIDGE_BUFFER).map(|i| (i % 251) as u8).collect();
        let (copied, size) = copy_all(&bulk[..]).await;
        assert!(copied == bulk, "every byte, in order");
        assert_eq!(size, BRIDGE_BUFFER, "a read that filled the first buffer grew it");
    }

    #[tokio::test]
    async fn half_close_passes_through_and_other_direction_keeps_flowing() {
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let stop = CancellationToken::new();
        let bridging = tokio::spawn(async move { bridge(a, b, &stop).await });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "server sees the client's EOF after its bytes");

        server.write_all(b"response after EOF").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response after EOF");

        let carried = bridging.await.unwrap().unwrap();
        assert_eq!(carried, Carried { a_to_b: 7, b_to_a: 18 });
    }

    #[tokio::test]
    async fn a_reset_on_one_leg_becomes_a_reset_on_the_other() {
        let (client, a) = pair().await;
        let (b, mut server) = pair().await;
        let stop = CancellationToken::new();
        let bridging = tokio::spawn(async move { bridge(a, b, &stop).await });
        // The client resets its connection (zero linger, then close).
        client.set_zero_linger().unwrap();
        drop(client);
        let mut buf = [0u8; 16];
        let read = server.read(&mut buf).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "the server sees a reset, not EOF"
        );
        let aborted = bridging.await.unwrap().unwrap_err();
        assert_eq!(aborted.side, Side::A);
    }

    #[tokio::test]
    async fn the_stop_token_resets_both_sides() {
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let bridging = tokio::spawn(async move { bridge(a, b, &token).await });
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        stop.cancel();
        let aborted = bridging.await.unwrap().unwrap_err();
        assert_eq!((aborted.side, aborted.carried.a_to_b), (Side::Stop, 1));
        let mut buf = [0u8; 16];
        for socket in [&mut client, &mut server] {
            let read = socket.read(&mut buf).await.map_err(|e| e.kind());
            assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
        }
    }
}
