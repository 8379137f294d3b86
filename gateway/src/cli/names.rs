//! `peerup relay names list|release`: the registrar operator's view of the network's names.
//! Through the running relay's control socket when it runs (the store is its), else on the
//! store in the home directly.

use std::io::Write;

use clap::Subcommand;

use super::Failure;
use crate::config::Config;
use crate::files::Home;
use crate::names::record::unix_now;
use crate::names::store::{Listed, Policy, Registry, STORE_FILE};
use crate::runtime::State;

#[derive(Debug, Subcommand)]
pub(super) enum NamesCommand {
    /// Every name: owner, state (registered, reserved, lapsed, released), serial, expiry
    List {
        /// One JSON object: {"names": [...]}
        #[arg(long)]
        json: bool,
    },
    /// Free HOST now (a squatted name, a machine gone): members learn it from a tombstone, and
    /// the key that held it may not take it again for relay.registry.grace
    Release {
        /// The host label, e.g. `home` for home.NETWORK.p2p
        host: String,
    },
}

pub(super) async fn run(home: &Home, command: NamesCommand) -> Result<(), Failure> {
    let request = match &command {
        NamesCommand::List { .. } => serde_json::json!({ "command": "names" }),
        NamesCommand::Release { host } => {
            serde_json::json!({ "command": "release", "host": host.to_ascii_lowercase() })
        }
    };
    // The running relay's socket, found without state.json (which may be gone): the store must
    // never be edited behind a running relay's back.
    let socket = State::read(home)
        .map(|state| state.control)
        .or_else(|| crate::control::socket_path(home).ok());
    let answer = super::ask_daemon(socket, request).await?;
    let answer = match answer {
        Some(answer) => answer,
        None => offline(home, &command)?,
    };
    if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(Failure::usage(error.to_owned()));
    }
    let mut out = std::io::stdout().lock();
    match command {
        NamesCommand::List { json: true } => {
            let _ = writeln!(out, "{answer}");
        }
        NamesCommand::List { json: false } => {
            let names: Vec<Listed> = answer
                .get("names")
                .cloned()
                .and_then(|n| serde_json::from_value(n).ok())
                .unwrap_or_default();
            let now = unix_now();
            if names.is_empty() {
                let _ = writeln!(out, "no names registered yet");
            }
            for name in names {
                let owner = name.owner.or(name.holder).unwrap_or_else(|| "-".into());
                let left = match name.expires.checked_sub(now) {
                    Some(secs) => format!("expires in {}", human(secs)),
                    None => "expired".into(),
                };
                let _ = writeln!(
                    out,
                    "{:<20} {:<11} {owner}  serial {}  {left}",
                    name.host, name.state, name.serial
                );
            }
        }
        NamesCommand::Release { .. } => {
            let done = answer.get("released").and_then(|r| r.as_str()).unwrap_or_default();
            let _ = writeln!(out, "{done}");
        }
    }
    Ok(())
}

/// The same answers, from the store on disk (no relay runs in this home).
fn offline(home: &Home, command: &NamesCommand) -> Result<serde_json::Value, Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    let key = crate::identity::load(&home.identity()).map_err(Failure::usage)?;
    let me = key.public().to_peer_id();
    let settings = &config.relay.registry;
    if settings.registrar.map(|r| r.peer(me)) != Some(me) {
        return Err(Failure::usage(format!(
            "this home is not a registrar: set relay.registry.registrar to `self` (or its peer ID, {me}) in {}",
            home.config().display()
        )));
    }
    let mut registry = Registry::open(&home.join(STORE_FILE.as_ref()), key, Policy::of(settings))
        .map_err(Failure::usage)?;
    Ok(match command {
        NamesCommand::List { .. } => serde_json::json!({ "names": registry.list(unix_now()) }),
        NamesCommand::Release { host } => {
            match registry.release(&host.to_ascii_lowercase(), unix_now()) {
                Ok(record) => serde_json::json!({
                    "released": format!("released {} (serial {})", record.host, record.serial)
                }),
                Err((_, why)) => serde_json::json!({ "error": why }),
            }
        }
    })
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
