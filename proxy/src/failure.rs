//! Why a connection could not be made, in the terms an app sees.
//!
//! The gateway classifies each of its errors into one [`FailureKind`]; this module is the one
//! place that turns a kind into a SOCKS5 reply code.

use std::fmt;

use fast_socks5::ReplyError;

/// The user-visible reason a CONNECT failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The name resolves in no tier.
    NoSuchName,
    /// The peer is offline or there is no path to it.
    Unreachable,
    /// The name's registry could not be asked now (no relay of its network answered).
    NameServiceUnreachable,
    /// A path existed but the peer did not answer in time.
    TimedOut,
    /// Not authorized: the service's list, the peer's handshake gate, a pinned name answered
    /// with another key, or a direct target while direct connections are off.
    NotAllowed,
    /// The peer has no service on that port.
    NoSuchService,
    /// The service's local address (or a direct target) refused the connection.
    Refused,
    /// The service's local address did not accept in time (the serving peer gave up first).
    ServiceTimeout,
    /// The serving peer is at its stream limit; try again later.
    Busy,
    /// The command is not supported (BIND, UDP ASSOCIATE).
    CommandNotSupported,
    /// Anything else: a protocol violation or an internal error.
    General,
}

impl FailureKind {
    /// The SOCKS5 reply (RFC 1928 §6) for this failure: the one place this is decided.
    pub fn socks5_reply(self) -> ReplyError {
        match self {
            FailureKind::NoSuchName
            | FailureKind::Unreachable
            | FailureKind::NameServiceUnreachable => ReplyError::HostUnreachable,
            FailureKind::TimedOut => ReplyError::ConnectionTimeout,
            FailureKind::NotAllowed => ReplyError::ConnectionNotAllowed,
            FailureKind::NoSuchService | FailureKind::Refused | FailureKind::ServiceTimeout => {
                ReplyError::ConnectionRefused
            }
            FailureKind::CommandNotSupported => ReplyError::CommandNotSupported,
            FailureKind::Busy | FailureKind::General => ReplyError::GeneralFailure,
        }
    }

    /// The SOCKS4/4a reply code: 0x5A granted, 0x5B for every failure (SOCKS4 has no other).
    pub fn socks4_reply(self) -> u8 {
        0x5B
    }

    /// The HTTP proxy status for this failure: the one place this is decided.
    pub fn http_status(self) -> u16 {
        match self {
            FailureKind::NotAllowed => 403,
            FailureKind::TimedOut | FailureKind::ServiceTimeout => 504,
            FailureKind::Busy => 503,
            FailureKind::CommandNotSupported => 501,
            FailureKind::NoSuchName
            | FailureKind::Unreachable
            | FailureKind::NameServiceUnreachable
            | FailureKind::NoSuchService
            | FailureKind::Refused
            | FailureKind::General => 502,
        }
    }

    /// The kind a SOCKS5 client reads from a reply (lossy: 0x04 is both "no such name" and
    /// "unreachable", and reads as the latter).
    pub fn from_socks5_reply(reply: ReplyError) -> FailureKind {
        match reply {
            ReplyError::HostUnreachable | ReplyError::NetworkUnreachable => {
                FailureKind::Unreachable
            }
            ReplyError::ConnectionTimeout | ReplyError::TtlExpired => FailureKind::TimedOut,
            ReplyError::ConnectionNotAllowed => FailureKind::NotAllowed,
            ReplyError::ConnectionRefused => FailureKind::Refused,
            ReplyError::CommandNotSupported | ReplyError::AddressTypeNotSupported => {
                FailureKind::CommandNotSupported
            }
            ReplyError::Succeeded | ReplyError::GeneralFailure => FailureKind::General,
        }
    }

    /// A short phrase for logs and error lines.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NoSuchName => "no such name",
            FailureKind::Unreachable => "peer unreachable",
            FailureKind::NameServiceUnreachable => "name service unreachable",
            FailureKind::TimedOut => "peer did not answer in time",
            FailureKind::NotAllowed => "not authorized",
            FailureKind::NoSuchService => "no such service",
            FailureKind::Refused => "connection refused",
            FailureKind::ServiceTimeout => "the service did not accept in time",
            FailureKind::Busy => "peer is busy",
            FailureKind::CommandNotSupported => "command not supported",
            FailureKind::General => "general failure",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed connect: its kind and a message for the operator (never sent to the app).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ConnectError {
    pub kind: FailureKind,
    pub message: String,
}

impl ConnectError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        ConnectError { kind, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureKind::*;

    #[test]
    fn reply_codes_follow_the_product_table() {
        assert_eq!(NoSuchName.socks5_reply().as_u8(), 0x04);
        assert_eq!(Unreachable.socks5_reply().as_u8(), 0x04);
        assert_eq!(TimedOut.socks5_reply().as_u8(), 0x06);
        assert_eq!(NotAllowed.socks5_reply().as_u8(), 0x02);
        assert_eq!(NoSuchService.socks5_reply().as_u8(), 0x05);
        assert_eq!(Refused.socks5_reply().as_u8(), 0x05);
        assert_eq!(ServiceTimeout.socks5_reply().as_u8(), 0x05);
        assert_eq!(CommandNotSupported.socks5_reply().as_u8(), 0x07);
        assert_eq!(General.socks5_reply().as_u8(), 0x01);
        assert_eq!(Busy.socks5_reply().as_u8(), 0x01);
        assert_eq!(NameServiceUnreachable.socks5_reply().as_u8(), 0x04);
    }

    #[test]
    fn http_statuses_follow_the_product_table() {
        for (kind, status) in [
            (NoSuchName, 502),
            (Unreachable, 502),
            (TimedOut, 504),
            (NotAllowed, 403),
            (NoSuchService, 502),
            (Refused, 502),
            (NameServiceUnreachable, 502),
            (Busy, 503),
            (ServiceTimeout, 504),
        ] {
            assert_eq!(kind.http_status(), status, "{kind}");
            assert_eq!(kind.socks4_reply(), 0x5B, "{kind}");
        }
    }
}
