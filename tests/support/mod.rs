//! Test harness: real `peerup` processes in temporary homes, real sockets, no fixed ports.
//!
//! A [`Daemon`] is `peerup run` started on a home whose config listens on port 0 everywhere;
//! it is ready once its state.json names its pid (written after every listener is bound), and
//! its bound addresses come from there. The local services the tests tunnel to are small tokio
//! servers bound to port 0.

#![allow(dead_code, unreachable_pub, missing_debug_implementations, clippy::unwrap_used)]

pub mod clients;
pub mod services;
pub mod socks;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_peerup");
/// Generous: CI machines are slow and share two cores between both ends.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `peerup --home HOME ARGS...` to completion.
pub fn peerup(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run peerup")
}

/// A fresh home made by `peerup init`, with a config written over the default.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub peer_id: String,
}

impl Home {
    pub fn init() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = peerup(dir.path(), &["init"]);
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let out = peerup(dir.path(), &["id"]);
        let peer_id = String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_owned();
        Home { dir, peer_id }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The peer ID as a DNS label (base36), as `peerup id` prints it.
    pub fn peer_label(&self) -> String {
        let out = peerup(self.path(), &["id"]);
        String::from_utf8(out.stdout).unwrap().lines().nth(1).unwrap().to_owned()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write config.yaml: loopback listeners on port 0, plus `extra` YAML.
    pub fn write_config(&self, extra: &str) {
        let config = format!(
            "listen: [/ip4/127.0.0.1/tcp/0, /ip4/127.0.0.1/udp/0/quic-v1]\nsocks: {{ listen: 127.0.0.1:0 }}\ndns: {{ listen: 127.0.0.1:0 }}\n{extra}"
        );
        std::fs::write(self.file("config.yaml"), config).unwrap();
    }

    /// `peerup auth add PEER [--service NAME]`.
    pub fn allow(&self, peer: &str, service: Option<&str>) {
        let mut args = vec!["auth", "add", peer];
        if let Some(service) = service {
            args.extend(["--service", service]);
        }
        let out = peerup(self.path(), &args);
        assert!(out.status.success(), "auth add: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Write a private file in the home (0600, as an allow list must be).
    pub fn write_private(&self, name: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.file(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Lines a process wrote to stderr, shared with a reader thread.
/// The lines so far, and whether the stream ended.
type Lines = Mutex<(Vec<String>, bool)>;

#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<(Lines, Condvar)>,
}

impl Log {
    pub fn capture(self, stderr: impl std::io::Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*self.inner;
                lock.lock().unwrap().0.push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*self.inner;
            lock.lock().unwrap().1 = true;
            cvar.notify_all();
        });
    }

    /// Wait until a line matches, or the process ended, or the timeout passed.
    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(line) = state.0.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return None;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().0.clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

#[derive(serde::Deserialize, Debug, Clone)]
pub struct State {
    pub role: String,
    pub pid: u32,
    pub peer_id: String,
    pub peer_label: String,
    pub socks: Option<SocketAddr>,
    pub libp2p: Vec<String>,
    pub control: PathBuf,
    #[serde(default)]
    pub dns: Option<SocketAddr>,
}

/// A running `peerup run`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: Log,
    pub state: State,
}

impl Daemon {
    /// Start `peerup -v run` on `home` and wait until it is ready.
    pub fn start(home: &Home) -> Daemon {
        Daemon::spawn(Command::new(BIN), home.path(), "run")
    }

    /// Start `peerup --home HOME -v SUBCOMMAND` through `command` (the binary itself, or a
    /// wrapper such as `ip netns exec NS peerup`) and wait until it is ready.
    pub fn spawn(mut command: Command, home: &Path, subcommand: &str) -> Daemon {
        let mut child = command
            .arg("--home")
            .arg(home)
            .args(["-v", subcommand])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerup run");
        let log = Log::default();
        log.clone().capture(child.stderr.take().unwrap());
        let Some(state) = wait_ready(home, &mut child) else {
            let _ = child.kill();
            panic!("daemon did not become ready:\n{}", log.text());
        };
        Daemon { child, log, state }
    }

    /// Send a signal (`KILL`, `STOP`, `CONT`, `HUP`...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([&format!("-{name}"), &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} {pid}");
    }

    /// The DNS server of a gateway.
    pub fn dns(&self) -> SocketAddr {
        self.state.dns.expect("the gateway runs its DNS server")
    }

    /// The SOCKS listener of a gateway.
    pub fn socks(&self) -> SocketAddr {
        self.state.socks.expect("a gateway has a SOCKS listener")
    }

    /// The first TCP listen address, as a dialable multiaddr with our peer ID.
    pub fn tcp_multiaddr(&self) -> String {
        let addr = self.state.libp2p.iter().find(|a| a.contains("/tcp/")).expect("a TCP listener");
        format!("{addr}/p2p/{}", self.state.peer_id)
    }

    pub fn quic_multiaddr(&self) -> String {
        let addr =
            self.state.libp2p.iter().find(|a| a.contains("/quic-v1")).expect("a QUIC listener");
        format!("{addr}/p2p/{}", self.state.peer_id)
    }

    /// Wait for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for daemon")
    }

    /// Send SIGTERM (what a service manager sends to stop it).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL promptly in every kernel.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `home`'s state.json belongs to `child` (the daemon is ready), or it exited.
fn wait_ready(home: &Path, child: &mut Child) -> Option<State> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        if let Ok(text) = std::fs::read_to_string(home.join("state.json"))
            && let Ok(state) = serde_json::from_str::<State>(&text)
            && state.pid == child.id()
        {
            return Some(state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A port free for both TCP and UDP on 127.0.0.1 (bound, then released), so a restarted relay
/// comes back where its members look for it.
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Poll `check` until it gives a value or `timeout` passes; the value and how long it took.
pub fn poll_until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(value) = check() {
            return Some((value, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A serving node A with `services` (YAML under `services:`) and a client node B that knows A as
/// `home.alice` by its TCP address.
pub struct Pair {
    pub home_a: Home,
    pub home_b: Home,
    pub a: Daemon,
    pub b: Daemon,
}

impl Pair {
    /// `allow` sets up A's lists (B's peer ID given) before A starts.
    pub fn start(services_yaml: &str, allow: impl FnOnce(&Home, &str)) -> Pair {
        Pair::start_over(services_yaml, allow, Daemon::tcp_multiaddr)
    }

    /// As [`Pair::start`], B naming A by the address `address` picks (TCP or QUIC).
    pub fn start_over(
        services_yaml: &str,
        allow: impl FnOnce(&Home, &str),
        address: fn(&Daemon) -> String,
    ) -> Pair {
        let home_a = Home::init();
        let home_b = Home::init();
        home_a.write_config(&format!("services:\n{services_yaml}"));
        allow(&home_a, &home_b.peer_id);
        let a = Daemon::start(&home_a);
        home_b.write_config(&format!("names:\n  home.alice: {}\n", address(&a)));
        let b = Daemon::start(&home_b);
        Pair { home_a, home_b, a, b }
    }

    /// Both daemons' logs, for an assertion message.
    pub fn logs(&self) -> String {
        format!("--- A (serving):\n{}\n--- B (client):\n{}", self.a.log.text(), self.b.log.text())
    }
}

/// `peerup status --json` of the daemon running in `home`; it must answer.
pub fn status(home: &Path) -> serde_json::Value {
    let out = peerup(home, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    root.unwrap_or(false)
}

/// Whether this process is root (network namespaces need it). If not, say that `what` was
/// skipped and why; under CI=true a skip is a failure.
pub fn root_or_skip(what: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    let why = format!("{what}: SKIPPED: {needs} needs root");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} (CI=true: a skip fails the run)");
    eprintln!("{why}");
    false
}

/// Print a measured figure and keep it in target/tmp/measured.txt (`make test` shows it).
pub fn report(line: String) {
    use std::io::Write;
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("measured.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// `peerup forward 127.0.0.1:0 TARGET`, ready once it printed its bound address on stdout.
pub struct Forward {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub log: Log,
}

impl Forward {
    pub fn start(home: &std::path::Path, target: &str) -> Forward {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .arg("--home")
            .arg(home)
            .args(["forward", "127.0.0.1:0", target])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run peerup forward");
        let log = Log::default();
        log.clone().capture(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("forward printed no address: {line:?}\n{}", log.text())
        });
        Forward { child, addr, log }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
