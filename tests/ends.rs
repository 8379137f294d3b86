//! A tunnel's end is the truth: a transfer cut anywhere looks cut at both ends (TCP RST, never
//! a clean EOF), a dead path is noticed and its tunnels reset, and nothing stays open behind a
//! tunnel that ended. Real `peerup run` processes, killed and frozen with real signals.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should stop the test

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use support::services::{self, End, write_noise};
use support::{Home, Pair, poll_until, report, socks};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Generous: two shared cores; the figure measured is printed.
const BOUND: Duration = Duration::from_secs(30);

/// Read until the connection ends; the bytes read and how it ended.
async fn read_to_end_or_reset<R: AsyncRead + Unpin>(
    socket: &mut R,
    mut got: u64,
) -> (u64, std::io::Result<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(BOUND, socket.read(&mut buf)).await {
            Ok(Ok(0)) => return (got, Ok(())),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(e)) => return (got, Err(e)),
            Err(_) => panic!("the connection neither ended nor reset within {BOUND:?}"),
        }
    }
}

/// A pair where A serves `service` as `name` to B; `a_extra` and `b_extra` are more config.
fn pair_with(name: &str, service: std::net::SocketAddr, a_extra: &str, b_extra: &str) -> Pair {
    let home_a = Home::init();
    let home_b = Home::init();
    home_a.write_config(&format!("services:\n  {name}: {{ local_address: {service} }}\n{a_extra}"));
    home_a.allow(&home_b.peer_id, None);
    let a = support::Daemon::start(&home_a);
    home_b.write_config(&format!("names:\n  home.alice: {}\n{b_extra}", a.tcp_multiaddr()));
    let b = support::Daemon::start(&home_b);
    Pair { home_a, home_b, a, b }
}

fn pair_serving(name: &str, service: std::net::SocketAddr, b_extra: &str) -> Pair {
    pair_with(name, service, "", b_extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_serving_daemon_mid_download_resets_the_app_connection() {
    let (hose, _ends) = services::firehose(u64::MAX).await;
    let pair = pair_serving("hose", hose, "");
    let mut socket =
        socks::connect(pair.b.socks(), "home.alice.p2p", hose.port()).await.expect("tunnel");
    socket.write_all(b"go").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < 4 << 20 {
        got += socket.read(&mut buf).await.unwrap() as u64;
    }
    pair.a.signal("KILL");
    let killed = Instant::now();
    let (got, end) = read_to_end_or_reset(&mut socket, got).await;
    let error = end.expect_err("a truncated download must not end with a clean EOF");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    report(format!(
        "ends: kill -9 of the serving daemon: app reset {:.0} ms later, after {got} bytes",
        killed.elapsed().as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_client_daemon_mid_upload_resets_the_service_connection() {
    let (sink, mut ends) = services::sink().await;
    let pair = pair_serving("sink", sink, "");
    let socket =
        socks::connect(pair.b.socks(), "home.alice.p2p", sink.port()).await.expect("tunnel");
    let (_r, mut w) = socket.into_split();
    let uploading = tokio::spawn(async move { write_noise(&mut w, 7, usize::MAX).await });
    // Let a few MiB through, then kill the daemon the app talks to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.b.signal("KILL");
    let killed = Instant::now();
    let end = tokio::time::timeout(BOUND, ends.recv()).await.expect("the service saw an end");
    let end = end.expect("an end");
    assert!(matches!(end, End::Reset(n) if n > 0), "the service saw {end:?}, not a reset");
    report(format!(
        "ends: kill -9 of the client daemon: service reset {:.0} ms later ({end:?})",
        killed.elapsed().as_secs_f64() * 1000.0
    ));
    let upload = tokio::time::timeout(BOUND, uploading).await.expect("upload ends").unwrap();
    assert!(upload.is_err(), "the app's upload fails too (its daemon died)");
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_that_close_before_a_large_reply_leave_nothing_open_on_the_serving_side() {
    const LIMIT: usize = 4;
    let (hose, mut ends) = services::firehose(16 << 20).await;
    let limit = format!("limits: {{ streams_per_peer: {LIMIT} }}\n");
    let Pair { home_a, home_b: _home_b, a, b } = pair_with("hose", hose, &limit, "");
    // Twice the limit: each app asks, half-closes, reads a little of the 16 MiB reply, closes.
    for round in 0..2 * LIMIT {
        let mut socket =
            socks::connect(b.socks(), "home.alice.p2p", hose.port()).await.unwrap_or_else(|code| {
                panic!("round {round}: reply {code:#04x}\nA:\n{}", a.log.text())
            });
        socket.write_all(b"go").await.unwrap();
        socket.shutdown().await.unwrap();
        let mut some = vec![0u8; 1024];
        socket.read_exact(&mut some).await.unwrap();
        drop(socket);
    }
    for round in 0..2 * LIMIT {
        let end = tokio::time::timeout(BOUND, ends.recv()).await;
        let end = end.unwrap_or_else(|_| panic!("service connection {round} stayed open")).unwrap();
        assert!(matches!(end, End::Reset(_)), "the service saw {end:?}: its reply was cut");
    }
    let (_, took) = poll_until(BOUND, || {
        let status = support::status(home_a.path());
        (status["tunnels"] == 0).then_some(())
    })
    .expect("A holds no tunnel");
    report(format!(
        "ends: early close x{}: A empty {:.0} ms after the last",
        2 * LIMIT,
        took.as_secs_f64() * 1000.0
    ));
    assert!(socks::connect(b.socks(), "home.alice.p2p", hose.port()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_peer_is_noticed_and_its_tunnels_reset_then_the_next_connect_dials_again() {
    let echo = services::echo().await;
    let keepalive = "limits: { keepalive_interval: 1s, keepalive_timeout: 2s }\n";
    let pair = pair_serving("echo", echo, keepalive);
    let socket =
        socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await.expect("tunnel");
    let (mut r, mut w) = socket.into_split();
    w.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    r.read_exact(&mut back).await.unwrap();
    pair.a.signal("STOP");
    let frozen = Instant::now();
    // Keep sending into the frozen path: B's buffers towards A fill up, as in a real upload.
    let uploading = tokio::spawn(async move { write_noise(&mut w, 5, usize::MAX).await });
    let (_, end) = read_to_end_or_reset(&mut r, 0).await;
    let noticed = frozen.elapsed();
    let upload = tokio::time::timeout(BOUND, uploading).await.expect("the upload ends").unwrap();
    // The kernel reports a reset once: to the reader or to the writer, whichever asks first.
    let reset = |e: &std::io::Error| e.kind() == ErrorKind::ConnectionReset;
    assert!(
        end.as_ref().err().is_some_and(reset) || upload.as_ref().err().is_some_and(reset),
        "a tunnel on a dead path is reset, not closed: read {end:?}, upload {upload:?}"
    );
    // The dead connection is aborted, not left closing until TCP gives up.
    let (_, closed) = poll_until(BOUND, || {
        let status = support::status(pair.home_b.path());
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        peers.iter().all(|p| p["peer"] != pair.home_a.peer_id.as_str()).then_some(())
    })
    .unwrap_or_else(|| panic!("B still lists the frozen peer\nB:\n{}", pair.b.log.text()));
    pair.a.signal("CONT");
    let again = poll_until(BOUND, || {
        let proxy = pair.b.socks();
        let port = echo.port();
        let attempt = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let mut s = socks::connect(proxy, "home.alice.p2p", port).await.ok()?;
                s.write_all(b"x").await.ok()?;
                let mut one = [0u8; 1];
                s.read_exact(&mut one).await.ok().map(|_| ())
            })
        });
        attempt.join().unwrap()
    });
    assert!(again.is_some(), "a new tunnel after the peer woke up\nB:\n{}", pair.b.log.text());
    report(format!(
        "ends: SIGSTOP of the serving daemon (keepalive 1s+2s): tunnel reset after {:.1} s, connection gone {:.1} s later",
        noticed.as_secs_f64(),
        closed.as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_too_slow_to_accept_is_reported_by_the_serving_side_before_the_deadline() {
    let (slow, _held, _listener) = services::unaccepting();
    let Pair { a, b, home_a: _home_a, home_b: _home_b } =
        pair_with("slow", slow, "limits: { service_timeout: 1s }\n", "");
    let started = Instant::now();
    let reply = socks::connect(b.socks(), "home.alice.p2p", slow.port()).await.err();
    assert_eq!(reply, Some(0x05), "the service did not accept: 0x05, not the peer's 0x06");
    report(format!(
        "ends: a service that does not accept (service_timeout 1s): 0x05 after {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    let said = a.log.wait_for(|l| l.contains("did not answer in time"), BOUND);
    assert!(said.is_some(), "A says why:\n{}", a.log.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemon_resets_its_own_local_socket_too() {
    // The serving daemon dies while the service only listens: the service must see a reset
    // (zero linger armed in advance), not a FIN that would end its input cleanly.
    let (sink, mut ends) = services::sink().await;
    let pair = pair_serving("sink", sink, "");
    let socket =
        socks::connect(pair.b.socks(), "home.alice.p2p", sink.port()).await.expect("tunnel");
    let (mut r, mut w) = socket.into_split();
    w.write_all(b"some bytes").await.unwrap();
    pair.a.signal("KILL");
    let end = tokio::time::timeout(BOUND, ends.recv()).await.expect("the service saw an end");
    assert!(matches!(end, Some(End::Reset(_))), "the service saw {end:?}, not a reset");
    // And the app, which only reads, sees the reset through its own daemon.
    let (_, app) = read_to_end_or_reset(&mut r, 0).await;
    assert_eq!(app.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_client_daemon_resets_the_apps_socket() {
    let echo = services::echo().await;
    let pair = pair_serving("echo", echo, "");
    let mut socket =
        socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await.expect("tunnel");
    socket.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    socket.read_exact(&mut one).await.unwrap();
    pair.b.signal("KILL");
    let (_, end) = read_to_end_or_reset(&mut socket, 0).await;
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "not a clean EOF");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_side_logs_one_line_when_a_tunnel_ends_and_how_it_ended() {
    let echo = services::echo().await;
    let pair = pair_serving("echo", echo, "");
    let (a_id, b_id) = (pair.home_a.peer_id.clone(), pair.home_b.peer_id.clone());
    let target = format!("target=home.alice.p2p:{}", echo.port());

    // A clean end: 5 bytes each way, then both directions closed.
    let mut socket = socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await.unwrap();
    socket.write_all(b"hello").await.unwrap();
    socket.shutdown().await.unwrap();
    let (got, end) = read_to_end_or_reset(&mut socket, 0).await;
    assert_eq!((got, end.is_ok()), (5, true));
    let opener = pair.b.log.wait_for(|l| l.contains("tunnel closed"), BOUND);
    let opener = opener.unwrap_or_else(|| panic!("B logs the end:\n{}", pair.b.log.text()));
    for field in [&format!("peer={a_id}"), &target, "sent=5", "received=5", "duration="] {
        assert!(opener.contains(field), "B's line has {field}: {opener}");
    }
    let server = pair.a.log.wait_for(|l| l.contains("tunnel closed"), BOUND);
    let server = server.unwrap_or_else(|| panic!("A logs the end:\n{}", pair.a.log.text()));
    for field in [&format!("peer={b_id}"), "service=\"echo\"", "sent=5", "received=5"] {
        assert!(server.contains(field), "A's line has {field}: {server}");
    }

    // An app that resets: both sides say reset, and where it began.
    let socket = socks::connect(pair.b.socks(), "home.alice.p2p", echo.port()).await.unwrap();
    socket.set_zero_linger().unwrap();
    drop(socket);
    let opener = pair.b.log.wait_for(|l| l.contains("tunnel reset"), BOUND);
    let opener = opener.unwrap_or_else(|| panic!("B logs the reset:\n{}", pair.b.log.text()));
    assert!(opener.contains("at=\"socket\"") && opener.contains(&target), "{opener}");
    let server = pair.a.log.wait_for(|l| l.contains("tunnel reset"), BOUND);
    let server = server.unwrap_or_else(|| panic!("A logs the reset:\n{}", pair.a.log.text()));
    assert!(server.contains("at=\"tunnel\""), "{server}");

    // One line per tunnel per side, and no handshake refusal anywhere.
    for (who, log) in [("A", &pair.a.log), ("B", &pair.b.log)] {
        let ends = log
            .lines()
            .iter()
            .filter(|l| l.contains("tunnel closed") || l.contains("tunnel reset"))
            .count();
        assert_eq!(ends, 2, "{who} logs two ends for two tunnels:\n{}", log.text());
        assert!(!log.text().contains("refused connection"), "{who}: no refusal:\n{}", log.text());
    }
}
