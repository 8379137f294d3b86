//! Opening a TCP connection with a deadline, the one way every outgoing socket is made (a
//! direct SOCKS target, a service's local address).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a TCP connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Other(io::Error),
}

/// Connect to `host:port` within `timeout`, with Nagle off (interactive traffic, such as ssh
/// keystrokes, must not wait).
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(socket)) => {
            let _ = socket.set_nodelay(true);
            Ok(socket)
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(DialError::Refused),
        Ok(Err(e)) => Err(DialError::Other(e)),
        Err(_) => Err(DialError::TimedOut(timeout)),
    }
}
