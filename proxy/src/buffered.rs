//! A client connection with the bytes read ahead during its handshake.
//!
//! The front end reads a client's first bytes to tell its protocol apart, and SOCKS4 and HTTP
//! heads are parsed from a buffer, so bytes past the head (a request body, early data an app
//! sent before our reply) may already be in memory. [`Buffered`] keeps them: reads return the
//! buffered bytes first, then read the socket, so nothing read ahead is lost on the way to the
//! bridge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::wire::Parse;

/// Reads smaller than this (a SOCKS parser reading its request field by field) read this much
/// from the socket and serve the rest from memory: one syscall for the request, not one per field.
const READ_AHEAD: usize = 512;

/// A stream and the bytes read from it but not yet consumed.
#[derive(Debug)]
pub struct Buffered<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S> Buffered<S> {
    pub fn new(inner: S) -> Self {
        Buffered { inner, buf: Vec::new(), pos: 0 }
    }

    /// The bytes read ahead and not consumed.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Mark `n` bytes of [`Buffered::unread`] as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> Buffered<S> {
    /// Read one message from the front of the stream with an I/O-free `parse`: bytes are read
    /// until it has a message or an error (keeping at most `limit` unread), and the message's
    /// bytes are consumed; whatever follows stays buffered. `None`: the stream ended first.
    pub async fn read_message<T, E>(
        &mut self,
        limit: usize,
        parse: impl Fn(&[u8]) -> Result<Parse<T>, E>,
    ) -> io::Result<Option<Result<T, E>>> {
        loop {
            match parse(self.unread()) {
                Ok(Parse::Done { value, consumed }) => {
                    self.consume(consumed);
                    return Ok(Some(Ok(value)));
                }
                Ok(Parse::NeedMore) => {
                    if self.fill(limit).await? == 0 {
                        return Ok(None);
                    }
                }
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    }

    /// Read more bytes into the buffer, keeping at most `limit` unread; the count read (0 at
    /// the end of the stream). A buffer already at `limit` is an error: the head is too long.
    pub async fn fill(&mut self, limit: usize) -> io::Result<usize> {
        let unread = self.buf.len() - self.pos;
        if unread >= limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
        let mut chunk = vec![0u8; (limit - unread).min(8 * 1024)];
        let n = self.inner.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Buffered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos == self.buf.len() && out.remaining() < READ_AHEAD {
            let this = &mut *self;
            this.buf.resize(READ_AHEAD, 0);
            let mut ahead = ReadBuf::new(&mut this.buf);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut ahead);
            let n = ahead.filled().len();
            this.buf.truncate(n);
            this.pos = 0;
            if n == 0 {
                return polled;
            }
        }
        if self.pos < self.buf.len() {
            let n = out.remaining().min(self.buf.len() - self.pos);
            let start = self.pos;
            out.put_slice(&self.buf[start..start + n]);
            self.consume(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

crate::bridge::delegate_leg!(Buffered);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bytes_read_ahead_come_out_first_and_none_are_lost() {
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b"HEADbody-1").await.unwrap();
        let mut buffered = Buffered::new(far);
        while buffered.unread().len() < 10 {
            buffered.fill(1024).await.unwrap();
        }
        buffered.consume(4);
        near.write_all(b"body-2").await.unwrap();
        drop(near);
        let mut rest = Vec::new();
        buffered.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"body-1body-2");
    }

    /// Counts the reads that reach it.
    struct Counted<R>(R, usize);

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.1 += 1;
            Pin::new(&mut self.0).poll_read(cx, out)
        }
    }

    #[tokio::test]
    async fn a_request_read_field_by_field_is_one_read_of_the_socket() {
        let request = b"\x05\x01\x00\x03\x0ehome.alice.p2p\x00\x07early data";
        let mut buffered = Buffered::new(Counted(&request[..], 0));
        let (mut head, mut len) = ([0u8; 4], [0u8; 1]);
        buffered.read_exact(&mut head).await.unwrap();
        buffered.read_exact(&mut len).await.unwrap();
        let mut name = vec![0u8; usize::from(len[0])];
        buffered.read_exact(&mut name).await.unwrap();
        let port = buffered.read_u16().await.unwrap();
        assert_eq!((&name[..], port), (&b"home.alice.p2p"[..], 7));
        assert_eq!(buffered.inner.1, 1, "one read for the whole request");
        let mut rest = Vec::new();
        buffered.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"early data", "bytes past the request are kept for the bridge");
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_an_error() {
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(&[b'x'; 32]).await.unwrap();
        let mut buffered = Buffered::new(far);
        while buffered.unread().len() < 16 {
            buffered.fill(16).await.unwrap();
        }
        assert!(buffered.fill(16).await.is_err());
    }
}
