//! A SOCKS5 client for our own CLI (`peerup connect`), speaking to the local daemon.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::failure::{ConnectError, FailureKind};

/// CONNECT to `host:port` through the SOCKS5 server at `proxy`. A refusal comes back as the
/// [`FailureKind`] its reply code stands for.
pub async fn connect_via(
    proxy: SocketAddr,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let config = fast_socks5::client::Config::default();
    match fast_socks5::client::Socks5Stream::connect(proxy, host.to_owned(), port, config).await {
        Ok(stream) => Ok(stream.get_socket()),
        Err(fast_socks5::SocksError::ReplyError(reply)) => {
            let kind = FailureKind::from_socks5_reply(reply);
            Err(ConnectError::new(kind, format!("{host}:{port}: {kind}")))
        }
        Err(e) => Err(ConnectError::new(
            FailureKind::Unreachable,
            format!("cannot reach the daemon's SOCKS listener at {proxy}: {e}"),
        )),
    }
}
