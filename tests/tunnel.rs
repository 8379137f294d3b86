//! The tunnel path end to end: two `peerup run` nodes on loopback, real curl, real sockets.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::services::{self, noise_digest, write_noise};
use support::{Pair, socks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = "<html><body><h1>home of alice</h1></body></html>";

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_socks_fetches_the_page_served_on_the_other_peer() {
    let web = services::http(PAGE).await;
    let pair = Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
        home.allow(b, None)
    });
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5-hostname"])
        .arg(pair.b.socks().to_string())
        .arg("http://home.alice.p2p/")
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}\nB:\n{}",
        String::from_utf8_lossy(&out.stderr),
        pair.b.log.text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_reaches_a_named_peer_by_its_base58_id_or_base36_label_too() {
    let web = services::http(PAGE).await;
    for form in ["peer_id", "dns_label"] {
        // A fresh pair each time: no connection yet, so the label alone must find A's address
        // among B's names.
        let pair =
            Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
                home.allow(b, None)
            });
        let id = support::peerup(pair.home_a.path(), &["id", "--json"]);
        let id: serde_json::Value = serde_json::from_slice(&id.stdout).unwrap();
        let host = id[form].as_str().unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--socks5-hostname"])
            .arg(pair.b.socks().to_string())
            .arg(format!("http://{host}.p2p/"))
            .output()
            .expect("curl is installed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{host}.p2p: {err}\nB:\n{}", pair.b.log.text());
        assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE, "{host}.p2p");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_mib_each_way_arrive_intact_with_half_close() {
    const SIZE: usize = 64 << 20;
    let service = services::exchange(SIZE).await;
    let pair = Pair::start(&format!("  bulk: {{ local_address: {service} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let socket = socks::connect(pair.b.socks(), "home.alice.p2p", service.port())
        .await
        .expect("tunnel opens");
    let (mut r, mut w) = socket.into_split();
    let upload = tokio::spawn(async move {
        write_noise(&mut w, 1, SIZE).await.unwrap();
        // Our EOF must reach the service through the tunnel: only then does it send its digest.
        w.shutdown().await.unwrap();
        w
    });
    let mut hasher = Sha256::new();
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let body = data.len().min(SIZE.saturating_sub(total));
        hasher.update(&data[..body]);
        tail.extend_from_slice(&data[body..]);
        total += n;
    }
    let _w = upload.await.unwrap();
    assert_eq!(total, SIZE + 32, "download size plus the service's digest");
    assert_eq!(<[u8; 32]>::from(hasher.finalize()), noise_digest(2, SIZE), "download intact");
    assert_eq!(tail, noise_digest(1, SIZE), "the service received our upload intact");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_tunnels_all_complete() {
    const N: usize = 200;
    const EACH: usize = 64 * 1024;
    let echo = services::echo().await;
    let pair = Pair::start(&format!("  echo: {{ local_address: {echo} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let proxy = pair.b.socks();
    // Every tunnel is open before any sends: 200 streams at once on one connection.
    let all_open = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let all_open = all_open.clone();
        tasks.push(tokio::spawn(async move {
            let socket = socks::connect(proxy, "home.alice.p2p", echo.port()).await;
            all_open.wait().await;
            let (mut r, mut w) =
                socket.map_err(|code| format!("tunnel {i}: reply {code:#04x}"))?.into_split();
            let send = async move {
                write_noise(&mut w, i as u64 + 10, EACH).await?;
                w.shutdown().await
            };
            let mut back = Vec::new();
            let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
            sent.map_err(|e| format!("tunnel {i}: {e}"))?;
            got.map_err(|e| format!("tunnel {i}: {e}"))?;
            if Sha256::digest(&back).as_slice() != noise_digest(i as u64 + 10, EACH) {
                return Err(format!("tunnel {i}: echo differs ({} bytes back)", back.len()));
            }
            Ok::<(), String>(())
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(e) = task.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} failed: {failures:?}\nA:\n{}",
        failures.len(),
        pair.a.log.text()
    );
}

/// A tunnel that ended cleanly both ways leaves its stream open for the next tunnel to the same
/// peer: twenty tunnels one after another all run on one stream (B keeps one, never more), and
/// every one carries its bytes intact.
#[tokio::test(flavor = "multi_thread")]
async fn tunnels_one_after_another_take_turns_on_one_kept_stream() {
    let echo = services::echo().await;
    let pair = Pair::start(&format!("  echo: {{ local_address: {echo} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let kept = || {
        let status = support::status(pair.home_b.path());
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        let a = peers.iter().find(|p| p["peer"] == pair.home_a.peer_id.as_str()).cloned();
        a.and_then(|a| a["idle_streams"].as_u64()).unwrap_or(0)
    };
    for i in 0..20u64 {
        let socket = socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await;
        let (mut r, mut w) = socket.expect("tunnel opens").into_split();
        let send = async move {
            write_noise(&mut w, i, 4096).await?;
            w.shutdown().await
        };
        let mut back = Vec::new();
        let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
        sent.and(got).unwrap_or_else(|e| panic!("tunnel {i}: {e}\n{}", pair.logs()));
        assert_eq!(Sha256::digest(&back).as_slice(), noise_digest(i, 4096), "tunnel {i}");
        // The stream goes back once B has finished the tunnel, a moment after the app saw it end.
        let (count, _) = support::poll_until(Duration::from_secs(10), || {
            let count = kept();
            (count > 0).then_some(count)
        })
        .unwrap_or_else(|| panic!("tunnel {i}: no stream kept\n{}", pair.logs()));
        assert_eq!(count, 1, "tunnel {i} ran on the kept stream, not a new one");
    }
}

/// The opener's side of a tunnel can end — everything sent, the service's reply ended — while
/// the serving gateway still writes the last bytes into a service that reads slowly. The
/// stream is then not free yet: the next tunnel goes on another one instead of waiting behind
/// that tail (or reading a late RESET of it as its answer).
#[tokio::test(flavor = "multi_thread")]
async fn the_next_tunnel_does_not_wait_behind_the_last_ones_tail() {
    let echo = services::echo().await;
    let (held, release, mut ends) = services::held().await;
    let services =
        format!("  echo: {{ local_address: {echo} }}\n  held: {{ local_address: {held} }}\n");
    let pair = Pair::start(&services, |home, b| home.allow(b, None));
    let tunnels = |home: &support::Home, peer: &str| {
        let status = support::status(home.path());
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        let p = peers.iter().find(|p| p["peer"] == peer).cloned();
        p.and_then(|p| p["tunnels"].as_u64()).unwrap_or(0)
    };
    let (opener, server) =
        ((&pair.home_b, &pair.home_a.peer_id), (&pair.home_a, &pair.home_b.peer_id));
    // How much the path holds while the service reads nothing depends on the kernel's socket
    // buffers: uploads grow until one ends at B (the opener: everything sent, the reply ended)
    // and stays open at A (the serving side, its service not reading). Smaller ones end at A
    // too (they fit in its socket buffers); each is released and checked whole.
    let mut upload_len = 1 << 20;
    let upload = loop {
        assert!(upload_len <= 64 << 20, "no upload ended at B only\n{}", pair.logs());
        let mut socket = socks::connect(pair.b.socks(), "home.alice.p2p", held.port())
            .await
            .expect("tunnel opens");
        let upload = tokio::spawn(async move {
            write_noise(&mut socket, 1, upload_len).await?;
            socket.shutdown().await?;
            socket.read_to_end(&mut Vec::new()).await
        });
        let (state, _) = support::poll_until(Duration::from_secs(30), || {
            let (b, a) = (tunnels(opener.0, opener.1), tunnels(server.0, server.1));
            (b == 0).then_some(a)
        })
        .unwrap_or_else(|| panic!("{upload_len} bytes did not end at B\n{}", pair.logs()));
        if state == 1 {
            break upload;
        }
        release.send_modify(|n| *n += 1);
        assert_eq!(ends.recv().await, Some(services::End::Clean(upload_len as u64)));
        upload.await.unwrap().expect("the upload ended cleanly");
        upload_len += 192 << 10;
    };
    eprintln!("an upload of {upload_len} bytes ended at B while A still held its tail");
    let second = socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await;
    let (mut r, mut w) =
        second.expect("the next tunnel opens while the last one's tail waits").into_split();
    let send = async move {
        write_noise(&mut w, 2, 4096).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
    sent.and(got).unwrap_or_else(|e| panic!("the next tunnel: {e}\n{}", pair.logs()));
    assert_eq!(Sha256::digest(&back).as_slice(), noise_digest(2, 4096));
    release.send_modify(|n| *n += 1);
    let end = ends.recv().await;
    assert_eq!(end, Some(services::End::Clean(upload_len as u64)), "the held upload arrived whole");
    upload.await.unwrap().expect("the upload ended cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_sent_before_the_reply_are_delivered() {
    let echo = services::echo().await;
    let pair = Pair::start(&format!("  echo: {{ local_address: {echo} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let early = b"sent before the SOCKS reply";
    let mut socket =
        socks::connect_with_early(pair.b.socks(), "home.alice.p2p", echo.port(), early)
            .await
            .expect("tunnel opens");
    socket.shutdown().await.unwrap();
    let mut back = Vec::new();
    socket.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, early);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_reached_over_quic_serves_too() {
    let web = services::http(PAGE).await;
    let home_a = support::Home::init();
    let home_b = support::Home::init();
    home_a.write_config(&format!("services:\n  web: {{ local_address: {web}, port: 80 }}\n"));
    home_a.allow(&home_b.peer_id, None);
    let a = support::Daemon::start(&home_a);
    home_b.write_config(&format!("names:\n  home.alice: {}\n", a.quic_multiaddr()));
    let b = support::Daemon::start(&home_b);
    let mut socket =
        socks::connect(b.socks(), "home.alice.p2p", 80).await.expect("tunnel over QUIC");
    socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.ends_with(PAGE), "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_open_tunnels_finish_and_refuses_new_ones() {
    let echo = services::echo().await;
    let pair = Pair::start(&format!("  echo: {{ local_address: {echo} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let Pair { a, b, home_a: _home_a, home_b: _home_b } = pair;
    let mut open = socks::connect(b.socks(), "home.alice.p2p", echo.port()).await.expect("tunnel");
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    // A, the serving side, is asked to stop while the tunnel is open.
    a.sigterm();
    let draining =
        a.log.wait_for(|l| l.contains("no longer accepting"), std::time::Duration::from_secs(10));
    assert!(draining.is_some(), "A starts draining:\n{}", a.log.text());
    let refused = socks::connect(b.socks(), "home.alice.p2p", echo.port()).await.err();
    assert_eq!(
        refused,
        Some(0x01),
        "a new tunnel to a draining node is refused (busy):\n{}\n{}",
        b.log.text(),
        a.log.text()
    );

    // The open tunnel still carries bytes both ways and closes cleanly.
    open.write_all(b" and after").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = open.read_to_end(&mut rest).await;
    assert!(
        read.is_ok() && rest == b" and after",
        "{read:?} {:?}\nA:\n{}\nB:\n{}",
        String::from_utf8_lossy(&rest),
        a.log.text(),
        b.log.text()
    );

    // With its last tunnel done, A exits 0, promptly after saying it stopped.
    let stopped = a.log.wait_for(|l| l.contains("stopped"), std::time::Duration::from_secs(30));
    assert!(stopped.is_some(), "A stops:\n{}", a.log.text());
    let since = std::time::Instant::now();
    let status = a.wait();
    assert!(status.success(), "A exits cleanly: {status:?}");
    support::report(format!(
        "tunnel: exit {:.0} ms after the \"stopped\" line",
        since.elapsed().as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_peer_and_its_direct_path() {
    let web = services::http(PAGE).await;
    let pair = Pair::start(&format!("  web: {{ local_address: {web}, port: 80 }}\n"), |home, b| {
        home.allow(b, None)
    });
    let _tunnel = socks::connect(pair.b.socks(), "home.alice.p2p", 80).await.expect("tunnel");
    let out = support::peerup(pair.home_b.path(), &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer = status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["peer"] == pair.home_a.peer_id.as_str()))
        .unwrap_or_else(|| panic!("A is listed: {status}"));
    assert_eq!(peer["connections"][0]["path"], "direct");
    assert_eq!(peer["connections"][0]["transport"], "tcp");
    // TLS on TCP, with AES-128-GCM where the CPU accelerates it (both ends log it once).
    let suite = match peerup_gateway::node::tls::aes_accelerated() {
        true => "TLS13_AES_128_GCM_SHA256",
        false => "TLS13_CHACHA20_POLY1305_SHA256",
    };
    for (log, direction) in [(&pair.b.log, "outbound"), (&pair.a.log, "inbound")] {
        let line =
            log.wait_for(|l| l.contains("TLS connection negotiated"), Duration::from_secs(5));
        let line = line.unwrap_or_else(|| panic!("no TLS line:\n{}", pair.logs()));
        assert!(line.contains(suite) && line.contains(direction), "{line}");
    }
    let mode = std::fs::metadata(&pair.b.state.control).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "control socket is private"
    );
    let text = support::peerup(pair.home_b.path(), &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&pair.home_a.peer_id) && text.contains("direct"), "{text}");
}

/// `security` in config.yaml picks the channel: a gateway that lists only Noise reaches a
/// default one over Noise, and one that lists only TLS cannot reach a Noise-only one.
#[tokio::test(flavor = "multi_thread")]
async fn the_security_list_picks_the_channel() {
    let web = services::http(PAGE).await;
    let home_a = support::Home::init();
    let home_b = support::Home::init();
    let home_c = support::Home::init();
    home_a.write_config(&format!("services:\n  web: {{ local_address: {web}, port: 80 }}\n"));
    home_a.allow(&home_b.peer_id, None);
    let a = support::Daemon::start(&home_a);
    let names = format!("names:\n  home.alice: {}\n", a.tcp_multiaddr());
    home_b.write_config(&format!("security: [noise]\n{names}"));
    let b = support::Daemon::start(&home_b);
    let mut page = socks::connect(b.socks(), "home.alice.p2p", 80).await.expect("B over Noise");
    page.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    page.read_to_string(&mut body).await.unwrap();
    assert!(body.contains(PAGE), "{body}");
    for (log, direction) in [(&b.log, "outbound"), (&a.log, "inbound")] {
        let line =
            log.wait_for(|l| l.contains("Noise connection negotiated"), Duration::from_secs(5));
        let line =
            line.unwrap_or_else(|| panic!("no Noise line:\n{}\n{}", a.log.text(), b.log.text()));
        assert!(line.contains(direction), "{line}");
    }
    assert!(!b.log.text().contains("TLS connection negotiated"), "{}", b.log.text());

    // C offers TLS only; D accepts Noise only: no channel in common, so D is unreachable.
    let home_d = support::Home::init();
    home_d.write_config("security: [noise]\n");
    let d = support::Daemon::start(&home_d);
    home_c.write_config(&format!("security: [tls]\nnames:\n  home.bob: {}\n", d.tcp_multiaddr()));
    let c = support::Daemon::start(&home_c);
    let refused = socks::connect(c.socks(), "home.bob.p2p", 80).await;
    assert_eq!(refused.err(), Some(0x04), "host unreachable: no channel in common");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_home_refuses_to_start() {
    let home = support::Home::init();
    home.write_config("");
    let _first = support::Daemon::start(&home);
    let out = support::peerup(home.path(), &["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another peerup daemon is running"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_home_too_deep_for_a_socket_path_still_gets_a_control_socket() {
    let base = tempfile::tempdir().unwrap();
    let deep = base
        .path()
        .join("a-directory-name-long-enough-to-push-the-socket-path")
        .join("past-the-limit-of-sun_path");
    std::fs::create_dir_all(&deep).unwrap();
    let runtime = tempfile::tempdir().unwrap();
    assert!(support::peerup(&deep, &["init"]).status.success());
    std::fs::write(
        deep.join("config.yaml"),
        "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: { listen: 127.0.0.1:0 }\n",
    )
    .unwrap();
    let mut command = Command::new(support::BIN);
    command.env("XDG_RUNTIME_DIR", runtime.path());
    let daemon = support::Daemon::spawn(command, &deep, "run");
    assert!(daemon.state.control.starts_with(runtime.path()), "{:?}", daemon.state.control);
    let out = support::peerup(&deep, &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_against_a_frozen_daemon_gives_up_with_a_clear_error() {
    let home = support::Home::init();
    home.write_config("");
    let daemon = support::Daemon::start(&home);
    daemon.signal("STOP");
    let started = std::time::Instant::now();
    let out = support::peerup(home.path(), &["status"]);
    let took = started.elapsed();
    daemon.signal("CONT");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    support::report(format!(
        "tunnel: status against a frozen daemon gave up after {:.1} s",
        took.as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_home_works_from_any_directory_and_logs_carry_no_colour() {
    let base = tempfile::tempdir().unwrap();
    assert!(support::peerup(&base.path().join("node"), &["init"]).status.success());
    std::fs::write(
        base.path().join("node/config.yaml"),
        "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: { listen: 127.0.0.1:0 }\n",
    )
    .unwrap();
    let mut child = Command::new(support::BIN)
        .current_dir(base.path())
        .args(["--home", "node", "run"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state_file = base.path().join("node/state.json");
    let ready = support::poll_until(support::READY_TIMEOUT, || {
        let text = std::fs::read_to_string(&state_file).ok()?;
        serde_json::from_str::<support::State>(&text).ok()
    });
    let (state, _) = ready.expect("the daemon is ready");
    assert!(state.control.is_absolute(), "{:?}", state.control);
    // From another directory, by the absolute home.
    let out = support::peerup(&base.path().join("node"), &["status"]);
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("ready") && !log.contains('\u{1b}'), "no ANSI colour into a pipe: {log}");
}
