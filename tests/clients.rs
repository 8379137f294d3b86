//! Real clients through the gateway, as a user runs them: OpenSSH (through `peerup connect`,
//! through a SOCKS5 netcat, through `peerup forward`, and with the `peerup ssh-config` block),
//! scp, and a headless Chromium (SOCKS5 and the PAC file).
//!
//! Node A serves; node B knows A as `home.alice`, so `home.alice.p2p` is A. The "remote" sshd
//! runs on this machine on a port of its own, exposed by A as the service `ssh` on port 22.

mod support;

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::Pair;
use support::clients::{self, Ran, Sshd};
use support::services::{self, Noise};

/// How long one ssh command may take before it is killed (it never hangs a test run).
const SSH_LIMIT: Duration = Duration::from_secs(60);
/// How long one scp of the 16 MiB file may take.
const SCP_LIMIT: Duration = Duration::from_secs(180);

/// sshd on its own port, A serving it as `ssh` on port 22, B knowing A as `home.alice`, and the
/// client trusting the server's host key as `home.alice.p2p`.
fn ssh_pair() -> (Sshd, Pair) {
    let sshd = Sshd::start();
    let pair = Pair::start(
        &format!("  ssh: {{ local_address: 127.0.0.1:{}, port: 22 }}\n", sshd.port),
        |home, b| home.allow(b, None),
    );
    sshd.trust_host("home.alice.p2p");
    (sshd, pair)
}

/// Everything a failed client test should show: the client, both daemons, sshd.
fn context(ran: &Ran, pair: &Pair, sshd: &Sshd) -> String {
    format!("{ran}\n{}\n--- sshd:\n{}", pair.logs(), sshd.log.text())
}

/// Run the command on A as the current user through `proxy` (an `ssh -o` option); assert that
/// ssh exits 0 and printed what the command prints there.
fn ssh_runs_a_command_on_a(sshd: &Sshd, pair: &Pair, proxy: &str) -> Ran {
    let user = clients::user();
    let destination = sshd.destination("home.alice.p2p");
    let command = sshd.ssh_command(&["-o", proxy, &destination, "echo hello-from-a; id -un"]);
    let ran = clients::run_within(command, SSH_LIMIT);
    assert!(ran.success(), "ssh through {proxy} failed:\n{}", context(&ran, pair, sshd));
    assert_eq!(
        ran.stdout_text(),
        format!("hello-from-a\n{user}\n"),
        "ssh ran the command on A as {user}:\n{}",
        context(&ran, pair, sshd)
    );
    ran
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{} is there: {e}", path.display()));
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("read the file");
    hasher.finalize().into()
}

#[test]
fn ssh_and_scp_through_peerup_connect_reach_the_sshd_on_the_other_peer() {
    const SIZE: usize = 16 << 20;
    let (sshd, pair) = ssh_pair();
    let proxy = clients::peerup_proxy_command(pair.home_b.path());
    let ran = ssh_runs_a_command_on_a(&sshd, &pair, &proxy);
    support::report(format!(
        "clients: ssh through peerup connect ran a command in {:.2?}",
        ran.took
    ));

    // 16 MiB of noise to A and back, by scp (SFTP), each file in its own directory.
    let files = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let original = files.path().join("original");
    let mut bytes = vec![0u8; SIZE];
    Noise::new(16).fill(&mut bytes);
    std::fs::write(&original, &bytes).unwrap();
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let on_a = remote.path().join("copy");
    let back = files.path().join("back");
    let remote_spec = format!("{}:{}", sshd.destination("home.alice.p2p"), on_a.display());

    let up = sshd.scp_command(&["-o", &proxy, &original.display().to_string(), &remote_spec]);
    let up = clients::run_within(up, SCP_LIMIT);
    assert!(up.success(), "scp to A failed:\n{}", context(&up, &pair, &sshd));
    assert_eq!(sha256_file(&on_a), digest, "A's copy is intact");

    let down = sshd.scp_command(&["-o", &proxy, &remote_spec, &back.display().to_string()]);
    let down = clients::run_within(down, SCP_LIMIT);
    assert!(down.success(), "scp from A failed:\n{}", context(&down, &pair, &sshd));
    assert_eq!(
        sha256_file(&back),
        digest,
        "the file came back from A intact:\n{}",
        context(&down, &pair, &sshd)
    );
    let rate = |ran: &Ran| SIZE as f64 / 1e6 / ran.took.as_secs_f64();
    support::report(format!(
        "clients: scp 16 MiB through peerup connect: to A {:.1?} ({:.1} MB/s), back {:.1?} ({:.1} MB/s)",
        up.took,
        rate(&up),
        down.took,
        rate(&down)
    ));
}

#[test]
fn ssh_through_netcat_on_the_socks_port_runs_a_command_on_the_other_peer() {
    let (sshd, pair) = ssh_pair();
    let proxy = clients::socks_proxy_command(pair.b.socks());
    let ran = ssh_runs_a_command_on_a(&sshd, &pair, &proxy);
    support::report(format!("clients: ssh through nc -X 5 ran a command in {:.2?}", ran.took));
}

const PAGE: &str = "<html><head><title>alice at home</title></head>\
    <body><h1>Served by alice over peerup</h1><p id=\"mark\">kumquat-7734</p></body></html>";

/// A pair where A serves [`PAGE`]; headless Chromium on B's side loads `http://home.alice.p2p/`
/// with `proxy` arguments, and the page's content (not the exit code) must be in the DOM.
async fn chromium_loads_the_page(how: &str, proxy: impl Fn(&Pair) -> Vec<String>) {
    let web = services::http(PAGE).await;
    let pair = Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
        home.allow(b, None)
    });
    let proxy = proxy(&pair);
    let screenshot = clients::artifact(&format!("chromium-{how}-home.alice.p2p.png"));
    let _ = std::fs::remove_file(&screenshot);
    let page = clients::chromium_dump_dom(&proxy, "http://home.alice.p2p/", &screenshot);
    let context =
        || format!("--- DOM:\n{}\n--- chromium:\n{}\n{}", page.dom, page.stderr, pair.logs());
    assert!(
        page.dom.contains("kumquat-7734") && page.dom.contains("Served by alice over peerup"),
        "Chromium ({how}) shows the page from A:\n{}",
        context()
    );
    let png = std::fs::read(&screenshot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a screenshot was written to {}:\n{}",
        screenshot.display(),
        context()
    );
    support::report(format!(
        "clients: chromium ({how}) loaded http://home.alice.p2p/ twice (DOM, screenshot) in {:.1?}; screenshot: {}",
        page.took,
        screenshot.display()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_through_socks_loads_the_page_served_on_the_other_peer() {
    chromium_loads_the_page("socks5", |pair| {
        vec![format!("--proxy-server=socks5://{}", pair.b.socks())]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_with_the_pac_file_loads_the_page_served_on_the_other_peer() {
    chromium_loads_the_page("pac", |pair| {
        vec![format!("--proxy-pac-url=http://{}/proxy.pac", pair.b.socks())]
    })
    .await;
}

#[test]
fn ssh_through_peerup_forward_needs_no_proxy_settings() {
    let (sshd, pair) = ssh_pair();
    let forward = support::Forward::start(pair.home_b.path(), "home.alice.p2p:22");
    sshd.trust_host(&format!("[127.0.0.1]:{}", forward.addr.port()));
    let user = clients::user();
    let port = forward.addr.port().to_string();
    let command =
        sshd.ssh_command(&["-p", &port, &format!("{user}@127.0.0.1"), "echo hello-from-a"]);
    let ran = clients::run_within(command, SSH_LIMIT);
    assert!(
        ran.success() && ran.stdout_text() == "hello-from-a\n",
        "ssh to the forward's port ran the command on A:\n{}\n--- forward:\n{}",
        context(&ran, &pair, &sshd),
        forward.log.text()
    );
    support::report(format!(
        "clients: ssh through peerup forward ran a command in {:.2?}",
        ran.took
    ));
}

#[test]
fn the_block_from_peerup_ssh_config_reaches_the_sshd_by_name() {
    let (sshd, pair) = ssh_pair();
    let out = support::peerup(pair.home_b.path(), &["ssh-config"]);
    let block = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && block.contains("Host *.p2p"), "{block}");
    assert!(block.contains(support::BIN), "the ProxyCommand names this binary: {block}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ssh_config");
    std::fs::write(&config, &block).unwrap();
    let config = config.display().to_string();
    let destination = sshd.destination("home.alice.p2p");
    let command = sshd.ssh_command(&["-F", &config, &destination, "echo hello-from-a"]);
    let ran = clients::run_within(command, SSH_LIMIT);
    assert!(
        ran.success() && ran.stdout_text() == "hello-from-a\n",
        "ssh with only the printed block as its config reached A:\n{block}\n{}",
        context(&ran, &pair, &sshd)
    );
}
