//! A network's names, with real daemons on loopback: a relay R that is the network's registrar,
//! members that register `HOST` and resolve `HOST.lab.p2p` (peerup resolve, dig, curl through
//! SOCKS), a non-member, a registrar killed and restarted, an operator's rebind caught by the
//! pin. Records and claims that must be refused are injected over the wire from a libp2p node
//! in this process.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should stop the test

mod support;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use peerup_gateway::names::protocol::{self, NamesRequest, NamesResponse, Refusal, encode_bytes};
use peerup_gateway::names::record::{Action, Claim, Record, unix_now};
use support::{Daemon, Home, free_port, peerup, poll_until, report, services};

const BOUND: Duration = Duration::from_secs(30);
const PAGE: &str = "served by A, found by name\n";

/// The registrar relay's home: members as given, TCP on a fixed free port (a restarted relay
/// comes back where members look for it).
struct Registrar {
    home: Home,
    port: u16,
}

impl Registrar {
    fn new(members: &[&str]) -> Registrar {
        let home = Home::init();
        let port = free_port();
        let registrar = Registrar { home, port };
        registrar.write_config("");
        let list: String = members.iter().map(|m| format!("{m}\n")).collect();
        registrar.home.write_private("relay_authorized_keys", &list);
        registrar
    }

    /// The relay's config, with `names` (YAML under relay.registry.names) if any.
    fn write_config(&self, names: &str) {
        let port = self.port;
        let id = &self.home.peer_id;
        let names = match names {
            "" => String::new(),
            names => format!("    names:\n{names}"),
        };
        let text = format!(
            "relay:\n  listen: [/ip4/127.0.0.1/tcp/{port}]\n  external_addresses: [/ip4/127.0.0.1/tcp/{port}]\n  registry:\n    registrar: {id}\n    network: lab\n{names}"
        );
        let path = self.home.file("config.yaml");
        let temp = self.home.file("config.yaml.new");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(temp, path).unwrap();
    }

    fn start(&self) -> Daemon {
        Daemon::spawn(Command::new(support::BIN), self.home.path(), "relay")
    }

    fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.port, self.home.peer_id)
    }

    /// `peerup relay names list --json`: host → (owner, serial).
    fn names(&self) -> Vec<(String, Option<String>, u64)> {
        let out = peerup(self.home.path(), &["relay", "names", "list", "--json"]);
        assert!(out.status.success(), "names list: {}", String::from_utf8_lossy(&out.stderr));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        value["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let owner = n["owner"].as_str().map(str::to_owned);
                (n["host"].as_str().unwrap().to_owned(), owner, n["serial"].as_u64().unwrap())
            })
            .collect()
    }
}

/// A member's config in network `lab` through `relays` (R first), registering `host` if given.
fn member_config(
    r: &Registrar,
    relays: &[String],
    register_as: Option<&str>,
    extra: &str,
) -> String {
    let relays = relays.join(", ");
    let register = register_as.map(|h| format!("    register_as: {h}\n")).unwrap_or_default();
    format!(
        "networks:\n  lab:\n    relays: [{relays}]\n    registrar: {}\n{register}{extra}",
        r.home.peer_id
    )
}

/// The state of the daemon's registration of `name`, as `peerup status` shows it.
fn registration(home: &Home) -> (String, String) {
    let status = support::status(home.path());
    let name = &status["names"][0];
    (
        name["state"].as_str().unwrap_or("none").to_owned(),
        name["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn wait_registration(home: &Home, state: &str, log: &support::Log) -> String {
    let found = poll_until(BOUND, || {
        let (now, error) = registration(home);
        (now == state).then_some(error)
    });
    let Some((error, took)) = found else {
        panic!("registration never became {state}: {:?}\n{}", registration(home), log.text());
    };
    report(format!("names: registration {state} after {took:?}"));
    error
}

fn resolve(home: &Home, name: &str) -> Output {
    peerup(home.path(), &["resolve", name, "--json"])
}

fn resolved_peer(out: &Output) -> String {
    assert!(out.status.success(), "resolve: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["peer_id"].as_str().unwrap().to_owned()
}

fn dig(server: std::net::SocketAddr, name: &str, qtype: &str) -> (String, Vec<String>, String) {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, qtype, "+tries=1", "+time=10"])
        .args(["+noall", "+answer", "+comments", "+stats"])
        .output()
        .expect("dig is installed (dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(|v| v.trim_matches('"').to_owned()))
        .collect();
    let time =
        text.lines().find_map(|l| l.strip_prefix(";; Query time: ")).unwrap_or("?").to_owned();
    (status, answers, time)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_name_resolves_on_every_member_survives_a_registrar_restart_and_a_rebind_is_caught_by_the_pin()
 {
    let web = services::http(PAGE).await;
    let (home_a, home_b, home_c, home_n) = (Home::init(), Home::init(), Home::init(), Home::init());
    let r = Registrar::new(&[&home_a.peer_id, &home_b.peer_id, &home_c.peer_id]);
    let mut relay = r.start();
    let relays = [r.addr()];

    // A registers `home` and serves a page to C.
    home_a.write_config(&format!(
        "services:\n  web: {{ local_address: {web}, port: 80 }}\n{}",
        member_config(&r, &relays, Some("home"), "")
    ));
    home_a.allow(&home_c.peer_id, None);
    let a = Daemon::start(&home_a);
    wait_registration(&home_a, "registered", &a.log);
    let line = a.log.wait_for(|l| l.contains("name registered"), BOUND);
    assert!(line.is_some_and(|l| l.contains("home.lab")), "A logs its registration");

    // B asks for the same name: taken, with a line that says so.
    // B also lists a second relay of the network, one that holds no names.
    let other = Home::init();
    let other_port = free_port();
    std::fs::write(
        other.file("config.yaml"),
        format!(
            "relay:\n  listen: [/ip4/127.0.0.1/tcp/{other_port}]\n  external_addresses: [/ip4/127.0.0.1/tcp/{other_port}]\n  registry: {{ registrar: {}, network: lab }}\n",
            r.home.peer_id
        ),
    )
    .unwrap();
    other.write_private("relay_authorized_keys", &format!("{}\n", home_b.peer_id));
    let _other_relay = Daemon::spawn(Command::new(support::BIN), other.path(), "relay");
    let other_addr = format!("/ip4/127.0.0.1/tcp/{other_port}/p2p/{}", other.peer_id);
    home_b.write_config(&member_config(&r, &[r.addr(), other_addr], Some("home"), ""));
    let b = Daemon::start(&home_b);
    let error = wait_registration(&home_b, "refused", &b.log);
    assert!(error.contains("another key"), "B is told why: {error}");
    assert!(b.log.wait_for(|l| l.contains("registration refused"), BOUND).is_some());

    // C resolves home.lab.p2p: through dig first (the lookup's round trip), then the CLI, then
    // curl through its SOCKS port.
    home_c.write_config(&member_config(&r, &relays, None, ""));
    // Registry answers are cached for dns.ttl: short, so the rebind below shows within a second.
    let config = std::fs::read_to_string(home_c.file("config.yaml")).unwrap();
    let config =
        config.replace("dns: { listen: 127.0.0.1:0 }", "dns: { listen: 127.0.0.1:0, ttl: 1s }");
    std::fs::write(home_c.file("config.yaml"), config).unwrap();
    let c = Daemon::start(&home_c);
    let (status, answers, took) = dig(c.dns(), "home.lab.p2p", "TXT");
    assert_eq!(
        (status.as_str(), answers.clone()),
        ("NOERROR", vec![home_a.peer_id.clone()]),
        "C's log:\n{}",
        c.log.text()
    );
    report(format!("names: first dig of home.lab.p2p on C (a registry lookup): {took}"));
    let (status, answers, took) = dig(c.dns(), "home.lab.p2p", "A");
    assert_eq!(status, "NOERROR");
    assert!(answers.len() == 1 && answers[0].starts_with("127."), "{answers:?}");
    report(format!("names: dig A home.lab.p2p on C (cached): {took}"));
    let out = resolve(&home_c, "home.lab.p2p");
    assert_eq!(resolved_peer(&out), home_a.peer_id);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["tier"], "registry");
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5-hostname"])
        .arg(c.socks().to_string())
        .arg("http://home.lab.p2p/")
        .output()
        .expect("curl is installed");
    assert!(
        curl.status.success(),
        "curl: {}\nC:\n{}",
        String::from_utf8_lossy(&curl.stderr),
        c.log.text()
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), PAGE);
    let pins = std::fs::read_to_string(home_c.file("known_names")).unwrap();
    assert!(pins.contains(&format!("home.lab {}", home_a.peer_id)), "C pinned A: {pins}");

    // No such name: exit 3 from connect and resolve, NXDOMAIN from DNS.
    let out = peerup(home_c.path(), &["connect", "nosuch.lab.p2p:80"]);
    assert_eq!(out.status.code(), Some(3), "connect: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(resolve(&home_c, "nosuch.lab").status.code(), Some(3));
    assert_eq!(dig(c.dns(), "nosuch.lab.p2p", "A").0, "NXDOMAIN");

    // A non-member can neither register nor look up: the relay closes its connection.
    home_n.write_config(&member_config(&r, &relays, Some("intruder"), ""));
    let n = Daemon::start(&home_n);
    let found = poll_until(BOUND, || {
        let (state, error) = registration(&home_n);
        (state != "registered" && error.contains("member")).then_some(error)
    });
    assert!(
        found.is_some(),
        "N is told it is not a member: {:?}\n{}",
        registration(&home_n),
        n.log.text()
    );
    let out = resolve(&home_n, "home.lab");
    assert_eq!(
        out.status.code(),
        Some(5),
        "N cannot look up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dig(n.dns(), "home.lab.p2p", "A").0, "SERVFAIL", "not NXDOMAIN, which an OS caches");
    assert!(r.names().iter().all(|(host, ..)| host != "intruder"));
    drop(n);

    // kill -9 of the registrar and a restart: it still knows who owns what, and B (which never
    // asked before, so nothing is cached or pinned) resolves home to A.
    let before = r.names();
    relay.signal("KILL");
    let _ = relay.wait();
    // While the registrar is down, the other relay cannot say the name does not exist: the
    // name is unanswerable (exit 5, SERVFAIL), not unknown.
    let out = resolve(&home_b, "home.lab.p2p");
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(dig(b.dns(), "home.lab.p2p", "A").0, "SERVFAIL");
    relay = r.start();
    assert_eq!(r.names(), before, "the store survived kill -9");
    let (peer, took) = poll_until(BOUND, || {
        let out = resolve(&home_b, "home.lab.p2p");
        out.status.success().then(|| resolved_peer(&out))
    })
    .expect("B resolves home.lab after the restart");
    assert_eq!(peer, home_a.peer_id);
    report(format!("names: B resolved home.lab {took:?} after the registrar restarted"));

    // The operator rebinds home to B: C, which pinned A, refuses with the --forget hint...
    r.write_config(&format!("      home: {}\n", home_b.peer_id));
    let rebound = poll_until(BOUND, || {
        r.names()
            .into_iter()
            .find(|(host, owner, _)| host == "home" && owner.as_deref() == Some(&home_b.peer_id))
    });
    assert!(rebound.is_some(), "the registrar rebinds home:\n{}", relay.log.text());
    let (out, _) = poll_until(BOUND, || {
        let out = resolve(&home_c, "home.lab.p2p");
        (out.status.code() == Some(4)).then_some(out)
    })
    .unwrap_or_else(|| panic!("C refuses the rebound name:\n{}", c.log.text()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("peerup resolve --forget home.lab"), "{stderr}");
    assert!(
        c.log.wait_for(|l| l.contains("--forget home.lab"), BOUND).is_some(),
        "C logs the hint"
    );
    let socks = support::socks::connect(c.socks(), "home.lab.p2p", 80).await;
    assert_eq!(socks.err(), Some(0x02), "SOCKS: not allowed");
    assert_eq!(dig(c.dns(), "home.lab.p2p", "A").0, "SERVFAIL");
    // ...and after --forget it accepts B.
    let out = peerup(home_c.path(), &["resolve", "--forget", "home.lab"]);
    assert!(out.status.success(), "forget: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(resolved_peer(&resolve(&home_c, "home.lab.p2p")), home_b.peer_id);
    drop((a, b, c));
}

/// What our own node speaks: names, and ping (a member closes a connection without it).
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Names {
    names: protocol::Behaviour,
    ping: libp2p::ping::Behaviour,
}

/// A libp2p node of our own in this process, speaking `/peerup/names/1.0.0` over TCP.
fn names_swarm(key: Keypair, support: ProtocolSupport) -> libp2p::Swarm<Names> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| Names {
            names: protocol::behaviour(support),
            ping: libp2p::ping::Behaviour::default(),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Send one request to the relay at `addr` as `key`.
async fn ask(key: Keypair, addr: &str, request: NamesRequest) -> NamesResponse {
    let mut addr: Multiaddr = addr.parse().unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.pop() else { panic!("{addr}") };
    let mut swarm = names_swarm(key, ProtocolSupport::Outbound);
    swarm.behaviour_mut().names.send_request_with_addresses(&peer, request, vec![addr]);
    let waiting = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(NamesEvent::Names(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => return response,
                SwarmEvent::Behaviour(NamesEvent::Names(
                    request_response::Event::OutboundFailure { error, .. },
                )) => panic!("request failed: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(BOUND, waiting).await.expect("the relay answers")
}

/// A relay of our own that answers every lookup with `answer` (signed record bytes), or with a
/// refusal full of terminal controls when `answer` is empty.
async fn lying_relay(
    key: Keypair,
    answer: Arc<Mutex<Vec<u8>>>,
    asked: Arc<AtomicUsize>,
) -> Multiaddr {
    let peer = key.public().to_peer_id();
    let mut swarm = names_swarm(key, ProtocolSupport::Inbound);
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(NamesEvent::Names(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) = swarm.select_next_some().await
            {
                asked.fetch_add(1, Ordering::SeqCst);
                let bytes = answer.lock().unwrap().clone();
                // No record given: a refusal whose text would drive a terminal if printed raw.
                let response = match bytes.is_empty() {
                    true => NamesResponse::Refused {
                        code: Refusal::Taken,
                        message: "\u{1b}[2J\u{1b}[31mPWNED\nforged: registered fine\u{202e}".into(),
                    },
                    false => NamesResponse::Record { record: encode_bytes(&bytes) },
                };
                let _ = swarm.behaviour_mut().names.send_response(channel, response);
            }
        }
    });
    addr.with(libp2p::multiaddr::Protocol::P2p(peer))
}

#[tokio::test(flavor = "multi_thread")]
async fn members_refuse_forged_misdirected_expired_and_older_records_and_the_registrar_refuses_bad_claims()
 {
    let (home_a, home_c) = (Home::init(), Home::init());
    let tester = Keypair::generate_ed25519();
    let tester_id = tester.public().to_peer_id().to_base58();
    let r = Registrar::new(&[&home_a.peer_id, &home_c.peer_id, &tester_id]);
    let _relay = r.start();
    home_a.write_config(&member_config(&r, &[r.addr()], Some("home"), ""));
    let a = Daemon::start(&home_a);
    wait_registration(&home_a, "registered", &a.log);
    let serial = r.names().into_iter().find(|(h, ..)| h == "home").unwrap().2;

    // Claims the registrar refuses, sent by a member over the wire.
    let registrar: PeerId = r.home.peer_id.parse().unwrap();
    let claim = |host: &str, signer: &Keypair| {
        let host = host.parse().unwrap();
        let mut claim = Claim::new(&tester, registrar, &host, Action::Register, unix_now());
        claim.owner = tester.public().to_peer_id().to_base58();
        NamesRequest::Register { claim: encode_bytes(&claim.sign(signer)) }
    };
    let label = peerup_resolver::peer_label(&Keypair::generate_ed25519().public().to_peer_id());
    for (what, request, want) in [
        ("a host shaped like a peer label", claim(&label, &tester), Refusal::BadHost),
        ("a name another key holds", claim("home", &tester), Refusal::Taken),
        (
            "a claim signed by another key",
            claim("mine", &Keypair::generate_ed25519()),
            Refusal::BadClaim,
        ),
    ] {
        match ask(tester.clone(), &r.addr(), request).await {
            NamesResponse::Refused { code, message } => {
                assert_eq!(code, want, "{what}: {message}");
                eprintln!("registrar refused {what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let mine = ask(tester.clone(), &r.addr(), claim("mine", &tester)).await;
    assert!(matches!(mine, NamesResponse::Record { .. }), "a good claim is granted: {mine:?}");

    // C asks R and a lying relay T; T's records would win on serial if C took them.
    let r_key = peerup_gateway::identity::load(&r.home.file("identity.key")).unwrap();
    let stranger = PeerId::random().to_base58();
    let record = |host: &str, serial: u64, expires: u64| Record {
        registrar: registrar.to_base58(),
        host: host.into(),
        owner: Some(stranger.clone()),
        serial,
        issued: unix_now().saturating_sub(7200),
        expires,
        why: None,
    };
    let later = unix_now() + 3600;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "signed by another key",
            record("home", serial + 1000, later).sign(&Keypair::generate_ed25519()),
            "not by the network's registrar",
        ),
        ("for another host", record("other", serial + 1000, later).sign(&r_key), "is for host"),
        ("expired", record("home", serial + 1000, unix_now() - 3600).sign(&r_key), "expired"),
        ("older", record("home", serial - 1, later).sign(&r_key), ""),
    ];
    let answer = Arc::new(Mutex::new(Vec::new()));
    let asked = Arc::new(AtomicUsize::new(0));
    let t = lying_relay(Keypair::generate_ed25519(), answer.clone(), asked.clone()).await;
    // A second network with its own relay and registrar: lab's lookups never go there.
    let elsewhere_asked = Arc::new(AtomicUsize::new(0));
    let t2_key = Keypair::generate_ed25519();
    let t2_id = t2_key.public().to_peer_id();
    let t2 = lying_relay(t2_key, Arc::default(), elsewhere_asked.clone()).await;
    let work = format!("  work:\n    relays: [{t2}]\n    registrar: {t2_id}\n");
    home_c.write_config(&member_config(&r, &[r.addr(), t.to_string()], None, &work));
    let c = Daemon::start(&home_c);
    for (what, bytes, logged) in cases {
        *answer.lock().unwrap() = bytes;
        let before = asked.load(Ordering::SeqCst);
        let started = Instant::now();
        let out = resolve(&home_c, "home.lab");
        let took = started.elapsed();
        assert_eq!(
            resolved_peer(&out),
            home_a.peer_id,
            "a record {what} must not win\n{}",
            c.log.text()
        );
        assert!(asked.load(Ordering::SeqCst) > before, "T was asked ({what})");
        if !logged.is_empty() {
            let line = c
                .log
                .wait_for(|l| l.contains("refused a name record") && l.contains(logged), BOUND);
            assert!(line.is_some(), "C logs why it refused a record {what}:\n{}", c.log.text());
        }
        report(format!(
            "names: resolve home.lab with R and a lying relay ({what} record): {took:?}"
        ));
        // Forget the pin and the cached answer: the next case is looked up afresh.
        let out = peerup(home_c.path(), &["resolve", "--forget", "home.lab"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(elsewhere_asked.load(Ordering::SeqCst), 0, "lab's lookups stayed in lab");
    let out = resolve(&home_c, "home.work");
    assert!(elsewhere_asked.load(Ordering::SeqCst) > 0, "work's lookups go to work's relay");
    // What a relay says reaches the terminal escaped.
    assert_eq!(out.status.code(), Some(5));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("\\u{1b}[2J") && !said.contains('\u{1b}') && !said.contains('\u{202e}'),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "one line: {said}");

    // A renames itself: the old name is released, not left held.
    drop(a);
    home_a.write_config(&member_config(&r, &[r.addr()], Some("house"), ""));
    let a = Daemon::start(&home_a);
    let renamed = poll_until(BOUND, || {
        let names = r.names();
        let owner = |host: &str| names.iter().find(|(h, ..)| h == host).and_then(|n| n.1.clone());
        (owner("house").as_deref() == Some(home_a.peer_id.as_str()) && owner("home").is_none())
            .then_some(())
    });
    assert!(
        renamed.is_some(),
        "home released, house registered: {:?}\n{}",
        r.names(),
        a.log.text()
    );
    drop((a, c));
}

/// What `peerup status --json` of a relay says of the names it holds (0 if it does not answer).
fn records_held(relay: &Home) -> u64 {
    let out = peerup(relay.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["names"]["records"].as_u64().unwrap_or(0)
}

/// Put `record` straight into `relay`'s store over the replication protocol, as the relay
/// `key` (one of its registry peers).
async fn put_over_replication(
    key: Keypair,
    relay: &str,
    registrar: &PeerId,
    record: libp2p::kad::Record,
) {
    let mut addr: Multiaddr = relay.parse().unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.pop() else { panic!("{addr}") };
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Replicator {
        kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
        ping: libp2p::ping::Behaviour,
    }
    let local = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| Replicator {
            kad: peerup_gateway::names::replica::behaviour(local, registrar),
            ping: libp2p::ping::Behaviour::default(),
        })
        .unwrap()
        .build();
    swarm.behaviour_mut().kad.add_address(&peer, addr);
    swarm.behaviour_mut().kad.put_record_to(
        record,
        std::iter::once(peer),
        libp2p::kad::Quorum::One,
    );
    let waiting = async {
        loop {
            if let SwarmEvent::Behaviour(ReplicatorEvent::Kad(
                libp2p::kad::Event::OutboundQueryProgressed {
                    result: libp2p::kad::QueryResult::PutRecord(result),
                    ..
                },
            )) = swarm.select_next_some().await
            {
                // The relay says "stored" whatever it did with it: that proves nothing.
                return result.is_ok();
            }
        }
    };
    let delivered = tokio::time::timeout(BOUND, waiting).await.expect("the put ends");
    assert!(delivered, "the relay took the put request");
}

#[tokio::test(flavor = "multi_thread")]
async fn names_survive_any_one_relay_by_replication_and_forged_or_replayed_records_are_not_kept() {
    let (home_a, home_b, home_c, home_d) = (Home::init(), Home::init(), Home::init(), Home::init());
    let rogue = Keypair::generate_ed25519();
    let rogue_id = rogue.public().to_peer_id();
    // R1 is the registrar; R2 is the network's other relay, which D alone uses.
    let (r1_home, r1_port) = (Home::init(), free_port());
    let (r2_home, r2_port) = (Home::init(), free_port());
    let r1_addr = format!("/ip4/127.0.0.1/tcp/{r1_port}/p2p/{}", r1_home.peer_id);
    let r2_addr = format!("/ip4/127.0.0.1/tcp/{r2_port}/p2p/{}", r2_home.peer_id);
    let republish = "republish: 2s";
    let write_relay = |home: &Home, port: u16, registry: String, members: &[&str]| {
        std::fs::write(
            home.file("config.yaml"),
            format!(
                "relay:\n  listen: [/ip4/127.0.0.1/tcp/{port}]\n  external_addresses: [/ip4/127.0.0.1/tcp/{port}]\n  registry: {{ {registry} }}\n"
            ),
        )
        .unwrap();
        let list: String = members.iter().map(|m| format!("{m}\n")).collect();
        home.write_private("relay_authorized_keys", &list);
    };
    write_relay(
        &r1_home,
        r1_port,
        format!("registrar: self, network: lab, peers: [{r2_addr}], {republish}"),
        &[&home_a.peer_id, &home_b.peer_id, &home_c.peer_id],
    );
    write_relay(
        &r2_home,
        r2_port,
        format!(
            "registrar: {}, network: lab, peers: [{r1_addr}, /ip4/127.0.0.1/tcp/9/p2p/{rogue_id}], {republish}",
            r1_home.peer_id
        ),
        &[&home_a.peer_id, &home_c.peer_id, &home_d.peer_id],
    );
    let start_relay = |home: &Home| Daemon::spawn(Command::new(support::BIN), home.path(), "relay");
    let both = [r1_addr.clone(), r2_addr.clone()];
    let registrar = |home: &Home| home.peer_id.clone();
    let member = |relays: &[String], register_as: Option<&str>| {
        let register = register_as.map(|h| format!("    register_as: {h}\n")).unwrap_or_default();
        format!(
            "networks:\n  lab:\n    relays: [{}]\n    registrar: {}\n{register}",
            relays.join(", "),
            registrar(&r1_home)
        )
    };

    // R1 first; A registers home while R2 does not run yet.
    let mut r1 = start_relay(&r1_home);
    home_a.write_config(&member(&both, Some("home")));
    let a = Daemon::start(&home_a);
    wait_registration(&home_a, "registered", &a.log);
    // R2 starts empty after the fact: it holds home after a republication.
    let r2 = start_relay(&r2_home);
    let (_, took) = poll_until(BOUND, || (records_held(&r2_home) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("R2 never held home:\n{}", r2.log.text()));
    report(format!(
        "replication: a relay started empty held the names {took:?} after it was ready (republish 2s)"
    ));
    // D, which asks R2 only, resolves home.
    home_d.write_config(&member(std::slice::from_ref(&r2_addr), None));
    let mut d = Daemon::start(&home_d);
    assert_eq!(
        resolved_peer(&resolve(&home_d, "home.lab.p2p")),
        home_a.peer_id,
        "{}",
        d.log.text()
    );

    // A forged record and a replayed older one, put straight into R2: neither kept nor served.
    let r1_key = peerup_gateway::identity::load(&r1_home.file("identity.key")).unwrap();
    let r1_id: PeerId = r1_home.peer_id.parse().unwrap();
    let out = peerup(r1_home.path(), &["relay", "names", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let serial = listed["names"][0]["serial"].as_u64().unwrap();
    let thief = PeerId::random().to_base58();
    let record = |serial: u64| Record {
        registrar: r1_id.to_base58(),
        host: "home".into(),
        owner: Some(thief.clone()),
        serial,
        issued: unix_now() - 60,
        expires: unix_now() + 3600,
        why: None,
    };
    let as_kad = |signed: Vec<u8>| libp2p::kad::Record {
        key: peerup_gateway::names::replica::record_key(&r1_id, "home"),
        value: signed,
        publisher: None,
        expires: None,
    };
    let held_before = records_held(&r2_home);
    let forged = as_kad(record(serial + 1000).sign(&Keypair::generate_ed25519()));
    put_over_replication(rogue.clone(), &r2_addr, &r1_id, forged).await;
    let replayed = as_kad(record(serial - 1).sign(&r1_key));
    put_over_replication(rogue.clone(), &r2_addr, &r1_id, replayed).await;
    for why in ["not by the network's registrar", "older than"] {
        let line =
            r2.log.wait_for(|l| l.contains("replicated record refused") && l.contains(why), BOUND);
        assert!(line.is_some(), "R2 refuses ({why}):\n{}", r2.log.text());
    }
    assert_eq!(records_held(&r2_home), held_before, "nothing new kept");
    drop(d);
    d = Daemon::start(&home_d);
    assert_eq!(resolved_peer(&resolve(&home_d, "home.lab.p2p")), home_a.peer_id, "still A's");

    // kill -9 of R1: C, started cold, resolves home through R2; B's registration waits.
    r1.signal("KILL");
    let _ = r1.wait();
    home_c.write_config(&member(&both, None));
    let c = Daemon::start(&home_c);
    assert_eq!(
        resolved_peer(&resolve(&home_c, "home.lab.p2p")),
        home_a.peer_id,
        "{}",
        c.log.text()
    );
    home_b.write_config(&member(&both, Some("nas")));
    let b = Daemon::start(&home_b);
    assert_eq!(registration(&home_b).0, "trying", "no registrar: B waits");
    let restarted = std::time::Instant::now();
    r1 = start_relay(&r1_home);
    wait_registration(&home_b, "registered", &b.log);
    report(format!(
        "replication: B registered {:?} after the registrar came back",
        restarted.elapsed()
    ));
    // R2 gets nas by the registrar's put, well before a republication... or at one.
    poll_until(BOUND, || (records_held(&r2_home) >= 2).then_some(()))
        .unwrap_or_else(|| panic!("R2 never held nas:\n{}", r2.log.text()));

    // kill -9 of both relays and a restart: every name resolves on members with a cold cache.
    r1.signal("KILL");
    r2.signal("KILL");
    let _ = (r1.wait(), r2.wait());
    let _r1 = start_relay(&r1_home);
    let _r2 = start_relay(&r2_home);
    drop((c, d));
    let _c = Daemon::start(&home_c);
    let _d = Daemon::start(&home_d);
    for (home, who) in [(&home_c, "C"), (&home_d, "D (R2 only)")] {
        for (name, owner) in [("home.lab.p2p", &home_a.peer_id), ("nas.lab.p2p", &home_b.peer_id)] {
            let found = poll_until(BOUND, || {
                let out = resolve(home, name);
                out.status.success().then(|| resolved_peer(&out))
            });
            assert_eq!(found.map(|f| f.0).as_ref(), Some(owner), "{who} resolves {name}");
        }
    }
    drop((a, b));
}
