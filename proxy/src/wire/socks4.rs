//! SOCKS4 and SOCKS4a requests (client to server) and the server's reply.
//!
//! A request is `VN=4, CD, DSTPORT (2 bytes, big-endian), DSTIP (4 bytes), USERID, 0x00`. When
//! DSTIP is `0.0.0.x` with `x != 0` (SOCKS4a) a host name and a terminating `0x00` follow; a
//! DSTIP of `0.0.0.0` is a plain IPv4 destination.
//!
//! Limits: USERID and host name are at most [`MAX_FIELD`] bytes (without the NUL). The user ID is
//! returned as raw bytes; a host name may only contain `A-Z a-z 0-9 . - _` and is returned
//! verbatim (case preserved). Errors are reported as soon as the bytes seen so far are invalid,
//! without waiting for the rest of the request.

use std::net::Ipv4Addr;

use super::Parse;

/// The longest USERID and the longest host name, not counting the terminating NUL.
pub const MAX_FIELD: usize = 255;

const VERSION: u8 = 0x04;
const FIXED_LEN: usize = 8;

/// What the client asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// CD = 1: open a TCP connection to the destination.
    Connect,
    /// CD = 2: accept one inbound connection from the destination.
    Bind,
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// SOCKS4: an IPv4 address (including `0.0.0.0`).
    Ip(Ipv4Addr),
    /// SOCKS4a: a host name for the server to resolve, verbatim.
    Name(String),
}

/// A parsed SOCKS4 or SOCKS4a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CONNECT or BIND.
    pub command: Command,
    /// The destination port.
    pub port: u16,
    /// The destination address or name.
    pub destination: Destination,
    /// The USERID field, without its NUL.
    pub user: Vec<u8>,
}

/// Why bytes are not a SOCKS4 request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks4Error {
    /// The first byte is not 4.
    #[error("not a SOCKS4 request (version byte is not 4)")]
    NotSocks4,
    /// The command byte is neither 1 (CONNECT) nor 2 (BIND).
    #[error("unknown SOCKS4 command {0:#04x}")]
    UnknownCommand(u8),
    /// The USERID or host name is longer than [`MAX_FIELD`] bytes.
    #[error("SOCKS4 user ID or host name longer than {MAX_FIELD} bytes")]
    FieldTooLong,
    /// A SOCKS4a request with an empty host name.
    #[error("empty SOCKS4a host name")]
    EmptyName,
    /// A SOCKS4a host name with a byte outside `A-Z a-z 0-9 . - _`.
    #[error("SOCKS4a host name contains a byte that is not a host name character")]
    NameNotText,
}

/// Parses a SOCKS4 or SOCKS4a request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, Socks4Error> {
    match buf.first() {
        None => return Ok(Parse::NeedMore),
        Some(&VERSION) => {}
        Some(_) => return Err(Socks4Error::NotSocks4),
    }
    let command = match buf.get(1) {
        None => return Ok(Parse::NeedMore),
        Some(1) => Command::Connect,
        Some(2) => Command::Bind,
        Some(&other) => return Err(Socks4Error::UnknownCommand(other)),
    };
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        return Ok(Parse::NeedMore);
    };
    let port = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);

    let Some(user_len) = field(&buf[FIXED_LEN..], |_| true)? else {
        return Ok(Parse::NeedMore);
    };
    let user = buf[FIXED_LEN..FIXED_LEN + user_len].to_vec();
    let after_user = FIXED_LEN + user_len + 1;

    let [0, 0, 0, x] = ip.octets() else {
        return Ok(done(command, port, Destination::Ip(ip), user, after_user));
    };
    if x == 0 {
        return Ok(done(command, port, Destination::Ip(ip), user, after_user));
    }

    let rest = &buf[after_user..];
    if rest.first() == Some(&0) {
        return Err(Socks4Error::EmptyName);
    }
    let Some(name_len) = field(rest, is_name_byte)? else {
        return Ok(Parse::NeedMore);
    };
    let name: String = rest[..name_len].iter().map(|&b| char::from(b)).collect();
    Ok(done(command, port, Destination::Name(name), user, after_user + name_len + 1))
}

/// The 8-byte reply: 0x00, 0x5A (granted) or 0x5B (rejected or failed), then DSTPORT and DSTIP
/// (zeros).
pub fn reply(granted: bool) -> [u8; 8] {
    [0x00, if granted { 0x5A } else { 0x5B }, 0, 0, 0, 0, 0, 0]
}

fn done(
    command: Command,
    port: u16,
    destination: Destination,
    user: Vec<u8>,
    consumed: usize,
) -> Parse<Request> {
    Parse::Done { value: Request { command, port, destination, user }, consumed }
}

/// The length of the NUL-terminated field at the start of `buf`, `None` if its NUL has not
/// arrived yet, or an error as soon as a byte fails `allowed` or the field outgrows [`MAX_FIELD`].
fn field(buf: &[u8], allowed: fn(u8) -> bool) -> Result<Option<usize>, Socks4Error> {
    for (i, &b) in buf.iter().enumerate() {
        if b == 0 {
            return Ok(Some(i));
        }
        if i == MAX_FIELD {
            return Err(Socks4Error::FieldTooLong);
        }
        if !allowed(b) {
            return Err(Socks4Error::NameNotText);
        }
    }
    Ok(None)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cd: u8, port: u16, ip: [u8; 4], user: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut v = vec![4, cd];
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip);
        v.extend_from_slice(user);
        v.push(0);
        if let Some(name) = name {
            v.extend_from_slice(name);
            v.push(0);
        }
        v
    }

    /// Every proper prefix is NeedMore, the whole is Done with `consumed == len`, and trailing
    /// bytes are left alone.
    fn check_splits(buf: &[u8], expected: &Request) {
        for k in 0..buf.len() {
            assert_eq!(parse_request(&buf[..k]), Ok(Parse::NeedMore), "prefix of {k} bytes");
        }
        let whole = Parse::Done { value: expected.clone(), consumed: buf.len() };
        assert_eq!(parse_request(buf), Ok(whole.clone()));
        let mut early = buf.to_vec();
        early.extend_from_slice(b"GET / HTTP/1.1\r\n\0\0");
        assert_eq!(parse_request(&early), Ok(whole));
    }

    /// Every prefix long enough to contain the fault gives `err`; the shorter ones NeedMore.
    fn check_error(buf: &[u8], fault_at: usize, err: Socks4Error) {
        for k in 0..=buf.len() {
            let got = parse_request(&buf[..k]);
            if k > fault_at {
                assert_eq!(got, Err(err.clone()), "prefix of {k} bytes");
            } else {
                assert_eq!(got, Ok(Parse::NeedMore), "prefix of {k} bytes");
            }
        }
    }

    #[test]
    fn connect_to_ip() {
        let buf = request(1, 443, [192, 0, 2, 7], b"alice", None);
        let expected = Request {
            command: Command::Connect,
            port: 443,
            destination: Destination::Ip(Ipv4Addr::new(192, 0, 2, 7)),
            user: b"alice".to_vec(),
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn connect_to_ip_with_empty_user() {
        let buf = request(1, 80, [10, 0, 0, 1], b"", None);
        let expected = Request {
            command: Command::Connect,
            port: 80,
            destination: Destination::Ip(Ipv4Addr::new(10, 0, 0, 1)),
            user: Vec::new(),
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn socks4a_name_verbatim() {
        let buf = request(1, 8080, [0, 0, 0, 1], b"bob", Some(b"QmPeer_ID-9.Example.peer"));
        let expected = Request {
            command: Command::Connect,
            port: 8080,
            destination: Destination::Name("QmPeer_ID-9.Example.peer".to_owned()),
            user: b"bob".to_vec(),
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn zero_address_is_plain_ip() {
        let buf = request(1, 22, [0, 0, 0, 0], b"u", None);
        let expected = Request {
            command: Command::Connect,
            port: 22,
            destination: Destination::Ip(Ipv4Addr::UNSPECIFIED),
            user: b"u".to_vec(),
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn bind() {
        let buf = request(2, 21, [198, 51, 100, 1], b"", None);
        let expected = Request {
            command: Command::Bind,
            port: 21,
            destination: Destination::Ip(Ipv4Addr::new(198, 51, 100, 1)),
            user: Vec::new(),
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn longest_fields_accepted() {
        let user = vec![0xFF; MAX_FIELD];
        let name = vec![b'a'; MAX_FIELD];
        let buf = request(1, 1, [0, 0, 0, 9], &user, Some(&name));
        let expected = Request {
            command: Command::Connect,
            port: 1,
            destination: Destination::Name("a".repeat(MAX_FIELD)),
            user,
        };
        check_splits(&buf, &expected);
    }

    #[test]
    fn not_socks4() {
        check_error(&[5, 1, 0], 0, Socks4Error::NotSocks4);
        check_error(b"GET / HTTP/1.1\r\n\r\n", 0, Socks4Error::NotSocks4);
    }

    #[test]
    fn unknown_command() {
        let buf = request(3, 80, [1, 2, 3, 4], b"", None);
        check_error(&buf, 1, Socks4Error::UnknownCommand(3));
        check_error(&request(0, 80, [1, 2, 3, 4], b"", None), 1, Socks4Error::UnknownCommand(0));
    }

    #[test]
    fn user_too_long() {
        let buf = request(1, 80, [1, 2, 3, 4], &[b'u'; MAX_FIELD + 1], None);
        check_error(&buf, FIXED_LEN + MAX_FIELD, Socks4Error::FieldTooLong);
    }

    #[test]
    fn name_too_long() {
        let user = b"me";
        let buf = request(1, 80, [0, 0, 0, 1], user, Some(&[b'n'; MAX_FIELD + 1]));
        check_error(&buf, FIXED_LEN + user.len() + 1 + MAX_FIELD, Socks4Error::FieldTooLong);
    }

    #[test]
    fn empty_name() {
        let buf = request(1, 80, [0, 0, 0, 1], b"me", Some(b""));
        check_error(&buf, FIXED_LEN + 3, Socks4Error::EmptyName);
    }

    #[test]
    fn name_with_space_or_control() {
        for bad in [b' ', b'\t', 0x01, 0x7F, b'/', b':', 0xC3] {
            let mut name = b"good".to_vec();
            name.push(bad);
            name.extend_from_slice(b"tail");
            let buf = request(1, 80, [0, 0, 0, 1], b"", Some(&name));
            check_error(&buf, FIXED_LEN + 1 + 4, Socks4Error::NameNotText);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(true), [0, 0x5A, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(false), [0, 0x5B, 0, 0, 0, 0, 0, 0]);
    }
}
