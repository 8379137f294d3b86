//! `peerup connect`, `peerup forward` and `peerup ssh-config`: the ways to a service for programs
//! that know no proxy, all through the running daemon's proxy.
//!
//! `connect HOST:PORT` bridges stdin/stdout (ssh's ProxyCommand); `forward LISTEN HOST:PORT`
//! listens locally and tunnels every connection (like `ssh -L`). The daemon's proxy address
//! comes from `<home>/state.json`, its credentials (`socks.auth`) from the config; the SOCKS
//! reply becomes the exit code, and one stderr line says what went wrong (ssh shows it).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use peerup_proxy::client::connect_via;
use peerup_proxy::{Credentials, Plain, SameUser, bridge};
use peerup_resolver::Name;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::{Exit, Failure, not_running};
use crate::config::Config;
use crate::daemon::State;
use crate::files::Home;

/// What reaching a target through the daemon needs.
struct Via {
    socks: SocketAddr,
    credentials: Option<Credentials>,
    config: Config,
}

impl Via {
    /// The running daemon's proxy and this home's credentials; the target's name checked
    /// with the daemon first (so a failure has its own exit code).
    async fn for_target(home: &Home, host: &str) -> Result<Via, Failure> {
        let state = State::read(home).ok_or_else(|| not_running(home))?;
        let config = Config::load(&home.config()).map_err(Failure::usage)?;
        check_name(&config, &state, host).await?;
        let socks = state
            .socks
            .ok_or_else(|| Failure::usage("this home runs a relay, which has no proxy listener"))?;
        let credentials = config.proxy_credentials(home).map_err(Failure::usage)?;
        Ok(Via { socks, credentials, config })
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Failure> {
        connect_via(self.socks, host, port, self.credentials.as_ref())
            .await
            .map_err(|e| Failure::new(Exit::of_connect(e.kind), e.message))
    }
}

pub(super) async fn run(home: &Home, target: &str) -> Result<(), Failure> {
    let (host, port) = split_target(target)?;
    let via = Via::for_target(home, host).await?;
    let socket = via.connect(host, port).await?;
    let stdio = Plain(tokio::io::join(tokio::io::stdin(), tokio::io::stdout()));
    // A tunnel that ends abnormally makes this command fail, so the caller sees a truncation.
    let never = CancellationToken::new();
    bridge(stdio, socket, &never)
        .await
        .map_err(|e| Failure::internal(format!("{target}: the connection was reset: {e}")))?;
    Ok(())
}

/// Listen on `listen` and tunnel each connection to `target` until interrupted. The bound
/// address is printed on stdout once listening (port 0 picks one).
pub(super) async fn forward(home: &Home, listen: &str, target: &str) -> Result<(), Failure> {
    let (host, port) = split_target(target)?;
    let listen = parse_listen(listen)?;
    let via = Arc::new(Via::for_target(home, host).await?);
    let same_user = match via.config.socks.same_user {
        false => None,
        true => Some(SameUser::new().map_err(|e| Failure::internal(format!("own uid: {e}")))?),
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Failure::internal(e.to_string()))?;
    if is_own_listener(bound, host, port) {
        return Err(Failure::usage(format!(
            "{target} is this forward's own listening address: every connection would loop"
        )));
    }
    if !bound.ip().is_loopback() {
        warn!(%bound, "forward listens beyond loopback: other machines can use this tunnel");
    }
    let _ = writeln!(std::io::stdout(), "{bound}");
    let _ = std::io::stdout().flush();
    info!(listen = %bound, target, "forwarding; Ctrl-C stops");
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    let host = Arc::<str>::from(host);
    let limit = Arc::new(Semaphore::new(FORWARD_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown_signal() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (socket, client) = tokio::select! {
            _ = shutdown_signal() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let local = socket.local_addr().unwrap_or(bound);
        if same_user.as_ref().is_some_and(|g| g.is_foreign(local, client)) {
            let _ = socket.set_zero_linger();
            continue;
        }
        let (via, host, stop) = (via.clone(), host.clone(), stop.clone());
        let span = info_span!("forward", %client);
        tasks.spawn(
            async move {
                let _permit = permit;
                match via.connect(&host, port).await {
                    // The app sees a reset: nothing was carried, and nothing looks complete.
                    Err(failure) => {
                        warn!(reason = %failure.message, "connect failed");
                        let _ = socket.set_zero_linger();
                    }
                    Ok(upstream) => {
                        if let Err(aborted) = bridge(socket, upstream, &stop).await {
                            info!(error = %aborted.error, "connection reset");
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
    tasks.close();
    stop.cancel();
    tasks.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Connections a forward serves at once; more wait in the listen backlog.
const FORWARD_CONNECTIONS: usize = 1024;

/// Whether `host:port` is the forward's own listener (a loop through the proxy and back).
fn is_own_listener(bound: SocketAddr, host: &str, port: u16) -> bool {
    if port != bound.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(ip) => {
            let ours = bound.ip().to_canonical();
            ip == ours || ip.is_unspecified() || ours.is_unspecified() || ip.is_loopback()
        }
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// `PORT`, `HOST:PORT` or `[V6]:PORT`; a bare port listens on 127.0.0.1 (as `ssh -L` does).
fn parse_listen(listen: &str) -> Result<SocketAddr, Failure> {
    if let Ok(port) = listen.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = listen.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(Failure::usage(format!(
        "{listen:?}: expected PORT or ADDRESS:PORT to listen on (e.g. 127.0.0.1:2222)"
    )))
}

/// `peerup ssh-config`: a `Host *.p2p` block that makes ssh reach `.p2p` names through this
/// binary and home.
pub(super) fn ssh_config(home: &Home) -> Result<(), Failure> {
    let config = Config::load(&home.config()).map_err(Failure::usage)?;
    let binary = std::env::current_exe()
        .map_err(|e| Failure::internal(format!("cannot tell this program's path: {e}")))?;
    let home_dir = std::path::absolute(home.dir())
        .map_err(|e| Failure::internal(format!("cannot tell the home's path: {e}")))?;
    let suffix = &config.dns.suffix.0;
    for path in [&binary, &home_dir] {
        if path.to_string_lossy().chars().any(char::is_control) {
            return Err(Failure::usage(format!(
                "{path:?} holds a control character, which an ssh config line cannot carry"
            )));
        }
    }
    let binary = shell_quote(&binary.to_string_lossy());
    let home_dir = shell_quote(&home_dir.to_string_lossy());
    let block = format!(
        "# peerup: reach *.{suffix} hosts through the gateway (add to ~/.ssh/config).\n\
         # The gateway must be running (`peerup run`).\n\
         Host *.{suffix}\n    \
             ProxyCommand {binary} --home {home_dir} connect %h:%p\n"
    );
    let _ = std::io::stdout().write_all(block.as_bytes());
    Ok(())
}

/// A word for ssh's ProxyCommand, which runs through the shell: plain when it is plain,
/// single-quoted otherwise (a `'` inside closes, escapes and reopens the quote; `%` is ssh's
/// token character and is doubled).
fn shell_quote(word: &str) -> String {
    let word = word.replace('%', "%%");
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word;
    }
    format!("'{}'", word.replace('\'', r"'\''"))
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
async fn check_name(config: &Config, state: &State, host: &str) -> Result<(), Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_command_words_survive_the_shell_and_ssh_tokens() {
        assert_eq!(shell_quote("/usr/bin/peerup"), "/usr/bin/peerup");
        assert_eq!(shell_quote("/home/a b/peerup"), "'/home/a b/peerup'");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
        assert_eq!(shell_quote("/tmp/100%"), "'/tmp/100%%'");
    }

    #[test]
    fn a_forward_to_its_own_listener_is_a_loop() {
        let bound: SocketAddr = "127.0.0.1:2222".parse().unwrap_or_else(|_| unreachable!());
        for host in ["127.0.0.1", "localhost", "0.0.0.0", "127.0.0.2", "::ffff:127.0.0.1"] {
            assert!(is_own_listener(bound, host, 2222), "{host}");
        }
        assert!(!is_own_listener(bound, "127.0.0.1", 22));
        assert!(!is_own_listener(bound, "home.alice.p2p", 2222));
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("2222").ok(), Some(SocketAddr::from(([127, 0, 0, 1], 2222))));
        assert_eq!(parse_listen("[::1]:0").ok(), "[::1]:0".parse().ok());
        assert!(parse_listen("nowhere").is_err());
    }
}
