//! The NAT lab's harness: labs built by tests/netlab/lab.sh, the processes in them, and the
//! measurements the tests report.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use crate::support::report;
use crate::support::{BIN, Daemon, Home};

pub const RELAY_IP: &str = "198.18.0.10";
/// Inside the relay's own namespace nothing else listens, so its production port is safe, and a
/// fixed port lets a restarted relay come back where its members look for it.
pub const RELAY_PORT: u16 = 4101;
pub const BIG: usize = 64 << 20;

/// A lab, torn down on drop.
pub struct Lab {
    pub prefix: String,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netlab/lab.sh")
}

impl Lab {
    /// Build a lab, or say why not (and fail under CI).
    pub fn up(test: &str, mode_a: &str, mode_b: &str) -> Option<Lab> {
        if !crate::support::root_or_skip(&format!("netlab {test}"), "a network namespace") {
            return None;
        }
        let prefix =
            format!("pu{}{}-", std::process::id() % 10_000, LABS.fetch_add(1, Ordering::Relaxed));
        let lab = Lab { prefix };
        let out = lab.script(&["up", mode_a, mode_b]);
        assert!(out.status.success(), "lab up: {}", String::from_utf8_lossy(&out.stderr));
        Some(lab)
    }

    pub fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(lab_script())
            .args(args)
            .env("P", &self.prefix)
            .output()
            .expect("run lab.sh")
    }

    /// `ip netns exec <node> PROGRAM`.
    pub fn command(&self, node: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &format!("{}{node}", self.prefix), program]);
        command
    }

    pub fn daemon(&self, node: &str, home: &Home, subcommand: &str) -> Daemon {
        Daemon::spawn(self.command(node, BIN), home.path(), subcommand)
    }

    /// curl through a gateway's SOCKS listener, inside `node`. Returns (exit ok, body, stderr,
    /// seconds to first byte).
    pub fn curl(&self, node: &str, gateway: &Daemon, url: &str, out: Option<&Path>) -> Curl {
        let output = self.curl_command(node, gateway, url, out).output().expect("curl");
        Curl::from(output)
    }

    /// The curl command of [`Lab::curl`], to run in the background.
    pub fn curl_command(
        &self,
        node: &str,
        gateway: &Daemon,
        url: &str,
        out: Option<&Path>,
    ) -> Command {
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

pub struct Curl {
    pub ok: bool,
    /// The body (unless saved to a file), then a line: time_starttransfer time_total.
    pub stdout: String,
    pub stderr: String,
}

impl Curl {
    pub fn times(&self) -> (f64, f64) {
        let last = self.stdout.lines().last().unwrap_or("");
        let mut times = last.split_whitespace().map(|t| t.parse().unwrap_or(f64::NAN));
        (times.next().unwrap_or(f64::NAN), times.next().unwrap_or(f64::NAN))
    }

    /// Seconds to the first byte of the body.
    pub fn ttfb(&self) -> f64 {
        self.times().0
    }

    pub fn total(&self) -> f64 {
        self.times().1
    }
}

/// A plain web server inside a namespace, serving `dir` on a free port.
pub struct WebServer {
    pub child: std::process::Child,
    pub port: u16,
}

impl WebServer {
    pub fn start(lab: &Lab, node: &str, dir: &Path) -> WebServer {
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
pub fn status(home: &Home) -> serde_json::Value {
    crate::support::status(home.path())
}

/// Poll `check` until it holds or `limit` passes; returns the time it took.
pub fn wait_until(what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
    poll_until(limit, check).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// Poll `check` until it holds (the time it took) or `limit` passes (`None`).
pub fn poll_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    crate::support::poll_until(limit, || check().then_some(())).map(|((), took)| took)
}

pub fn reserved(home: &Home) -> bool {
    status(home)["reservations"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["state"] == "reserved"))
}

/// Whether the gateway knows its public address on both TCP and QUIC (what hole punching offers).
pub fn observed_both(home: &Home) -> bool {
    let status = status(home);
    let observed: Vec<String> = status["observed"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let public = |a: &&String| a.starts_with("/ip4/198.18.");
    let tcp = observed.iter().filter(public).any(|a| a.contains("/tcp/"));
    let quic = observed.iter().filter(public).any(|a| a.contains("/quic-v1"));
    tcp && quic
}

/// Paths ("direct"/"relayed") of the gateway's connections to `peer`.
pub fn paths_to(home: &Home, peer: &str) -> Vec<String> {
    let status = status(home);
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .filter(|p| p["peer"] == peer)
        .flat_map(|p| p["connections"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["path"].as_str().map(str::to_owned))
        .collect()
}

pub fn circuit_bytes(relay: &Home) -> u64 {
    status(relay)["circuit_bytes"].as_u64().expect("circuit_bytes")
}

/// The three nodes of a lab: a relay, a client host A, a serving host B with a web service.
pub struct Net {
    pub relay_home: Home,
    pub relay: Daemon,
    pub home_a: Home,
    pub a: Daemon,
    pub home_b: Home,
    pub b: Daemon,
    pub _web: WebServer,
    pub www: tempfile::TempDir,
}

impl Net {
    /// `members`: whether B is a relay member (A always is).
    pub fn start(lab: &Lab, b_is_member: bool) -> Net {
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
        let mut noise = crate::support::services::Noise::new(7);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..(BIG >> 20) {
            noise.fill(&mut chunk);
            std::io::Write::write_all(&mut big, &chunk).unwrap();
        }
        let web = WebServer::start(lab, "hostb", www.path());
        let listen = "listen: [/ip4/0.0.0.0/tcp/0, /ip4/0.0.0.0/udp/0/quic-v1]\nsocks: { listen: 127.0.0.1:0 }\ndns: { listen: 127.0.0.1:0 }\n";
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

    pub fn big_digest(&self) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(self.www.path().join("big.bin")).unwrap()).to_vec()
    }

    /// Download big.bin through A's SOCKS listener; the SHA-256 of what arrived.
    pub fn fetch_big(&self, lab: &Lab) -> (Curl, Vec<u8>) {
        use sha2::Digest;
        let out = tempfile::NamedTempFile::new().unwrap();
        let curl = lab.curl("hosta", &self.a, "http://web.lab.p2p/big.bin", Some(out.path()));
        let digest = sha2::Sha256::digest(std::fs::read(out.path()).unwrap_or_default()).to_vec();
        (curl, digest)
    }

    /// Wait for B's reservation, then fetch the index page from A; returns the fetch, the time
    /// the reservation took, and when the fetch started.
    pub fn first_fetch(&self, lab: &Lab) -> (Curl, Duration, Instant) {
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
    pub fn bulk(&self, lab: &Lab) -> (Curl, u64) {
        let before = circuit_bytes(&self.relay_home);
        let (bulk, digest) = self.fetch_big(lab);
        let after = circuit_bytes(&self.relay_home);
        assert!(bulk.ok, "bulk fetch: {}\n{}", bulk.stderr, self.logs());
        assert_eq!(digest, self.big_digest(), "64 MiB arrived intact");
        (bulk, after - before)
    }

    /// `wait_until`, showing every log when it fails.
    pub fn wait_until(&self, what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
        poll_until(limit, check)
            .unwrap_or_else(|| panic!("{what}: not within {limit:?}\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        format!(
            "--- relay\n{}\n--- A\n{}\n--- B\n{}",
            self.relay.log.text(),
            self.a.log.text(),
            self.b.log.text()
        )
    }
}
