//! The per-connection half of the tunnel behaviour: accepts our protocol inbound, opens it
//! outbound when the behaviour asks, and reports both back.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

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
        // Open streams keep the connection alive on their own; keep it while we open more.
        !self.to_open.is_empty() || self.opening > 0
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, HandlerOut>> {
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
            }) => self.events.push_back(HandlerOut::Inbound(stream)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: id,
            }) => {
                self.opening = self.opening.saturating_sub(1);
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
