//! The SOCKS handshakes: SOCKS5 through fast-socks5, SOCKS4 and SOCKS4a through our parser.
//!
//! Each reads exactly the bytes of its messages (anything after stays buffered for the bridge)
//! and ends in a [`Handshake`]: a target to connect, or a client already answered.

use std::net::SocketAddr;

use fast_socks5::Socks5Command;
use fast_socks5::server::{
    NoAuthentication, PasswordAuthentication, Socks5ServerProtocol, SocksServerError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::buffered::Buffered;
use crate::failure::FailureKind;
use crate::server::{Handshake, HandshakeError, Protocol, Request, Rules};
use crate::target::Target;
use crate::wire::socks4;

/// The longest SOCKS4a request: the fixed part and two NUL-terminated fields.
const SOCKS4_MAX: usize = 8 + 2 * (socks4::MAX_FIELD + 1);

/// The SOCKS5 reply with `code` (RFC 1928 §6); the bound address is not meaningful here.
pub(crate) fn socks5_reply(code: u8) -> [u8; 10] {
    [0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
}

impl From<SocksServerError> for HandshakeError {
    fn from(e: SocksServerError) -> Self {
        HandshakeError::Protocol(e.to_string())
    }
}

/// SOCKS5: method negotiation (none, or username/password when configured), then the request.
pub(crate) async fn socks5<S>(
    client: &mut Buffered<S>,
    rules: &Rules,
    foreign: bool,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Socks5ServerProtocol::start(&mut *client);
    let authenticated = if foreign {
        // No method is acceptable to a client of another user: the negotiation says so.
        let none: &[NoAuthentication] = &[];
        let _ = start.negotiate_auth(none).await;
        return Ok(Handshake::Refused("a client of another user"));
    } else if let Some(credentials) = &rules.auth {
        let started = start.negotiate_auth(&[PasswordAuthentication]).await?;
        let (user, password, received) = started.read_username_password().await?;
        if !credentials.matches(user.as_bytes(), password.as_bytes()) {
            received.reject().await?;
            return Ok(Handshake::Refused("wrong proxy username or password"));
        }
        Socks5ServerProtocol::finish_auth(received.accept().await?)
    } else {
        Socks5ServerProtocol::finish_auth(start.negotiate_auth(&[NoAuthentication]).await?)
    };
    let (_, command, target) = authenticated.read_command().await?;
    match command {
        Socks5Command::TCPConnect => {
            Ok(Handshake::Connect(Request { target: target.into(), protocol: Protocol::Socks5 }))
        }
        Socks5Command::TCPBind | Socks5Command::UDPAssociate => {
            debug!(?command, "unsupported command");
            let code = FailureKind::CommandNotSupported.socks5_reply().as_u8();
            client.write_all(&socks5_reply(code)).await?;
            Ok(Handshake::Answered)
        }
    }
}

/// SOCKS4 and SOCKS4a: one request, CONNECT only. SOCKS4 carries no password, so a proxy that
/// requires one refuses it.
pub(crate) async fn socks4<S>(
    client: &mut Buffered<S>,
    rules: &Rules,
    foreign: bool,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = match client.read_message(SOCKS4_MAX, socks4::parse_request).await? {
        None => return Err(HandshakeError::Closed),
        Some(Ok(request)) => request,
        Some(Err(e)) => return Err(HandshakeError::Protocol(e.to_string())),
    };
    let refusal = if foreign {
        Some("a client of another user")
    } else if rules.auth.is_some() {
        Some("SOCKS4 has no password and this proxy requires one")
    } else if request.command != socks4::Command::Connect {
        Some("SOCKS4 BIND is not supported")
    } else {
        None
    };
    if let Some(why) = refusal {
        client.write_all(&socks4::reply(false)).await?;
        return Ok(Handshake::Refused(why));
    }
    let target = match request.destination {
        socks4::Destination::Ip(ip) => Target::Addr(SocketAddr::from((ip, request.port))),
        socks4::Destination::Name(host) => Target::name(host, request.port),
    };
    Ok(Handshake::Connect(Request { target, protocol: Protocol::Socks4 }))
}
