//! A SOCKS5 client for our own CLI (`peerup connect`, `peerup forward`), speaking to the local
//! daemon's proxy.

use std::net::SocketAddr;

use fast_socks5::client::{Config, Socks5Stream};
use tokio::net::TcpStream;

use crate::failure::{ConnectError, FailureKind};
use crate::server::Credentials;

/// CONNECT to `host:port` through the SOCKS5 server at `proxy`, presenting `credentials` when
/// the proxy requires them. A refusal comes back as the [`FailureKind`] its reply code stands
/// for.
pub async fn connect_via(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    credentials: Option<&Credentials>,
) -> Result<TcpStream, ConnectError> {
    let config = Config::default();
    let host = host.to_owned();
    let connected = match credentials {
        None => Socks5Stream::connect(proxy, host.clone(), port, config).await,
        Some(c) => {
            let user = String::from_utf8_lossy(&c.username).into_owned();
            let password = String::from_utf8_lossy(&c.password).into_owned();
            Socks5Stream::connect_with_password(proxy, host.clone(), port, user, password, config)
                .await
        }
    };
    match connected {
        Ok(stream) => {
            let socket = stream.get_socket();
            let _ = socket.set_nodelay(true);
            Ok(socket)
        }
        Err(fast_socks5::SocksError::ReplyError(reply)) => {
            let kind = FailureKind::from_socks5_reply(reply);
            Err(ConnectError::new(kind, format!("{host}:{port}: {kind}")))
        }
        Err(fast_socks5::SocksError::AuthenticationRejected(_))
        | Err(fast_socks5::SocksError::AuthMethodUnacceptable(_)) => Err(ConnectError::new(
            FailureKind::NotAllowed,
            format!(
                "the proxy at {proxy} refused us: it serves only its own user's programs, or \
                 wants socks.auth credentials this config does not have"
            ),
        )),
        Err(e) => Err(ConnectError::new(
            FailureKind::Unreachable,
            format!("cannot reach the daemon's proxy at {proxy}: {e}"),
        )),
    }
}
