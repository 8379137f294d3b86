//! Real client programs for the tests: an OpenSSH server of the test's own, the `ssh` and `scp`
//! commands that trust only it, headless Chromium, and a runner that never lets a client hang.
//!
//! Everything lives in temporary directories; ports are free ports of 127.0.0.1. The tools are
//! Debian's: `openssh-server openssh-client netcat-openbsd chromium`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Log, poll_until};

/// The OpenSSH server, where Debian installs it.
pub const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to answer its banner.
pub const SSHD_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one headless Chromium run may take before it is killed.
pub const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the user running the tests (`whoami`): the one ssh logs in as.
pub fn user() -> String {
    let out = Command::new("whoami").output().expect("whoami");
    assert!(out.status.success(), "whoami: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Quote `word` for `sh -c` (ssh runs a ProxyCommand through the user's shell).
pub fn shell_quote(word: impl AsRef<std::ffi::OsStr>) -> String {
    let word = word.as_ref().to_string_lossy();
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// An `ssh -o` option that makes ssh reach `HOST:PORT` through `peerup connect` of the daemon
/// whose home is `home`.
pub fn peerup_proxy_command(home: &Path) -> String {
    format!("ProxyCommand={} --home {} connect %h:%p", shell_quote(super::BIN), shell_quote(home))
}

/// An `ssh -o` option that makes ssh reach `HOST:PORT` through a SOCKS5 proxy with OpenBSD
/// netcat, the host name sent to the proxy.
pub fn socks_proxy_command(socks: SocketAddr) -> String {
    format!("ProxyCommand=nc -X 5 -x {socks} %h %p")
}

/// Where a test keeps files for a human to look at afterwards (screenshots):
/// `target/tmp/artifacts/NAME`.
pub fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir.join(name)
}

/// What a client run gave: its exit status (`None` if it was killed at the time limit), its
/// output and how long it took.
#[derive(Debug)]
pub struct Ran {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    /// It exited by itself, with 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl std::fmt::Display for Ran {
    /// The command, how it ended, and what it wrote: for assertion messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "{}: {status} after {:.1?}", self.what, self.took)?,
            None => writeln!(f, "{}: KILLED after {:.1?} (time limit)", self.what, self.took)?,
        }
        let stdout = self.stdout_text();
        let stdout: String = stdout.chars().take(4000).collect();
        writeln!(f, "--- stdout:\n{stdout}")?;
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// Run `command` (stdin from /dev/null) in a process group of its own; kill the group at
/// `limit`, and whatever the command left behind in it once it exited.
pub fn run_within(mut command: Command, limit: Duration) -> Ran {
    let what = format!("{command:?}");
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Readers on their own threads, so a full pipe never blocks the client; a process that
    // left the group and holds a pipe open cannot block the test either.
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = poll_until(limit, || child.try_wait().expect("wait for a client"));
    let took = started.elapsed();
    // The group's id is the leader's pid; it is ours until we reap the leader.
    kill_group(child.id());
    let status = match status {
        Some((status, _)) => Some(status),
        None => {
            let _ = child.wait();
            None
        }
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| b"(still open)".to_vec())
    };
    let stdout = collect(stdout);
    let stderr = String::from_utf8_lossy(&collect(stderr)).into_owned();
    Ran { what, status, stdout, stderr, took }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// SIGKILL to every process of the group led by `pid` (one we spawned with `process_group(0)`).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// `ssh-keygen -q -t ed25519 -N '' -f PATH`; returns the public key's `TYPE BASE64`.
fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "peerup-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen is installed (apt-get install openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// An OpenSSH server on 127.0.0.1 with its own host key, config and authorized key, started
/// as `sshd -D -e -f CONFIG` and killed (with its sessions) on drop. As root it needs its
/// privilege-separation directory /run/sshd, which [`Sshd::start`] creates; as another user it
/// runs unprivileged (no privilege separation) and lets in only that user, which is all the
/// tests need: they log in as the user running them.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// sshd's log (`-e`: to stderr), LogLevel VERBOSE.
    pub log: Log,
    child: Child,
    /// `ssh-ed25519 AAAA...`
    host_public: String,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd").field("port", &self.port).field("dir", &self.dir.path()).finish()
    }
}

impl Sshd {
    /// Generate the keys, write the config, start sshd and wait until it answers "SSH-2.0".
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_public = keygen(&dir.path().join("host_key"));
        let client_public = keygen(&dir.path().join("client_key"));
        std::fs::write(dir.path().join("authorized_keys"), format!("{client_public}\n")).unwrap();
        if super::is_root() {
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        // A free port may be taken before sshd binds it: then try another.
        let mut failures = String::new();
        for _ in 0..3 {
            let port = super::free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(dir.path(), port)).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("sshd is installed at /usr/sbin/sshd (apt-get install openssh-server)");
            let log = Log::default();
            log.clone().capture(child.stderr.take().unwrap());
            let ready = poll_until(SSHD_READY_TIMEOUT, || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                banner(port).then_some(true)
            });
            if ready.is_some_and(|(ready, _)| ready) {
                return Sshd { dir, port, log, child, host_public };
            }
            kill_group(child.id());
            let status = child.wait();
            // The log thread has all of it once the pipe closed.
            let _ = log.wait_for(|_| false, Duration::from_secs(2));
            failures.push_str(&format!("port {port}: {status:?}\n{}\n", log.text()));
            if !log.text().contains("Address already in use") {
                break;
            }
        }
        panic!("sshd did not answer its banner:\n{failures}");
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The known_hosts file `ssh_command` and `scp_command` trust, and nothing else.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The host public key, `ssh-ed25519 AAAA...`.
    pub fn host_public_key(&self) -> &str {
        &self.host_public
    }

    /// Trust this server's host key under `host` (a known_hosts host pattern: `home.alice.p2p`,
    /// or `[127.0.0.1]:2222` for a non-standard port): append `HOST ssh-ed25519 AAAA...`.
    pub fn trust_host(&self, host: &str) {
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(self.known_hosts()).unwrap();
        writeln!(file, "{host} {}", self.host_public).unwrap();
    }

    /// `USER@HOST` for the current user.
    pub fn destination(&self, host: &str) -> String {
        format!("{}@{host}", user())
    }

    /// `ssh` with the client key only, this server's known_hosts only, strict host key checking,
    /// no prompts, no user config (`-F /dev/null`), then `extra` (options, destination, command).
    pub fn ssh_command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new("ssh");
        self.client_options(&mut command);
        command.args(extra);
        command
    }

    /// `scp` with the same options as [`Sshd::ssh_command`], then `extra` (options, files).
    pub fn scp_command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new("scp");
        self.client_options(&mut command);
        command.args(extra);
        command
    }

    fn client_options(&self, command: &mut Command) {
        command
            .args(["-F", "/dev/null", "-i"])
            .arg(self.client_key())
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts().display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=20"]);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener and the sessions it forked share its process group.
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {dir}/host_key\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\n\
         StrictModes no\n\
         PidFile {dir}/sshd.pid\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         Subsystem sftp internal-sftp\n\
         LogLevel VERBOSE\n"
    )
}

/// Whether an SSH server on 127.0.0.1:`port` accepts a connection and sends its "SSH-2.0" line.
pub fn banner(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(socket) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(socket).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-")
}

/// One headless Chromium page load: the DOM it printed and what it wrote to stderr.
#[derive(Debug)]
pub struct Page {
    pub dom: String,
    /// Both runs' stderr, without the D-Bus complaints of a machine with no bus.
    pub stderr: String,
    pub screenshot: PathBuf,
    pub took: Duration,
}

/// Load `url` in headless Chromium with `proxy_args` (`--proxy-server=...`) twice, each time in a
/// fresh profile and killed after [`CHROMIUM_TIMEOUT`]: once with `--dump-dom` (the page as
/// loaded), once with `--screenshot=SCREENSHOT` at 800x600. A failed load still exits 0 with an
/// error page: assert on the DOM.
pub fn chromium_dump_dom(proxy_args: &[String], url: &str, screenshot: &Path) -> Page {
    let started = Instant::now();
    let dump = chromium(proxy_args, &["--dump-dom", url]);
    let shot = chromium(
        proxy_args,
        &[&format!("--screenshot={}", screenshot.display()), "--window-size=800,600", url],
    );
    let mut stderr = String::new();
    for ran in [&dump, &shot] {
        let quiet: Vec<&str> = ran.stderr.lines().filter(|l| !l.contains(":ERROR:dbus/")).collect();
        match ran.status {
            Some(status) => stderr.push_str(&format!("{}: {status}\n", ran.what)),
            None => stderr.push_str(&format!("{}: KILLED at the time limit\n", ran.what)),
        }
        stderr.push_str(&quiet.join("\n"));
        stderr.push('\n');
    }
    Page {
        dom: dump.stdout_text(),
        stderr,
        screenshot: screenshot.to_owned(),
        took: started.elapsed(),
    }
}

fn chromium(proxy_args: &[String], args: &[&str]) -> Ran {
    let profile = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(proxy_args)
        .args(args);
    run_within(command, CHROMIUM_TIMEOUT)
}
