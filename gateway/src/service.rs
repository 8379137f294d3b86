//! Serving tunnel streams: the peer side of `/peerup/tunnel/2.0.0`.
//!
//! Every inbound stream is admitted against two bounds (streams per peer and in total); past
//! them it is answered "busy". An admitted stream has a few seconds to send its request; the
//! named service must exist and its list must allow the peer (checked on every stream, even
//! from a peer we dialled ourselves, and again whenever the lists change: see [`Tunnels`]).
//! Then the service's local address is connected within `limits.service_timeout` — shorter
//! than the opener's deadline, so a slow service is reported as such and not as a peer that
//! timed out — and only once it accepted do we answer OK and start bridging frames.
//!
//! A stream whose tunnel ended cleanly both ways waits for the opener's next request and serves
//! it the same way (docs/protocol.md, "Streams carry one tunnel after another").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use peerup_proxy::bridge;
use peerup_proxy::dial::{self, DialError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, info, info_span};

use crate::auth::Access;
use crate::config::{Config, HostPort, ServiceName};
use crate::node::Inbound;
use crate::node::tunnel::refuse;
use crate::protocol::frame::Header;
use crate::protocol::{HeaderError, Request, Response, Status};
use crate::tunnels::{self, Direction, Framed, Tunnels};

/// Time a peer has to send its request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a stream whose tunnel ended cleanly waits for the peer's next request. Longer than the
/// opener keeps it (`node::tunnel::idle::IDLE_FOR`), so the opener closes it first.
pub const NEXT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one peer may keep waiting for a next request; past this, a stream closes when its
/// tunnel ends. An idle stream holds no place in the stream limits.
const IDLE_PER_PEER: usize = 32;
/// Streams waiting for a next request, all peers together.
const IDLE_TOTAL: usize = 1024;
/// Time to hand the opener our NEXT frame before closing the stream instead.
const NEXT_TIMEOUT: Duration = Duration::from_secs(1);

/// A service offered to peers.
#[derive(Debug)]
pub struct ServiceDef {
    pub name: ServiceName,
    pub local: HostPort,
    pub port: u16,
}

/// The services of this node, by port and by name.
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_port: HashMap<u16, Arc<ServiceDef>>,
    by_name: HashMap<String, Arc<ServiceDef>>,
}

impl ServiceTable {
    pub fn from_config(config: &Config) -> Self {
        let mut table = ServiceTable::default();
        for (name, service) in &config.services {
            let def = Arc::new(ServiceDef {
                name: name.clone(),
                local: service.local_address.clone(),
                port: service.port(),
            });
            table.by_port.insert(def.port, def.clone());
            table.by_name.insert(name.as_str().to_owned(), def);
        }
        table
    }

    pub fn find(&self, request: &Request) -> Option<&Arc<ServiceDef>> {
        match request {
            Request::Port(port) => self.by_port.get(port),
            Request::Name(name) => self.by_name.get(name),
        }
    }
}

/// Limits on streams served at once.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub per_peer: usize,
    pub total: usize,
    /// Time a service's local address has to accept.
    pub service_timeout: Duration,
}

/// Serves inbound tunnel streams.
#[derive(Debug)]
pub struct ServiceHost {
    table: std::sync::RwLock<Arc<ServiceTable>>,
    access: Arc<Access>,
    tunnels: Arc<Tunnels>,
    limits: StreamLimits,
    total: Arc<Semaphore>,
    per_peer: Counts,
    /// Streams waiting for a next request, per peer and in total.
    idle: Counts,
    idle_total: Arc<Semaphore>,
}

/// Counts per peer, shared with the places they hold.
type Counts = Arc<Mutex<HashMap<PeerId, usize>>>;

/// One place in a per-peer count, released on drop.
struct PeerCount {
    counts: Counts,
    peer: PeerId,
}

impl PeerCount {
    /// A place for `peer` in `counts` if it holds fewer than `limit`.
    fn take(counts: &Counts, peer: PeerId, limit: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(peer).or_default();
        if *count >= limit {
            if *count == 0 {
                map.remove(&peer);
            }
            return None;
        }
        *count += 1;
        Some(PeerCount { counts: counts.clone(), peer })
    }
}

impl Drop for PeerCount {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// A stream's place within the limits, released on drop.
struct Slot {
    _peer: PeerCount,
    _total: OwnedSemaphorePermit,
}

impl ServiceHost {
    pub fn new(
        table: ServiceTable,
        access: Arc<Access>,
        tunnels: Arc<Tunnels>,
        limits: StreamLimits,
    ) -> Arc<Self> {
        Arc::new(ServiceHost {
            table: std::sync::RwLock::new(Arc::new(table)),
            access,
            tunnels,
            limits,
            total: Arc::new(Semaphore::new(limits.total)),
            per_peer: Counts::default(),
            idle: Counts::default(),
            idle_total: Arc::new(Semaphore::new(IDLE_TOTAL)),
        })
    }

    /// Replace the services (a reload): new streams see the new table; open tunnels to a
    /// service that is gone or moved are reset.
    pub fn replace_services(&self, table: ServiceTable) {
        let table = Arc::new(table);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table.clone();
        let gone = |t: &tunnels::Info| {
            t.direction == Direction::In
                && t.service.as_ref().is_some_and(|name| {
                    table
                        .by_name
                        .get(name.as_str())
                        .is_none_or(|def| Some(&def.local) != t.local.as_ref())
                })
        };
        let count = self.tunnels.reset(gone, crate::protocol::frame::Reason::Revoked);
        if count > 0 {
            info!(tunnels = count, "services changed: reset the tunnels of removed services");
        }
    }

    fn table(&self) -> Arc<ServiceTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serve streams from `inbound` until `stop` is cancelled; afterwards new streams are
    /// answered "busy" by the node. Stream tasks are spawned on `tasks`; cancelling `abort`
    /// resets the tunnels still open.
    pub async fn run(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        stop: CancellationToken,
        abort: CancellationToken,
        tasks: TaskTracker,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                next = inbound.recv() => match next {
                    Some(stream) => self.admit(stream, &tasks, &stop, &abort),
                    None => return,
                },
            }
        }
        inbound.close();
        while let Some(late) = inbound.recv().await {
            tasks.spawn(refuse(late.stream, Status::Busy, "node is shutting down"));
        }
    }

    fn admit(
        self: &Arc<Self>,
        inbound: Inbound,
        tasks: &TaskTracker,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) {
        let span = info_span!("serve", peer = %inbound.peer, relayed = inbound.relayed);
        let Some(slot) = self.try_slot(inbound.peer) else {
            span.in_scope(|| info!("stream limit reached: answering busy"));
            tasks.spawn(refuse(inbound.stream, Status::Busy, "stream limit reached"));
            return;
        };
        let (host, stop, abort) = (self.clone(), stop.clone(), abort.clone());
        let serving = async move {
            // Past the grace period, even a stream still being set up ends.
            tokio::select! {
                () = host.serve(inbound, slot, stop, &abort) => {}
                () = abort.cancelled() => {}
            }
        };
        tasks.spawn(serving.instrument(span));
    }

    fn try_slot(&self, peer: PeerId) -> Option<Slot> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let peer = PeerCount::take(&self.per_peer, peer, self.limits.per_peer)?;
        Some(Slot { _peer: peer, _total: total })
    }

    /// Serve the tunnels one stream carries: its first request, then, after each tunnel that
    /// ended cleanly both ways — our side included: the service's socket was shut down after
    /// every byte was written, which our NEXT frame tells the opener — the opener's next request
    /// on the same stream. A stream waiting for a next request holds no slot (it takes one when
    /// the request comes) and closes instead when the peer has [`IDLE_PER_PEER`] waiting already
    /// or [`IDLE_TOTAL`] wait in all, after [`NEXT_REQUEST_TIMEOUT`], or when `stop` (shutdown)
    /// is cancelled.
    async fn serve(
        self: Arc<Self>,
        inbound: Inbound,
        slot: Slot,
        stop: CancellationToken,
        abort: &CancellationToken,
    ) {
        debug!("inbound tunnel stream");
        let Inbound { peer, connection, stream, .. } = inbound;
        let mut stream = stream.compat();
        let mut slot = Some(slot);
        loop {
            let (request, held) = match slot.take() {
                Some(first) => {
                    let read = tokio::time::timeout(REQUEST_TIMEOUT, Request::read(&mut stream));
                    match read.await {
                        Ok(Ok(request)) => (request, first),
                        Ok(Err(error)) => return bad_request(error, &mut stream).await,
                        Err(_) => return debug!("no tunnel request in time"),
                    }
                }
                None => {
                    let waiting = PeerCount::take(&self.idle, peer, IDLE_PER_PEER)
                        .zip(self.idle_total.clone().try_acquire_owned().ok());
                    let Some(waiting) = waiting else {
                        return debug!("enough streams wait for a next request: closing this one");
                    };
                    let ready = async {
                        stream.write_all(&Header::Next.encode()).await?;
                        stream.flush().await
                    };
                    if !matches!(tokio::time::timeout(NEXT_TIMEOUT, ready).await, Ok(Ok(()))) {
                        return debug!("the stream did not take our NEXT: closing it");
                    }
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = tokio::time::timeout(NEXT_REQUEST_TIMEOUT, Request::read(&mut stream)) => next,
                    };
                    drop(waiting);
                    let request = match next {
                        Ok(Ok(request)) => request,
                        // The opener closed the stream it kept, or its connection ended.
                        Ok(Err(HeaderError::Truncated | HeaderError::Io(_))) => return,
                        // A RESET (`02 00 00 reason`): the opener's side of the tunnel that just
                        // ended failed after ours had ended; nothing is left to reset.
                        Ok(Err(HeaderError::Kind(0x00))) => {
                            return debug!("the opener reset the tunnel after its end: closing");
                        }
                        Ok(Err(error)) => return bad_request(error, &mut stream).await,
                        Err(_) => return debug!("no next tunnel request in time"),
                    };
                    let Some(next_slot) = self.try_slot(peer) else {
                        info!("stream limit reached: answering busy");
                        let response = Response::new(Status::Busy, "stream limit reached");
                        let _ = response.refuse(&mut stream).await;
                        return;
                    };
                    (request, next_slot)
                }
            };
            // A span per tunnel: the service one names is not carried to the next.
            let span = info_span!("tunnel", service = tracing::field::Empty);
            let kept = self.tunnel(peer, connection, request, stream, abort).instrument(span).await;
            drop(held);
            match kept {
                Some(kept) => stream = kept,
                None => return,
            }
        }
    }

    /// One tunnel on `stream`: check the request, connect the service, answer, bridge. The
    /// stream back when the tunnel ended cleanly both ways (it may carry the next one).
    async fn tunnel(
        &self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        request: Request,
        mut stream: Compat<libp2p::Stream>,
        abort: &CancellationToken,
    ) -> Option<Compat<libp2p::Stream>> {
        let Some(service) = self.table().find(&request).cloned() else {
            info!(%request, "no such service");
            let _ =
                Response::new(Status::NoSuchService, "no such service").refuse(&mut stream).await;
            return None;
        };
        Span::current().record("service", service.name.as_str());
        // Registered before the checks: a revocation either happens before them (and they see
        // it) or after (and the registry resets this tunnel).
        let guard = self.tunnels.register(tunnels::Info {
            peer,
            connection,
            direction: Direction::In,
            service: Some(service.name.clone()),
            local: Some(service.local.clone()),
        });
        // The same for a reload that removed or moved the service in between.
        let current = self.table().find(&request).is_some_and(|now| now.local == service.local);
        if !current {
            info!(%request, "service removed by a reload");
            let _ =
                Response::new(Status::NoSuchService, "no such service").refuse(&mut stream).await;
            return None;
        }
        if !self.access.may_use(&service.name, &peer) {
            info!("refused: peer is not authorized for this service");
            let _ =
                Response::new(Status::NotAuthorized, "not authorized").refuse(&mut stream).await;
            return None;
        }
        let local = match self.connect_local(&service.local).await {
            Ok(local) => local,
            Err(response) => {
                info!(local = %service.local, reason = %response.reason, "service unavailable");
                let _ = response.refuse(&mut stream).await;
                return None;
            }
        };
        if Response::new(Status::Ok, "").write(&mut stream).await.is_err() {
            return None;
        }
        let started = Instant::now();
        let (back, kept) = oneshot::channel();
        let framed = Framed::new(stream, Some(guard)).reusable(move |stream| {
            let _ = back.send(stream);
        });
        let outcome = bridge(framed, local, abort).await;
        peerup_proxy::log_tunnel_end(&outcome, started, peerup_proxy::Side::A);
        kept.await.ok()
    }

    async fn connect_local(&self, local: &HostPort) -> Result<TcpStream, Response> {
        match dial::connect(&local.host, local.port, self.limits.service_timeout).await {
            Ok(socket) => Ok(socket),
            Err(DialError::Refused) => {
                Err(Response::new(Status::Refused, "the service refused the connection"))
            }
            Err(DialError::TimedOut(_)) => {
                Err(Response::new(Status::ServiceTimeout, "the service did not answer in time"))
            }
            Err(DialError::Other(error)) => {
                Err(Response::new(Status::Refused, format!("the service is unavailable: {error}")))
            }
        }
    }
}

/// Answer a request that cannot be read, and close the stream.
async fn bad_request(error: HeaderError, stream: &mut Compat<libp2p::Stream>) {
    info!(%error, "bad tunnel request");
    let _ = Response::new(Status::BadRequest, error.to_string()).refuse(stream).await;
}
