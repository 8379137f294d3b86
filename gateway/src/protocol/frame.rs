//! Frames: how a tunnel's bytes and its end travel after the OK response.
//!
//! Every frame starts with a 4-byte header: a type byte, then a 24-bit big-endian argument.
//!
//! | type | name | argument | followed by |
//! |---|---|---|---|
//! | `0x00` | DATA | payload length, 1 to [`MAX_DATA`] | that many bytes |
//! | `0x01` | END | 0 | nothing: this direction ended cleanly (a FIN) |
//! | `0x02` | RESET | a [`Reason`] code | nothing: the tunnel ended abnormally |
//! | `0x03` | NEXT | 0 | nothing: (serving side, after a tunnel ended cleanly both ways) the
//! stream is free for the opener's next request |
//!
//! A direction's clean end is an END frame; the stream itself is closed only once both
//! directions ended. EOF on the stream before an END frame, or while our own direction is still
//! open, means the tunnel was cut and is treated like a RESET. Decoding is pure (no I/O).

use std::fmt;

/// Bytes in a frame header.
pub const HEADER: usize = 4;
/// The largest DATA payload a reader accepts.
pub const MAX_DATA: usize = 1 << 20;
/// The largest DATA payload we write: one bridge buffer, so one read is one frame.
pub const WRITE_DATA: usize = 256 * 1024;

const DATA: u8 = 0x00;
const END: u8 = 0x01;
const RESET: u8 = 0x02;
const NEXT: u8 = 0x03;

/// Why a tunnel was reset, carried in a RESET frame for the far side's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The app's or the service's socket failed (it was reset, or a write failed).
    SocketFailed,
    /// The peer's access to the service was revoked or expired.
    Revoked,
    /// The path under the tunnel was found dead.
    PathLost,
    /// The node shut down before the tunnel finished.
    Shutdown,
    /// The far side broke the protocol.
    Protocol,
    /// A code this version does not know.
    Other(u32),
}

impl Reason {
    pub fn code(self) -> u32 {
        match self {
            Reason::SocketFailed => 1,
            Reason::Revoked => 2,
            Reason::PathLost => 3,
            Reason::Shutdown => 4,
            Reason::Protocol => 5,
            Reason::Other(code) => code & 0x00ff_ffff,
        }
    }

    pub fn from_code(code: u32) -> Reason {
        match code {
            1 => Reason::SocketFailed,
            2 => Reason::Revoked,
            3 => Reason::PathLost,
            4 => Reason::Shutdown,
            5 => Reason::Protocol,
            other => Reason::Other(other),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SocketFailed => f.write_str("a socket failed"),
            Reason::Revoked => f.write_str("access revoked"),
            Reason::PathLost => f.write_str("path lost"),
            Reason::Shutdown => f.write_str("node shutting down"),
            Reason::Protocol => f.write_str("protocol error"),
            Reason::Other(code) => write!(f, "reason {code}"),
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// This many payload bytes follow.
    Data(usize),
    End,
    Reset(Reason),
    /// The serving side finished the tunnel: the stream may carry the opener's next request.
    Next,
}

/// A header that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type {0:#04x}")]
    Type(u8),
    #[error("DATA frame of {0} bytes (1 to {MAX_DATA} allowed)")]
    Length(usize),
    #[error("{0} frame with a non-zero argument")]
    Argument(&'static str),
}

impl Header {
    pub fn encode(self) -> [u8; HEADER] {
        let (kind, arg) = match self {
            Header::Data(len) => (DATA, len as u32),
            Header::End => (END, 0),
            Header::Next => (NEXT, 0),
            Header::Reset(reason) => (RESET, reason.code()),
        };
        let [_, a, b, c] = arg.to_be_bytes();
        [kind, a, b, c]
    }

    pub fn decode(bytes: [u8; HEADER]) -> Result<Header, FrameError> {
        let [kind, a, b, c] = bytes;
        let arg = u32::from_be_bytes([0, a, b, c]);
        match kind {
            DATA => {
                let len = arg as usize;
                if len == 0 || len > MAX_DATA {
                    return Err(FrameError::Length(len));
                }
                Ok(Header::Data(len))
            }
            END if arg == 0 => Ok(Header::End),
            END => Err(FrameError::Argument("END")),
            NEXT if arg == 0 => Ok(Header::Next),
            NEXT => Err(FrameError::Argument("NEXT")),
            RESET => Ok(Header::Reset(Reason::from_code(arg))),
            other => Err(FrameError::Type(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vectors of docs/protocol.md.
    #[test]
    fn header_vectors() {
        assert_eq!(Header::Data(5).encode(), [0x00, 0x00, 0x00, 0x05]);
        assert_eq!(Header::Data(65536).encode(), [0x00, 0x01, 0x00, 0x00]);
        assert_eq!(Header::End.encode(), [0x01, 0x00, 0x00, 0x00]);
        assert_eq!(Header::Reset(Reason::Revoked).encode(), [0x02, 0x00, 0x00, 0x02]);
        assert_eq!(Header::Reset(Reason::PathLost).encode(), [0x02, 0x00, 0x00, 0x03]);
        assert_eq!(Header::Next.encode(), [0x03, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn every_header_round_trips_and_bad_ones_are_errors() {
        for header in [
            Header::Data(1),
            Header::Data(MAX_DATA),
            Header::End,
            Header::Reset(Reason::SocketFailed),
            Header::Reset(Reason::Other(0xabcdef)),
            Header::Next,
        ] {
            assert_eq!(Header::decode(header.encode()), Ok(header));
        }
        assert_eq!(Header::decode([0x00, 0, 0, 0]), Err(FrameError::Length(0)));
        assert_eq!(Header::decode([0x00, 0x10, 0, 1]), Err(FrameError::Length(MAX_DATA + 1)));
        assert_eq!(Header::decode([0x01, 0, 0, 1]), Err(FrameError::Argument("END")));
        assert_eq!(Header::decode([0x03, 0, 0, 1]), Err(FrameError::Argument("NEXT")));
        for kind in 4..=255u8 {
            assert_eq!(Header::decode([kind, 0, 0, 0]), Err(FrameError::Type(kind)));
        }
    }
}
