//! One proxy port for every client: SOCKS5, SOCKS4a and HTTP (CONNECT and plain requests) with
//! real curl through two real daemons, the PAC file, proxy credentials, `peerup forward`, and
//! the same-user rule.

mod support;

use std::process::{Command, Output};
use std::time::Instant;

use support::{Daemon, Forward, Home, Pair, services};

const PAGE: &str = "<html><body><h1>home of alice</h1></body></html>";

/// curl with a 20 s limit; its output.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("curl is installed")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A pair: A serves `web` (a page), `mirror` (echoes what it got), `ssh` for nobody (its own
/// empty list), and `dead` (a closed port); B knows A as home.alice.
async fn pair() -> Pair {
    let web = services::http(PAGE).await;
    let mirror = services::http_mirror().await;
    let closed = services::closed_port();
    Pair::start(
        &format!(
            "  web: {{ local_address: {web}, port: 80 }}\n  mirror: {{ local_address: {mirror}, port: 8080 }}\n  \
             ssh: {{ local_address: 127.0.0.1:22, authorized_keys: nobody_keys }}\n  \
             dead: {{ local_address: 127.0.0.1:{closed}, port: 81 }}\n"
        ),
        |home, b| {
            home.write_private("nobody_keys", "");
            home.allow(b, None);
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_fetches_a_page_by_name_through_socks5_socks4a_and_http_on_one_port() {
    let pair = pair().await;
    let proxy = pair.b.socks().to_string();
    let http_proxy = format!("http://{proxy}");
    let ways: [(&str, Vec<&str>); 4] = [
        ("socks5-hostname", vec!["--socks5-hostname", &proxy]),
        ("socks4a", vec!["--socks4a", &proxy]),
        ("http proxy, plain", vec!["--proxy", &http_proxy]),
        ("http proxy, CONNECT", vec!["--proxy", &http_proxy, "--proxytunnel"]),
    ];
    for (way, args) in ways {
        let started = Instant::now();
        let mut all = args.clone();
        all.push("http://home.alice.p2p/");
        let out = curl(&all);
        assert!(
            out.status.success(),
            "{way}: curl failed: {}\nB:\n{}",
            text(&out.stderr),
            pair.b.log.text()
        );
        assert_eq!(text(&out.stdout), PAGE, "{way}");
        support::report(format!("proxy: {way}: page fetched in {:?}", started.elapsed()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_requests_are_forwarded_clean_bodies_intact_and_the_connection_closes() {
    let pair = pair().await;
    let proxy = format!("http://{}", pair.b.socks());
    // A body by Content-Length, with proxy credentials the proxy does not need (stripped),
    // and a hop-by-hop header named in Connection (stripped too).
    let body = "x".repeat(100_000);
    let out = curl(&[
        "--proxy",
        &proxy,
        "--proxy-user",
        "someone:secret",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: gone",
        "-H",
        "X-End-To-End: kept",
        "--data-binary",
        &body,
        "-i",
        "http://home.alice.p2p:8080/upload?q=1",
    ]);
    let reply = text(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}\n{reply}\nB:\n{}",
        text(&out.stderr),
        pair.b.log.text()
    );
    let (head, mirrored) = reply.split_once("\r\n\r\n").expect("a response head");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "the client is told: {head}");
    assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    let lines: Vec<&str> = mirrored.lines().collect();
    assert_eq!(lines[0], "POST /upload?q=1 HTTP/1.1", "origin form: {mirrored}");
    let has = |name: &str| lines.iter().any(|l| l.to_ascii_lowercase().starts_with(name));
    assert!(!has("proxy-authorization:"), "Proxy-Authorization stripped: {mirrored}");
    assert!(!has("proxy-connection:") && !has("x-hop:"), "hop-by-hop stripped: {mirrored}");
    assert!(has("x-end-to-end: kept"), "{mirrored}");
    assert!(lines.contains(&"Host: home.alice.p2p:8080"), "{mirrored}");
    assert!(lines.contains(&"Connection: close"), "{mirrored}");
    assert!(lines.contains(&"body-len: 100000"), "{mirrored}");

    // A chunked body arrives decoded to the same bytes.
    let out = curl(&[
        "--proxy",
        &proxy,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        "http://home.alice.p2p:8080/chunked",
    ]);
    let mirrored = text(&out.stdout);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert!(mirrored.contains("Transfer-Encoding: chunked"), "{mirrored}");
    assert!(mirrored.contains("body-len: 100000"), "{mirrored}");

    // Two requests on one curl: each is parsed; the second goes on a new connection.
    let out = curl(&[
        "--proxy",
        &proxy,
        "http://home.alice.p2p:8080/one",
        "http://home.alice.p2p:8080/two",
    ]);
    let both = text(&out.stdout);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert!(both.contains("GET /one HTTP/1.1") && both.contains("GET /two HTTP/1.1"), "{both}");
}

/// What curl reports for a failure through each protocol: SOCKS4a a rejection (exit 97 with
/// "rejected"), HTTP plain the status, CONNECT the status of the CONNECT.
#[tokio::test(flavor = "multi_thread")]
async fn each_failure_gets_the_documented_socks4_code_and_http_status() {
    let pair = pair().await;
    let proxy = pair.b.socks().to_string();
    let http_proxy = format!("http://{proxy}");
    let cases = [
        ("http://nope.alice.p2p/", 502, "no such name"),
        ("http://home.alice.p2p:9999/", 502, "no such service"),
        ("http://home.alice.p2p:22/", 403, "not authorized"),
        ("http://home.alice.p2p:81/", 502, "connection refused"),
        ("http://a.b.c.p2p/", 502, "no such name"),
    ];
    for (url, status, why) in cases {
        let plain = curl(&["--proxy", &http_proxy, "-w", "\n%{http_code}", url]);
        let body = text(&plain.stdout);
        assert!(body.ends_with(&format!("\n{status}")), "{url}: plain status: {body}");
        assert!(body.contains(why), "{url}: the page says why ({why}): {body}");

        let tunnel = curl(&["--proxy", &http_proxy, "-p", "-w", "%{http_connect}", url]);
        assert!(!tunnel.status.success(), "{url}: CONNECT fails");
        assert_eq!(text(&tunnel.stdout), status.to_string(), "{url}: CONNECT status");

        let socks4 = curl(&["--socks4a", &proxy, url]);
        assert_eq!(socks4.status.code(), Some(97), "{url}: {}", text(&socks4.stderr));
        assert!(text(&socks4.stderr).contains("rejected"), "{url}: {}", text(&socks4.stderr));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pac_file_sends_p2p_names_through_the_proxy_and_the_rest_direct() {
    let home = Home::init();
    home.write_config("");
    let node = Daemon::start(&home);
    let socks = node.socks();
    let out = curl(&["-i", &format!("http://{socks}/proxy.pac")]);
    let reply = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("application/x-ns-proxy-autoconfig"), "{reply}");
    assert!(reply.contains(&format!("SOCKS5 {socks}; PROXY {socks}")), "{reply}");
    assert!(reply.contains("dnsDomainIs(host, \".p2p\")") && reply.contains("\"DIRECT\""));
    // Anything else on the proxy's own address is not a page.
    let other = curl(&["-w", "%{http_code}", "-o", "/dev/null", &format!("http://{socks}/x")]);
    assert_eq!(text(&other.stdout), "404");
    // Malformed requests get 400 and the proxy keeps serving.
    let bad = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-X",
        "GET /",
        &format!("http://{socks}/"),
    ]);
    assert_eq!(text(&bad.stdout), "400", "{}", node.log.text());
    let again = curl(&[&format!("http://{socks}/proxy.pac")]);
    assert!(text(&again.stdout).contains("FindProxyForURL"));
}

/// A daemon whose proxy wants a username and password; B in a pair with A serving the page.
async fn pair_with_auth() -> Pair {
    let web = services::http(PAGE).await;
    let home_a = Home::init();
    let home_b = Home::init();
    home_a.write_config(&format!("services:\n  web: {{ local_address: {web}, port: 80 }}\n"));
    home_a.allow(&home_b.peer_id, None);
    let a = Daemon::start(&home_a);
    home_b.write_private("proxy_password", "s3cret:pass\n");
    // Home::write_config writes a `socks:` line of its own; write this config whole.
    let config = format!(
        "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0, auth: {{ username: me, password_file: proxy_password }} }}\n\
         dns: {{ listen: 127.0.0.1:0 }}\nnames:\n  home.alice: {}\n",
        a.tcp_multiaddr()
    );
    std::fs::write(home_b.file("config.yaml"), config).expect("write config.yaml");
    let b = Daemon::start(&home_b);
    Pair { home_a, home_b, a, b }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_are_required_by_every_protocol_and_presented_by_forward() {
    let pair = pair_with_auth().await;
    let proxy = pair.b.socks().to_string();
    let url = "http://home.alice.p2p/";
    let good = curl(&["--socks5-hostname", &format!("me:s3cret:pass@{proxy}"), url]);
    assert_eq!(text(&good.stdout), PAGE, "{}", text(&good.stderr));
    for creds in ["", "me:wrong@", "other:s3cret:pass@"] {
        let out = curl(&["--socks5-hostname", &format!("{creds}{proxy}"), url]);
        assert!(!out.status.success(), "SOCKS5 with {creds:?} is refused");
        assert!(!text(&out.stdout).contains("alice"), "{creds:?}");
    }
    let http_proxy = format!("http://{proxy}");
    let good = curl(&["--proxy", &http_proxy, "--proxy-user", "me:s3cret:pass", url]);
    assert_eq!(text(&good.stdout), PAGE, "{}", text(&good.stderr));
    let good = curl(&["--proxy", &http_proxy, "-p", "--proxy-user", "me:s3cret:pass", url]);
    assert_eq!(text(&good.stdout), PAGE, "{}", text(&good.stderr));
    let none = curl(&["--proxy", &http_proxy, "-w", "%{http_code}", "-o", "/dev/null", url]);
    assert_eq!(text(&none.stdout), "407");
    let wrong = curl(&[
        "--proxy",
        &http_proxy,
        "--proxy-user",
        "me:no",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        url,
    ]);
    assert_eq!(text(&wrong.stdout), "407");
    let socks4 = curl(&["--socks4a", &proxy, url]);
    assert_eq!(socks4.status.code(), Some(97), "SOCKS4 has no password: refused");

    // `peerup forward` presents the home's credentials.
    let forward = Forward::start(pair.home_b.path(), "home.alice.p2p:80");
    let out = curl(&[&format!("http://{}/", forward.addr)]);
    assert_eq!(text(&out.stdout), PAGE, "{}\n{}", text(&out.stderr), forward.log.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_carries_a_program_that_knows_no_proxy_and_fails_fast_on_a_bad_name() {
    let pair = pair().await;
    let forward = Forward::start(pair.home_b.path(), "home.alice.p2p:80");
    for _ in 0..3 {
        let out = curl(&[&format!("http://{}/", forward.addr)]);
        assert_eq!(text(&out.stdout), PAGE, "{}\n{}", text(&out.stderr), forward.log.text());
    }
    let out = support::peerup(pair.home_b.path(), &["forward", "127.0.0.1:0", "nope.alice.p2p:80"]);
    assert_eq!(out.status.code(), Some(3), "no such name: {}", text(&out.stderr));
}

/// Run `program` as another user (uid/gid 65534): the proxy and forward refuse it.
fn as_other_user(program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .output()
        .expect("setpriv (util-linux) is installed")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_and_forward_refuse_programs_of_another_user() {
    if !support::root_or_skip("the same-user rule", "running a client as another user") {
        return;
    }
    let pair = pair().await;
    let proxy = pair.b.socks().to_string();
    let url = "http://home.alice.p2p/";
    let ours = curl(&["--socks5-hostname", &proxy, url]);
    assert_eq!(text(&ours.stdout), PAGE, "our own user is served");
    let args = ["-sS", "--max-time", "20"];
    let socks5 = as_other_user("curl", &[&args[..], &["--socks5-hostname", &proxy, url]].concat());
    assert!(!socks5.status.success(), "SOCKS5 from another user is refused");
    assert!(!text(&socks5.stdout).contains("alice"));
    let socks4 = as_other_user("curl", &[&args[..], &["--socks4a", &proxy, url]].concat());
    assert_eq!(socks4.status.code(), Some(97), "{}", text(&socks4.stderr));
    let http = as_other_user(
        "curl",
        &[&args[..], &["--proxy", &format!("http://{proxy}"), "-w", "%{http_code}", url]].concat(),
    );
    assert!(text(&http.stdout).ends_with("403"), "{}", text(&http.stdout));
    assert!(
        pair.b.log.text().contains("refused a client of another user"),
        "B says why: {}",
        pair.b.log.text()
    );
    let forward = Forward::start(pair.home_b.path(), "home.alice.p2p:80");
    let via = as_other_user("curl", &[&args[..], &[&format!("http://{}/", forward.addr)]].concat());
    assert!(!via.status.success(), "forward refuses another user too");
    assert!(!text(&via.stdout).contains("alice"));
    let mine = curl(&[&format!("http://{}/", forward.addr)]);
    assert_eq!(text(&mine.stdout), PAGE);
}

/// What the same-user rule costs per accepted connection: one exact sock_diag lookup of the
/// client's socket (a figure for the record, never asserted as a time).
#[test]
fn the_same_user_lookup_finds_our_own_client_and_its_cost_is_measured() {
    use peerup_proxy::peer_uid::{PeerUids, own_uid};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, peer) = listener.accept().expect("accept");
    let local = accepted.local_addr().expect("local");
    let uids = PeerUids::new();
    let own = own_uid().expect("own uid");
    assert_eq!(uids.lookup(local, peer).ok().flatten(), Some(own), "our own client is ours");
    let rounds = 1_000u32;
    let started = Instant::now();
    for _ in 0..rounds {
        assert_eq!(uids.lookup(local, peer).ok().flatten(), Some(own));
    }
    let each = started.elapsed() / rounds;
    let how = if uids.uses_netlink() { "sock_diag" } else { "/proc/net/tcp" };
    support::report(format!("proxy: same-user lookup ({how}): {each:?} per accepted connection"));
    drop(client);
}

/// Send `request` on a fresh connection to `proxy` and read the status line's code.
async fn status_of(proxy: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(proxy).await.expect("connect to the proxy");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(20), socket.read_to_end(&mut reply))
            .await;
    assert!(read.is_ok(), "{request:?}: the proxy answers and closes");
    let reply = text(&reply);
    reply.split(' ').nth(1).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_never_dials_itself_and_bad_framing_gets_a_400() {
    let home = Home::init();
    home.write_config("");
    let node = Daemon::start(&home);
    let proxy = node.socks();
    let port = proxy.port();
    for host in ["127.0.0.1", "localhost", "0.0.0.0", "127.1", "2130706433", "[::ffff:127.0.0.1]"] {
        let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        assert_eq!(status_of(proxy, &request).await, "403", "CONNECT {host}:{port} is a loop");
    }
    for framing in [
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: abc",
    ] {
        let request = format!(
            "POST http://example.p2p/ HTTP/1.1\r\nHost: example.p2p\r\n{framing}\r\n\r\nhello"
        );
        assert_eq!(status_of(proxy, &request).await, "400", "{framing:?}");
    }
    let out = support::peerup(home.path(), &["forward", "127.0.0.1:0", "nope.p2p:1"]);
    assert_eq!(out.status.code(), Some(3), "no such name: {}", text(&out.stderr));
    let port = services::closed_port();
    let listen = format!("127.0.0.1:{port}");
    let target = format!("127.0.0.1:{port}");
    let out = support::peerup(home.path(), &["forward", &listen, &target]);
    assert_eq!(out.status.code(), Some(2), "a forward to itself: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("loop"), "{}", text(&out.stderr));
}

#[test]
fn proxy_credentials_are_checked_by_config_check() {
    let home = Home::init();
    home.write_private("pw", "secret\n");
    let config = |user: &str| {
        format!(
            "socks: {{ listen: 127.0.0.1:0, auth: {{ username: \"{user}\", password_file: pw }} }}\n"
        )
    };
    std::fs::write(home.file("config.yaml"), config("me")).expect("write config");
    let out = support::peerup(home.path(), &["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(home.file("config.yaml"), config("m:e")).expect("write config");
    let out = support::peerup(home.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "a ':' in the username: {}", text(&out.stderr));
    std::fs::write(home.file("config.yaml"), config("me")).expect("write config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.file("pw"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let out = support::peerup(home.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "a password others can read: {}", text(&out.stderr));
    // Off loopback with direct connections and no credentials: an open proxy, refused.
    std::fs::write(home.file("config.yaml"), "socks: { listen: 0.0.0.0:0 }\n").expect("write");
    let out = support::peerup(home.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("open proxy"), "{}", text(&out.stderr));
}
