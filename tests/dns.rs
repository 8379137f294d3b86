//! The local DNS server, asked with real `dig`: `.p2p` names get a stable loopback address and
//! a TXT record with the peer ID; unknown names NXDOMAIN, AAAA NODATA, other domains REFUSED;
//! garbage does not stop it; an app that resolved through it reaches the peer through SOCKS.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should stop the test

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::services;
use support::{Daemon, Pair};

/// `dig` against `server` (UDP, or TCP with `tcp`); the answer section and the status.
fn dig(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> (String, Vec<String>) {
    let mut command = Command::new("dig");
    command
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, qtype, "+tries=1", "+time=5"])
        .args(["+noall", "+answer", "+comments"]);
    if tcp {
        command.arg("+tcp");
    }
    let out = command.output().expect("dig is installed (dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("dig {name} {qtype}: no status in\n{text}"));
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().last().unwrap_or("").trim_matches('"').to_owned())
        .collect();
    (status, answers)
}

/// A pair whose names resolve (A's service is never connected to: these tests only ask DNS).
fn serving_pair() -> Pair {
    Pair::start("  web: { local_address: 127.0.0.1:9, port: 80 }\n", |home, b| home.allow(b, None))
}

#[tokio::test(flavor = "multi_thread")]
async fn names_get_a_stable_pool_address_and_the_peer_id_over_udp_and_tcp() {
    let pair = serving_pair();
    let dns = pair.b.dns();
    let (status, a) = dig(dns, "home.alice.p2p", "A", false);
    assert_eq!(status, "NOERROR");
    assert_eq!(a.len(), 1, "{a:?}");
    let addr: std::net::Ipv4Addr = a[0].parse().unwrap();
    let octets = addr.octets();
    assert!(octets[0] == 127 && (80..96).contains(&octets[1]), "{addr} in 127.80.0.0/12");
    assert_eq!(dig(dns, "HOME.Alice.p2p.", "A", true).1, a, "same address, any case, over TCP");
    let (status, txt) = dig(dns, "home.alice.p2p", "TXT", false);
    assert_eq!((status.as_str(), txt), ("NOERROR", vec![pair.home_a.peer_id.clone()]));
    let (status, aaaa) = dig(dns, "home.alice.p2p", "AAAA", true);
    assert_eq!((status.as_str(), aaaa.len()), ("NOERROR", 0), "NODATA for AAAA");
    assert_eq!(dig(dns, "nosuch.alice.p2p", "A", false).0, "NXDOMAIN");
    assert_eq!(dig(dns, "a.b.c.p2p", "A", true).0, "NXDOMAIN");
    assert_eq!(dig(dns, "example.com", "A", false).0, "REFUSED", "never forwarded");
    assert_eq!(dig(dns, "example.com", "A", true).0, "REFUSED");

    // The same address after a restart (stopped as a service manager would).
    let home_b = pair.home_b;
    pair.b.sigterm();
    assert!(pair.b.wait().success());
    let b = Daemon::start(&home_b);
    assert_eq!(dig(b.dns(), "home.alice.p2p", "A", false).1, a, "kept across a restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_packets_do_not_stop_the_server() {
    let pair = serving_pair();
    let dns = pair.b.dns();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for garbage in [
        &b""[..],
        b"\x00",
        &[0xffu8; 12],
        &[0u8; 512],
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
    ] {
        socket.send_to(garbage, dns).await.unwrap();
    }
    let mut tcp = tokio::net::TcpStream::connect(dns).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"\x00\x05hello").await.unwrap();
    drop(tcp);
    assert_eq!(dig(dns, "home.alice.p2p", "TXT", false).0, "NOERROR", "still answering");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socks_connect_to_a_pool_address_reaches_the_name() {
    let web = services::http("through the pool").await;
    let pair = Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
        home.allow(b, None)
    });
    let (_, a) = dig(pair.b.dns(), "home.alice.p2p", "A", false);
    // curl --socks5 (not socks5h): curl resolves the name itself; here with the address our
    // DNS gave, as an app using system DNS pointed at us would.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5"])
        .arg(pair.b.socks().to_string())
        .args(["--resolve", &format!("home.alice.p2p:80:{}", a[0])])
        .arg("http://home.alice.p2p/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", pair.b.log.text());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the pool");
    // A pool address no name holds is refused, never tried directly.
    let reply = support::socks::connect(pair.b.socks(), "127.80.0.1", 80).await.err();
    assert_eq!(reply, Some(0x04), "no such name");
}

/// Whether the gateway of `home` has a connection to `peer`.
fn connected_to(home: &std::path::Path, peer: &str) -> bool {
    support::status(home)["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["peer"] == peer))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_answer_warms_the_path_to_the_peer() {
    let echo = services::echo().await;
    let serve = format!("  echo: {{ local_address: {echo} }}\n");
    // Cold: the connect dials.
    let cold = Pair::start(&serve, |home, b| home.allow(b, None));
    let started = std::time::Instant::now();
    let socket = support::socks::connect(cold.b.socks(), "home.alice.p2p", echo.port()).await;
    let cold_connect = started.elapsed();
    assert!(socket.is_ok());
    // Warm: the DNS answer alone connects B to A; the connect then finds the path ready.
    let warm = Pair::start(&serve, |home, b| home.allow(b, None));
    let a_peer = warm.home_a.peer_id.clone();
    assert!(!connected_to(warm.home_b.path(), &a_peer), "no connection before the query");
    assert_eq!(dig(warm.b.dns(), "home.alice.p2p", "A", false).0, "NOERROR");
    let (_, warmed) = support::poll_until(std::time::Duration::from_secs(10), || {
        connected_to(warm.home_b.path(), &a_peer).then_some(())
    })
    .unwrap_or_else(|| panic!("the DNS answer connected B to A:\n{}", warm.b.log.text()));
    let started = std::time::Instant::now();
    let socket = support::socks::connect(warm.b.socks(), "home.alice.p2p", echo.port()).await;
    let warm_connect = started.elapsed();
    assert!(socket.is_ok());
    support::report(format!(
        "dns: warm-up connected {:.1} ms after the answer; SOCKS connect cold {:.1} ms, after a DNS answer {:.1} ms (loopback: a relay path would gain more)",
        warmed.as_secs_f64() * 1000.0,
        cold_connect.as_secs_f64() * 1000.0,
        warm_connect.as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_suffix_is_honoured_by_dns_socks_and_resolve() {
    let web = services::http("under .mesh").await;
    let pair = Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
        home.allow(b, None)
    });
    let (home_b, a_addr) = (pair.home_b, pair.a.tcp_multiaddr());
    drop(pair.b);
    std::fs::write(
        home_b.file("config.yaml"),
        format!(
            "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\ndns: {{ listen: 127.0.0.1:0, suffix: mesh }}\nnames:\n  home.alice: {a_addr}\n"
        ),
    )
    .unwrap();
    let b = Daemon::start(&home_b);
    assert_eq!(dig(b.dns(), "home.alice.mesh", "A", false).0, "NOERROR");
    assert_eq!(dig(b.dns(), "home.alice.p2p", "A", false).0, "REFUSED", "not ours any more");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5-hostname"])
        .arg(b.socks().to_string())
        .arg("http://home.alice.mesh/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "under .mesh", "{}", b.log.text());
    let resolved = support::peerup(home_b.path(), &["resolve", "home.alice"]);
    assert!(resolved.status.success(), "{}", String::from_utf8_lossy(&resolved.stderr));
    let resolved = support::peerup(home_b.path(), &["resolve", "home.alice.mesh"]);
    assert!(resolved.status.success(), "{}", String::from_utf8_lossy(&resolved.stderr));
}

#[test]
fn peerup_resolve_answers_through_the_running_daemon_or_alone() {
    use std::os::unix::fs::PermissionsExt;
    let other = support::Home::init();
    let home = support::Home::init();
    home.write_config(&format!(
        "names:\n  box.lab: /ip4/192.0.2.7/tcp/4001/p2p/{}\n",
        other.peer_id
    ));
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // No daemon: the local names.
    let alone = json(support::peerup(home.path(), &["resolve", "box.lab", "--json"]));
    assert_eq!(alone["peer_id"], other.peer_id.as_str());
    assert_eq!(alone["tier"], "local");
    assert_eq!(alone["addrs"][0], "/ip4/192.0.2.7/tcp/4001");
    assert_eq!(support::peerup(home.path(), &["resolve", "nas.lab"]).status.code(), Some(3));
    // A daemon: asked through its control socket. With config.yaml made unreadable to the
    // checked reader (mode 666), only the daemon can still answer.
    let daemon = Daemon::start(&home);
    std::fs::set_permissions(home.file("config.yaml"), std::fs::Permissions::from_mode(0o666))
        .unwrap();
    let through = json(support::peerup(home.path(), &["resolve", "box.lab.p2p", "--json"]));
    assert_eq!(through["peer_id"], other.peer_id.as_str(), "{}", daemon.log.text());
    let text = support::peerup(home.path(), &["resolve", "box.lab"]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .starts_with(&format!("{}\ttier=local\tttl=", other.peer_id))
    );
    assert_eq!(support::peerup(home.path(), &["resolve", "nas.lab"]).status.code(), Some(3));
    std::fs::set_permissions(home.file("config.yaml"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
}

/// A network namespace of our own whose resolv.conf points at 127.0.0.1 (port 53 there), as
/// `ip netns exec` sets it up; removed on drop. `None` (with the reason printed) without root.
struct Netns {
    name: String,
}

impl Netns {
    fn up(test: &str) -> Option<Netns> {
        if !support::root_or_skip(&format!("dns {test}"), "a network namespace with port 53") {
            return None;
        }
        let name = format!("pudns{}", std::process::id());
        let ok = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ok(&["netns", "add", &name]);
        let netns = Netns { name };
        ok(&["-n", &netns.name, "link", "set", "lo", "up"]);
        let etc = format!("/etc/netns/{}", netns.name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            format!("{etc}/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
        )
        .unwrap();
        Some(netns)
    }

    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

#[test]
fn curl_resolving_through_our_dns_reaches_the_peer_through_socks() {
    let Some(ns) = Netns::up("curl_resolving_through_our_dns") else { return };
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A python web server inside the namespace, as A's service.
    let mut server = ns
        .exec("python3")
        .args(["-m", "http.server", &web.to_string(), "--bind", "127.0.0.1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = format!("http://127.0.0.1:{web}/Cargo.toml");
    support::poll_until(std::time::Duration::from_secs(20), || {
        let out = ns.exec("curl").args(["-sf", "-o", "/dev/null", &probe]).status().unwrap();
        out.success().then_some(())
    })
    .expect("the web server in the namespace answers");
    let home_a = support::Home::init();
    let home_b = support::Home::init();
    std::fs::write(
        home_a.file("config.yaml"),
        format!("listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\ndns: {{ listen: null }}\nservices:\n  web: {{ local_address: 127.0.0.1:{web}, port: 80 }}\n"),
    )
    .unwrap();
    home_a.allow(&home_b.peer_id, None);
    let a = Daemon::spawn(ns.exec(support::BIN), home_a.path(), "run");
    std::fs::write(
        home_b.file("config.yaml"),
        format!(
            "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\ndns: {{ listen: 127.0.0.1:53 }}\nnames:\n  home.lab: {}\n",
            a.tcp_multiaddr()
        ),
    )
    .unwrap();
    let b = Daemon::spawn(ns.exec(support::BIN), home_b.path(), "run");
    for mode in ["--socks5", "--socks5-hostname"] {
        let out = ns
            .exec("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", mode])
            .arg(b.socks().to_string())
            .arg("http://home.lab.p2p/Cargo.toml")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{mode}: {err}\n{}", b.log.text());
    }
    // The --socks5 request carried the pool address our DNS gave curl, and went to the name.
    let via_pool = b.log.wait_for(
        |l| l.contains("tunnel closed") && l.contains("target=127.") && l.contains(&home_a.peer_id),
        std::time::Duration::from_secs(10),
    );
    assert!(via_pool.is_some(), "a tunnel to a pool address:\n{}", b.log.text());
    let _ = server.kill();
    let _ = server.wait();
}
