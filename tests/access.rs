//! Who gets in: the handshake gate, per-service lists, and the SOCKS reply for each failure.

mod support;

use std::time::Duration;

use support::services;
use support::{Daemon, Home, Pair, socks};

#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_peer_gets_socks_not_allowed_and_is_closed_at_the_handshake() {
    let web = services::http("secret").await;
    // A allows nobody; C knows A's address.
    let home_a = Home::init();
    home_a.write_config(&format!("services:\n  web: {{ local_address: {web}, port: 80 }}\n"));
    let a = Daemon::start(&home_a);
    let home_c = Home::init();
    home_c.write_config(&format!("names:\n  home.alice: {}\n", a.tcp_multiaddr()));
    let c = Daemon::start(&home_c);

    let reply = socks::connect(c.socks(), "home.alice.p2p", 80).await.err();
    assert_eq!(reply, Some(0x02), "SOCKS 0x02 connection not allowed");
    let refused = a.log.wait_for(
        |l| l.contains("refused connection at the handshake") && l.contains(&home_c.peer_id),
        Duration::from_secs(10),
    );
    assert!(refused.is_some(), "A logs the refusal:\n{}", a.log.text());
    let streams: Vec<_> =
        a.log.lines().into_iter().filter(|l| l.contains("inbound tunnel stream")).collect();
    assert!(streams.is_empty(), "no stream reached A's handler: {streams:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_allowed_for_web_only_is_refused_on_the_ssh_port() {
    let web = services::http("web page").await;
    let ssh = services::echo().await;
    let pair = Pair::start(
        &format!(
            "  web: {{ local_address: {web}, port: 80, authorized_keys: web_keys }}\n  ssh: {{ local_address: {ssh}, port: 22 }}\n"
        ),
        |home, b| home.write_private("web_keys", &format!("{b} # web only\n")),
    );
    let proxy = pair.b.socks();
    assert!(socks::connect(proxy, "home.alice.p2p", 80).await.is_ok(), "web is allowed");
    assert_eq!(socks::connect(proxy, "home.alice.p2p", 22).await.err(), Some(0x02), "ssh is not");
    let logged = pair
        .a
        .log
        .wait_for(|l| l.contains("not authorized for this service"), Duration::from_secs(10));
    assert!(
        logged.is_some_and(|l| l.contains("ssh")),
        "A names the service:\n{}",
        pair.a.log.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_get_the_reply_codes_of_the_product_table() {
    let web = services::http("page").await;
    let stopped = services::closed_port();
    let pair = Pair::start(
        &format!(
            "  web: {{ local_address: {web}, port: 80 }}\n  stopped: {{ local_address: 127.0.0.1:{stopped}, port: 81 }}\n"
        ),
        |home, b| home.allow(b, None),
    );
    let proxy = pair.b.socks();
    let reply =
        |host: &'static str, port| async move { socks::connect(proxy, host, port).await.err() };
    assert_eq!(reply("home.alice.p2p", 80).await, None, "the web service works");
    assert_eq!(reply("home.alice.p2p", 9999).await, Some(0x05), "unknown port: refused");
    assert_eq!(reply("nope.alice.p2p", 80).await, Some(0x04), "unknown name: host unreachable");
    assert_eq!(reply("a.b.c.p2p", 80).await, Some(0x04), "malformed name: host unreachable");
    assert_eq!(reply("home.alice.p2p", 81).await, Some(0x05), "stopped local service: refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_and_udp_associate_get_command_not_supported() {
    let home = Home::init();
    home.write_config("");
    let node = Daemon::start(&home);
    for command in [0x02u8, 0x03] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(node.socks()).await.unwrap();
        socket
            .write_all(&[0x05, 0x01, 0x00, 0x05, command, 0x00, 0x01, 127, 0, 0, 1, 0, 80])
            .await
            .unwrap();
        let mut reply = [0u8; 12];
        socket.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[3], 0x07, "command {command:#04x}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_targets_follow_socks_direct() {
    let web = services::http("direct").await;
    let home = Home::init();
    home.write_config("");
    let open = Daemon::start(&home);
    assert!(socks::connect(open.socks(), "127.0.0.1", web.port()).await.is_ok());
    drop(open);
    let closed_home = Home::init();
    std::fs::write(
        closed_home.file("config.yaml"),
        "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: { listen: 127.0.0.1:0, direct: false }\ndns: { listen: null }\n",
    )
    .unwrap();
    let closed = Daemon::start(&closed_home);
    assert_eq!(socks::connect(closed.socks(), "127.0.0.1", web.port()).await.err(), Some(0x02));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_we_dialled_still_needs_our_services_list() {
    // B allows A to connect nowhere; B dials A. A then tries B's service over that connection.
    let echo_a = services::echo().await;
    let echo_b = services::echo().await;
    let home_a = Home::init();
    let home_b = Home::init();
    home_a.write_config(&format!(
        "services:\n  echo: {{ local_address: {echo_a} }}\nnames:\n  laptop.bob: {}\n",
        home_b.peer_id
    ));
    home_a.allow(&home_b.peer_id, None);
    let a = Daemon::start(&home_a);
    home_b.write_config(&format!(
        "services:\n  echo: {{ local_address: {echo_b} }}\nnames:\n  home.alice: {}\n",
        a.tcp_multiaddr()
    ));
    let b = Daemon::start(&home_b);
    let _b_to_a =
        socks::connect(b.socks(), "home.alice.p2p", echo_a.port()).await.expect("B reaches A");
    let reply = socks::connect(a.socks(), "laptop.bob.p2p", echo_b.port()).await.err();
    assert_eq!(reply, Some(0x02), "A may not use B's service although B dialled A");
    let logged =
        b.log.wait_for(|l| l.contains("not authorized for this service"), Duration::from_secs(10));
    assert!(logged.is_some(), "B checked the stream:\n{}", b.log.text());
}

/// Over QUIC a peer may open only `streams_per_peer` (+ 32 for control protocols) streams at once
/// on a connection; opens past that wait for a free slot, and refused ones free theirs at once.
/// A burst far past both is answered in full: busy, never a hang or a reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_far_past_the_limit_over_quic_is_answered_busy() {
    let echo = services::echo().await;
    let pair = Pair::start_over(
        &format!(
            "  echo: {{ local_address: {echo} }}\nlimits: {{ streams_per_peer: 2, streams_total: 2 }}\n"
        ),
        |home, b| home.allow(b, None),
        Daemon::quic_multiaddr,
    );
    let proxy = pair.b.socks();
    let _first = socks::connect(proxy, "home.alice.p2p", echo.port()).await.expect("first");
    let _second = socks::connect(proxy, "home.alice.p2p", echo.port()).await.expect("second");
    let burst = (0..100).map(|_| socks::connect(proxy, "home.alice.p2p", echo.port()));
    let replies = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(burst))
        .await
        .unwrap_or_else(|_| panic!("opens left unanswered:\n{}", pair.logs()));
    let answers: Vec<Option<u8>> = replies.into_iter().map(Result::err).collect();
    assert!(
        answers.iter().all(|r| *r == Some(0x01)),
        "every open past the limit is refused busy: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_past_the_limits_are_refused_not_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = services::echo().await;
    let pair = Pair::start(
        &format!(
            "  echo: {{ local_address: {echo} }}\nlimits: {{ streams_per_peer: 2, streams_total: 2 }}\n"
        ),
        |home, b| home.allow(b, None),
    );
    let proxy = pair.b.socks();
    let first = socks::connect(proxy, "home.alice.p2p", echo.port()).await.expect("first");
    let _second = socks::connect(proxy, "home.alice.p2p", echo.port()).await.expect("second");
    assert_eq!(
        socks::connect(proxy, "home.alice.p2p", echo.port()).await.err(),
        Some(0x01),
        "third: busy"
    );
    let busy = pair.a.log.wait_for(|l| l.contains("stream limit reached"), Duration::from_secs(10));
    assert!(busy.is_some(), "A says why:\n{}", pair.a.log.text());
    // End the first tunnel both ways; A frees its slot as its bridge finishes, around the time
    // our EOF arrives, so a few refusals may still race it.
    let mut first = first;
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        match socks::connect(proxy, "home.alice.p2p", echo.port()).await {
            Ok(socket) => {
                again = Some(socket);
                break;
            }
            Err(0x01) => tokio::task::yield_now().await,
            Err(code) => panic!("unexpected reply {code:#04x}"),
        }
    }
    assert!(again.is_some(), "a slot frees when a tunnel closes");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_socks_bytes_get_a_clean_close_and_the_proxy_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = services::http("still here").await;
    let home = Home::init();
    home.write_config("");
    let node = Daemon::start(&home);
    let garbage: &[&[u8]] = &[
        &[0x00, 0x01, 0x02],
        &[0x16, 0x03, 0x01, 0x00, 0x05],
        &[0x05],
        &[0x05, 0x00],
        &[0x05, 0xff, 0x01],
        &[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x09, 1, 2, 3, 4],
        &[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50],
        &[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, 0x02, 0xff, 0xfe, 0x00, 0x50],
        &[0x04, 0x09, 0x00, 0x50, 127, 0, 0, 1, 0],
        &[0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0, b'a', b' ', b'b', 0],
        &[0x04, 0x01, 0x00, 0x50, 127, 0, 0],
    ];
    for bytes in garbage {
        let mut socket = tokio::net::TcpStream::connect(node.socks()).await.unwrap();
        socket.write_all(bytes).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(15), socket.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "{bytes:?}: the proxy closes instead of hanging");
        assert!(
            reply.len() <= 12,
            "{bytes:?}: at most a method choice and a failure reply: {reply:?}"
        );
        if bytes[0] == 0x04 {
            assert_ne!(reply.get(1), Some(&0x5A), "{bytes:?}: never a SOCKS4 grant");
        } else if reply.len() > 2 {
            assert_ne!(reply.get(3), Some(&0x00), "{bytes:?}: never a success reply");
        }
    }
    assert!(socks::connect(node.socks(), "127.0.0.1", web.port()).await.is_ok(), "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_looked_up_once_lets_nobody_in_later() {
    // Hole punching's inbound half is let in only over a path we already have to the peer (the
    // netlab tests cover that): a name looked up once, with no connection, opens nothing.
    let echo_c = services::echo().await;
    let home_a = Home::init();
    let home_c = Home::init();
    // C names A by peer ID alone (no address to dial) and allows nobody.
    home_c.write_config(&format!(
        "services:\n  echo: {{ local_address: {echo_c} }}\nnames:\n  home.alice: {}\n",
        home_a.peer_id
    ));
    let c = Daemon::start(&home_c);
    home_a.write_config(&format!("names:\n  laptop.carol: {}\n", c.tcp_multiaddr()));
    let a = Daemon::start(&home_a);
    // C looks A up (it cannot reach A: no address), so A is a peer C chose.
    let reply = socks::connect(c.socks(), "home.alice.p2p", 80).await.err();
    assert!(reply.is_some(), "C has no address for A");
    // A, in none of C's lists, dials C: refused at C's handshake all the same.
    let reply = socks::connect(a.socks(), "laptop.carol.p2p", echo_c.port()).await.err();
    assert_eq!(reply, Some(0x02), "C refuses A");
    let refused = c.log.wait_for(
        |l| l.contains("refused connection at the handshake") && l.contains(&home_a.peer_id),
        Duration::from_secs(10),
    );
    assert!(refused.is_some(), "C refused A at the handshake:\n{}", c.log.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_with_control_characters_cannot_forge_a_log_line() {
    let home = Home::init();
    home.write_config("");
    let node = Daemon::start(&home);
    let forged = "nosuch.lab.p2p\x1b[2J\r\n2026-01-01T00:00:00Z  INFO FAKE LOG LINE peer=x\u{202e}";
    let reply = socks::connect(node.socks(), forged, 80).await.err();
    assert!(reply.is_some(), "an unknown name fails");
    let logged = node.log.wait_for(|l| l.contains("FAKE LOG LINE"), Duration::from_secs(10));
    let logged = logged.unwrap_or_else(|| panic!("the failure is logged:\n{}", node.log.text()));
    assert!(logged.contains("connect failed"), "the name stays inside its own line: {logged:?}");
    assert!(
        logged.contains(r"\u{1b}[2J\r\n") && logged.contains(r"\u{202e}"),
        "control characters are written escaped: {logged:?}"
    );
    let text = node.log.text();
    assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "no raw escapes:\n{text:?}");
    let forged_lines: Vec<_> =
        node.log.lines().into_iter().filter(|l| l.starts_with("2026-01-01")).collect();
    assert!(forged_lines.is_empty(), "no line of the attacker's: {forged_lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_past_socks_max_clients_wait_until_one_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = services::echo().await;
    let home = Home::init();
    let config = "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: { listen: 127.0.0.1:0, max_clients: 1 }\ndns: { listen: null }\n";
    std::fs::write(home.file("config.yaml"), config).unwrap();
    let node = Daemon::start(&home);
    let mut first = socks::connect(node.socks(), "127.0.0.1", echo.port()).await.expect("first");
    // The second client's greeting is not answered while the first holds the only slot.
    let mut second = tokio::net::TcpStream::connect(node.socks()).await.unwrap();
    second.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    let mut choice = [0u8; 2];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read_exact(&mut choice));
    assert!(early.await.is_err(), "no answer while the slot is taken");
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), second.read_exact(&mut choice))
        .await
        .expect("answered once the first client ended")
        .unwrap();
    assert_eq!(choice, [0x05, 0x00]);
}
