//! Serving tunnel streams: the peer side of `/peerup/tunnel/2.0.0`.
//!
//! Every inbound stream is admitted against two bounds (streams per peer and in total); past
//! them it is answered "busy". An admitted stream has a few seconds to send its request; the
//! named service must exist and its list must allow the peer (checked on every stream, even
//! from a peer we dialled ourselves, and again whenever the lists change: see [`Tunnels`]).
//! Then the service's local address is connected within `limits.service_timeout` — shorter
//! than the opener's deadline, so a slow service is reported as such and not as a peer that
//! timed out — and only once it accepted do we answer OK and start bridging frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use peerup_proxy::bridge;
use peerup_proxy::dial::{self, DialError};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, info, info_span};

use crate::auth::Access;
use crate::config::{Config, HostPort, ServiceName};
use crate::node::Inbound;
use crate::node::tunnel::refuse;
use crate::protocol::{Request, Response, Status};
use crate::tunnels::{self, Direction, Framed, Tunnels};

/// Time a peer has to send its request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    per_peer: Mutex<HashMap<PeerId, usize>>,
}

/// A stream's place within the limits, released on drop.
struct Slot {
    host: Arc<ServiceHost>,
    peer: PeerId,
    _total: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self.host.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
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
            per_peer: Mutex::new(HashMap::new()),
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
                    Some(stream) => self.admit(stream, &tasks, &abort),
                    None => return,
                },
            }
        }
        inbound.close();
        while let Some(late) = inbound.recv().await {
            tasks.spawn(refuse(late.stream, Status::Busy, "node is shutting down"));
        }
    }

    fn admit(self: &Arc<Self>, inbound: Inbound, tasks: &TaskTracker, abort: &CancellationToken) {
        let span = info_span!("serve", peer = %inbound.peer, relayed = inbound.relayed, service = tracing::field::Empty);
        let Some(slot) = self.try_slot(inbound.peer) else {
            span.in_scope(|| info!("stream limit reached: answering busy"));
            tasks.spawn(refuse(inbound.stream, Status::Busy, "stream limit reached"));
            return;
        };
        let (host, abort) = (self.clone(), abort.clone());
        let serving = async move {
            // Past the grace period, even a stream still being set up ends.
            tokio::select! {
                () = host.serve(inbound, slot, abort.clone()) => {}
                () = abort.cancelled() => {}
            }
        };
        tasks.spawn(serving.instrument(span));
    }

    fn try_slot(self: &Arc<Self>, peer: PeerId) -> Option<Slot> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_peer.entry(peer).or_default();
        if *count >= self.limits.per_peer {
            return None;
        }
        *count += 1;
        Some(Slot { host: self.clone(), peer, _total: total })
    }

    async fn serve(self: Arc<Self>, inbound: Inbound, _slot: Slot, abort: CancellationToken) {
        debug!("inbound tunnel stream");
        let mut stream = inbound.stream.compat();
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, Request::read(&mut stream)).await
        {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => {
                info!(%error, "bad tunnel request");
                let _ =
                    Response::new(Status::BadRequest, error.to_string()).refuse(&mut stream).await;
                return;
            }
            Err(_) => return debug!("no tunnel request in time"),
        };
        let Some(service) = self.table().find(&request).cloned() else {
            info!(%request, "no such service");
            let _ =
                Response::new(Status::NoSuchService, "no such service").refuse(&mut stream).await;
            return;
        };
        Span::current().record("service", service.name.as_str());
        // Registered before the checks: a revocation either happens before them (and they see
        // it) or after (and the registry resets this tunnel).
        let guard = self.tunnels.register(tunnels::Info {
            peer: inbound.peer,
            connection: inbound.connection,
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
            return;
        }
        if !self.access.may_use(&service.name, &inbound.peer) {
            info!("refused: peer is not authorized for this service");
            let _ =
                Response::new(Status::NotAuthorized, "not authorized").refuse(&mut stream).await;
            return;
        }
        let local = match self.connect_local(&service.local).await {
            Ok(local) => local,
            Err(response) => {
                info!(local = %service.local, reason = %response.reason, "service unavailable");
                let _ = response.refuse(&mut stream).await;
                return;
            }
        };
        if Response::new(Status::Ok, "").write(&mut stream).await.is_err() {
            return;
        }
        let started = Instant::now();
        let outcome = bridge(Framed::new(stream, Some(guard)), local, &abort).await;
        peerup_proxy::log_tunnel_end(&outcome, started, peerup_proxy::Side::A);
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
