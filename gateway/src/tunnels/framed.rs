//! A tunnel stream as one leg of a bridge: bytes in DATA frames, a clean end as an END frame,
//! an abnormal end as a RESET frame — and an EOF without an END read as the cut it is.
//!
//! Reads return payload bytes, `Ok(0)` once the peer's END arrived, and an error for a RESET,
//! an EOF before END, or a malformed frame. `poll_shutdown` writes our END but keeps the stream
//! open: a RESET may still have to follow, and the stream closes only when both directions
//! ended ([`Leg::finish`]). After the peer's END, the stream is still watched
//! ([`Leg::poll_abnormal`]): a RESET, or an EOF while we are still sending, ends the tunnel.
//!
//! A stream whose tunnel ended cleanly both ways may carry the next tunnel
//! ([`Framed::reusable`]): its finish hands the stream back instead of closing it. Nothing is
//! read past the peer's END, so the next request starts on a clean boundary.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use peerup_proxy::Leg;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Guard, Switch};
use crate::protocol::frame::{HEADER, Header, Reason, WRITE_DATA};

/// Time to close the stream cleanly once both directions ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time to hand a RESET to the stream before dropping it anyway. Short: when the stream's send
/// window is full (the peer reads slowly), the RESET would wait behind data, and dropping the
/// stream ends the tunnel on the far side as well (an EOF without END reads as a cut).
const RESET_TIMEOUT: Duration = Duration::from_millis(100);

/// See the module docs.
pub struct Framed<T> {
    io: T,
    /// Header bytes read so far.
    head: [u8; HEADER],
    head_len: usize,
    /// Payload bytes left in the DATA frame being read.
    remaining: usize,
    /// The peer's END arrived.
    read_end: bool,
    /// Encoded frames not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    wrote_end: bool,
    /// The peer already ended the tunnel abnormally (no RESET needed back).
    broken: bool,
    /// The peer broke the protocol (a RESET with that reason goes back).
    malformed: bool,
    switch: Switch,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    guard: Option<Guard>,
    /// Where the stream goes after a clean end both ways, instead of being closed.
    recycle: Option<Recycle<T>>,
}

/// Takes a stream whose tunnel ended cleanly both ways, for the next tunnel.
type Recycle<T> = Box<dyn FnOnce(T) + Send>;

impl<T> std::fmt::Debug for Framed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("read_end", &self.read_end)
            .field("wrote_end", &self.wrote_end)
            .finish()
    }
}

fn cut(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, message.into())
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Framed<T> {
    /// Frame `io`; `guard` is the tunnel's place in the registry (its kill switch).
    pub fn new(io: T, guard: Option<Guard>) -> Self {
        let switch = guard.as_ref().map(|g| g.switch().clone()).unwrap_or_default();
        let killed = Box::pin(switch.token().clone().cancelled_owned());
        Framed {
            io,
            head: [0; HEADER],
            head_len: 0,
            remaining: 0,
            read_end: false,
            // Grows to one frame on first write; idle tunnels hold no buffer.
            out: Vec::new(),
            out_pos: 0,
            wrote_end: false,
            broken: false,
            malformed: false,
            switch,
            killed,
            guard,
            recycle: None,
        }
    }

    /// After a clean end both ways, hand the stream to `recycle` instead of closing it.
    pub fn reusable(mut self, recycle: impl FnOnce(T) + Send + 'static) -> Self {
        self.recycle = Some(Box::new(recycle));
        self
    }

    /// Read the next frame header; `Ok(None)` when the stream ended before a header began.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Header>>> {
        while self.head_len < HEADER {
            let mut buf = ReadBuf::new(&mut self.head[self.head_len..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(match self.head_len {
                    0 => Ok(None),
                    _ => Err(cut("the tunnel ended inside a frame header")),
                });
            }
            self.head_len += n;
        }
        self.head_len = 0;
        let header = Header::decode(self.head)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Poll::Ready(Ok(Some(header)))
    }

    /// Write out what `out` holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn queue(&mut self, header: Header, payload: &[u8]) {
        self.out.extend_from_slice(&header.encode());
        self.out.extend_from_slice(payload);
    }

    /// Remember how the far side ended the tunnel when `result` is an error: a malformed frame
    /// is answered with a protocol RESET, anything else needs no answer.
    fn note<R>(&mut self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(e)) = &result {
            match e.kind() {
                io::ErrorKind::InvalidData => self.malformed = true,
                _ => self.broken = true,
            }
        }
        result
    }

    fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.read_end {
                return Poll::Ready(Ok(()));
            }
            if self.remaining > 0 {
                let want = self.remaining.min(buf.remaining());
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut limited))?;
                let n = limited.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(cut("the tunnel ended inside a data frame")));
                }
                buf.advance(n);
                self.remaining -= n;
                return Poll::Ready(Ok(()));
            }
            match ready!(self.poll_header(cx))? {
                None => return Poll::Ready(Err(cut("the tunnel ended without an end frame"))),
                Some(Header::Data(len)) => self.remaining = len,
                Some(Header::End) => self.read_end = true,
                Some(Header::Reset(reason)) => {
                    return Poll::Ready(Err(cut(format!("the peer reset the tunnel: {reason}"))));
                }
                Some(Header::Next) => {
                    let e =
                        io::Error::new(io::ErrorKind::InvalidData, "NEXT frame inside a tunnel");
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncRead for Framed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = this.poll_read_frames(cx, buf);
        this.note(result)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncWrite for Framed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.wrote_end {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(WRITE_DATA);
        this.queue(Header::Data(n), &buf[..n]);
        // The bytes are ours now; push them on as far as the stream takes them.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Our direction's clean end: an END frame; the stream stays open (see the module docs).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.wrote_end {
            this.queue(Header::End, &[]);
            this.wrote_end = true;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Leg for Framed<T> {
    fn is_tunnel(&self) -> bool {
        true
    }

    fn headroom(&self) -> usize {
        HEADER
    }

    /// A DATA frame built where the bridge read the bytes: its header goes in the room in
    /// front, and header and payload go to the stream in one write (one muxer frame) without
    /// our copying them. What the stream does not take is queued as `poll_write` queues.
    fn poll_write_after(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if self.wrote_end {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().saturating_sub(HEADER).min(WRITE_DATA);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let frame = &mut buf[..HEADER + n];
        frame[..HEADER].copy_from_slice(&Header::Data(n).encode());
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, frame))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        if written < frame.len() {
            // The frame is begun: the rest is ours now, written before anything else.
            self.out.extend_from_slice(&frame[written..]);
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_abnormal(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.killed.as_mut().poll(cx).is_ready() {
            let reason = self.switch.reason().unwrap_or(Reason::Shutdown);
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("tunnel ended here: {reason}"),
            ));
        }
        if !self.read_end || self.wrote_end {
            // The read direction is still open: whatever comes is read by the copy. Or both
            // directions ended: nothing more belongs to this tunnel (on a reused stream the
            // peer's next request may already be on its way).
            return Poll::Pending;
        }
        // After the peer's END only a RESET may follow, and the stream must not end before
        // ours: the peer closes it only once it has read our END.
        let result: io::Result<()> = match self.poll_header(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Some(Header::Reset(reason)))) => {
                Err(cut(format!("the peer reset the tunnel: {reason}")))
            }
            Poll::Ready(Ok(Some(header))) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{header:?} after the end frame"),
            )),
            Poll::Ready(Ok(None)) => Err(cut("the tunnel closed before our end frame")),
            Poll::Ready(Err(e)) => Err(e),
        };
        match self.note(Poll::Ready(result)) {
            Poll::Ready(Err(e)) => Poll::Ready(e),
            _ => Poll::Pending,
        }
    }

    async fn finish(mut self) {
        let clean = self.read_end && self.wrote_end && self.out_pos == self.out.len();
        if clean
            && self.switch.reason().is_none()
            && let Some(recycle) = self.recycle.take()
        {
            // Leave the registry before the stream can carry another tunnel.
            drop(self.guard.take());
            return recycle(self.io);
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
    }

    async fn abort(mut self) {
        if !self.broken {
            let reason = match (self.switch.reason(), self.malformed) {
                (Some(reason), _) => reason,
                (None, true) => Reason::Protocol,
                (None, false) => Reason::SocketFailed,
            };
            let reset = async {
                // A RESET starts at a frame boundary: finish the frame in flight first.
                std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
                self.io.write_all(&Header::Reset(reason).encode()).await?;
                self.io.shutdown().await
            };
            let _ = tokio::time::timeout(RESET_TIMEOUT, reset).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    fn framed(io: DuplexStream) -> Framed<DuplexStream> {
        Framed::new(io, None)
    }

    #[tokio::test]
    async fn data_then_end_reads_as_bytes_then_a_clean_eof() {
        let (a, mut raw) = duplex(1 << 16);
        let mut a = framed(a);
        a.write_all(b"hello").await.unwrap();
        a.shutdown().await.unwrap();
        let mut wire = [0u8; 13];
        raw.read_exact(&mut wire).await.unwrap();
        assert_eq!(wire, [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 1, 0, 0, 0]);

        let (b, mut raw) = duplex(1 << 16);
        let mut b = framed(b);
        raw.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn an_eof_without_an_end_frame_is_a_reset_not_a_clean_end() {
        for wire in [&[][..], &[0, 0, 0, 5, b'h', b'i'][..], &[0, 0][..], &[0, 0, 0, 2, 1, 2][..]] {
            let (b, mut raw) = duplex(1 << 16);
            let mut b = framed(b);
            raw.write_all(wire).await.unwrap();
            drop(raw);
            let mut got = Vec::new();
            let error = b.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{wire:?}: {error}");
        }
    }

    #[tokio::test]
    async fn reset_and_malformed_frames_are_errors() {
        let cases: [(&[u8], io::ErrorKind); 4] = [
            (&[2, 0, 0, 2], io::ErrorKind::ConnectionReset),
            (&[9, 0, 0, 0], io::ErrorKind::InvalidData),
            (&[0, 0, 0, 0], io::ErrorKind::InvalidData),
            (&[0, 0x10, 0, 1], io::ErrorKind::InvalidData),
        ];
        for (wire, kind) in cases {
            let (b, mut raw) = duplex(1 << 16);
            let mut b = framed(b);
            raw.write_all(wire).await.unwrap();
            let mut got = Vec::new();
            let error = b.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(error.kind(), kind, "{wire:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_reset_after_the_peers_end_is_noticed_while_we_still_send() {
        let (b, mut raw) = duplex(1 << 16);
        let mut b = framed(b);
        raw.write_all(&Header::End.encode()).await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let watch = std::future::poll_fn(|cx| b.poll_abnormal(cx));
        raw.write_all(&Header::Reset(Reason::Revoked).encode()).await.unwrap();
        let error = watch.await;
        assert!(error.to_string().contains("access revoked"), "{error}");
    }

    #[tokio::test]
    async fn a_malformed_frame_is_answered_with_a_protocol_reset() {
        let (b, mut raw) = duplex(1 << 16);
        let mut b = framed(b);
        raw.write_all(&[9, 0, 0, 0]).await.unwrap();
        let mut got = Vec::new();
        assert!(b.read_to_end(&mut got).await.is_err());
        b.abort().await;
        let mut wire = Vec::new();
        raw.read_to_end(&mut wire).await.unwrap();
        assert_eq!(wire, Header::Reset(Reason::Protocol).encode());
    }

    #[tokio::test]
    async fn abort_sends_a_reset_with_the_switch_reason() {
        let (a, mut raw) = duplex(1 << 16);
        let a = framed(a);
        a.switch.flip(Reason::Revoked);
        a.abort().await;
        let mut wire = Vec::new();
        raw.read_to_end(&mut wire).await.unwrap();
        assert_eq!(wire, Header::Reset(Reason::Revoked).encode());
    }

    #[tokio::test]
    async fn bridged_bytes_are_framed_where_they_lie_one_buffer_per_frame() {
        let bulk: Vec<u8> =
            (0..3 * peerup_proxy::BRIDGE_BUFFER + 17).map(|i| (i % 251) as u8).collect();
        let source = peerup_proxy::Plain(tokio::io::join(
            std::io::Cursor::new(bulk.clone()),
            tokio::io::sink(),
        ));
        // A small pipe: the stream takes part of a frame at a time.
        let (b, mut raw) = duplex(1000);
        raw.write_all(&Header::End.encode()).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let bridging =
            tokio::spawn(async move { peerup_proxy::bridge(source, framed(b), &stop).await });
        let mut wire = Vec::new();
        raw.read_to_end(&mut wire).await.unwrap();
        let carried = bridging.await.unwrap().unwrap();
        assert_eq!(carried.a_to_b, bulk.len() as u64);

        let (mut payload, mut largest, mut at) = (Vec::new(), 0, 0);
        loop {
            let header = Header::decode(wire[at..at + HEADER].try_into().unwrap()).unwrap();
            at += HEADER;
            match header {
                Header::Data(n) => {
                    payload.extend_from_slice(&wire[at..at + n]);
                    largest = largest.max(HEADER + n);
                    at += n;
                }
                Header::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(at, wire.len(), "nothing after END");
        assert!(payload == bulk, "every byte, in order, no header written over one");
        assert_eq!(
            largest,
            peerup_proxy::BRIDGE_BUFFER,
            "a full buffer is one frame, header included"
        );
    }

    /// A reusable tunnel and where its stream went back to.
    fn reusable(
        io: DuplexStream,
    ) -> (Framed<DuplexStream>, std::sync::mpsc::Receiver<DuplexStream>) {
        let (back, kept) = std::sync::mpsc::channel();
        let framed = framed(io).reusable(move |io| back.send(io).unwrap());
        (framed, kept)
    }

    #[tokio::test]
    async fn a_clean_end_both_ways_hands_the_stream_back_with_what_follows_unread() {
        let (a, mut raw) = duplex(1 << 16);
        let (mut a, kept) = reusable(a);
        // The peer's data and END, then already the next request of the stream's next tunnel.
        let mut wire = Header::Data(2).encode().to_vec();
        wire.extend_from_slice(b"hi");
        wire.extend_from_slice(&Header::End.encode());
        wire.extend_from_slice(b"next");
        raw.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        a.shutdown().await.unwrap();
        // Both directions ended: the watch reads no further (the next request is not a frame).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(a.poll_abnormal(&mut cx).is_pending());
        a.finish().await;
        let mut io = kept.try_recv().expect("the stream was handed back");
        let mut next = [0u8; 4];
        io.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
        let mut end = [0u8; HEADER];
        raw.read_exact(&mut end).await.unwrap();
        assert_eq!(end, Header::End.encode(), "our END went out before the hand-back");
    }

    #[tokio::test]
    async fn a_stream_is_closed_not_reused_unless_both_ways_ended_cleanly() {
        // Only the peer ended: our direction never sent END.
        let (a, mut raw) = duplex(1 << 16);
        let (mut a, kept) = reusable(a);
        raw.write_all(&Header::End.encode()).await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        a.finish().await;
        assert!(kept.try_recv().is_err());
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed, nothing written: {rest:?}");
        // Both ended, but the tunnel's switch was flipped (revoked) meanwhile.
        let (a, mut raw) = duplex(1 << 16);
        let (mut a, kept) = reusable(a);
        raw.write_all(&Header::End.encode()).await.unwrap();
        a.read_to_end(&mut got).await.unwrap();
        a.shutdown().await.unwrap();
        a.switch.flip(Reason::Revoked);
        a.finish().await;
        assert!(kept.try_recv().is_err());
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, Header::End.encode(), "closed after our END");
    }
}
