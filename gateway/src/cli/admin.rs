//! The commands that manage a home: init, id, auth, config check, resolve.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use libp2p::PeerId;
use peerup_resolver::{parse_peer, peer_label};

use super::{Exit, Failure};
use crate::auth::access::load_keys;
use crate::auth::keys::check_comment;
use crate::auth::{AuthorizedKeys, Entry, Expiry};
use crate::config::{Config, DEFAULT_CONFIG, ServiceName};
use crate::daemon::{Loaded, State, load, local_tiers};
use crate::files::{self, Home};
use crate::identity;

const AUTHORIZED_KEYS_HEADER: &str = "\
# Peers allowed to connect: one per line, `<peer-id> [expires=YYYY-MM-DD] [# comment]`.
# Edit with `peerup auth add|remove PEER`; see `peerup auth --help`.
";

#[derive(Debug, Subcommand)]
pub(super) enum AuthCommand {
    /// Allow PEER (base58 or base36 peer ID); updates its options if present
    Add {
        /// The peer ID, base58 (12D3KooW…) or base36 (k51…)
        peer: String,
        /// Edit this service's own list instead of the global one
        #[arg(long, value_name = "NAME", conflicts_with = "relay")]
        service: Option<String>,
        /// Edit the relay's member list (relay.authorized_keys)
        #[arg(long)]
        relay: bool,
        /// A comment kept on the line
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Access ends at the end of this day (UTC), or at an RFC 3339 time
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
    },
    /// Remove PEER
    Remove {
        /// The peer ID, base58 or base36
        peer: String,
        #[arg(long, value_name = "NAME", conflicts_with = "relay")]
        service: Option<String>,
        #[arg(long)]
        relay: bool,
    },
    /// List the peers in a list
    List {
        #[arg(long, value_name = "NAME", conflicts_with = "relay")]
        service: Option<String>,
        #[arg(long)]
        relay: bool,
    },
}

/// `peerup init --network NET --relay ADDR [--registrar ID] [--name HOST]`.
#[derive(Debug, clap::Args)]
pub(super) struct Join {
    /// Join this network (its name on this machine: HOST.NETWORK.p2p)
    #[arg(long, value_name = "NET", requires = "relay")]
    network: Option<String>,
    /// The network's relay, a multiaddr ending in /p2p/<relay-peer-id> (repeat for several)
    #[arg(long, value_name = "ADDR", requires = "network")]
    relay: Vec<String>,
    /// The network's registrar, one of the --relay peers [default: the first relay's peer ID]
    #[arg(long, value_name = "PEER-ID", requires = "network")]
    registrar: Option<String>,
    /// Register this machine as HOST in the network (HOST.NETWORK.p2p)
    #[arg(long, value_name = "HOST", requires = "network")]
    name: Option<String>,
}

impl Join {
    /// The `networks:` section these flags describe, checked as config.yaml would be.
    fn networks_yaml(&self) -> Result<Option<String>, Failure> {
        let Some(network) = &self.network else { return Ok(None) };
        let network: crate::config::NetworkName = network.parse().map_err(Failure::usage)?;
        let mut relays = Vec::new();
        for text in &self.relay {
            let relay: crate::config::RelayAddr = text.parse().map_err(Failure::usage)?;
            relays.push(relay);
        }
        let Some(first) = relays.first() else {
            return Err(Failure::usage("--network needs at least one --relay"));
        };
        let registrar = match &self.registrar {
            Some(text) => parse_peer(text)
                .map_err(|e| Failure::usage(format!("--registrar {text:?}: {e}")))?,
            None => first.peer,
        };
        let mut yaml = format!("networks:\n  {network}:\n    relays:\n");
        for relay in &relays {
            yaml.push_str(&format!("      - {}\n", relay.full()));
        }
        yaml.push_str(&format!("    registrar: {registrar}\n"));
        if let Some(host) = &self.name {
            let host: crate::config::HostLabel = host.parse().map_err(Failure::usage)?;
            yaml.push_str(&format!("    register_as: {host}\n"));
        }
        // The same checks `peerup run` makes (the registrar among the relays, ...).
        Config::parse(&yaml, Path::new("peerup init")).map_err(Failure::usage)?;
        Ok(Some(yaml))
    }
}

/// The default config with `networks: {}` replaced by `networks`.
fn config_joining(networks: &str) -> String {
    DEFAULT_CONFIG.replace("networks: {}\n", networks)
}

pub(super) fn init(home: &Home, join: &Join) -> Result<(), Failure> {
    let networks = join.networks_yaml()?;
    if let Some(networks) = &networks
        && home.config().exists()
    {
        let entry: String = networks.lines().skip(1).map(|l| format!("{l}\n")).collect();
        return Err(Failure::usage(format!(
            "{} exists and is kept; to join the network, put this under `networks:` in it (in place of `networks: {{}}` if that is there):\n{entry}",
            home.config().display()
        )));
    }
    let config_text = match &networks {
        Some(networks) => config_joining(networks),
        None => DEFAULT_CONFIG.to_owned(),
    };
    let fail = |e: &dyn std::fmt::Display| Failure::internal(e);
    files::create_private_dir(home.dir()).map_err(|e| fail(&e))?;
    home.check().map_err(Failure::usage)?;
    let key_path = home.identity();
    let mut out = std::io::stdout().lock();
    let peer = if key_path.exists() {
        let key = identity::load(&key_path).map_err(Failure::usage)?;
        let _ = writeln!(out, "kept     {} (exists)", key_path.display());
        key.public().to_peer_id()
    } else {
        let key = identity::generate(&key_path).map_err(|e| fail(&e))?;
        let _ = writeln!(out, "created  {}", key_path.display());
        key.public().to_peer_id()
    };
    let defaults: [(PathBuf, &str); 2] = [
        (home.config(), &config_text),
        (home.join(Path::new(files::AUTHORIZED_KEYS_FILE)), AUTHORIZED_KEYS_HEADER),
    ];
    for (path, contents) in defaults {
        if path.exists() {
            let _ = writeln!(out, "kept     {} (exists)", path.display());
        } else {
            files::create_new(&path, contents.as_bytes(), 0o600).map_err(|e| fail(&e))?;
            let _ = writeln!(out, "created  {}", path.display());
        }
    }
    let _ = writeln!(out, "peer id  {peer}\nlabel    {}", peer_label(&peer));
    if networks.is_some() {
        let _ = writeln!(
            out,
            "next     ask the relay's operator to admit you: peerup auth add {peer} --relay"
        );
    }
    Ok(())
}

pub(super) fn id(home: &Home, json: bool) -> Result<(), Failure> {
    let key = identity::load(&home.identity()).map_err(Failure::usage)?;
    let peer = key.public().to_peer_id();
    let onboarding = relay_onboarding(home, peer)?;
    let mut out = std::io::stdout().lock();
    let _ = if json {
        let mut value =
            serde_json::json!({ "peer_id": peer.to_base58(), "dns_label": peer_label(&peer) });
        if let Some(on) = &onboarding {
            value["member_init"] = serde_json::json!(on.init);
            value["member_config"] = serde_json::json!(on.config);
            value["admit_member"] = serde_json::json!(on.admit);
        }
        writeln!(out, "{value}")
    } else {
        let _ = writeln!(out, "{peer}\n{}", peer_label(&peer));
        match &onboarding {
            Some(on) => {
                let join = match &on.init {
                    Some(init) => format!(
                        "A new member joins with:\n  {init}\nor, in an existing config.yaml (under networks:):\n"
                    ),
                    None => "In a member's config.yaml (under networks:):\n".to_owned(),
                };
                writeln!(
                    out,
                    "\nThis home runs a relay{}. {join}{}Then admit it here:\n  {}",
                    on.role,
                    on.config.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>(),
                    on.admit
                )
            }
            None => Ok(()),
        }
    };
    Ok(())
}

/// What a relay's operator hands a new member.
struct Onboarding {
    role: String,
    init: Option<String>,
    config: String,
    admit: String,
}

/// For a relay home (one with a member list or a registry): the member's `peerup init` line,
/// its config lines, and the operator's line that admits it.
fn relay_onboarding(home: &Home, peer: PeerId) -> Result<Option<Onboarding>, Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    let registry = &config.relay.registry;
    let members = home.join(&config.relay.authorized_keys);
    if !members.exists() && registry.registrar.is_none() {
        return Ok(None);
    }
    let network = registry.network.to_string();
    let registrar = registry.registrar.map(|r| r.peer(peer));
    // Where members reach it: the configured public addresses as they are; else the running
    // relay's bound addresses (the routable ones, if any); else the listen addresses, with a
    // placeholder for an unspecified IP.
    let routable = |a: &String| !a.contains("/ip4/127.") && !a.starts_with("/ip6/::1/");
    let running = State::read(home).filter(|s| s.role == "relay").map(|s| s.libp2p);
    let addrs: Vec<String> = match (&config.relay.external_addresses[..], running) {
        ([], Some(bound)) => {
            let public: Vec<String> = bound.iter().filter(|a| routable(a)).cloned().collect();
            if public.is_empty() { bound } else { public }
        }
        ([], None) => config
            .relay
            .listen
            .iter()
            .map(|a| {
                a.0.to_string()
                    .replace("/ip4/0.0.0.0/", "/ip4/<public-ip>/")
                    .replace("/ip6/::/", "/ip6/<public-ip6>/")
            })
            .collect(),
        (external, _) => external.iter().map(|a| a.0.to_string()).collect(),
    };
    let addrs: Vec<String> = addrs.into_iter().map(|a| format!("{a}/p2p/{peer}")).collect();
    let first =
        addrs.first().cloned().unwrap_or_else(|| format!("/ip4/<public-ip>/tcp/4101/p2p/{peer}"));
    let mut yaml = format!("networks:\n  {network}:\n    relays:\n");
    for addr in &addrs {
        yaml.push_str(&format!("      - {addr}\n"));
    }
    let (role, init) = match registrar {
        Some(registrar) if registrar == peer => {
            yaml.push_str(&format!("    registrar: {registrar}\n    register_as: HOST\n"));
            let relays: String = addrs.iter().map(|a| format!(" --relay {a}")).collect();
            let relays = if relays.is_empty() { format!(" --relay {first}") } else { relays };
            let init = format!("peerup init --network {network}{relays} --name HOST");
            (format!(" and is the registrar of network {network}"), Some(init))
        }
        // Members join with the registrar's lines and list this relay too.
        Some(registrar) => (
            format!(
                " of network {network}, whose registrar is {registrar}: a member joins with the lines `peerup id` prints on the registrar, and lists this relay as well"
            ),
            None,
        ),
        // No registry: names in this network are the members' local names only.
        None => (String::new(), None),
    };
    Ok(Some(Onboarding {
        role,
        init,
        config: yaml,
        admit: "peerup auth add <member-peer-id> --relay".into(),
    }))
}

/// Which file an auth command edits, and a note when the config should name it.
fn keys_file(
    home: &Home,
    service: Option<&str>,
    relay: bool,
) -> Result<(PathBuf, Option<String>), Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    if relay {
        return Ok((home.join(&config.relay.authorized_keys), None));
    }
    let Some(service) = service else {
        return Ok((home.join(&config.authorized_keys), None));
    };
    let name: ServiceName = service.parse().map_err(Failure::usage)?;
    let Some(entry) = config.services.get(&name) else {
        return Err(Failure::usage(format!(
            "no service {} in {}",
            name.as_str(),
            home.config().display()
        )));
    };
    match &entry.authorized_keys {
        Some(file) => Ok((home.join(file), None)),
        None => {
            let file = format!("{name}_authorized_keys");
            let note = format!(
                "note: service {name} names no list of its own, so the global list decides; to use \
                 {file}, add `authorized_keys: {file}` under services.{name} in config.yaml"
            );
            Ok((home.join(Path::new(&file)), Some(note)))
        }
    }
}

const RELAY_MEMBERS_HEADER: &str = "\
# The relay's members: one per line, `<peer-id> [expires=YYYY-MM-DD] [# comment]`.
# Edit with `peerup auth add|remove PEER --relay`; see `peerup auth --help`.
";

/// The list at `path`, or a new one (with the header for the relay's members when `relay`).
fn read_keys(path: &Path, relay: bool) -> Result<AuthorizedKeys, Failure> {
    if !path.exists() {
        let header = if relay { RELAY_MEMBERS_HEADER } else { AUTHORIZED_KEYS_HEADER };
        return AuthorizedKeys::parse(header, path).map_err(Failure::usage);
    }
    load_keys(path).map_err(Failure::usage)
}

fn peer_arg(text: &str) -> Result<PeerId, Failure> {
    parse_peer(text).map_err(|e| Failure::usage(format!("{text:?}: {e}")))
}

pub(super) fn auth(home: &Home, command: AuthCommand) -> Result<(), Failure> {
    let write = |path: &Path, keys: &AuthorizedKeys| {
        files::write_atomic(path, keys.render().as_bytes(), 0o600).map_err(Failure::internal)
    };
    let mut out = std::io::stdout().lock();
    match command {
        AuthCommand::Add { peer, service, relay, comment, expires } => {
            let peer = peer_arg(&peer)?;
            if let Some(comment) = &comment {
                check_comment(comment).map_err(Failure::usage)?;
            }
            let expires =
                expires.map(|e| e.parse::<Expiry>()).transpose().map_err(Failure::usage)?;
            if let Some(expiry) = expires
                && expiry.ends_at() <= time::OffsetDateTime::now_utc()
            {
                return Err(Failure::usage(format!(
                    "--expires {expiry} is already past: access would end before it starts"
                )));
            }
            let (path, note) = keys_file(home, service.as_deref(), relay)?;
            let mut keys = read_keys(&path, relay)?;
            let new = keys.upsert(Entry { peer, expires, comment });
            write(&path, &keys)?;
            let verb = if new { "added" } else { "updated" };
            let _ = writeln!(out, "{verb} {peer} in {}", path.display());
            if let Some(note) = note {
                eprintln!("{note}");
            }
            tell_daemon(home);
        }
        AuthCommand::Remove { peer, service, relay } => {
            let peer = peer_arg(&peer)?;
            let (path, _) = keys_file(home, service.as_deref(), relay)?;
            let mut keys = read_keys(&path, relay)?;
            if !keys.remove(&peer) {
                return Err(Failure::usage(format!("{peer} is not in {}", path.display())));
            }
            write(&path, &keys)?;
            let _ = writeln!(out, "removed {peer} from {}", path.display());
            tell_daemon(home);
        }
        AuthCommand::List { service, relay } => {
            let (path, _) = keys_file(home, service.as_deref(), relay)?;
            let now = time::OffsetDateTime::now_utc();
            for entry in read_keys(&path, relay)?.entries() {
                let mut line = entry.peer.to_base58();
                if let Some(expiry) = entry.expires {
                    let state = if entry.allows_at(now) { "" } else { " (expired)" };
                    line.push_str(&format!("  expires={expiry}{state}"));
                }
                if let Some(comment) = &entry.comment {
                    line.push_str(&format!("  # {comment}"));
                }
                let _ = writeln!(out, "{line}");
            }
        }
    }
    Ok(())
}

/// Ask the daemon running in `home` (if any) to reload now, so an edit takes effect at once
/// (it would also notice the file within a second), and say what it answered.
fn tell_daemon(home: &Home) {
    let Some(state) = State::read(home) else { return };
    let asked =
        super::runtime().map(|rt| rt.block_on(crate::control::request(&state.control, "reload")));
    match asked {
        Ok(Ok(answer)) if answer.get("reloaded").is_some() => {
            eprintln!("the running daemon applied it");
        }
        Ok(Ok(answer)) => {
            let error = answer.get("error").and_then(|e| e.as_str()).unwrap_or("no answer");
            eprintln!("the running daemon did not apply it: {error}");
        }
        _ => {}
    }
}

pub(super) fn config_check(home: &Home) -> Result<(), Failure> {
    let path = home.config();
    let text = match files::read_checked_text(&path, files::Kind::Config) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => {
            return Err(Failure::usage(format!(
                "no config.yaml at {}: `peerup run` would start on the embedded defaults \
                 (configs/peerup.yaml); `peerup init` writes one",
                path.display()
            )));
        }
        Err(e) => return Err(Failure::usage(e)),
    };
    // Everything `peerup run` loads, loaded the same way.
    let Loaded { config, lists, names, .. } = load(home).map_err(Failure::usage)?;
    config.proxy_credentials(home).map_err(Failure::usage)?;
    // The relay's member list matters where `peerup relay` runs: a home whose config has a
    // `relay:` section needs one, as `peerup relay` refuses to start without it.
    let members = home.join(&config.relay.authorized_keys);
    if members.exists() {
        load_keys(&members).map_err(Failure::usage)?;
    } else if text.lines().any(|line| line.starts_with("relay:")) {
        return Err(Failure::usage(crate::runtime::StartError::NoMembers(members)));
    }
    let _ = writeln!(
        std::io::stdout(),
        "{}: ok ({} services, {} local names, {} peers in the global list)",
        home.config().display(),
        config.services.len(),
        names.len(),
        lists.global.len()
    );
    Ok(())
}

/// A `resolve` answer that is a failure: no such name (exit 3), refused by a pin (exit 4), or
/// not answerable now (exit 5).
pub(super) fn resolve_failure(answer: &serde_json::Value) -> Option<Failure> {
    let text = |key: &str| answer.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(no) = text("no_such_name") {
        return Some(Failure::new(Exit::NoSuchName, no));
    }
    if let Some(refused) = text("refused") {
        return Some(Failure::new(Exit::NotAuthorized, refused));
    }
    text("error").map(|error| Failure::new(Exit::Unreachable, error))
}

/// Remove the pin of a name: through the running daemon (whose file it is), else in the file.
pub(super) async fn forget(home: &Home, text: &str) -> Result<(), Failure> {
    let request = serde_json::json!({ "command": "forget", "name": text });
    let answer = super::ask_daemon(super::gateway_socket(home), request).await?;
    let answer = match answer {
        Some(answer) => answer,
        None => {
            let config = Config::load(&home.config()).map_err(Failure::usage)?;
            let path = home.join(crate::names::pins::PINS_FILE.as_ref());
            let pins = crate::names::Pins::load(&path).map_err(Failure::usage)?;
            let tiers = peerup_resolver::Tiers::default();
            crate::control::forget_answer(&pins, &tiers, &config.dns.suffix.0, text)
        }
    };
    if let Some(error) = answer.get("error").and_then(|v| v.as_str()) {
        return Err(Failure::usage(error.to_owned()));
    }
    let name = answer.get("forgot").and_then(|v| v.as_str()).unwrap_or(text);
    let mut out = std::io::stdout().lock();
    let _ = match answer.get("peer_id").and_then(|v| v.as_str()) {
        Some(peer) => writeln!(out, "forgot {name} (was {peer}); the next answer is pinned"),
        None => writeln!(out, "{name} was not pinned"),
    };
    Ok(())
}

/// Resolve through the running daemon (its tiers and cache) when there is one, else through the
/// local names.
pub(super) async fn resolve(home: &Home, text: &str, json: bool) -> Result<(), Failure> {
    let request = serde_json::json!({ "command": "resolve", "name": text });
    let through_daemon = super::ask_daemon(super::gateway_socket(home), request).await?;
    let answer = match through_daemon {
        Some(answer) => answer,
        None => {
            let config = Config::load(&home.config()).map_err(Failure::usage)?;
            let tiers = local_tiers(home, &config).map_err(Failure::usage)?;
            let answer = crate::control::resolve_answer(&tiers, &config.dns.suffix.0, text).await;
            // Local names cannot say "no such name" for a network with a registry: only the
            // daemon can ask it.
            if answer.get("no_such_name").is_some()
                && let Some(key) = crate::control::pin_key(text, &config.dns.suffix.0)
                && let Some((_, network)) = key.split_once('.')
                && config
                    .networks
                    .iter()
                    .any(|(n, net)| n.0.as_str() == network && net.registrar.is_some())
            {
                return Err(Failure::new(
                    Exit::Unreachable,
                    format!(
                        "{key}: no daemon runs to ask the registry of network {network} (start it with `peerup run`)"
                    ),
                ));
            }
            answer
        }
    };
    if let Some(failure) = resolve_failure(&answer) {
        return Err(failure);
    }
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{answer}");
        return Ok(());
    }
    let field = |key: &str| {
        answer.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let _ = writeln!(
        out,
        "{}\ttier={}\tttl={}s",
        field("peer_id").unwrap_or_default(),
        field("tier").unwrap_or_default(),
        field("ttl_secs").unwrap_or_default()
    );
    for addr in answer.get("addrs").and_then(|a| a.as_array()).into_iter().flatten() {
        let _ = writeln!(out, "  {}", addr.as_str().unwrap_or_default());
    }
    Ok(())
}
