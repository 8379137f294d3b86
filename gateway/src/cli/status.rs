//! `peerup status`: ask the running daemon through its control socket.

use std::io::Write;

use super::{Exit, Failure, not_running};
use crate::daemon::State;
use crate::files::Home;
use crate::logging::escaped;
use crate::node::status::NodeStatus;
use crate::relay::RelayStatus;

pub(super) async fn run(home: &Home, json: bool) -> Result<(), Failure> {
    let state = State::read(home).ok_or_else(|| not_running(home))?;
    let answer = crate::control::request(&state.control, "status").await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::TimedOut {
            Failure::new(
                Exit::Unreachable,
                format!(
                    "the daemon of {} (pid {}) did not answer within {:?}: is it stopped or overloaded?",
                    home.dir().display(),
                    state.pid,
                    crate::control::CLIENT_TIMEOUT
                ),
            )
        } else {
            not_running(home)
        }
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{answer}");
        return Ok(());
    }
    let text = if state.role == "relay" {
        serde_json::from_value::<RelayStatus>(answer).map(|s| relay_text(&s))
    } else {
        serde_json::from_value::<NodeStatus>(answer).map(|s| gateway_text(&s))
    };
    let text = text.map_err(|e| Failure::internal(format!("unexpected status answer: {e}")))?;
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

fn gateway_text(status: &NodeStatus) -> String {
    let mut out = format!("gateway {}\n", status.peer_id);
    if !status.observed.is_empty() {
        out.push_str(&format!("observed: {}\n", status.observed.join("  ")));
    }
    if !status.reservations.is_empty() {
        out.push_str("reservations:\n");
        for r in &status.reservations {
            out.push_str(&format!(
                "  {}  {:<9} {:>6}s  {}\n",
                r.relay, r.state, r.age_secs, r.addr
            ));
            if let Some(error) = &r.error {
                out.push_str(&format!("    why: {}\n", escaped(error)));
            }
        }
    }
    if !status.names.is_empty() {
        out.push_str("names:\n");
        let now = crate::names::record::unix_now();
        for name in &status.names {
            let expires = match name.expires {
                Some(at) if at > now => format!("  expires in {}s", at - now),
                Some(_) => "  expired".to_owned(),
                None => String::new(),
            };
            out.push_str(&format!("  {:<24} {}{expires}\n", name.name, name.state));
            if let Some(error) = &name.error {
                out.push_str(&format!("    why: {}\n", escaped(error)));
            }
        }
    }
    out.push_str(&format!("peers: {}  tunnels: {}\n", status.peers.len(), status.tunnels));
    for peer in &status.peers {
        let role = if peer.relay { " (relay)" } else { "" };
        let mut tunnels = match peer.tunnels {
            0 => String::new(),
            n => format!("  tunnels: {n}"),
        };
        if peer.idle_streams > 0 {
            tunnels.push_str(&format!("  idle streams: {}", peer.idle_streams));
        }
        out.push_str(&format!("  {}{role}{tunnels}\n", peer.peer));
        for c in &peer.connections {
            out.push_str(&format!(
                "    {:<7} {:<4} {:<3} {:>6}s  {}\n",
                c.path, c.transport, c.direction, c.age_secs, c.remote
            ));
        }
    }
    out
}

fn relay_text(status: &RelayStatus) -> String {
    let mut out = format!(
        "relay {}  members connected: {}  circuit bytes: {}\n",
        status.peer_id, status.members_connected, status.circuit_bytes
    );
    if let Some(names) = &status.names {
        let role = if names.is_registrar { "registrar" } else { "replica" };
        out.push_str(&format!(
            "names: {role} of {}, {} records held\n",
            names.registrar, names.records
        ));
        for peer in &names.peers {
            let state = if peer.connected { "connected" } else { "not connected" };
            out.push_str(&format!("  replicates with {}  {state}\n", peer.peer));
        }
    }
    out.push_str(&format!("reservations: {}\n", status.reservations.len()));
    for r in &status.reservations {
        out.push_str(&format!("  {}  {:>6}s\n", r.peer, r.age_secs));
    }
    out.push_str(&format!("circuits: {}\n", status.circuits.len()));
    for c in &status.circuits {
        let state = if c.open { "open" } else { "closed" };
        out.push_str(&format!(
            "  {} -> {}  {state:<6} {:>6}s  {} B ->  {} B <-\n",
            c.src, c.dst, c.age_secs, c.bytes_src_to_dst, c.bytes_dst_to_src
        ));
    }
    out
}
