//! The proxy listener: one port for SOCKS5, SOCKS4/4a and HTTP, told apart by the first byte.
//!
//! Each accepted client is checked first (on Linux, by default, only programs of the user
//! running the gateway are served), then has the handshake timeout to complete its request.
//! The [`Connector`] is asked for the target; only once it returns a connected stream is the
//! success reply sent, and the bridge runs until both directions end. Any failure becomes
//! exactly one reply in the client's protocol (see [`FailureKind`]), written before the socket
//! is closed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bridge::{Leg, Side, bridge, log_tunnel_end};
use crate::buffered::Buffered;
use crate::failure::{ConnectError, FailureKind};
use crate::http::{CONNECTED, PAC_PATH, RequestBody, ResponseHeads, failure_page, response};
use crate::peer_uid::{PeerUids, own_uid};
use crate::socks::socks5_reply;
use crate::target::Target;
use crate::wire::http::BodyFraming;
use crate::wire::socks4;

/// Turns a target into a connected byte stream. Implemented by the gateway.
pub trait Connector: Send + Sync + 'static {
    type Stream: Leg + 'static;

    fn connect(
        &self,
        target: Target,
    ) -> impl Future<Output = Result<Self::Stream, ConnectError>> + Send;
}

/// A proxy username and password (SOCKS5 username/password, HTTP Basic `Proxy-Authorization`).
#[derive(Clone)]
pub struct Credentials {
    pub username: Vec<u8>,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &"…").field("password", &"…").finish()
    }
}

impl Credentials {
    /// Whether a client's pair matches, compared in constant time (both parts always).
    pub fn matches(&self, username: &[u8], password: &[u8]) -> bool {
        let user = self.username.ct_eq(username);
        let pass = self.password.ct_eq(password);
        bool::from(user & pass)
    }
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Time a client has to complete its handshake and send its request.
    pub handshake_timeout: Duration,
    /// Client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Required of every client when set (SOCKS4, which has no password, is then refused).
    pub auth: Option<Credentials>,
    /// Serve only programs of the user running the proxy (Linux; see [`crate::peer_uid`]).
    pub same_user: bool,
    /// The name suffix the PAC file sends through the proxy (`p2p`).
    pub suffix: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            auth: None,
            same_user: true,
            suffix: "p2p".to_owned(),
        }
    }
}

/// What the handshakes need to know: the proxy's rules and its own address.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) auth: Option<Credentials>,
    suffix: String,
    addr: SocketAddr,
}

impl Rules {
    /// Whether `host:port` is this proxy itself (a request for its own pages, or a loop).
    pub(crate) fn is_own_address(&self, host: &str, port: u16) -> bool {
        if port != self.addr.port() {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ours = self.addr.ip().to_canonical();
        match host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) => {
                ip == ours || ip.is_unspecified() || (ip.is_loopback() && ours.is_unspecified())
            }
            Err(_) => host.eq_ignore_ascii_case("localhost") && self.addr.ip().is_loopback(),
        }
    }

    /// Whether a direct connection (its local and peer addresses) reached this listener.
    fn is_self(&self, (local, peer): (SocketAddr, SocketAddr)) -> bool {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (local, peer, ours) = (canonical(local), canonical(peer), canonical(self.addr));
        if peer.port() != ours.port() {
            return false;
        }
        peer == ours
            || peer.ip().is_unspecified()
            || (ours.ip().is_unspecified() && (peer.ip().is_loopback() || peer.ip() == local.ip()))
    }

    fn is_own_target(&self, target: &Target) -> bool {
        match target {
            Target::Addr(addr) => self.is_own_address(&addr.ip().to_string(), addr.port()),
            Target::Name { host, port } => self.is_own_address(host, *port),
        }
    }

    /// The PAC file: names under the suffix through this proxy (SOCKS5, else HTTP), the rest
    /// direct. There is no DIRECT fallback for those names: they never leave unproxied.
    pub(crate) fn pac_response(&self, with_body: bool) -> Vec<u8> {
        let proxy = if self.addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), self.addr.port())
        } else {
            self.addr
        };
        let suffix = &self.suffix;
        let body = format!(
            "// peerup: .{suffix} names through the gateway, everything else direct.\n\
             function FindProxyForURL(url, host) {{\n  \
               host = host.toLowerCase();\n  \
               if (host == \"{suffix}\" || dnsDomainIs(host, \".{suffix}\")) {{\n    \
                 return \"SOCKS5 {proxy}; PROXY {proxy}\";\n  \
               }}\n  \
               return \"DIRECT\";\n\
             }}\n"
        );
        response(200, "application/x-ns-proxy-autoconfig", &body, with_body, &[])
    }
}

/// How a client's handshake ended.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// Connect this target, then answer in this protocol.
    Connect(Request),
    /// The client got its answer already (a PAC file, an unsupported command).
    Answered,
    /// The client was refused (and told so); why, for the log.
    Refused(&'static str),
}

/// A target and the protocol that asked for it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) target: Target,
    pub(crate) protocol: Protocol,
}

#[derive(Debug)]
pub(crate) enum Protocol {
    Socks5,
    Socks4,
    /// HTTP `CONNECT`.
    Connect,
    /// A plain HTTP request: the head to forward, and how its body is framed.
    Plain {
        forwarded: Vec<u8>,
        body: BodyFraming,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("the client closed during its handshake")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// The same-user rule: a client on this machine is served only if its socket belongs to the
/// user running us. A client on another machine (a non-loopback listener) is not a local
/// user's, and proxy auth governs it.
#[derive(Debug)]
pub struct SameUser {
    uids: PeerUids,
    own: u32,
    /// When a refusal was last logged at INFO (others go to DEBUG: another user could flood).
    logged: std::sync::Mutex<Option<Instant>>,
}

/// At most one INFO line per this long about refused clients of other users.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl SameUser {
    pub fn new() -> io::Result<Self> {
        let logged = std::sync::Mutex::new(None);
        Ok(SameUser { uids: PeerUids::new(), own: own_uid()?, logged })
    }

    fn log_refusal(&self, peer: SocketAddr, uid: u32) {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY) {
            *logged = Some(now);
            info!(%peer, uid, own = self.own, "refused a client of another user (more within 10 s: debug)");
        } else {
            debug!(%peer, uid, "refused a client of another user");
        }
    }

    /// Whether the client at `peer` (connected to our `local`) belongs to another user; when
    /// that cannot be told for a loopback client, it is treated as another user's.
    pub fn is_foreign(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        match self.uids.lookup(local, peer) {
            Ok(Some(uid)) if uid == self.own => false,
            Ok(Some(uid)) => {
                self.log_refusal(peer, uid);
                true
            }
            // Not a socket of this machine: a remote client, which proxy auth governs.
            Ok(None) if !peer.ip().is_loopback() => false,
            Ok(None) => {
                debug!(%peer, "the client's socket is gone: refused");
                true
            }
            Err(error) => {
                warn!(%peer, %error, "cannot tell which user a client belongs to: refused");
                true
            }
        }
    }
}

/// A bound proxy listener.
#[derive(Debug)]
pub struct ProxyServer {
    listener: TcpListener,
    config: ProxyConfig,
}

impl ProxyServer {
    pub async fn bind(addr: SocketAddr, config: ProxyConfig) -> io::Result<Self> {
        Ok(ProxyServer { listener: TcpListener::bind(addr).await?, config })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept and serve clients until `shutdown` is cancelled. Connection tasks are spawned on
    /// `tasks` so the caller can drain them with a deadline; cancelling `abort` resets every
    /// connection still open.
    pub async fn run<C: Connector>(
        self,
        connector: Arc<C>,
        shutdown: CancellationToken,
        abort: CancellationToken,
        tasks: TaskTracker,
    ) {
        let addr = match self.listener.local_addr() {
            Ok(addr) => addr,
            Err(error) => return warn!(%error, "the proxy listener has no address"),
        };
        let guard = match self.config.same_user.then(SameUser::new).transpose() {
            Ok(guard) => guard.map(Arc::new),
            Err(error) => return warn!(%error, "cannot read our own uid: the proxy serves nobody"),
        };
        let rules = Arc::new(Rules {
            auth: self.config.auth.clone(),
            suffix: self.config.suffix.clone(),
            addr,
        });
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (socket, client) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors or similar: back off instead of spinning.
                        warn!(%error, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let connector = connector.clone();
            let (rules, guard, abort) = (rules.clone(), guard.clone(), abort.clone());
            let timeout = self.config.handshake_timeout;
            let span = info_span!("proxy", %client, target = tracing::field::Empty, peer = tracing::field::Empty);
            tasks.spawn(
                async move {
                    // Interactive traffic (ssh keystrokes) must not wait for Nagle.
                    let _ = socket.set_nodelay(true);
                    let local = socket.local_addr().unwrap_or(addr);
                    let foreign = guard.is_some_and(|g| g.is_foreign(local, client));
                    let served = Served { connector: connector.as_ref(), rules: &rules, timeout };
                    // Past the grace period, even a connection still in its handshake ends.
                    tokio::select! {
                        () = served.serve(socket, foreign, &abort) => {}
                        () = abort.cancelled() => {}
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// What serving one client needs.
struct Served<'a, C> {
    connector: &'a C,
    rules: &'a Rules,
    timeout: Duration,
}

impl<C: Connector> Served<'_, C> {
    async fn serve<S>(&self, socket: S, foreign: bool, abort: &CancellationToken)
    where
        S: Leg + 'static,
    {
        let mut client = Buffered::new(socket);
        let handshake = handshake(&mut client, self.rules, foreign);
        let request = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(Handshake::Connect(request))) => request,
            Ok(Ok(Handshake::Answered)) => return linger_close(client).await,
            Ok(Ok(Handshake::Refused(why))) => {
                debug!(why, "refused");
                return linger_close(client).await;
            }
            Ok(Err(HandshakeError::Closed)) => return,
            Ok(Err(error)) => {
                debug!(%error, "handshake failed");
                return linger_close(client).await;
            }
            Err(_) => {
                debug!(timeout = ?self.timeout, "handshake timed out");
                return;
            }
        };
        let Request { target, protocol } = request;
        // The span carries the target (and, once the connector resolved it, the peer).
        tracing::Span::current().record("target", tracing::field::display(&target));
        let itself =
            || ConnectError::new(FailureKind::NotAllowed, "a request for the proxy itself");
        let connected = if self.rules.is_own_target(&target) {
            Err(itself())
        } else {
            match self.connector.connect(target.clone()).await {
                // Any spelling of our own address (0, 127.1, a local interface's address)
                // shows once connected: a loop, never followed.
                Ok(upstream) if upstream.addrs().is_some_and(|a| self.rules.is_self(a)) => {
                    upstream.abort().await;
                    Err(itself())
                }
                other => other,
            }
        };
        let mut upstream = match connected {
            Ok(upstream) => upstream,
            Err(error) => {
                info!(kind = %error.kind, reason = %error.message, "connect failed");
                let reply = match protocol {
                    Protocol::Socks5 => socks5_reply(error.kind.socks5_reply().as_u8()).to_vec(),
                    Protocol::Socks4 => socks4::reply(false).to_vec(),
                    Protocol::Connect | Protocol::Plain { .. } => failure_page(error.kind, &target),
                };
                let _ = client.write_all(&reply).await;
                return linger_close(client).await;
            }
        };
        let tunnel = upstream.is_tunnel();
        let started = Instant::now();
        let reply = match &protocol {
            Protocol::Socks5 => socks5_reply(0).to_vec(),
            Protocol::Socks4 => socks4::reply(true).to_vec(),
            Protocol::Connect => CONNECTED.to_vec(),
            Protocol::Plain { forwarded, .. } => {
                if upstream.write_all(forwarded).await.is_err() {
                    return upstream.abort().await;
                }
                Vec::new()
            }
        };
        if client.write_all(&reply).await.is_err() {
            return upstream.abort().await;
        }
        debug!("connected");
        let outcome = match protocol {
            Protocol::Plain { body, .. } => {
                let client = RequestBody::new(client, body);
                bridge(client, ResponseHeads::new(upstream), abort).await
            }
            _ => bridge(client, upstream, abort).await,
        };
        if tunnel {
            return log_tunnel_end(&outcome, started, Side::B);
        }
        match outcome {
            Ok(carried) => debug!(sent = carried.a_to_b, received = carried.b_to_a, "closed"),
            Err(aborted) => debug!(
                side = ?aborted.side,
                error = %aborted.error,
                sent = aborted.carried.a_to_b,
                received = aborted.carried.b_to_a,
                "reset"
            ),
        }
    }
}

/// Tell the protocols apart by the first byte: 5 SOCKS5, 4 SOCKS4/4a, a letter HTTP.
async fn handshake<S>(
    client: &mut Buffered<S>,
    rules: &Rules,
    foreign: bool,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if client.unread().is_empty() && client.fill(crate::wire::http::MAX_HEAD).await? == 0 {
        return Err(HandshakeError::Closed);
    }
    match client.unread()[0] {
        0x05 => crate::socks::socks5(client, rules, foreign).await,
        0x04 => crate::socks::socks4(client, rules, foreign).await,
        b'A'..=b'Z' | b'a'..=b'z' => crate::http::http(client, rules, foreign).await,
        other => Err(HandshakeError::Protocol(format!(
            "not SOCKS or HTTP (first byte {other:#04x}; {PAC_PATH} is served over HTTP)"
        ))),
    }
}

/// Close after a reply without losing it: closing a socket that still holds unread client
/// bytes sends a RST, which can destroy the reply in flight. So half-close, then read and
/// discard briefly until the client closes.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S) {
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut budget = 256 * 1024usize;
        while let Ok(n @ 1..) = socket.read(&mut sink).await {
            budget = budget.saturating_sub(n);
            if budget == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
