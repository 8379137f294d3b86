//! `/peerup/tunnel/2.0.0`: what a tunnel stream carries.
//!
//! One stream carries one TCP connection. The opener sends a [`Request`] naming the service
//! (by port or by name); the serving peer answers with a [`Response`] (a status and a reason),
//! and only after [`Status::Ok`] do the connection's bytes flow both ways, in [`frame`]s: data,
//! then an end frame for a clean end of each direction, or a reset frame. A stream that ends
//! without an end frame was cut (yamux and QUIC report a dead connection or a reset stream as a
//! plain EOF), so only the frames can tell a complete transfer from a truncated one.
//! docs/protocol.md has the byte layout and test vectors; the tests check the same vectors.
//!
//! Header decoding never reads past the header, so bytes that follow it in the same read stay
//! with the stream.

pub mod frame;

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The stream protocol name.
pub const PROTOCOL: &str = "/peerup/tunnel/2.0.0";

/// Header version; the first byte of every request and response.
pub const VERSION: u8 = 2;

const KIND_PORT: u8 = 0x01;
const KIND_NAME: u8 = 0x02;
/// Service names are config keys; a DNS label's limit is plenty.
pub const MAX_SERVICE_NAME: usize = 63;
/// Reasons are truncated to this many bytes on the wire.
pub const MAX_REASON: usize = 255;

/// Which service the opener wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Port(u16),
    Name(String),
}

/// The serving peer's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotAuthorized,
    NoSuchService,
    /// The service's local address refused the connection.
    Refused,
    /// The service's local address did not answer in time.
    ServiceTimeout,
    /// The serving peer is at its stream limit.
    Busy,
    BadRequest,
    /// A status this version does not know.
    Unknown(u8),
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0x00,
            Status::NotAuthorized => 0x01,
            Status::NoSuchService => 0x02,
            Status::Refused => 0x03,
            Status::ServiceTimeout => 0x04,
            Status::Busy => 0x05,
            Status::BadRequest => 0x06,
            Status::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Status {
        match code {
            0x00 => Status::Ok,
            0x01 => Status::NotAuthorized,
            0x02 => Status::NoSuchService,
            0x03 => Status::Refused,
            0x04 => Status::ServiceTimeout,
            0x05 => Status::Busy,
            0x06 => Status::BadRequest,
            other => Status::Unknown(other),
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub reason: String,
}

/// A header that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("unsupported header version {0}")]
    Version(u8),
    #[error("unknown request kind {0:#04x}")]
    Kind(u8),
    #[error("bad service name: {0}")]
    Name(&'static str),
    #[error("stream ended inside the header")]
    Truncated,
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for HeaderError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            HeaderError::Truncated
        } else {
            HeaderError::Io(error)
        }
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Port(port) => {
                let [hi, lo] = port.to_be_bytes();
                vec![VERSION, KIND_PORT, hi, lo]
            }
            Request::Name(name) => {
                let mut out = vec![VERSION, KIND_NAME, name.len() as u8];
                out.extend_from_slice(name.as_bytes());
                out
            }
        }
    }

    /// Read exactly one request from `io`.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Request, HeaderError> {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let [version, kind] = head;
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        match kind {
            KIND_PORT => Ok(Request::Port(io.read_u16().await?)),
            KIND_NAME => {
                let len = usize::from(io.read_u8().await?);
                if len == 0 || len > MAX_SERVICE_NAME {
                    return Err(HeaderError::Name("length must be 1 to 63"));
                }
                let mut name = vec![0u8; len];
                io.read_exact(&mut name).await?;
                String::from_utf8(name)
                    .map(Request::Name)
                    .map_err(|_| HeaderError::Name("not UTF-8"))
            }
            other => Err(HeaderError::Kind(other)),
        }
    }
}

impl Response {
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Response { status, reason: reason.into() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut end = self.reason.len().min(MAX_REASON);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &self.reason.as_bytes()[..end];
        let mut out = vec![VERSION, self.status.code(), reason.len() as u8];
        out.extend_from_slice(reason);
        out
    }

    /// Read exactly one response from `io`.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Response, HeaderError> {
        let mut head = [0u8; 3];
        io.read_exact(&mut head).await?;
        let [version, status, len] = head;
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let mut reason = vec![0u8; usize::from(len)];
        io.read_exact(&mut reason).await?;
        Ok(Response {
            status: Status::from_code(status),
            reason: String::from_utf8_lossy(&reason).into_owned(),
        })
    }

    pub async fn write<W: AsyncWrite + Unpin>(&self, io: &mut W) -> std::io::Result<()> {
        io.write_all(&self.encode()).await?;
        io.flush().await
    }

    /// Write a refusal and close our side. Closing (FIN) rather than dropping matters: a
    /// dropped yamux stream is reset, and a reset can overtake the answer.
    pub async fn refuse<W: AsyncWrite + Unpin>(&self, io: &mut W) -> std::io::Result<()> {
        self.write(io).await?;
        io.shutdown().await
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Port(port) => write!(f, "port {port}"),
            Request::Name(name) => write!(f, "service {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vectors of docs/protocol.md.
    #[test]
    fn request_vectors() {
        assert_eq!(Request::Port(22).encode(), [0x02, 0x01, 0x00, 0x16]);
        assert_eq!(Request::Port(8080).encode(), [0x02, 0x01, 0x1f, 0x90]);
        assert_eq!(Request::Name("ssh".into()).encode(), [0x02, 0x02, 0x03, b's', b's', b'h']);
    }

    #[test]
    fn response_vectors() {
        assert_eq!(Response::new(Status::Ok, "").encode(), [0x02, 0x00, 0x00]);
        assert_eq!(
            Response::new(Status::NotAuthorized, "no").encode(),
            [0x02, 0x01, 0x02, b'n', b'o']
        );
        let long = Response::new(Status::Busy, "é".repeat(200)).encode();
        assert_eq!(long.len(), 3 + 254, "truncated on a char boundary");
    }

    #[tokio::test]
    async fn decoding_stops_at_the_end_of_the_header() {
        let mut bytes: &[u8] = &[0x02, 0x01, 0x00, 0x50, b'G', b'E', b'T'];
        assert_eq!(Request::read(&mut bytes).await.unwrap(), Request::Port(80));
        assert_eq!(bytes, b"GET", "payload after the header is left unread");
        let mut bytes: &[u8] = &[0x02, 0x03, 0x01, b'x', 0xff];
        let response = Response::read(&mut bytes).await.unwrap();
        assert_eq!((response.status, response.reason.as_str()), (Status::Refused, "x"));
        assert_eq!(bytes, [0xff]);
    }

    #[tokio::test]
    async fn malformed_headers_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x02],
            &[0x01, 0x01, 0x00, 0x16],
            &[0x02, 0x09],
            &[0x02, 0x01, 0x00],
            &[0x02, 0x02, 0x00],
            &[0x02, 0x02, 0x40],
            &[0x02, 0x02, 0x03, b'a'],
            &[0x02, 0x02, 0x01, 0xff],
        ];
        for case in cases {
            let mut bytes = *case;
            assert!(Request::read(&mut bytes).await.is_err(), "{case:?}");
        }
        let mut bytes: &[u8] = &[0x02, 0x00, 0x05, b'a'];
        assert!(matches!(Response::read(&mut bytes).await, Err(HeaderError::Truncated)));
    }

    #[test]
    fn every_status_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(Status::from_code(code).code(), code);
        }
    }
}
