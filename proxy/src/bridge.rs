//! Copy bytes both ways between two streams.
//!
//! Each direction ends on its own: EOF read on one side becomes a shutdown (half-close) of the
//! other side's write half, and the other direction keeps flowing until it ends too. Buffers are
//! large because copy size dominates throughput on this path (8 KiB buffers cost 25–50%).

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional_with_sizes};

/// Bytes buffered per direction.
pub const BRIDGE_BUFFER: usize = 64 * 1024;

/// Bytes carried by a finished bridge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Copy `a` → `b` and `b` → `a` until both directions reached EOF.
pub async fn bridge<A, B>(a: &mut A, b: &mut B) -> std::io::Result<Carried>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) =
        copy_bidirectional_with_sizes(a, b, BRIDGE_BUFFER, BRIDGE_BUFFER).await?;
    Ok(Carried { a_to_b, b_to_a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn half_close_passes_through_and_other_direction_keeps_flowing() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let bridging = tokio::spawn(async move { bridge(&mut a, &mut b).await });

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
}
