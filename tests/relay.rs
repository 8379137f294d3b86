//! A relay on loopback: members get their reservation back within seconds after the relay is
//! killed and restarted, whether they reach it over TCP or QUIC; a member removed from the
//! relay's list loses its connection at once.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should stop the test

mod support;

use std::time::{Duration, Instant};

use support::{Daemon, Home, free_port, peerup, poll_until, report};

const BOUND: Duration = Duration::from_secs(30);

struct Relay {
    home: Home,
    port: u16,
}

impl Relay {
    /// A relay home whose members are `members`.
    fn new(members: &[&str]) -> Relay {
        let home = Home::init();
        let port = free_port();
        std::fs::write(
            home.file("config.yaml"),
            format!(
                "relay:\n  listen: [/ip4/127.0.0.1/tcp/{port}, /ip4/127.0.0.1/udp/{port}/quic-v1]\n  external_addresses: [/ip4/127.0.0.1/tcp/{port}, /ip4/127.0.0.1/udp/{port}/quic-v1]\n"
            ),
        )
        .unwrap();
        let list: String = members.iter().map(|m| format!("{m}\n")).collect();
        home.write_private("relay_authorized_keys", &list);
        Relay { home, port }
    }

    fn start(&self) -> Daemon {
        Daemon::spawn(std::process::Command::new(support::BIN), self.home.path(), "relay")
    }

    fn addr(&self, transport: &str) -> String {
        let port = self.port;
        let peer = &self.home.peer_id;
        match transport {
            "tcp" => format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
            _ => format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{peer}"),
        }
    }
}

/// The member's reservation state, as `peerup status` reports it (the member always runs).
fn reservation(member: &Home) -> String {
    let status = support::status(member.path());
    status["reservations"][0]["state"].as_str().unwrap_or("none").to_owned()
}

/// Whether the relay running in `relay` holds a reservation for `member`; a relay that does not
/// answer (it is still starting) holds none yet.
fn holds_reservation(relay: &Home, member: &Home) -> bool {
    let out = peerup(relay.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["reservations"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["peer"] == member.peer_id.as_str()))
}

/// Kill the relay and restart it at once (as a supervisor would): the member must hold a
/// reservation on the new relay process within seconds. Then kill it for good: the member must
/// notice.
fn restart_and_measure(transport: &str) {
    let member = Home::init();
    let relay = Relay::new(&[&member.peer_id]);
    let mut relay_daemon = relay.start();
    member.write_config(&format!("networks:\n  lab: {{ relays: [{}] }}\n", relay.addr(transport)));
    let m = Daemon::start(&member);
    let (_, first) = poll_until(BOUND, || holds_reservation(&relay.home, &member).then_some(()))
        .unwrap_or_else(|| {
            panic!("{transport}: first reservation\n{}\n{}", m.log.text(), relay_daemon.log.text())
        });
    if transport == "tcp" {
        // The member and the relay secure TCP with TLS, AES-128-GCM where the CPU has AES.
        let suite = match peerup_gateway::node::tls::aes_accelerated() {
            true => "TLS13_AES_128_GCM_SHA256",
            false => "TLS13_CHACHA20_POLY1305_SHA256",
        };
        // The relay's log is written by a thread of its own: wait for the line to land.
        let line = relay_daemon.log.wait_for(|l| l.contains("TLS connection"), BOUND);
        let line = line.unwrap_or_else(|| panic!("no TLS line\n{}", relay_daemon.log.text()));
        assert!(line.contains(suite) && line.contains("inbound"), "{line}");
    }

    relay_daemon.signal("KILL");
    let _ = relay_daemon.child.wait();
    let killed = Instant::now();
    relay_daemon = relay.start();
    let relay_up = killed.elapsed();
    let (_, back) = poll_until(BOUND, || holds_reservation(&relay.home, &member).then_some(()))
        .unwrap_or_else(|| {
            panic!("{transport}: reservation back\n{}\n{}", m.log.text(), relay_daemon.log.text())
        });

    relay_daemon.signal("KILL");
    let _ = relay_daemon.child.wait();
    let (_, noticed) = poll_until(BOUND, || (reservation(&member) != "reserved").then_some(()))
        .unwrap_or_else(|| {
            panic!("{transport}: the member noticed the relay died\n{}", m.log.text())
        });
    report(format!(
        "relay over {transport}: first reservation {:.2} s; kill -9 + restart: relay ready {:.2} s, reservation back on it {:.2} s after the kill; kill -9 alone: noticed after {:.2} s",
        first.as_secs_f64(),
        relay_up.as_secs_f64(),
        (relay_up + back).as_secs_f64(),
        noticed.as_secs_f64()
    ));
}

#[test]
fn a_member_reaching_the_relay_over_tcp_has_its_reservation_back_after_a_restart() {
    restart_and_measure("tcp");
}

#[test]
fn a_member_reaching_the_relay_over_quic_has_its_reservation_back_after_a_restart() {
    restart_and_measure("quic");
}

#[test]
fn a_member_removed_from_the_relays_list_loses_its_reservation_at_once() {
    let member = Home::init();
    let relay = Relay::new(&[&member.peer_id]);
    let relay_daemon = relay.start();
    member.write_config(&format!("networks:\n  lab: {{ relays: [{}] }}\n", relay.addr("tcp")));
    let m = Daemon::start(&member);
    poll_until(BOUND, || (reservation(&member) == "reserved").then_some(()))
        .unwrap_or_else(|| panic!("first reservation\n{}", m.log.text()));
    let out = peerup(relay.home.path(), &["auth", "remove", &member.peer_id, "--relay"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, took) = poll_until(BOUND, || (reservation(&member) != "reserved").then_some(()))
        .unwrap_or_else(|| panic!("the reservation ended\n{}", relay_daemon.log.text()));
    let status = support::status(relay.home.path());
    assert_eq!(status["members_connected"], 0, "{status}");
    report(format!(
        "relay: a removed member lost its reservation {:.0} ms after auth remove",
        took.as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_is_down_or_refuses_us_is_named_with_its_reason() {
    let member = Home::init();
    let other = Home::init();
    let relay = Relay::new(&[&other.peer_id]);
    member.write_config(&format!(
        "networks:\n  lab: {{ relays: [{}] }}\nnames:\n  web.lab: {}\nlimits: {{ connect_timeout: 2s }}\n",
        relay.addr("tcp"),
        other.peer_id
    ));
    let m = Daemon::start(&member);
    let why =
        || support::status(member.path())["reservations"][0]["error"].as_str().map(str::to_owned);
    let relay_id = relay.home.peer_id.clone();

    // The relay is not running.
    let (down, _) = poll_until(BOUND, || why().filter(|w| w.contains("refused")))
        .unwrap_or_else(|| panic!("status says why there is no reservation\n{}", m.log.text()));
    assert!(down.contains("is the relay running?"), "{down}");
    let reply = support::socks::connect(m.socks(), "web.lab.p2p", 80).await.err();
    assert_eq!(reply, Some(0x04), "host unreachable");
    let line = m.log.wait_for(|l| l.contains("connect failed"), BOUND).unwrap();
    assert!(
        line.contains(&format!("through relay {relay_id}"))
            && line.contains("is the relay running?"),
        "{line}"
    );
    assert!(!line.contains("oneshot"), "{line}");

    // The relay runs but we are not among its members.
    let relay_daemon = relay.start();
    let (refused, _) = poll_until(BOUND, || why().filter(|w| w.contains("member")))
        .unwrap_or_else(|| panic!("status says we are no member\n{}", relay_daemon.log.text()));
    let fix = format!("peerup auth add {} --relay", member.peer_id);
    assert!(refused.contains(&fix), "{refused}");
    let reply = support::socks::connect(m.socks(), "web.lab.p2p", 80).await.err();
    assert_eq!(reply, Some(0x04), "host unreachable");
    let line = m.log.wait_for(|l| l.contains("connect failed") && l.contains("member"), BOUND);
    let line = line.unwrap_or_else(|| panic!("the failure names the reason\n{}", m.log.text()));
    assert!(line.contains(&format!("through relay {relay_id}")) && line.contains(&fix), "{line}");

    // Doing what it said gets the reservation, and the reason goes.
    let out = peerup(relay.home.path(), &["auth", "add", &member.peer_id, "--relay"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    poll_until(BOUND, || (reservation(&member) == "reserved").then_some(()))
        .unwrap_or_else(|| panic!("reserved once a member\n{}", m.log.text()));
    assert_eq!(why(), None, "no reason left once reserved");
}
