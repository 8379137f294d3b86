//! `peerup connect HOST:PORT`: stdin/stdout to a service, through the running daemon.
//!
//! Made for ssh's ProxyCommand. The daemon's SOCKS address comes from `<home>/state.json`; the
//! SOCKS reply becomes the exit code, and one stderr line says what went wrong (ssh shows it).

use peerup_proxy::client::connect_via;
use peerup_proxy::{Plain, bridge};
use peerup_resolver::{Name, ResolveError};

use super::{Exit, Failure, not_running};
use crate::config::Config;
use crate::daemon::{State, local_tiers};
use crate::files::Home;

pub(super) async fn run(home: &Home, target: &str) -> Result<(), Failure> {
    let (host, port) = split_target(target)?;
    check_local_name(home, host).await?;
    let state = State::read(home).ok_or_else(|| not_running(home))?;
    let socks = state
        .socks
        .ok_or_else(|| Failure::usage("this home runs a relay, which has no SOCKS listener"))?;
    let socket = connect_via(socks, host, port)
        .await
        .map_err(|e| Failure::new(Exit::of_connect(e.kind), e.message))?;
    let stdio = Plain(tokio::io::join(tokio::io::stdin(), tokio::io::stdout()));
    // A tunnel that ends abnormally makes this command fail, so the caller sees a truncation.
    let never = tokio_util::sync::CancellationToken::new();
    bridge(stdio, socket, &never)
        .await
        .map_err(|e| Failure::internal(format!("{target}: the connection was reset: {e}")))?;
    Ok(())
}

fn split_target(target: &str) -> Result<(&str, u16), Failure> {
    let usage =
        || Failure::usage(format!("{target:?}: expected HOST:PORT (e.g. home.alice.p2p:22)"));
    let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
    let port = port.parse::<u16>().map_err(|_| usage())?;
    if host.is_empty() || port == 0 {
        return Err(usage());
    }
    Ok((host, port))
}

/// Answer "no such name" (exit 3) here: through SOCKS it looks like any unreachable host.
async fn check_local_name(home: &Home, host: &str) -> Result<(), Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    let name = match Name::parse(host, &config.dns.suffix.0) {
        Ok(Some(name)) => name,
        Ok(None) => return Ok(()),
        Err(e) => return Err(Failure::new(Exit::NoSuchName, e.to_string())),
    };
    let tiers = local_tiers(home, &config).map_err(Failure::usage)?;
    match tiers.resolve(&name).await {
        Err(e @ ResolveError::NoSuchName(_)) => Err(Failure::new(Exit::NoSuchName, e.to_string())),
        _ => Ok(()),
    }
}
