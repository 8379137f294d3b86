//! The SOCKS5 server: bind, then run under a cancellation token.
//!
//! Each accepted connection gets the handshake timeout to finish the SOCKS5 negotiation and its
//! CONNECT request. Then the [`Connector`] is asked for the target; only once it returns a
//! connected stream is the success reply sent, and the bridge runs until both directions end.
//! Any failure becomes exactly one SOCKS5 reply (see [`FailureKind::socks5_reply`]), written
//! before the socket is closed.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fast_socks5::Socks5Command;
use fast_socks5::server::{Socks5ServerProtocol, SocksServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bridge::{Leg, Side, bridge, log_tunnel_end};
use crate::failure::{ConnectError, FailureKind};
use crate::target::Target;

/// Turns a target into a connected byte stream. Implemented by the gateway.
pub trait Connector: Send + Sync + 'static {
    type Stream: Leg + 'static;

    fn connect(
        &self,
        target: Target,
    ) -> impl Future<Output = Result<Self::Stream, ConnectError>> + Send;
}

/// Limits of the SOCKS front end.
#[derive(Debug, Clone)]
pub struct SocksConfig {
    /// Time a client has to complete the SOCKS5 handshake and send its request.
    pub handshake_timeout: Duration,
    /// Client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for SocksConfig {
    fn default() -> Self {
        SocksConfig { handshake_timeout: Duration::from_secs(10), max_connections: 4096 }
    }
}

/// A bound SOCKS5 listener.
#[derive(Debug)]
pub struct SocksServer {
    listener: TcpListener,
    config: SocksConfig,
}

impl SocksServer {
    pub async fn bind(addr: SocketAddr, config: SocksConfig) -> io::Result<Self> {
        Ok(SocksServer { listener: TcpListener::bind(addr).await?, config })
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
                        warn!(%error, "socks accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let connector = connector.clone();
            let timeout = self.config.handshake_timeout;
            let span = info_span!("socks", %client, target = tracing::field::Empty, peer = tracing::field::Empty);
            let abort = abort.clone();
            tasks.spawn(
                async move {
                    // Past the grace period, even a connection still in its handshake ends.
                    tokio::select! {
                        () = serve(socket, connector.as_ref(), timeout, &abort) => {}
                        () = abort.cancelled() => {}
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

type CommandRead<'a> =
    Socks5ServerProtocol<&'a mut TcpStream, fast_socks5::server::states::CommandRead>;

async fn serve<C: Connector>(
    mut socket: TcpStream,
    connector: &C,
    timeout: Duration,
    abort: &CancellationToken,
) {
    // Interactive traffic (ssh keystrokes) must not wait for Nagle.
    let _ = socket.set_nodelay(true);
    let (proto, target) = match tokio::time::timeout(timeout, handshake(&mut socket)).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return linger_close(socket).await,
        Ok(Err(error)) => {
            debug!(%error, "socks handshake failed");
            return linger_close(socket).await;
        }
        Err(_) => {
            debug!(?timeout, "socks handshake timed out");
            return;
        }
    };
    // The span carries the target (and, once the connector resolved it, the peer) to every line.
    tracing::Span::current().record("target", tracing::field::display(&target));
    match connector.connect(target).await {
        Err(error) => {
            info!(kind = %error.kind, reason = %error.message, "connect failed");
            let _ = proto.reply_error(&error.kind.socks5_reply()).await;
            linger_close(socket).await;
        }
        Ok(upstream) => {
            let unspecified = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            if proto.reply_success(unspecified).await.is_err() {
                return upstream.abort().await;
            }
            let tunnel = upstream.is_tunnel();
            debug!("connected");
            let started = Instant::now();
            let outcome = bridge(socket, upstream, abort).await;
            if tunnel {
                log_tunnel_end(&outcome, started, Side::B);
                return;
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
}

/// Negotiate "no authentication" and read the request. `None` means the request was answered
/// already (an unsupported command).
async fn handshake(
    socket: &mut TcpStream,
) -> Result<Option<(CommandRead<'_>, Target)>, SocksServerError> {
    let proto = Socks5ServerProtocol::accept_no_auth(socket).await?;
    let (proto, command, target) = proto.read_command().await?;
    match command {
        Socks5Command::TCPConnect => Ok(Some((proto, target.into()))),
        Socks5Command::TCPBind | Socks5Command::UDPAssociate => {
            debug!(?command, "unsupported command");
            proto.reply_error(&FailureKind::CommandNotSupported.socks5_reply()).await?;
            Ok(None)
        }
    }
}

/// Close after a failure reply without losing it: closing a socket that still holds unread
/// client bytes sends a RST, which can destroy the reply in flight. So half-close, then read
/// and discard briefly until the client closes.
async fn linger_close(mut socket: TcpStream) {
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
