//! The control socket: a Unix socket in the home (mode 0600) that `peerup status` asks.
//!
//! One request per connection: a line of JSON (`{"command":"status"}`, `{"command":"reload"}`
//! or `{"command":"resolve","name":"home.alice"}`), answered by one line of JSON. The client
//! side gives up after [`CLIENT_TIMEOUT`], so a frozen daemon cannot hang `peerup status`. The
//! socket lives at `<home>/control.sock`, or in `$XDG_RUNTIME_DIR` when that path is too long for a Unix socket; state.json names the path in use. A socket that answers means a
//! daemon already runs in this home, and a second one refuses to start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use std::sync::Arc;

use crate::files::Home;
use crate::names::{Pins, RegistryHandle};
use crate::node::Handle;
use crate::reload;

/// Longest socket path we use (sun_path holds 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 100;
/// A request line longer than this is refused.
const MAX_REQUEST: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the daemon's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another peerup daemon is running in this home (its control socket {0} answers)")]
    Running(PathBuf),
    #[error("no safe place for the control socket: {0}; set XDG_RUNTIME_DIR")]
    Unsafe(String),
    #[error("control socket {path}: {source}", path = path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where the control socket of `home` lives: in the home, or when that path is too long for a
/// socket, in `$XDG_RUNTIME_DIR` (or else a private `peerup-<uid>` directory in the temp dir,
/// created 0700 and refused if someone else owns it or can enter it).
pub fn socket_path(home: &Home) -> Result<PathBuf, ControlError> {
    use std::os::unix::fs::MetadataExt;
    let path = home.dir().join("control.sock");
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(path);
    }
    let name = format!("peerup-{:016x}.sock", fnv1a(home.dir().as_os_str().as_encoded_bytes()));
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok(PathBuf::from(runtime).join(name));
    }
    let uid = crate::files::my_uid();
    let dir = std::env::temp_dir().join(format!("peerup-{uid}"));
    crate::files::create_private_dir(&dir).map_err(|e| ControlError::Unsafe(e.to_string()))?;
    let meta =
        std::fs::metadata(&dir).map_err(|source| ControlError::Io { path: dir.clone(), source })?;
    if meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(ControlError::Unsafe(format!(
            "{} is not a private directory of ours (owner {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o777
        )));
    }
    Ok(dir.join(name))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// A bound control socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// A gateway's tiers and suffix, for `resolve` (a relay resolves nothing).
    names: Option<(peerup_resolver::Tiers, peerup_resolver::Label)>,
    /// A gateway's pins, for `forget`.
    pins: Option<Arc<Pins>>,
    /// A registrar relay's registry, for `names` and `release`.
    registry: Option<RegistryHandle>,
}

impl ControlServer {
    pub async fn bind(home: &Home) -> Result<ControlServer, ControlError> {
        let path = socket_path(home)?;
        let io = |source| ControlError::Io { path: path.clone(), source };
        if path.exists() {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(ControlError::Running(path));
            }
            std::fs::remove_file(&path).map_err(io)?;
        }
        let listener = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(ControlServer { listener, path, names: None, pins: None, registry: None })
    }

    /// Answer `resolve` requests through these tiers (the daemon's, with its cache).
    pub fn with_names(
        mut self,
        tiers: peerup_resolver::Tiers,
        suffix: peerup_resolver::Label,
    ) -> Self {
        self.names = Some((tiers, suffix));
        self
    }

    /// Answer `forget` by removing pins (a gateway's).
    pub fn with_pins(mut self, pins: Arc<Pins>) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Answer `names` and `release` from the registry (a registrar relay's).
    pub fn with_registry(mut self, registry: Option<RegistryHandle>) -> Self {
        self.registry = registry;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answer requests until `stop`: status snapshots from the node, reloads from the reload
    /// loop.
    pub async fn run(
        self,
        node: Handle,
        reload: mpsc::Sender<reload::Request>,
        stop: CancellationToken,
    ) {
        loop {
            let socket = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(error) => {
                        warn!(%error, "control accept failed");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        }
                    }
                },
            };
            // One request at a time is plenty for a control socket, and bounds the work.
            let serving = serve(socket, &node, &reload, &self);
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, serving).await;
            if let Ok(Err(error)) = answer {
                debug!(%error, "control request failed");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(
    socket: UnixStream,
    node: &Handle,
    reload: &mpsc::Sender<reload::Request>,
    server: &ControlServer,
) -> std::io::Result<()> {
    let names = server.names.as_ref();
    let (read, mut write) = socket.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let request: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    let shutting_down = || serde_json::json!({ "error": "shutting down" });
    let reply = match request.get("command").and_then(|c| c.as_str()) {
        Some("status") => node.status().await.unwrap_or_else(|_| shutting_down()),
        Some("reload") => {
            let (tx, rx) = oneshot::channel();
            match reload.send(tx).await {
                Ok(()) => match rx.await {
                    Ok(Ok(summary)) => serde_json::json!({ "reloaded": summary }),
                    Ok(Err(error)) => serde_json::json!({ "error": error }),
                    Err(_) => shutting_down(),
                },
                Err(_) => shutting_down(),
            }
        }
        Some("resolve") => {
            let name = request.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            match names {
                Some((tiers, suffix)) => resolve_answer(tiers, suffix, name).await,
                None => serde_json::json!({ "error": "this daemon resolves no names" }),
            }
        }
        Some("forget") => {
            let name = request.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            match (&server.pins, names) {
                (Some(pins), Some((tiers, suffix))) => forget_answer(pins, tiers, suffix, name),
                _ => serde_json::json!({ "error": "this daemon pins no names" }),
            }
        }
        Some("names") => match &server.registry {
            Some(registry) => match registry.list().await {
                Some(list) => serde_json::json!({ "names": list }),
                None => shutting_down(),
            },
            None => serde_json::json!({ "error": not_registrar(server) }),
        },
        Some("release") => {
            let host = request.get("host").and_then(|n| n.as_str()).unwrap_or_default();
            match &server.registry {
                Some(registry) => match registry.release(host.to_owned()).await {
                    Ok(done) => serde_json::json!({ "released": done }),
                    Err(error) => serde_json::json!({ "error": error }),
                },
                None => serde_json::json!({ "error": not_registrar(server) }),
            }
        }
        _ => serde_json::json!({
            "error": "unknown request; expected status, reload, resolve, forget, names or release"
        }),
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// `resolve`: the answer as JSON (`peer_id`, `tier`, `ttl_secs`, `addrs`), or `no_such_name`, or
/// an `error`.
pub(crate) async fn resolve_answer(
    tiers: &peerup_resolver::Tiers,
    suffix: &peerup_resolver::Label,
    text: &str,
) -> serde_json::Value {
    use peerup_resolver::{Name, ResolveError};
    let full = match Name::parse(text, suffix) {
        Ok(Some(_)) => text.to_owned(),
        _ => format!("{}.{suffix}", text.trim_end_matches('.')),
    };
    let name = match Name::parse(&full, suffix) {
        Ok(Some(name)) => name,
        _ => return serde_json::json!({ "no_such_name": format!("no such name: {text}") }),
    };
    match tiers.resolve(&name).await {
        Ok(answer) => serde_json::json!({
            "peer_id": answer.peer.to_base58(),
            "tier": answer.tier.to_string(),
            "ttl_secs": answer.ttl.as_secs(),
            "addrs": answer.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Err(error @ ResolveError::NoSuchName(_)) => {
            serde_json::json!({ "no_such_name": error.to_string() })
        }
        Err(error @ ResolveError::Refused { .. }) => {
            serde_json::json!({ "refused": error.to_string() })
        }
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    }
}

/// Why this daemon has no registry to show.
fn not_registrar(server: &ControlServer) -> &'static str {
    match server.names {
        Some(_) => "this home runs a gateway (`peerup run`), not a relay",
        None => "this relay is not its network's registrar (relay.registry.registrar: self)",
    }
}

/// `forget`: remove the pin of a name (`HOST.NETWORK`, with or without the suffix) and the
/// cached answers, so the next lookup pins afresh.
pub(crate) fn forget_answer(
    pins: &Pins,
    tiers: &peerup_resolver::Tiers,
    suffix: &peerup_resolver::Label,
    text: &str,
) -> serde_json::Value {
    let Some(key) = pin_key(text, suffix) else {
        return serde_json::json!({ "error": format!("{text:?} is not HOST.NETWORK") });
    };
    let answer = match pins.forget(&key) {
        Ok(Some(peer)) => serde_json::json!({ "forgot": key, "peer_id": peer.to_base58() }),
        Ok(None) => serde_json::json!({ "forgot": key, "peer_id": null }),
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    };
    tiers.invalidate();
    answer
}

/// The pin key of a name: `host.network`, lowercase.
pub(crate) fn pin_key(text: &str, suffix: &peerup_resolver::Label) -> Option<String> {
    use peerup_resolver::Name;
    let full = match Name::parse(text, suffix) {
        Ok(Some(_)) => text.to_owned(),
        _ => format!("{}.{suffix}", text.trim_end_matches('.')),
    };
    match Name::parse(&full, suffix) {
        Ok(Some(name @ Name::Host { .. })) => Some(name.to_string()),
        _ => None,
    }
}

/// Ask the daemon at `path`; a daemon that does not answer within [`CLIENT_TIMEOUT`] is an
/// error (`TimedOut`), not a hang.
pub async fn request(path: &Path, command: &str) -> std::io::Result<serde_json::Value> {
    request_value(path, serde_json::json!({ "command": command })).await
}

/// Send `request` (a JSON object with a `command`) and read the answer, as [`request`].
pub async fn request_value(
    path: &Path,
    request: serde_json::Value,
) -> std::io::Result<serde_json::Value> {
    match tokio::time::timeout(CLIENT_TIMEOUT, ask(path, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the daemon did not answer within {CLIENT_TIMEOUT:?}"),
        )),
    }
}

async fn ask(path: &Path, request: serde_json::Value) -> std::io::Result<serde_json::Value> {
    let socket = UnixStream::connect(path).await?;
    let (read, mut write) = socket.into_split();
    let mut line = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
