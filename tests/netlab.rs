//! The NAT lab: real `peerup` processes on hosts behind NAT routers built from network
//! namespaces (tests/netlab/lab.sh), a relay on a fake internet, real curl.
//!
//! Needs root. Without root each test prints why it did not run; with CI=true that is a failure.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should stop the test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{BIN, Daemon, Home, peerup};

const RELAY_IP: &str = "198.18.0.10";
/// Inside the relay's own namespace nothing else listens, so its production port is safe, and a
/// fixed port lets a restarted relay come back where its members look for it.
const RELAY_PORT: u16 = 4101;
const BIG: usize = 64 << 20;

/// Print a measurement, and keep it in target/tmp/netlab-timings.txt (`make test` shows it).
fn report(line: String) {
    use std::io::Write;
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("netlab-timings.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// A lab, torn down on drop.
struct Lab {
    prefix: String,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netlab/lab.sh")
}

impl Lab {
    /// Build a lab, or say why not (and fail under CI).
    fn up(test: &str, mode_a: &str, mode_b: &str) -> Option<Lab> {
        let root =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if !root.unwrap_or(false) {
            let why = format!("netlab {test}: SKIPPED: network namespaces need root");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why} (CI=true: a skip fails the run)"
            );
            eprintln!("{why}");
            return None;
        }
        let prefix =
            format!("pu{}{}-", std::process::id() % 10_000, LABS.fetch_add(1, Ordering::Relaxed));
        let lab = Lab { prefix };
        let out = lab.script(&["up", mode_a, mode_b]);
        assert!(out.status.success(), "lab up: {}", String::from_utf8_lossy(&out.stderr));
        Some(lab)
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(lab_script())
            .args(args)
            .env("P", &self.prefix)
            .output()
            .expect("run lab.sh")
    }

    /// `ip netns exec <node> PROGRAM`.
    fn command(&self, node: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &format!("{}{node}", self.prefix), program]);
        command
    }

    fn daemon(&self, node: &str, home: &Home, subcommand: &str) -> Daemon {
        Daemon::spawn(self.command(node, BIN), home.path(), subcommand)
    }

    /// curl through a gateway's SOCKS listener, inside `node`. Returns (exit ok, body, stderr,
    /// seconds to first byte).
    fn curl(&self, node: &str, gateway: &Daemon, url: &str, out: Option<&Path>) -> Curl {
        let output = self.curl_command(node, gateway, url, out).output().expect("curl");
        Curl::from(output)
    }

    /// The curl command of [`Lab::curl`], to run in the background.
    fn curl_command(&self, node: &str, gateway: &Daemon, url: &str, out: Option<&Path>) -> Command {
        let mut command = self.command(node, "curl");
        command.args([
            "-sS",
            "--max-time",
            "60",
            "-w",
            "\n%{time_starttransfer} %{time_total}",
            "--socks5-hostname",
        ]);
        command.arg(gateway.socks().to_string());
        if let Some(path) = out {
            command.arg("-o").arg(path);
        }
        command.arg(url);
        command
    }
}

impl From<std::process::Output> for Curl {
    fn from(output: std::process::Output) -> Curl {
        Curl {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

struct Curl {
    ok: bool,
    /// The body (unless saved to a file), then a line: time_starttransfer time_total.
    stdout: String,
    stderr: String,
}

impl Curl {
    fn times(&self) -> (f64, f64) {
        let last = self.stdout.lines().last().unwrap_or("");
        let mut times = last.split_whitespace().map(|t| t.parse().unwrap_or(f64::NAN));
        (times.next().unwrap_or(f64::NAN), times.next().unwrap_or(f64::NAN))
    }

    /// Seconds to the first byte of the body.
    fn ttfb(&self) -> f64 {
        self.times().0
    }

    fn total(&self) -> f64 {
        self.times().1
    }
}

/// A plain web server inside a namespace, serving `dir` on a free port.
struct WebServer {
    child: std::process::Child,
    port: u16,
}

impl WebServer {
    fn start(lab: &Lab, node: &str, dir: &Path) -> WebServer {
        use std::io::BufRead;
        let mut child = lab
            .command(node, "python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        WebServer { child, port: port.unwrap_or_else(|| panic!("no port in {line:?}")) }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `peerup status --json` of a running daemon.
fn status(home: &Home) -> serde_json::Value {
    let out = peerup(home.path(), &["status", "--json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Poll `check` until it holds or `limit` passes; returns the time it took.
fn wait_until(what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
    poll_until(limit, check).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// Poll `check` every 50 ms until it holds (the time it took) or `limit` passes (`None`).
fn poll_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(start.elapsed())
}

fn reserved(home: &Home) -> bool {
    status(home)["reservations"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["state"] == "reserved"))
}

/// Paths ("direct"/"relayed") of the gateway's connections to `peer`.
fn paths_to(home: &Home, peer: &str) -> Vec<String> {
    let status = status(home);
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .filter(|p| p["peer"] == peer)
        .flat_map(|p| p["connections"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["path"].as_str().map(str::to_owned))
        .collect()
}

fn circuit_bytes(relay: &Home) -> u64 {
    status(relay)["circuit_bytes"].as_u64().expect("circuit_bytes")
}

/// The three nodes of a lab: a relay, a client host A, a serving host B with a web service.
struct Net {
    relay_home: Home,
    relay: Daemon,
    home_a: Home,
    a: Daemon,
    home_b: Home,
    b: Daemon,
    _web: WebServer,
    www: tempfile::TempDir,
}

impl Net {
    /// `members`: whether B is a relay member (A always is).
    fn start(lab: &Lab, b_is_member: bool) -> Net {
        let relay_home = Home::init();
        let home_a = Home::init();
        let home_b = Home::init();
        std::fs::write(
            relay_home.file("config.yaml"),
            format!("relay:\n  listen: [/ip4/0.0.0.0/tcp/{RELAY_PORT}, /ip4/0.0.0.0/udp/{RELAY_PORT}/quic-v1]\n"),
        )
        .unwrap();
        let mut members = format!("{} # host A\n", home_a.peer_id);
        if b_is_member {
            members.push_str(&format!("{} # host B\n", home_b.peer_id));
        }
        relay_home.write_private("relay_authorized_keys", &members);
        let relay = lab.daemon("relay", &relay_home, "relay");
        let relays = format!(
            "[/ip4/{RELAY_IP}/tcp/{RELAY_PORT}/p2p/{r}, /ip4/{RELAY_IP}/udp/{RELAY_PORT}/quic-v1/p2p/{r}]",
            r = relay.state.peer_id
        );
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "hello from B\n").unwrap();
        let mut big = std::fs::File::create(www.path().join("big.bin")).unwrap();
        let mut noise = support::services::Noise::new(7);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..(BIG >> 20) {
            noise.fill(&mut chunk);
            std::io::Write::write_all(&mut big, &chunk).unwrap();
        }
        let web = WebServer::start(lab, "hostb", www.path());
        let listen = "listen: [/ip4/0.0.0.0/tcp/0, /ip4/0.0.0.0/udp/0/quic-v1]\nsocks: { listen: 127.0.0.1:0 }\n";
        std::fs::write(
            home_b.file("config.yaml"),
            format!(
                "{listen}networks:\n  lab: {{ relays: {relays} }}\nservices:\n  web: {{ local_address: 127.0.0.1:{}, port: 80 }}\n",
                web.port
            ),
        )
        .unwrap();
        home_b.allow(&home_a.peer_id, None);
        std::fs::write(
            home_a.file("config.yaml"),
            format!(
                "{listen}networks:\n  lab: {{ relays: {relays} }}\nnames:\n  web.lab: {}\n",
                home_b.peer_id
            ),
        )
        .unwrap();
        let b = lab.daemon("hostb", &home_b, "run");
        let a = lab.daemon("hosta", &home_a, "run");
        Net { relay_home, relay, home_a, a, home_b, b, _web: web, www }
    }

    fn big_digest(&self) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(self.www.path().join("big.bin")).unwrap()).to_vec()
    }

    /// Download big.bin through A's SOCKS listener; the SHA-256 of what arrived.
    fn fetch_big(&self, lab: &Lab) -> (Curl, Vec<u8>) {
        use sha2::Digest;
        let out = tempfile::NamedTempFile::new().unwrap();
        let curl = lab.curl("hosta", &self.a, "http://web.lab.p2p/big.bin", Some(out.path()));
        let digest = sha2::Sha256::digest(std::fs::read(out.path()).unwrap_or_default()).to_vec();
        (curl, digest)
    }

    /// Wait for B's reservation, then fetch the index page from A; returns the fetch, the time
    /// the reservation took, and when the fetch started.
    fn first_fetch(&self, lab: &Lab) -> (Curl, Duration, Instant) {
        let reserve =
            wait_until("B's reservation", Duration::from_secs(15), || reserved(&self.home_b));
        let started = Instant::now();
        let first = lab.curl("hosta", &self.a, "http://web.lab.p2p/index.html", None);
        assert!(
            first.ok && first.stdout.starts_with("hello from B"),
            "first fetch: {}\n{}",
            first.stderr,
            self.logs()
        );
        (first, reserve, started)
    }

    /// Download 64 MiB from B to A and check its SHA-256; returns the fetch and how many
    /// bytes the relay's circuits carried meanwhile.
    fn bulk(&self, lab: &Lab) -> (Curl, u64) {
        let before = circuit_bytes(&self.relay_home);
        let (bulk, digest) = self.fetch_big(lab);
        let after = circuit_bytes(&self.relay_home);
        assert!(bulk.ok, "bulk fetch: {}\n{}", bulk.stderr, self.logs());
        assert_eq!(digest, self.big_digest(), "64 MiB arrived intact");
        (bulk, after - before)
    }

    /// `wait_until`, showing every log when it fails.
    fn wait_until(&self, what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
        poll_until(limit, check)
            .unwrap_or_else(|| panic!("{what}: not within {limit:?}\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        format!(
            "--- relay\n{}\n--- A\n{}\n--- B\n{}",
            self.relay.log.text(),
            self.a.log.text(),
            self.b.log.text()
        )
    }
}

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
