//! What a client asked to reach.

use std::fmt;
use std::net::SocketAddr;

/// The destination of a CONNECT, as the client sent it.
///
/// Host names are kept verbatim (case included): base58 peer IDs are case-sensitive and only
/// survive where the name is passed through untouched, as a SOCKS5 hostname is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name { host: String, port: u16 },
    Addr(SocketAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name { host, port } => write!(f, "{host}:{port}"),
            Target::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

impl From<fast_socks5::util::target_addr::TargetAddr> for Target {
    fn from(t: fast_socks5::util::target_addr::TargetAddr) -> Self {
        use fast_socks5::util::target_addr::TargetAddr;
        match t {
            TargetAddr::Ip(addr) => Target::Addr(addr),
            TargetAddr::Domain(host, port) => Target::Name { host, port },
        }
    }
}

impl Target {
    /// A host and port as a client wrote them: an IP literal is an address, anything else a
    /// name (kept verbatim).
    pub fn name(host: String, port: u16) -> Target {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name { host, port },
        }
    }
}
