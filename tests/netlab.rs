//! The NAT lab: real `peerup` processes on hosts behind NAT routers built from network
//! namespaces (tests/netlab/lab.sh), a relay on a fake internet, real curl.
//!
//! Needs root. Without root each test prints why it did not run; with CI=true that is a failure.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should stop the test

#[path = "netlab/harness.rs"]
mod harness;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::*;

#[test]
fn restricted_nats_start_relayed_then_go_direct_and_bulk_bypasses_the_relay() {
    goes_direct("restricted", "restricted", "restricted");
}

#[test]
fn full_cone_and_restricted_nats_go_direct_too() {
    goes_direct("fullcone", "fullcone", "restricted");
}

/// The first connection is relayed; a long transfer started on it finishes there, intact,
/// while hole punching gives a direct path that a later 64 MiB transfer takes instead.
fn goes_direct(test: &str, mode_a: &str, mode_b: &str) {
    let Some(lab) = Lab::up(test, mode_a, mode_b) else { return };
    let net = Net::start(&lab, true);
    let reserve = wait_until("B's reservation", Duration::from_secs(15), || reserved(&net.home_b));
    // Hole punching offers the addresses known when the first connection comes: wait until both
    // know their public TCP and QUIC addresses (as a daemon running for a while would).
    net.wait_until("A and B know their public addresses", Duration::from_secs(15), || {
        observed_both(&net.home_a) && observed_both(&net.home_b)
    });

    let long_out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let long = lab
        .curl_command("hosta", &net.a, "http://web.lab.p2p/big.bin", Some(long_out.path()))
        .args(["--limit-rate", "8M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    let (a_peer, b_peer) = (net.home_a.peer_id.clone(), net.home_b.peer_id.clone());
    net.wait_until("the first connection, through the relay", Duration::from_secs(10), || {
        let circuits = status(&net.relay_home)["circuits"].clone();
        circuits.as_array().is_some_and(|c| {
            c.iter().any(|c| c["src"] == a_peer.as_str() && c["dst"] == b_peer.as_str())
        })
    });
    net.wait_until("a direct path from A to B", Duration::from_secs(30), || {
        paths_to(&net.home_a, &b_peer).iter().any(|p| p == "direct")
    });
    let upgraded = started.elapsed();

    let (bulk, _) = net.bulk(&lab);
    let long = Curl::from(long.wait_with_output().expect("curl"));
    assert!(long.ok, "the long relayed transfer: {}\n{}", long.stderr, net.logs());
    let long_digest = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(long_out.path()).unwrap()).to_vec()
    };
    assert_eq!(long_digest, net.big_digest(), "the long transfer finished on the relay, intact");
    // Both ends dialled for the punch; neither refused the other's half of it.
    for (who, log) in [("A", &net.a.log), ("B", &net.b.log)] {
        assert!(
            !log.text().contains("refused connection at the handshake"),
            "{who} refused none of the punch:\n{}",
            net.logs()
        );
    }
    let relayed = circuit_bytes(&net.relay_home);
    assert!(
        relayed >= BIG as u64,
        "the long transfer stayed on the relay: {relayed} bytes relayed"
    );
    assert!(
        relayed < BIG as u64 + (2 << 20),
        "the 64 MiB after the upgrade did not cross the relay: {relayed} bytes relayed in all"
    );
    report(format!(
        "netlab {test}: reservation {reserve:?}; first byte over the relay {:.3}s; direct path {upgraded:?} after the first request; 64 MiB direct in {:.2}s; relay carried {} bytes besides the 64 MiB that began on it",
        long.ttfb(),
        bulk.total(),
        relayed - BIG as u64,
    ));
}

#[test]
fn symmetric_nats_stay_relayed_and_still_carry_bulk_intact() {
    let Some(lab) = Lab::up("symmetric", "symmetric", "symmetric") else { return };
    let net = Net::start(&lab, true);
    let (first, _, _) = net.first_fetch(&lab);
    let punch_failed = |log: &support::Log| log.text().contains("hole punching failed");
    net.wait_until("a failed hole punch", Duration::from_secs(60), || {
        punch_failed(&net.a.log) || punch_failed(&net.b.log)
    });

    let (bulk, relayed) = net.bulk(&lab);
    let paths = paths_to(&net.home_a, &net.home_b.peer_id);
    assert!(paths.iter().all(|p| p == "relayed") && !paths.is_empty(), "still relayed: {paths:?}");
    assert!(relayed >= BIG as u64, "the transfer crossed the relay: {relayed} bytes");
    report(format!(
        "netlab symmetric: first byte over the relay {:.3}s; 64 MiB relayed in {:.2}s; relay carried {relayed} bytes",
        first.ttfb(),
        bulk.total(),
    ));
}

#[test]
fn a_host_outside_the_relays_members_can_neither_reserve_nor_be_reached() {
    let Some(lab) = Lab::up("non-member", "restricted", "restricted") else { return };
    let net = Net::start(&lab, false);
    let b_peer = net.home_b.peer_id.clone();
    let refused = net.relay.log.wait_for(
        |l| l.contains("refused connection at the handshake") && l.contains(&b_peer),
        Duration::from_secs(15),
    );
    assert!(refused.is_some(), "the relay refuses B at the handshake:\n{}", net.logs());
    assert!(!reserved(&net.home_b), "B holds no reservation");
    let fetch = lab.curl("hosta", &net.a, "http://web.lab.p2p/index.html", None);
    assert!(
        !fetch.ok && fetch.stderr.contains("(4)"),
        "A gets SOCKS 0x04 for B: {}\n{}",
        fetch.stderr,
        net.logs()
    );
}

#[test]
fn a_restarted_relay_has_reservations_back_within_ten_seconds() {
    let Some(lab) = Lab::up("relay-restart", "symmetric", "symmetric") else { return };
    let mut net = Net::start(&lab, true);
    net.first_fetch(&lab);

    let _ = net.relay.child.kill();
    let _ = net.relay.child.wait();
    let gone = net.b.log.wait_for(|l| l.contains("reservation lost"), Duration::from_secs(10));
    assert!(gone.is_some(), "B notices the relay is gone:\n{}", net.logs());
    let restarted = Instant::now();
    net.relay = lab.daemon("relay", &net.relay_home, "relay");
    let relay_up = restarted.elapsed();
    wait_until("B's reservation after the restart", Duration::from_secs(10) - relay_up, || {
        reserved(&net.home_b)
    });
    let back = restarted.elapsed();
    let fetch = lab.curl("hosta", &net.a, "http://web.lab.p2p/index.html", None);
    assert!(
        fetch.ok && fetch.stdout.starts_with("hello from B"),
        "after the restart: {}\n{}",
        fetch.stderr,
        net.logs()
    );
    report(format!(
        "netlab relay restart: relay ready {relay_up:?} and B's reservation back {back:?} after the restart; the next fetch's first byte after {:.3}s",
        fetch.ttfb()
    ));
}
