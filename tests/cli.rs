//! The command line as a user meets it: init, id, auth, config check, and the clear errors
//! that bad files get.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{Home, peerup};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_creates_a_private_key_and_never_overwrites() {
    let home = Home::init();
    let mode = std::fs::metadata(home.file("identity.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(home.file("identity.key")).unwrap();
    std::fs::write(home.file("config.yaml"), "socks: { direct: false }\n").unwrap();
    let out = peerup(home.path(), &["init"]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(home.file("identity.key")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(home.file("config.yaml")).unwrap(),
        "socks: { direct: false }\n"
    );
}

#[test]
fn id_prints_base58_and_the_base36_dns_label() {
    let home = Home::init();
    let out = peerup(home.path(), &["id", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["peer_id"], home.peer_id.as_str());
    let label = value["dns_label"].as_str().unwrap();
    assert!(
        label.starts_with('k') && label.len() <= 63 && label == label.to_lowercase(),
        "{label}"
    );
}

#[test]
fn a_world_readable_key_is_refused_with_the_chmod_to_run() {
    let home = Home::init();
    let key = home.file("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["run"][..], &["config", "check"][..]] {
        let out = peerup(home.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(&format!("chmod 600 {}", key.display())), "{args:?}: {err}");
        assert!(!err.contains("peerup init"), "{args:?}: the fix is the chmod, not init: {err}");
    }
}

#[test]
fn a_broken_key_says_what_is_wrong_with_it() {
    let home = Home::init();
    let key = home.file("identity.key");
    std::fs::write(&key, b"").unwrap();
    for args in [&["run"][..], &["id"][..]] {
        let err = stderr(&peerup(home.path(), args));
        assert!(err.contains("empty or truncated") && !err.contains("rsa"), "{args:?}: {err}");
    }
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let err = stderr(&peerup(home.path(), &["run"]));
    assert!(err.contains("not a regular file (a directory)"), "{err}");
    assert!(!err.contains("peerup init"), "{err}");
}

#[test]
fn a_repeated_key_is_an_error_at_the_line_of_the_repeat() {
    let home = Home::init();
    let config = home.file("config.yaml");
    let cases = [
        // A second `services:` section: reported at its own line, not the file's first.
        (
            "listen: [/ip4/127.0.0.1/tcp/0]\nservices:\n  web: { local_address: 127.0.0.1:80 }\n\nservices:\n  ssh: { local_address: 127.0.0.1:22 }\n",
            ":5:1: duplicate field `services`",
        ),
        // The same service twice: an error (the second silently replaced the first).
        (
            "services:\n  web: { local_address: 127.0.0.1:80 }\n  ssh: { local_address: 127.0.0.1:22 }\n  web: { local_address: 127.0.0.1:81 }\n",
            ":4:3: services: duplicate key `web`",
        ),
        (
            "socks:\n  listen: 127.0.0.1:0\n  listen: 127.0.0.1:1\n",
            ":3:3: socks: duplicate field `listen`",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&config, text).unwrap();
        let out = peerup(home.path(), &["config", "check"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let want = format!("{}{want}", config.display());
        assert!(stderr(&out).contains(&want), "want {want}, got: {}", stderr(&out));
    }
}

#[test]
fn a_bad_config_value_names_file_line_and_column() {
    let home = Home::init();
    std::fs::write(
        home.file("config.yaml"),
        "services:\n  web:\n    local_address: 127.0.0.1:8080\n    port: eighty\n",
    )
    .unwrap();
    for args in [&["run"][..], &["config", "check"][..]] {
        let out = peerup(home.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        let expected =
            format!("{}:4:11: services.web.port: invalid type", home.file("config.yaml").display());
        assert!(err.contains(&expected), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_security_list_is_named() {
    let home = Home::init();
    for (text, want) in [
        ("security: []\n", "config.yaml: security: needs tls, noise or both"),
        ("security: [noise, noise]\n", "config.yaml: security: noise is listed twice"),
        (
            "security: [ssl]\n",
            "config.yaml:1:12: security[0]: unknown variant `ssl`, expected `tls` or `noise`",
        ),
    ] {
        std::fs::write(home.file("config.yaml"), text).unwrap();
        let err = stderr(&peerup(home.path(), &["config", "check"]));
        assert!(err.contains(want), "{text}: want {want}, got: {err}");
    }
}

#[test]
fn an_unknown_key_and_a_port_clash_are_named() {
    let home = Home::init();
    std::fs::write(home.file("config.yaml"), "sock: { listen: 127.0.0.1:1080 }\n").unwrap();
    let err = stderr(&peerup(home.path(), &["config", "check"]));
    assert!(err.contains("config.yaml:1:1: unknown field `sock`"), "{err}");
    std::fs::write(
        home.file("config.yaml"),
        "services:\n  a: { local_address: 127.0.0.1:22 }\n  b: { local_address: 127.0.0.1:2222, port: 22 }\n",
    )
    .unwrap();
    let err = stderr(&peerup(home.path(), &["config", "check"]));
    assert!(
        err.contains("config.yaml: services.b.port: port 22 is already the port of service a"),
        "{err}"
    );
}

#[test]
fn a_bad_authorized_keys_line_is_an_error_with_its_line_number() {
    let home = Home::init();
    home.write_private("authorized_keys", &format!("# ok\n{}\n12D3KooWnotapeer\n", home.peer_id));
    for args in [&["run"][..], &["config", "check"][..]] {
        let out = peerup(home.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}:3: ", home.file("authorized_keys").display())),
            "{args:?}: {err}"
        );
    }
    home.write_private("authorized_keys", &format!("{} colour=red\n", home.peer_id));
    let err = stderr(&peerup(home.path(), &["config", "check"]));
    assert!(err.contains(":1: unknown option \"colour\""), "{err}");
}

#[test]
fn a_group_writable_authorized_keys_or_home_is_refused() {
    let home = Home::init();
    let keys = home.file("authorized_keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o664)).unwrap();
    let err = stderr(&peerup(home.path(), &["config", "check"]));
    assert!(err.contains(&format!("chmod go-w {}", keys.display())), "{err}");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    check_fails(home.path(), "chmod go-w");
}

#[test]
fn auth_add_remove_list_edit_the_file_and_keep_comments() {
    let home = Home::init();
    let other = Home::init();
    home.write_private("authorized_keys", "# my team\n\n");
    let out = peerup(
        home.path(),
        &["auth", "add", &other.peer_id, "--comment", "laptop", "--expires", "2099-12-31"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(home.file("authorized_keys")).unwrap();
    assert_eq!(text, format!("# my team\n\n{} expires=2099-12-31 # laptop\n", other.peer_id));
    let mode = std::fs::metadata(home.file("authorized_keys")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let listed = String::from_utf8(peerup(home.path(), &["auth", "list"]).stdout).unwrap();
    assert!(listed.contains(&other.peer_id) && listed.contains("laptop"), "{listed}");
    assert!(peerup(home.path(), &["auth", "remove", &other.peer_id]).status.success());
    assert_eq!(std::fs::read_to_string(home.file("authorized_keys")).unwrap(), "# my team\n\n");
    let out = peerup(home.path(), &["auth", "remove", &other.peer_id]);
    assert_eq!(out.status.code(), Some(2), "removing an absent peer is an error");
}

#[test]
fn auth_for_a_service_without_its_own_file_says_what_to_add() {
    let home = Home::init();
    let other = Home::init();
    std::fs::write(
        home.file("config.yaml"),
        "services:\n  web: { local_address: 127.0.0.1:8080 }\n",
    )
    .unwrap();
    let out = peerup(home.path(), &["auth", "add", &other.peer_id, "--service", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("authorized_keys: web_authorized_keys"), "{}", stderr(&out));
    let out = peerup(home.path(), &["auth", "add", &other.peer_id, "--service", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no service nope in"), "plain words: {}", stderr(&out));
    assert!(!stderr(&out).contains("ServiceName"), "no debug print: {}", stderr(&out));
}

#[test]
fn the_shipped_configs_pass_config_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for example in ["configs/peerup.yaml", "configs/reference.yaml", "configs/relay.yaml"] {
        let home = Home::init();
        std::fs::copy(root.join(example), home.file("config.yaml")).unwrap();
        home.write_private("ssh_authorized_keys", "");
        home.write_private("relay_authorized_keys", "");
        let out = peerup(home.path(), &["config", "check"]);
        assert!(out.status.success(), "{example}: {}", stderr(&out));
    }
}

#[test]
fn auth_add_refuses_a_comment_that_would_inject_a_line() {
    let home = Home::init();
    let (friend, attacker) = (Home::init(), Home::init());
    let comment = format!("x\n{}", attacker.peer_id);
    let out = peerup(home.path(), &["auth", "add", &friend.peer_id, "--comment", &comment]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("control character"), "{}", stderr(&out));
    let text = std::fs::read_to_string(home.file("authorized_keys")).unwrap_or_default();
    assert!(!text.contains(&attacker.peer_id), "nothing injected: {text}");
}

#[test]
fn auth_add_keeps_an_expiry_it_is_not_given_and_refuses_a_past_one() {
    let home = Home::init();
    let other = Home::init();
    let add = |args: &[&str]| {
        let mut all = vec!["auth", "add", other.peer_id.as_str()];
        all.extend_from_slice(args);
        peerup(home.path(), &all)
    };
    assert!(add(&["--expires", "2099-12-31"]).status.success());
    let out = add(&["--comment", "renamed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(home.file("authorized_keys")).unwrap();
    assert!(text.contains("expires=2099-12-31 # renamed"), "expiry kept: {text}");
    let out = add(&["--expires", "2001-01-01"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already past"), "{}", stderr(&out));
}

#[test]
fn a_peer_listed_twice_is_refused_with_both_lines() {
    let home = Home::init();
    let other = Home::init();
    home.write_private("authorized_keys", &format!("{0}\n{0} # again\n", other.peer_id));
    check_fails(home.path(), "lines 1 and 2");
}

#[test]
fn every_file_goes_through_the_checked_reader() {
    let home = Home::init();
    std::fs::write(home.file("config.yaml"), "mdns: false\n").unwrap();
    std::fs::set_permissions(home.file("config.yaml"), std::fs::Permissions::from_mode(0o666))
        .unwrap();
    check_fails(home.path(), "chmod go-w");
    std::fs::set_permissions(home.file("config.yaml"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    // A FIFO as names.yaml must not block start-up; a symlink to a device must not be read.
    assert!(
        std::process::Command::new("mkfifo")
            .arg(home.file("names.yaml"))
            .status()
            .unwrap()
            .success()
    );
    check_fails(home.path(), "not a regular file");
    std::fs::remove_file(home.file("names.yaml")).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", home.file("names.yaml")).unwrap();
    check_fails(home.path(), "not a regular file");
}

#[test]
fn a_daemon_refuses_to_start_while_sslkeylogfile_is_set() {
    let home = Home::init();
    let keylog = home.file("keys.log");
    let out = std::process::Command::new(support::BIN)
        .arg("--home")
        .arg(home.path())
        .arg("run")
        .env("SSLKEYLOGFILE", &keylog)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("SSLKEYLOGFILE is set"), "{}", stderr(&out));
    assert!(!keylog.exists());
}

#[test]
fn config_check_says_when_there_is_no_config_or_no_relay_member_list() {
    let home = Home::init();
    std::fs::remove_file(home.file("config.yaml")).unwrap();
    check_fails(home.path(), "no config.yaml");
    std::fs::write(home.file("config.yaml"), "relay:\n  listen: [/ip4/0.0.0.0/tcp/4101]\n")
        .unwrap();
    check_fails(home.path(), "no member list");
}

/// `peerup config check` fails with exit 2 and a line containing `needle`.
fn check_fails(home: &std::path::Path, needle: &str) {
    let out = peerup(home, &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

#[test]
fn a_daemon_that_cannot_start_says_which_part_failed_with_its_exit_code() {
    // The SOCKS address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let home = Home::init();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(home.file("config.yaml"), format!("socks: {{ listen: 127.0.0.1:{port} }}\n"))
        .unwrap();
    let out = peerup(home.path(), &["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot start (SOCKS listener)"), "{}", stderr(&out));
    // A config error, and a too-open key.
    std::fs::write(home.file("config.yaml"), "sock: {}\n").unwrap();
    assert!(stderr(&peerup(home.path(), &["run"])).contains("cannot start (config)"));
    std::fs::write(home.file("config.yaml"), "").unwrap();
    let key = home.file("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = peerup(home.path(), &["relay"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot start (identity key)"), "{}", stderr(&out));
    // The codes are listed where a user looks for them.
    let help = String::from_utf8_lossy(&peerup(home.path(), &["--help"]).stdout).into_owned();
    assert!(
        help.contains("Exit codes: 0 success; 1 internal error; 2 bad usage or config"),
        "{help}"
    );
}

#[test]
fn a_dns_address_that_is_taken_stops_the_start_when_the_config_chose_it() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let home = Home::init();
    std::fs::write(
        home.file("config.yaml"),
        format!("listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\ndns: {{ listen: 127.0.0.1:{port} }}\n"),
    )
    .unwrap();
    let out = peerup(home.path(), &["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot start (DNS server)"), "{}", stderr(&out));
}

#[test]
fn a_relay_prints_how_to_join_and_init_writes_a_config_that_joins() {
    let relay = Home::init();
    let id = &relay.peer_id;
    std::fs::write(
        relay.file("config.yaml"),
        format!("relay:\n  external_addresses: [/ip4/203.0.113.7/tcp/4101]\n  registry:\n    registrar: {id}\n    network: lab\n"),
    )
    .unwrap();
    relay.write_private("relay_authorized_keys", "");
    let out = peerup(relay.path(), &["id"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = format!("/ip4/203.0.113.7/tcp/4101/p2p/{id}");
    let init = format!("peerup init --network lab --relay {addr} --name HOST");
    assert!(text.contains(&init), "the member's line: {text}");
    assert!(
        text.contains("peerup auth add <member-peer-id> --relay"),
        "the operator's line: {text}"
    );
    assert!(text.contains(&format!("registrar: {id}")), "config lines: {text}");

    // The member runs that line (with its own name).
    let dir = tempfile::tempdir().unwrap();
    let member = dir.path().join("member");
    let args = ["init", "--network", "lab", "--relay", &addr, "--name", "laptop"];
    let out = peerup(&member, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--relay"), "says what comes next");
    let config = std::fs::read_to_string(member.join("config.yaml")).unwrap();
    assert!(config.contains("register_as: laptop") && config.contains(&format!("registrar: {id}")));
    let out = peerup(&member, &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without a running daemon, nobody can ask the registry: not "no such name".
    let out = peerup(&member, &["resolve", "home.lab"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("no daemon runs to ask the registry"), "{}", stderr(&out));
    // An existing config is kept; the error shows what to add.
    let out = peerup(&member, &args);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("exists and is kept") && stderr(&out).contains("register_as: laptop")
    );
    // A peer-shaped name is refused before anything is written.
    let label = relay.peer_label();
    let out = peerup(
        &dir.path().join("other"),
        &["init", "--network", "lab", "--relay", &addr, "--name", &label],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("reads as a peer ID or peer label"), "{}", stderr(&out));
    assert!(!dir.path().join("other").join("config.yaml").exists());
}

#[test]
fn config_check_refuses_a_registration_the_network_cannot_take() {
    let home = Home::init();
    let relay = Home::init();
    let addr = format!("/ip4/203.0.113.7/tcp/4101/p2p/{}", relay.peer_id);
    for (network, want) in [
        (format!("relays: [{addr}]\n    register_as: laptop"), "needs networks.lab.registrar"),
        (
            format!("relays: [{addr}]\n    registrar: {}\n    register_as: laptop", home.peer_id),
            "is not among networks.lab.relays",
        ),
        (
            format!(
                "relays: [{addr}]\n    registrar: {}\n    register_as: {}",
                relay.peer_id,
                relay.peer_label()
            ),
            "reads as a peer ID",
        ),
    ] {
        std::fs::write(home.file("config.yaml"), format!("networks:\n  lab:\n    {network}\n"))
            .unwrap();
        let out = peerup(home.path(), &["config", "check"]);
        assert_eq!(out.status.code(), Some(2), "{network}");
        assert!(stderr(&out).contains(want), "{network}: {}", stderr(&out));
    }
}
