//! libp2p's dial errors, said so a person can act on them.
//!
//! A `DialError` prints every layer it went through ("Failed to negotiate transport
//! protocol(s): [(addr: : Connection refused (os error 111): Connection refused …)]"), and a
//! dial through a relay we have no connection to ends in "oneshot canceled". Here each address
//! gets its innermost cause, and a relayed address the relay's own problem (down, not a member)
//! as the reservation learned it.

use std::error::Error;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::DialError;

use super::reservations::RelayHealth;

/// One line: each address tried and why it failed.
pub(super) fn describe(error: &DialError, health: &RelayHealth) -> String {
    let DialError::Transport(attempts) = error else { return error.to_string() };
    let lines: Vec<String> = attempts
        .iter()
        .map(|(addr, error)| match relay_of(addr) {
            Some(relay) => {
                let cause = innermost(error);
                // The relay client gives up with "oneshot canceled" when it has no connection to
                // the relay: then the relay's own problem is the reason. Any other cause (the
                // target has no reservation, the relay refused the circuit) is said as it is.
                let problem = match cause.contains("canceled") {
                    true => health
                        .problem(&relay)
                        .unwrap_or_else(|| "no connection to the relay".to_owned()),
                    false => cause,
                };
                format!("through relay {relay}: {problem}")
            }
            None => format!("{}: {}", without_peer(addr), innermost(error)),
        })
        .collect();
    lines.join("; ")
}

/// A dial to a relay failed: why, for its reservation and for `peerup status`.
pub(super) fn relay_problem(error: &DialError) -> String {
    let DialError::Transport(attempts) = error else { return error.to_string() };
    let mut causes: Vec<String> = Vec::new();
    for cause in attempts.iter().map(|(_, error)| innermost(error)) {
        if !causes.contains(&cause) {
            causes.push(cause);
        }
    }
    let joined = causes.join("; ");
    if joined.contains("refused") {
        format!("{joined} (is the relay running?)")
    } else if joined.contains("imeout") || joined.contains("timed out") {
        format!("{joined} (is the relay reachable from here?)")
    } else {
        joined
    }
}

/// The last cause in an error's chain with something to say.
fn innermost(error: &(dyn Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !text.trim().is_empty() {
            said = text;
        }
        cause = error.source();
    }
    said
}

/// The relay of a `…/p2p/<relay>/p2p-circuit/…` address; `None` for a direct address.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;
    use libp2p::core::transport::TransportError;

    #[test]
    fn a_relayed_address_says_the_relays_problem_and_others_their_cause() {
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let circuit: Multiaddr =
            format!("/ip4/192.0.2.1/tcp/4101/p2p/{relay}/p2p-circuit/p2p/{peer}").parse().unwrap();
        let direct: Multiaddr = format!("/ip4/192.0.2.2/tcp/4001/p2p/{peer}").parse().unwrap();
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = DialError::Transport(vec![
            (circuit, TransportError::Other(std::io::Error::other("oneshot canceled"))),
            (direct, TransportError::Other(refused())),
        ]);
        let health = RelayHealth::default();
        let said = describe(&error, &health);
        assert!(
            said.contains(&format!("through relay {relay}: no connection to the relay")),
            "{said}"
        );
        assert!(said.contains("/ip4/192.0.2.2/tcp/4001: connection refused"), "{said}");
        health.set_for_test(relay, "not a member");
        assert!(
            describe(&error, &health).contains(&format!("through relay {relay}: not a member"))
        );
        let circuit: Multiaddr =
            format!("/ip4/192.0.2.1/tcp/4101/p2p/{relay}/p2p-circuit").parse().unwrap();
        let denied = std::io::Error::other("no reservation for the destination");
        let error = DialError::Transport(vec![(circuit, TransportError::Other(denied))]);
        let said = describe(&error, &health);
        assert!(said.ends_with(": no reservation for the destination"), "as it is: {said}");
    }
}
