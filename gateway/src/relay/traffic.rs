//! Counting what the relay carries, per member and per circuit.
//!
//! libp2p's relay reports circuits but not their bytes, so the relay's transport wraps every
//! connection's muxer: each substream counts its bytes, and looks at its first bytes (the
//! multistream-select header, plaintext inside the secure channel) to learn whether it is a
//! relay STOP stream. Every circuit has exactly one STOP stream, from the relay to the circuit's
//! destination, carrying everything both ends send; so its counters are the circuit's bytes.
//!
//! State is kept only for STOP streams (bounded per destination, and only members get streams):
//! a connection that the gate refuses leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use serde::Serialize;

/// How many bytes of a substream's start are examined for its protocol.
const SNIFF_BYTES: usize = 128;
/// Closed circuits remembered for `peerup status`.
const CLOSED_KEPT: usize = 64;

const UNKNOWN: u8 = 0;
const STOP: u8 = 1;
const OTHER: u8 = 2;

/// One substream's counters.
#[derive(Debug, Default)]
pub struct StreamCount {
    /// Bytes read from the remote (for a STOP stream: destination → source).
    pub bytes_in: AtomicU64,
    /// Bytes written to the remote (for a STOP stream: source → destination).
    pub bytes_out: AtomicU64,
    kind: AtomicU8,
    sniffed: Mutex<Vec<u8>>,
}

/// Everything the relay counts.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes on all circuits, ever.
    pub circuit_bytes: AtomicU64,
    /// STOP streams to each destination not yet matched with a circuit.
    unclaimed_stops: Mutex<HashMap<PeerId, VecDeque<Arc<StreamCount>>>>,
    circuits: Mutex<Circuits>,
}

#[derive(Debug, Default)]
struct Circuits {
    open: Vec<Circuit>,
    closed: VecDeque<Circuit>,
}

#[derive(Debug, Clone)]
struct Circuit {
    src: PeerId,
    dst: PeerId,
    since: SystemTime,
    stop: Option<Arc<StreamCount>>,
}

/// A circuit as `peerup status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CircuitStatus {
    pub src: String,
    pub dst: String,
    pub open: bool,
    pub age_secs: u64,
    pub bytes_src_to_dst: u64,
    pub bytes_dst_to_src: u64,
}

impl Traffic {
    /// Wrap a connection's muxer so its substreams are counted.
    pub fn wrap(self: &Arc<Self>, peer: PeerId, muxer: StreamMuxerBox) -> StreamMuxerBox {
        StreamMuxerBox::new(Counting { inner: muxer, peer, traffic: self.clone() })
    }

    fn stop_opened(&self, dst: PeerId, stop: Arc<StreamCount>) {
        let mut unclaimed = self.unclaimed_stops.lock().unwrap_or_else(|e| e.into_inner());
        let stops = unclaimed.entry(dst).or_default();
        stops.push_back(stop);
        if stops.len() > CLOSED_KEPT {
            stops.pop_front();
        }
    }

    /// The relay accepted a circuit from `src` to `dst`: its STOP stream to `dst` is open.
    pub fn circuit_opened(&self, src: PeerId, dst: PeerId) {
        let stop = {
            let mut unclaimed = self.unclaimed_stops.lock().unwrap_or_else(|e| e.into_inner());
            let stop = unclaimed.get_mut(&dst).and_then(VecDeque::pop_back);
            if unclaimed.get(&dst).is_some_and(VecDeque::is_empty) {
                unclaimed.remove(&dst);
            }
            stop
        };
        let circuit = Circuit { src, dst, since: SystemTime::now(), stop };
        self.circuits.lock().unwrap_or_else(|e| e.into_inner()).open.push(circuit);
    }

    pub fn circuit_closed(&self, src: PeerId, dst: PeerId) {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = circuits.open.iter().position(|c| c.src == src && c.dst == dst) {
            let circuit = circuits.open.remove(pos);
            circuits.closed.push_back(circuit);
            if circuits.closed.len() > CLOSED_KEPT {
                circuits.closed.pop_front();
            }
        }
    }

    pub fn circuits(&self) -> Vec<CircuitStatus> {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let open = circuits.open.iter().map(|c| (c, true));
        let closed = circuits.closed.iter().map(|c| (c, false));
        open.chain(closed)
            .map(|(c, open)| {
                let count = |f: fn(&StreamCount) -> &AtomicU64| {
                    c.stop.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed))
                };
                CircuitStatus {
                    src: c.src.to_base58(),
                    dst: c.dst.to_base58(),
                    open,
                    age_secs: c.since.elapsed().map_or(0, |d| d.as_secs()),
                    bytes_src_to_dst: count(|s| &s.bytes_out),
                    bytes_dst_to_src: count(|s| &s.bytes_in),
                }
            })
            .collect()
    }

    /// A member left: its unmatched STOP streams will never be matched.
    pub fn peer_gone(&self, peer: &PeerId) {
        self.unclaimed_stops.lock().unwrap_or_else(|e| e.into_inner()).remove(peer);
    }
}

struct Counting {
    inner: StreamMuxerBox,
    peer: PeerId,
    traffic: Arc<Traffic>,
}

impl Counting {
    fn counted(&self, stream: SubstreamBox) -> SubstreamBox {
        SubstreamBox::new(Counted {
            inner: stream,
            count: Arc::new(StreamCount::default()),
            peer: self.peer,
            traffic: self.traffic.clone(),
        })
    }
}

impl StreamMuxer for Counting {
    type Substream = SubstreamBox;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<SubstreamBox>> {
        let stream = futures::ready!(Pin::new(&mut self.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(self.counted(stream)))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<SubstreamBox>> {
        let stream = futures::ready!(Pin::new(&mut self.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(self.counted(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

struct Counted {
    inner: SubstreamBox,
    count: Arc<StreamCount>,
    peer: PeerId,
    traffic: Arc<Traffic>,
}

impl Counted {
    fn record(&self, bytes: &[u8], inbound: bool) {
        let n = bytes.len() as u64;
        let stream = if inbound { &self.count.bytes_in } else { &self.count.bytes_out };
        stream.fetch_add(n, Ordering::Relaxed);
        match self.count.kind.load(Ordering::Relaxed) {
            STOP => {
                self.traffic.circuit_bytes.fetch_add(n, Ordering::Relaxed);
            }
            UNKNOWN => self.sniff(bytes),
            _ => {}
        }
    }

    fn sniff(&self, bytes: &[u8]) {
        let mut sniffed = self.count.sniffed.lock().unwrap_or_else(|e| e.into_inner());
        let room = SNIFF_BYTES.saturating_sub(sniffed.len());
        sniffed.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let stop_name = libp2p::relay::STOP_PROTOCOL_NAME;
        let stop = stop_name.as_ref().as_bytes();
        let kind = if sniffed.windows(stop.len()).any(|w| w == stop) {
            STOP
        } else if sniffed.len() >= SNIFF_BYTES {
            OTHER
        } else {
            return;
        };
        self.count.kind.store(kind, Ordering::Relaxed);
        sniffed.clear();
        sniffed.shrink_to_fit();
        if kind == STOP {
            let so_far = self.count.bytes_in.load(Ordering::Relaxed)
                + self.count.bytes_out.load(Ordering::Relaxed);
            self.traffic.circuit_bytes.fetch_add(so_far, Ordering::Relaxed);
            self.traffic.stop_opened(self.peer, self.count.clone());
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = futures::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.record(&buf[..n], true);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = futures::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.record(&buf[..n], false);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
