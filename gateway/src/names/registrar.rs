//! The relay's side of names: one thread owns the [`Registry`] and answers, in order, the
//! requests the relay's swarm forwards and the operator's commands from the control socket.
//! Writes are fsynced, so they run off the async workers; a full queue is answered "busy"
//! rather than waited on.

use std::collections::BTreeMap;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::protocol::{NamesRequest, NamesResponse, Refusal, decode_bytes, encode_bytes};
use super::record::unix_now;
use super::store::{Listed, Registry};
use crate::node::{Command, Handle};

/// Requests waiting for the registrar thread.
const QUEUE: usize = 256;

enum Job {
    Request { peer: PeerId, request: NamesRequest, reply: oneshot::Sender<NamesResponse> },
    List(oneshot::Sender<Vec<Listed>>),
    Release { host: String, reply: oneshot::Sender<Result<String, String>> },
    Reserve { names: BTreeMap<String, PeerId>, reply: oneshot::Sender<Result<Vec<String>, String>> },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Request { .. } => "Request",
            Job::List(_) => "List",
            Job::Release { .. } => "Release",
            Job::Reserve { .. } => "Reserve",
        })
    }
}

/// The way to the registrar thread; cheap to clone. The thread ends when every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct RegistryHandle {
    jobs: mpsc::Sender<Job>,
}

/// The thread, to be joined at shutdown.
#[derive(Debug)]
pub struct RegistryThread(tokio::task::JoinHandle<()>);

impl RegistryThread {
    pub async fn join(self) {
        let _ = self.0.await;
    }
}

/// Start the registrar thread over `registry`; each record it issues is handed to the relay's
/// swarm (`node`) to be put to the network's other relays.
pub fn start(registry: Registry, node: Handle) -> (RegistryHandle, RegistryThread) {
    let (jobs, receiver) = mpsc::channel(QUEUE);
    let thread = tokio::task::spawn_blocking(move || serve(registry, receiver, node));
    (RegistryHandle { jobs }, RegistryThread(thread))
}

fn serve(mut registry: Registry, mut jobs: mpsc::Receiver<Job>, node: Handle) {
    while let Some(job) = jobs.blocking_recv() {
        handle(&mut registry, job);
        for (host, record) in registry.take_issued() {
            // Waits while the swarm's queue is full: no record is left out of replication.
            if node.blocking_send(Command::PublishName { host, record }).is_err() {
                return;
            }
        }
    }
}

fn handle(registry: &mut Registry, job: Job) {
    {
        let now = unix_now();
        match job {
            Job::Request { peer, request, reply } => {
                let _ = reply.send(answer(registry, peer, request, now));
            }
            Job::List(reply) => {
                let _ = reply.send(registry.list(now));
            }
            Job::Release { host, reply } => {
                let result = registry.release(&host, now).map_err(|(_, why)| why).map(|record| {
                    info!(host = %host, serial = record.serial, "released by the operator");
                    format!("released {host} (serial {})", record.serial)
                });
                let _ = reply.send(result);
            }
            Job::Reserve { names, reply } => {
                let result = registry.apply_reservations(names, now).map_err(|(_, why)| why);
                if let Ok(rebound) = &result {
                    for host in rebound {
                        info!(host = %host, "name assigned by relay.registry.names");
                    }
                }
                let _ = reply.send(result);
            }
        }
    }
}

fn answer(registry: &mut Registry, peer: PeerId, request: NamesRequest, now: u64) -> NamesResponse {
    let refused = |(code, message): (Refusal, String)| NamesResponse::Refused { code, message };
    match request {
        NamesRequest::Lookup { host } => match registry.lookup(&host, now) {
            Ok(Some(signed)) => NamesResponse::Record { record: encode_bytes(&signed) },
            Ok(None) => NamesResponse::NotFound,
            Err(refusal) => refused(refusal),
        },
        NamesRequest::Register { claim } | NamesRequest::Release { claim } => {
            let Some(bytes) = decode_bytes(&claim) else {
                return refused((Refusal::BadClaim, "the claim is not base64".into()));
            };
            match registry.claim(&bytes, peer, now) {
                Ok(signed) => {
                    if let Ok((record, _)) = super::Record::open(&signed) {
                        let owner = record.owner.as_deref().unwrap_or("(released)");
                        debug!(host = %record.host, owner, serial = record.serial, "name record issued");
                    }
                    NamesResponse::Record { record: encode_bytes(&signed) }
                }
                Err(refusal) => {
                    info!(%peer, why = %refusal.1, "name claim refused");
                    refused(refusal)
                }
            }
        }
    }
}

impl RegistryHandle {
    /// Answer a member's request (a relay that is not the registrar answers without this).
    /// A full queue or a stopped thread is "unavailable".
    pub fn request(&self, peer: PeerId, request: NamesRequest) -> oneshot::Receiver<NamesResponse> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.jobs.try_send(Job::Request { peer, request, reply })
            && let Job::Request { reply, .. } = job
        {
            let _ = reply.send(NamesResponse::Refused {
                code: Refusal::Unavailable,
                message: "the registrar is busy; try again".into(),
            });
        }
        answer
    }

    pub async fn list(&self) -> Option<Vec<Listed>> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::List(reply)).await.ok()?;
        answer.await.ok()
    }

    pub async fn release(&self, host: String) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "the registrar stopped".to_owned();
        self.jobs.send(Job::Release { host, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn reserve(&self, names: BTreeMap<String, PeerId>) -> Result<Vec<String>, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "the registrar stopped".to_owned();
        self.jobs.send(Job::Reserve { names, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
