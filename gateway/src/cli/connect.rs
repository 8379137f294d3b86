//! `peerup connect HOST:PORT`: stdin/stdout to a service, through the running daemon.
//!
//! Made for ssh's ProxyCommand. The daemon's SOCKS address comes from `<home>/state.json`; the
//! SOCKS reply becomes the exit code, and one stderr line says what went wrong (ssh shows it).

use peerup_proxy::client::connect_via;
use peerup_proxy::{Plain, bridge};
use peerup_resolver::Name;

use super::{Exit, Failure, not_running};
use crate::config::Config;
use crate::daemon::State;
use crate::files::Home;

pub(super) async fn run(home: &Home, target: &str) -> Result<(), Failure> {
    let (host, port) = split_target(target)?;
    let state = State::read(home).ok_or_else(|| not_running(home))?;
    check_name(home, &state, host).await?;
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

/// Resolve a `.p2p` name through the daemon first, so the exit code says which failure it was
/// (through SOCKS, "no such name" and "name service unreachable" are both 0x04).
async fn check_name(home: &Home, state: &State, host: &str) -> Result<(), Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    match Name::parse(host, &config.dns.suffix.0) {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(()),
        Err(e) => return Err(Failure::new(Exit::NoSuchName, e.to_string())),
    }
    let request = serde_json::json!({ "command": "resolve", "name": host });
    let answer = crate::control::request_value(&state.control, request)
        .await
        .map_err(|e| Failure::new(Exit::Unreachable, format!("the daemon did not answer: {e}")))?;
    super::admin::resolve_failure(&answer).map_or(Ok(()), Err)
}
