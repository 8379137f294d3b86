//! The per-connection half of the tunnel behaviour: accepts our protocol inbound, opens it
//! outbound when the behaviour asks, and reports both back.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};

use super::{OpenError, PROTOCOL};

/// Time for the remote to accept our stream and agree on the protocol.
const STREAM_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// After a tunnel stream starts, its connection is kept this long even with no stream open.
/// libp2p arms its idle timer each time a connection's last stream ends and disarms it when
/// the next one opens; that timer runs on a thread of its own, and arming or disarming it
/// wakes that thread (two more thread switches per tunnel on each side). Held open here, a
/// run of short tunnels never arms it; after the grace, libp2p's idle timeout
/// (`IDLE_CONNECTION_TIMEOUT`) runs as before. Our timer is tokio's: no thread of its own.
const BUSY_GRACE: Duration = Duration::from_secs(10);

/// Behaviour → handler: open a stream for request `id`.
#[derive(Debug)]
pub enum HandlerIn {
    Open(u64),
}

/// Handler → behaviour.
#[derive(Debug)]
pub enum HandlerOut {
    Inbound(Stream),
    Opened(u64, Stream),
    Failed(u64, OpenError),
}

/// Per-connection half: accepts our protocol inbound, opens it outbound on request.
#[derive(Debug, Default)]
pub struct Handler {
    to_open: VecDeque<u64>,
    opening: usize,
    events: VecDeque<HandlerOut>,
    /// Keeps the connection for [`BUSY_GRACE`] after the latest tunnel stream started: fires
    /// at most once per grace, then moves on to `busy_until` if a stream started since.
    busy: Option<Pin<Box<Sleep>>>,
    busy_until: Option<Instant>,
}

impl Handler {
    fn stream_started(&mut self) {
        let until = Instant::now() + BUSY_GRACE;
        self.busy_until = Some(until);
        if self.busy.is_none() {
            self.busy = Some(Box::pin(tokio::time::sleep_until(until)));
        }
    }

    /// Whether the grace is still running; registers for its end.
    fn poll_busy(&mut self, cx: &mut Context<'_>) {
        while let Some(sleep) = self.busy.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return;
            }
            match self.busy_until {
                Some(until) if until > sleep.deadline() => sleep.as_mut().reset(until),
                _ => {
                    self.busy = None;
                    self.busy_until = None;
                }
            }
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Open streams keep the connection alive on their own; keep it while we open more,
        // and for a grace after the latest one started.
        !self.to_open.is_empty() || self.opening > 0 || self.busy.is_some()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, HandlerOut>> {
        self.poll_busy(cx);
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(id) = self.to_open.pop_front() {
            self.opening += 1;
            let protocol = SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), id)
                .with_timeout(STREAM_NEGOTIATION_TIMEOUT);
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: HandlerIn) {
        match event {
            HandlerIn::Open(id) => self.to_open.push_back(id),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), u64>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                self.stream_started();
                self.events.push_back(HandlerOut::Inbound(stream));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: id,
            }) => {
                self.opening = self.opening.saturating_sub(1);
                self.stream_started();
                self.events.push_back(HandlerOut::Opened(id, stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                self.opening = self.opening.saturating_sub(1);
                let error = match error {
                    StreamUpgradeError::Timeout => OpenError::Timeout,
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Io(e) => OpenError::Io(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(HandlerOut::Failed(id, error));
            }
            _ => {}
        }
    }
}
