//! Revocation without restart: allow lists, names and services follow their files (and
//! `peerup auth`) while the daemon runs; a revoked or expired peer's tunnels are reset at once;
//! an invalid edit keeps the last good state.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should stop the test

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use support::services;
use support::{Daemon, Home, Pair, peerup, poll_until, report, socks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(30);

/// A download from A's firehose that is running; returns the socket.
async fn downloading(proxy: std::net::SocketAddr, port: u16) -> TcpStream {
    let mut socket = socks::connect(proxy, "home.alice.p2p", port).await.expect("tunnel");
    socket.write_all(b"go").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    socket.read_exact(&mut buf).await.unwrap();
    socket
}

/// Keep reading until the connection ends; it must end with a reset.
async fn until_reset(socket: &mut TcpStream) -> std::io::Error {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(BOUND, socket.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("the revoked tunnel ended with a clean EOF"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e,
            Err(_) => panic!("the revoked tunnel was still open after {BOUND:?}"),
        }
    }
}

/// A revoked tunnel: reset (never a clean end), and the next connect is not allowed.
async fn assert_revoked(pair: &Pair, socket: &mut TcpStream, port: u16) {
    let error = until_reset(socket).await;
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    let next = socks::connect(pair.b.socks(), "home.alice.p2p", port).await.err();
    assert_eq!(next, Some(0x02), "the next connect is not allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_remove_resets_the_peers_tunnels_and_refuses_its_next_connect() {
    let (hose, _ends) = services::firehose(u64::MAX).await;
    let pair = Pair::start(&format!("  hose: {{ local_address: {hose} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let mut socket = downloading(pair.b.socks(), hose.port()).await;
    let removed = Instant::now();
    let out = peerup(pair.home_a.path(), &["auth", "remove", &pair.home_b.peer_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the running daemon applied it"),
        "auth says the daemon applied it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_revoked(&pair, &mut socket, hose.port()).await;
    let delay = removed.elapsed();
    report(format!(
        "reload: auth remove: tunnel reset {:.0} ms after the command started",
        delay.as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_ends_access_at_its_moment() {
    let (hose, _ends) = services::firehose(u64::MAX).await;
    let ends_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let expires = ends_at.format(&time::format_description::well_known::Rfc3339).unwrap();
    let pair = Pair::start(&format!("  hose: {{ local_address: {hose} }}\n"), |home, b| {
        home.write_private("authorized_keys", &format!("{b} expires={expires}\n"))
    });
    let mut socket = downloading(pair.b.socks(), hose.port()).await;
    let error = until_reset(&mut socket).await;
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    let late = time::OffsetDateTime::now_utc() - ends_at;
    assert!(late >= time::Duration::ZERO, "not before the moment ({late})");
    let next = socks::connect(pair.b.socks(), "home.alice.p2p", hose.port()).await.err();
    assert_eq!(next, Some(0x02), "the next connect is not allowed");
    report(format!(
        "reload: expires=: tunnel reset {:.0} ms after the moment",
        late.as_seconds_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_keeps_the_last_good_lists_and_says_where() {
    let echo = services::echo().await;
    let pair = Pair::start(&format!("  echo: {{ local_address: {echo} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let keys = pair.home_a.file("authorized_keys");
    let good = std::fs::read_to_string(&keys).unwrap();
    let lines = good.lines().count();
    pair.home_a.write_private("authorized_keys", &format!("{good}not-a-peer-id\n"));
    let said = pair.a.log.wait_for(|l| l.contains("reload failed"), BOUND);
    let said = said.unwrap_or_else(|| panic!("A logs the failed reload:\n{}", pair.a.log.text()));
    assert!(said.contains(&format!("authorized_keys:{}", lines + 1)), "file and line: {said}");
    let mut socket = socks::connect(pair.b.socks(), "home.alice.p2p", echo.port())
        .await
        .expect("B is still allowed by the last good list");
    socket.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    socket.read_exact(&mut one).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_services_follow_their_files() {
    let web = services::http("new service").await;
    let home_a = Home::init();
    let home_b = Home::init();
    home_a.write_config("");
    home_a.allow(&home_b.peer_id, None);
    let a = Daemon::start(&home_a);
    home_b.write_config("");
    let b = Daemon::start(&home_b);
    // B learns the name from names.yaml, A gets a service in config.yaml: no restart.
    home_b.write_private("names.yaml", &format!("home.alice: {}\n", a.tcp_multiaddr()));
    let config = std::fs::read_to_string(home_a.file("config.yaml")).unwrap();
    let config = format!("{config}services:\n  web: {{ local_address: {web}, port: 80 }}\n");
    std::fs::write(home_a.file("config.yaml"), config).unwrap();
    let proxy = b.socks();
    let (page, took) = poll_until(BOUND, || {
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let mut s = socks::connect(proxy, "home.alice.p2p", 80).await.ok()?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
                let mut page = String::new();
                s.read_to_string(&mut page).await.ok()?;
                Some(page)
            })
        })
        .join()
        .unwrap()
    })
    .unwrap_or_else(|| {
        panic!(
            "not reachable by the new name and service\nA:\n{}\nB:\n{}",
            a.log.text(),
            b.log.text()
        )
    });
    assert!(page.ends_with("new service"), "{page}");
    report(format!(
        "reload: a new name and a new service in use {:.0} ms after the edits",
        took.as_secs_f64() * 1000.0
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_an_edit_at_once() {
    let (hose, _ends) = services::firehose(u64::MAX).await;
    let pair = Pair::start(&format!("  hose: {{ local_address: {hose} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let mut socket = downloading(pair.b.socks(), hose.port()).await;
    // Another peer takes B's place in the same file, same size, modification time put back:
    // an edit the file watcher cannot see, so only SIGHUP applies it.
    let keys = pair.home_a.file("authorized_keys");
    let before = std::fs::metadata(&keys).unwrap().modified().unwrap();
    let other = Home::init();
    let text =
        std::fs::read_to_string(&keys).unwrap().replace(&pair.home_b.peer_id, &other.peer_id);
    let mut file = std::fs::OpenOptions::new().write(true).open(&keys).unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file.set_modified(before).unwrap();
    drop(file);
    pair.a.signal("HUP");
    let error = until_reset(&mut socket).await;
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    let said = pair.a.log.wait_for(|l| l.contains("reloaded") && l.contains("SIGHUP"), BOUND);
    assert!(said.is_some(), "A says SIGHUP reloaded:\n{}", pair.a.log.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_download_that_is_backed_up_is_reset_too() {
    let (hose, _ends) = services::firehose(u64::MAX).await;
    let pair = Pair::start(&format!("  hose: {{ local_address: {hose} }}\n"), |home, b| {
        home.allow(b, None)
    });
    let socket = downloading(pair.b.socks(), hose.port()).await;
    // The app reads slowly (about 6 MB/s): every window and buffer towards it stays full.
    let (mut r, _w) = socket.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return (Instant::now(), Ok(())),
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return (Instant::now(), Err(e)),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let removed = Instant::now();
    let out = peerup(pair.home_a.path(), &["auth", "remove", &pair.home_b.peer_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (at, end) = tokio::time::timeout(BOUND, reader).await.expect("the download ends").unwrap();
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "not a clean end");
    report(format!(
        "reload: auth remove of a backed-up download: app reset {:.0} ms after the command started",
        at.duration_since(removed).as_secs_f64() * 1000.0
    ));
}
