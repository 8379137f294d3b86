//! HTTP/1.x proxy request heads, response heads, and request body framing.
//!
//! `httparse` tokenizes the start line and header fields; this module adds what a forward proxy
//! needs on top: [`Parse::NeedMore`] for a partial head, size limits ([`MAX_HEAD`],
//! [`MAX_HEADERS`]), the request target split into what to dial, the rewritten heads to forward
//! ([`RequestHead::forwarded`], [`ResponseHead::closing`]), the request body framing
//! ([`RequestHead::body`]) and the end of a chunked body ([`ChunkedScanner`]).
//!
//! Limits and choices:
//! - Only HTTP/1.0 and HTTP/1.1. Lines may end in a bare LF where `httparse` accepts one (the
//!   heads this module writes always use CRLF); obsolete line folding is rejected.
//! - Request targets: authority form for CONNECT only; absolute form with the `http` scheme only
//!   (no userinfo; the fragment is dropped); origin form, a request to the proxy itself. The
//!   asterisk form is rejected.
//! - Host names are returned verbatim (case preserved: some hosts are case-sensitive base58 IDs).
//!   A host is either a bracketed IPv6 literal without zone, or RFC 3986 reg-name characters
//!   (`A-Z a-z 0-9 - . _ ~ % ! $ & ' ( ) * + , ; =`), which leaves out control characters,
//!   spaces and non-ASCII bytes.
//! - Both forwarded heads end in `Connection: close`: one request per connection to the origin.
//!   The body framing headers (Content-Length, Transfer-Encoding) are always kept, even when
//!   Connection lists them, so the peer frames the body exactly as [`RequestHead::body`] did.

use std::net::Ipv6Addr;

use super::Parse;

/// A head longer than this without its end is an error ([`HttpError::HeadTooLarge`]).
pub const MAX_HEAD: usize = 16 * 1024;
/// More header fields than this is an error ([`HttpError::TooManyHeaders`]).
pub const MAX_HEADERS: usize = 100;

const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILER: usize = 16 * 1024;

/// Request headers a proxy never forwards (besides those listed in Connection).
const REQUEST_HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];
/// Response headers dropped from the head sent back to the client (besides those listed in
/// Connection).
const RESPONSE_HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection"];
/// Headers kept even when Connection lists them: dropping them would change the body framing.
const FRAMING: &[&str] = &["content-length", "transfer-encoding"];

/// What a request asks the proxy to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `CONNECT host:port` (authority form). IPv6 literals are written `[::1]:443`; host kept
    /// without brackets.
    Authority {
        /// The host, verbatim.
        host: String,
        /// The port, 1..=65535.
        port: u16,
    },
    /// `GET http://host[:port]/path?query` (absolute form; only the `http` scheme,
    /// case-insensitive; port defaults to 80; path defaults to "/"; userinfo `user@` in the URI is
    /// an error; a fragment is dropped).
    Absolute {
        /// The host, verbatim; an IPv6 literal without brackets.
        host: String,
        /// The port, 80 when the URI has none.
        port: u16,
        /// Path and query, starting with `/`.
        path: String,
    },
    /// `GET /path` (origin form): a request to the proxy itself (e.g. `/proxy.pac`).
    Origin {
        /// Path and query as sent, without a fragment.
        path: String,
    },
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, case-sensitive as sent.
    pub method: String,
    /// What the request asks to reach.
    pub target: RequestTarget,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1
    pub version: u8,
    /// Names as sent (compare case-insensitively), values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1
    pub version: u8,
    /// The three-digit status code.
    pub status: u16,
    /// The reason phrase; empty when absent or not plain ASCII.
    pub reason: String,
    /// Names as sent (compare case-insensitively), values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// A chunked body; find its end with [`ChunkedScanner`].
    Chunked,
}

/// Why bytes are not an acceptable HTTP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head is longer than [`MAX_HEAD`] bytes.
    #[error("HTTP head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The head has more than [`MAX_HEADERS`] header fields.
    #[error("HTTP head with more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The start line or a header field is not valid HTTP/1.0 or HTTP/1.1.
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// An absolute-form target with a scheme other than `http`.
    #[error("unsupported URI scheme {0:?}")]
    UnsupportedScheme(String),
    /// A request target the proxy cannot use.
    #[error("bad request target: {0}")]
    BadTarget(String),
    /// Transfer-Encoding and Content-Length do not delimit the body unambiguously.
    #[error("bad body framing: {0}")]
    BadBodyFraming(String),
    /// A chunked body that does not follow RFC 9112 §7.1, or exceeds a limit.
    #[error("bad chunked body: {0}")]
    BadChunk(String),
}

/// Parses a request head from the start of `buf`.
pub fn parse_request_head(buf: &[u8]) -> Result<Parse<RequestHead>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let status = req.parse(buf).map_err(from_httparse)?;
    let consumed = match status {
        httparse::Status::Partial => {
            if let (Some(method), Some(uri)) = (req.method, req.path) {
                parse_target(method, uri)?;
            }
            return need_more(buf.len());
        }
        httparse::Status::Complete(n) => head_len(n)?,
    };
    let (Some(method), Some(uri), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".to_owned()));
    };
    let value = RequestHead {
        method: method.to_owned(),
        target: parse_target(method, uri)?,
        version,
        headers: collect_headers(req.headers),
    };
    Ok(Parse::Done { value, consumed })
}

/// Parses a response head from the start of `buf`.
pub fn parse_response_head(buf: &[u8]) -> Result<Parse<ResponseHead>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let consumed = match resp.parse(buf).map_err(from_httparse)? {
        httparse::Status::Partial => return need_more(buf.len()),
        httparse::Status::Complete(n) => head_len(n)?,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HttpError::Malformed("incomplete status line".to_owned()));
    };
    let value = ResponseHead {
        version,
        status,
        reason: resp.reason.unwrap_or_default().to_owned(),
        headers: collect_headers(resp.headers),
    };
    Ok(Parse::Done { value, consumed })
}

impl RequestHead {
    /// A header's value by case-insensitive name (the first one).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The credentials of `Proxy-Authorization: Basic <base64>` decoded as (user, password); None
    /// when absent, not Basic, or undecodable.
    ///
    /// The decoded text is split at its first `:`, so a password may contain colons.
    pub fn proxy_basic_credentials(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let value = trim_ows(self.header("Proxy-Authorization")?);
        let split = value.iter().position(|&b| b == b' ' || b == b'\t')?;
        let (scheme, token) = value.split_at(split);
        if !scheme.eq_ignore_ascii_case(b"Basic") {
            return None;
        }
        let decoded = decode_base64(trim_ows(token))?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
    }

    /// How the request body is delimited (RFC 9112 §6).
    ///
    /// Transfer-Encoding whose final coding is `chunked` gives [`BodyFraming::Chunked`]. These
    /// are errors: Transfer-Encoding not ending in `chunked` or applying it twice;
    /// Transfer-Encoding together with Content-Length (a request-smuggling defence);
    /// Transfer-Encoding in an HTTP/1.0 request; Content-Length values that differ or are not
    /// decimal. Otherwise Content-Length n gives [`BodyFraming::Length`], and no framing header
    /// [`BodyFraming::None`].
    pub fn body(&self) -> Result<BodyFraming, HttpError> {
        let bad = |why: &str| Err(HttpError::BadBodyFraming(why.to_owned()));
        let has_te = header_values(&self.headers, "transfer-encoding").next().is_some();
        let has_cl = header_values(&self.headers, "content-length").next().is_some();
        if has_te {
            if has_cl {
                return bad("both Transfer-Encoding and Content-Length");
            }
            if self.version == 0 {
                return bad("Transfer-Encoding in an HTTP/1.0 request");
            }
            let codings: Vec<&[u8]> = header_values(&self.headers, "transfer-encoding")
                .flat_map(list_elements)
                .map(|coding| {
                    let name = coding.split(|&b| b == b';').next().unwrap_or(coding);
                    trim_ows(name)
                })
                .collect();
            return match codings.split_last() {
                Some((last, rest)) if last.eq_ignore_ascii_case(b"chunked") => {
                    if rest.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) {
                        bad("chunked applied more than once")
                    } else {
                        Ok(BodyFraming::Chunked)
                    }
                }
                _ => bad("Transfer-Encoding does not end in chunked"),
            };
        }
        let mut length = None;
        for value in header_values(&self.headers, "content-length") {
            for element in value.split(|&b| b == b',') {
                let Some(n) = parse_decimal(trim_ows(element)) else {
                    return bad("Content-Length is not a decimal number");
                };
                match length {
                    Some(previous) if previous != n => {
                        return bad("differing Content-Length values");
                    }
                    _ => length = Some(n),
                }
            }
        }
        Ok(length.map_or(BodyFraming::None, BodyFraming::Length))
    }

    /// The head to send to the origin server for an Absolute target: `METHOD path HTTP/1.1\r\n`,
    /// then the headers minus hop-by-hop ones (Connection and every header it lists, Keep-Alive,
    /// Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer, Upgrade), with
    /// `Host` set to the target's authority (host, plus `:port` when port != 80; IPv6 in brackets)
    /// replacing any Host the client sent, then `Connection: close\r\n\r\n`. Header values are
    /// copied byte for byte. None for a target that is not Absolute.
    ///
    /// `Host` comes first; the other headers keep their order and spelling. Content-Length and
    /// Transfer-Encoding are kept even when Connection lists them.
    pub fn forwarded(&self) -> Option<Vec<u8>> {
        let RequestTarget::Absolute { host, port, path } = &self.target else {
            return None;
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        if host.contains(':') {
            out.push(b'[');
            out.extend_from_slice(host.as_bytes());
            out.push(b']');
        } else {
            out.extend_from_slice(host.as_bytes());
        }
        if *port != 80 {
            out.extend_from_slice(format!(":{port}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let listed = connection_options(&self.headers);
        let kept = self.headers.iter().filter(|(name, _)| {
            !name.eq_ignore_ascii_case("host") && !is_hop_by_hop(name, REQUEST_HOP_BY_HOP, &listed)
        });
        write_headers(&mut out, kept);
        Some(out)
    }
}

impl ResponseHead {
    /// A header's value by case-insensitive name (the first one).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// 1xx other than 101: another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The head to send back to the client: `HTTP/1.1 status reason\r\n` (keep the server's version
    /// digit if 1.0), headers minus Connection / the headers it lists / Keep-Alive /
    /// Proxy-Connection, then `Connection: close\r\n\r\n`.
    ///
    /// Content-Length and Transfer-Encoding are kept even when Connection lists them.
    pub fn closing(&self) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.{} {} {}\r\n", self.version, self.status, self.reason).into_bytes();
        let listed = connection_options(&self.headers);
        let kept = self
            .headers
            .iter()
            .filter(|(name, _)| !is_hop_by_hop(name, RESPONSE_HOP_BY_HOP, &listed));
        write_headers(&mut out, kept);
        out
    }
}

/// Finds where a chunked body ends (RFC 9112 §7.1), fed the body bytes in any pieces.
///
/// Chunk extensions are skipped after checking they hold no control bytes other than HTAB;
/// trailer fields are only checked for CRLF line ends. After an error the scanner stays failed.
#[derive(Debug, Clone, Default)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Bytes of the current chunk-size line so far.
    line: usize,
    /// The chunk size being read, then the chunk data bytes still to come.
    size: u64,
    /// Bytes of the trailer section so far.
    trailer: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// Chunk extensions, up to CR.
    Extension,
    /// CR of the size line seen.
    SizeLf,
    /// Chunk data; `size` bytes to go.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// CR of a trailer field line seen.
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    Failed,
}

/// The result of [`ChunkedScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// How many bytes at the start of the input belong to the body.
    pub consumed: usize,
    /// Whether the body ended within them.
    pub done: bool,
}

impl ChunkedScanner {
    /// A scanner at the start of a chunked body.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes at the start of `buf` belong to the body (all of them until the end is
    /// found); `done` once the last chunk, the trailer section and its final CRLF have been
    /// consumed. Chunk extensions are allowed and skipped; chunk-size lines longer than 1 KiB,
    /// sizes that overflow u64, bad hex, a missing CRLF after chunk data → BadChunk. Trailer
    /// section: up to 16 KiB, then error.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scanned, HttpError> {
        if self.state == ChunkState::Failed {
            return Err(bad_chunk("the body already failed to parse"));
        }
        let mut i = 0;
        while i < buf.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let available = buf.len() - i;
                let take = usize::try_from(self.size).map_or(available, |s| s.min(available));
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            if let Err(e) = self.step(buf[i]) {
                self.state = ChunkState::Failed;
                return Err(e);
            }
            i += 1;
        }
        Ok(Scanned { consumed: i, done: self.state == ChunkState::Done })
    }

    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        use ChunkState as S;
        match self.state {
            S::Size | S::SizeSpace | S::Extension => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(bad_chunk("chunk-size line longer than 1 KiB"));
                }
            }
            S::TrailerStart | S::TrailerLine | S::TrailerLf | S::EndLf => {
                self.trailer += 1;
                if self.trailer > MAX_TRAILER {
                    return Err(bad_chunk("trailer section longer than 16 KiB"));
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (S::Size, _) if b.is_ascii_hexdigit() => {
                let digit = u64::from(hex_value(b));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or_else(|| bad_chunk("chunk size overflows 64 bits"))?;
                S::Size
            }
            (S::Size, _) if self.line == 1 => return Err(bad_chunk("missing chunk size")),
            (S::Size | S::SizeSpace, b' ' | b'\t') => S::SizeSpace,
            (S::Size | S::SizeSpace, b';') => S::Extension,
            (S::Size | S::SizeSpace | S::Extension, b'\r') => S::SizeLf,
            (S::Size | S::SizeSpace, _) => return Err(bad_chunk("bad hex in chunk size")),
            (S::Extension, _) if b == b'\t' || !b.is_ascii_control() => S::Extension,
            (S::Extension, _) => return Err(bad_chunk("control byte in chunk extension")),
            (S::SizeLf, b'\n') => {
                self.line = 0;
                if self.size == 0 { S::TrailerStart } else { S::Data }
            }
            (S::SizeLf, _) => return Err(bad_chunk("chunk-size line without CRLF")),
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => S::Size,
            (S::DataCr | S::DataLf, _) => return Err(bad_chunk("missing CRLF after chunk data")),
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerLine, b'\r') => S::TrailerLf,
            (S::TrailerStart | S::TrailerLine, b'\n') => {
                return Err(bad_chunk("bare LF in trailer section"));
            }
            (S::TrailerStart | S::TrailerLine, _) => S::TrailerLine,
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::EndLf, b'\n') => S::Done,
            (S::TrailerLf | S::EndLf, _) => return Err(bad_chunk("bare CR in trailer section")),
            (S::Data | S::Done | S::Failed, _) => self.state,
        };
        Ok(())
    }
}

fn bad_chunk(why: &str) -> HttpError {
    HttpError::BadChunk(why.to_owned())
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

fn from_httparse(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        other => HttpError::Malformed(other.to_string()),
    }
}

/// NeedMore for a partial head of `len` bytes, unless it is already too long.
fn need_more<T>(len: usize) -> Result<Parse<T>, HttpError> {
    if len >= MAX_HEAD { Err(HttpError::HeadTooLarge) } else { Ok(Parse::NeedMore) }
}

fn head_len(n: usize) -> Result<usize, HttpError> {
    if n > MAX_HEAD { Err(HttpError::HeadTooLarge) } else { Ok(n) }
}

fn collect_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect()
}

fn parse_target(method: &str, uri: &str) -> Result<RequestTarget, HttpError> {
    if method == "CONNECT" {
        if uri.starts_with('/') || uri.contains("://") {
            return Err(bad_target("CONNECT needs an authority-form target (host:port)"));
        }
        let (host, port) = parse_authority(uri, None)?;
        return Ok(RequestTarget::Authority { host, port });
    }
    if uri.starts_with('/') {
        return Ok(RequestTarget::Origin { path: strip_fragment(uri).to_owned() });
    }
    if let Some((scheme, rest)) = split_scheme(uri) {
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(HttpError::UnsupportedScheme(scheme.to_owned()));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, port) = parse_authority(authority, Some(80))?;
        let tail = strip_fragment(tail);
        let path = if tail.is_empty() {
            "/".to_owned()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_owned()
        };
        return Ok(RequestTarget::Absolute { host, port, path });
    }
    if uri == "*" {
        return Err(bad_target("asterisk form is not supported"));
    }
    Err(bad_target(&format!("{method} needs an absolute URI or a path")))
}

fn bad_target(why: &str) -> HttpError {
    HttpError::BadTarget(why.to_owned())
}

/// `scheme://rest` with a syntactically valid scheme (RFC 3986 §3.1).
fn split_scheme(uri: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

fn strip_fragment(s: &str) -> &str {
    s.split_once('#').map_or(s, |(before, _)| before)
}

/// Host and port of `host[:port]` or `[v6]:port`; `default_port` when the port is absent or
/// empty, an error when there is no default.
fn parse_authority(authority: &str, default_port: Option<u16>) -> Result<(String, u16), HttpError> {
    if authority.contains('@') {
        return Err(bad_target("userinfo in the request target"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) =
            rest.split_once(']').ok_or_else(|| bad_target("unterminated IPv6 literal"))?;
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err(bad_target("bad IPv6 literal"));
        }
        let port = match after {
            "" => None,
            _ => {
                Some(after.strip_prefix(':').ok_or_else(|| bad_target("junk after IPv6 literal"))?)
            }
        };
        (literal, port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if !host.bytes().all(is_reg_name_byte) {
            return Err(bad_target("host contains a byte that is not allowed in a host name"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad_target("empty host"));
    }
    let port = match port {
        None | Some("") => default_port.ok_or_else(|| bad_target("missing port"))?,
        Some(port) => parse_port(port)?,
    };
    Ok((host.to_owned(), port))
}

fn parse_port(s: &str) -> Result<u16, HttpError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_target("port is not a number"));
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad_target("port out of range")),
    }
}

/// RFC 3986 reg-name: unreserved, pct-encoded (the `%` and hex digits) and sub-delims.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

fn find_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    header_values(headers, name).next()
}

fn header_values<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &str,
) -> impl Iterator<Item = &'a [u8]> {
    headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// The non-empty elements of a comma-separated list value, trimmed (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

/// The header names listed in the Connection headers.
fn connection_options(headers: &[(String, Vec<u8>)]) -> Vec<&[u8]> {
    header_values(headers, "connection").flat_map(list_elements).collect()
}

fn is_hop_by_hop(name: &str, fixed: &[&str], listed: &[&[u8]]) -> bool {
    if fixed.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    !FRAMING.iter().any(|h| name.eq_ignore_ascii_case(h))
        && listed.iter().any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
}

fn write_headers<'a>(out: &mut Vec<u8>, headers: impl Iterator<Item = &'a (String, Vec<u8>)>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// Standard base64 with padding; None for any other input.
fn decode_base64(s: &[u8]) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let quads = s.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in s.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &b in &quad[..4 - pad] {
            n = n << 6 | sextet(b)?;
        }
        n <<= 6 * pad;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parser<T> = fn(&[u8]) -> Result<Parse<T>, HttpError>;

    const EARLY_DATA: &[u8] = b"hello\r\n\r\nGET / HTTP/1.1\r\n";

    /// Every proper prefix is NeedMore, the whole is Done with `consumed == len`, and trailing
    /// bytes do not change the result.
    fn check_splits<T: Clone + PartialEq + std::fmt::Debug>(parse: Parser<T>, buf: &[u8]) -> T {
        for k in 0..buf.len() {
            assert_eq!(parse(&buf[..k]), Ok(Parse::NeedMore), "prefix of {k} bytes");
        }
        let Ok(Parse::Done { value, consumed }) = parse(buf) else {
            panic!("not Done: {:?}", parse(buf));
        };
        assert_eq!(consumed, buf.len());
        let mut early = buf.to_vec();
        early.extend_from_slice(EARLY_DATA);
        assert_eq!(parse(&early), Ok(Parse::Done { value: value.clone(), consumed }));
        value
    }

    fn request(buf: &[u8]) -> RequestHead {
        check_splits(parse_request_head, buf)
    }

    /// Prefixes give NeedMore until the first one that shows the fault, and from there on an
    /// error matching `expected`; the whole input is an error.
    fn check_error<T: std::fmt::Debug>(
        parse: Parser<T>,
        buf: &[u8],
        expected: impl Fn(&HttpError) -> bool,
    ) {
        let mut failed = false;
        for k in 0..=buf.len() {
            match parse(&buf[..k]) {
                Ok(Parse::NeedMore) => assert!(!failed, "NeedMore after an error, at {k} bytes"),
                Err(e) => {
                    assert!(expected(&e), "unexpected error {e:?} at {k} bytes");
                    failed = true;
                }
                Ok(done) => panic!("prefix of {k} bytes parsed: {done:?}"),
            }
        }
        assert!(failed, "never failed");
    }

    fn request_error(buf: &[u8], expected: impl Fn(&HttpError) -> bool) {
        check_error(parse_request_head, buf, expected);
    }

    fn bad_target(e: &HttpError) -> bool {
        matches!(e, HttpError::BadTarget(_))
    }

    fn framing(head: &[u8]) -> Result<BodyFraming, HttpError> {
        request(head).body()
    }

    #[test]
    fn connect_authority() {
        let head = request(b"CONNECT Example.peer:443 HTTP/1.1\r\nHost: Example.peer:443\r\n\r\n");
        assert_eq!(head.method, "CONNECT");
        assert_eq!(head.version, 1);
        assert_eq!(
            head.target,
            RequestTarget::Authority { host: "Example.peer".to_owned(), port: 443 }
        );
        assert_eq!(head.headers, vec![("Host".to_owned(), b"Example.peer:443".to_vec())]);
        assert_eq!(head.forwarded(), None);
    }

    #[test]
    fn connect_ipv6_literal() {
        let head = request(b"CONNECT [2001:db8::1]:8443 HTTP/1.0\r\n\r\n");
        assert_eq!(head.version, 0);
        assert_eq!(
            head.target,
            RequestTarget::Authority { host: "2001:db8::1".to_owned(), port: 8443 }
        );
    }

    #[test]
    fn connect_bad_targets() {
        for line in [
            &b"CONNECT example.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.com: HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:+80 HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT []:443 HTTP/1.1\r\n\r\n",
            b"CONNECT [::1 HTTP/1.1\r\n\r\n",
            b"CONNECT [nothex]:443 HTTP/1.1\r\n\r\n",
            b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT /index.html HTTP/1.1\r\n\r\n",
            b"CONNECT http://example.com:80/ HTTP/1.1\r\n\r\n",
        ] {
            request_error(line, bad_target);
        }
    }

    #[test]
    fn target_errors_are_reported_at_the_end_of_the_request_line() {
        let buf = b"CONNECT example.com HTTP/1.1\r\nHost: x\r\n\r\n";
        let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
        assert!(matches!(parse_request_head(&buf[..line_end]), Err(HttpError::BadTarget(_))));
    }

    #[test]
    fn authority_form_only_for_connect() {
        request_error(b"GET example.com:443 HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"connect example.com:443 HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"OPTIONS * HTTP/1.1\r\n\r\n", bad_target);
    }

    #[test]
    fn absolute_with_port_and_query() {
        let head = request(b"GET http://Example.COM:8080/a/b?x=1&y=%20#frag HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute {
                host: "Example.COM".to_owned(),
                port: 8080,
                path: "/a/b?x=1&y=%20".to_owned()
            }
        );
    }

    #[test]
    fn absolute_without_port_or_path() {
        let head = request(b"GET http://example.com HTTP/1.0\r\nAccept: */*\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute {
                host: "example.com".to_owned(),
                port: 80,
                path: "/".to_owned()
            }
        );
        let head = request(b"HEAD http://example.com:/?q HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute {
                host: "example.com".to_owned(),
                port: 80,
                path: "/?q".to_owned()
            }
        );
        let head = request(b"GET http://example.com?q=1 HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute {
                host: "example.com".to_owned(),
                port: 80,
                path: "/?q=1".to_owned()
            }
        );
    }

    #[test]
    fn scheme_is_case_insensitive() {
        for scheme in ["http", "HTTP", "Http", "hTtP"] {
            let buf = format!("GET {scheme}://h.example/x HTTP/1.1\r\n\r\n");
            let head = request(buf.as_bytes());
            assert_eq!(
                head.target,
                RequestTarget::Absolute {
                    host: "h.example".to_owned(),
                    port: 80,
                    path: "/x".to_owned()
                }
            );
        }
    }

    #[test]
    fn other_schemes_refused() {
        request_error(b"GET https://example.com/ HTTP/1.1\r\n\r\n", |e| {
            *e == HttpError::UnsupportedScheme("https".to_owned())
        });
        request_error(b"GET HTTPS://example.com/ HTTP/1.1\r\n\r\n", |e| {
            *e == HttpError::UnsupportedScheme("HTTPS".to_owned())
        });
        request_error(b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", |e| {
            matches!(e, HttpError::UnsupportedScheme(_))
        });
    }

    #[test]
    fn userinfo_refused() {
        request_error(b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"GET http://@example.com/ HTTP/1.1\r\n\r\n", bad_target);
    }

    #[test]
    fn absolute_ipv6_literal() {
        let head = request(b"GET http://[2001:db8::7]:8080/p HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute {
                host: "2001:db8::7".to_owned(),
                port: 8080,
                path: "/p".to_owned()
            }
        );
        let head = request(b"GET http://[::1]/ HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target,
            RequestTarget::Absolute { host: "::1".to_owned(), port: 80, path: "/".to_owned() }
        );
        assert_eq!(
            head.forwarded().unwrap_or_default(),
            b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bad_hosts_refused() {
        request_error(b"GET http:///path HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"GET http://exa\"mple/ HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"GET http://ex{am}ple/ HTTP/1.1\r\n\r\n", bad_target);
        request_error("GET http://ex\u{e4}mple/ HTTP/1.1\r\n\r\n".as_bytes(), bad_target);
        request_error(b"GET http://example.com:http/ HTTP/1.1\r\n\r\n", bad_target);
        request_error(b"GET example.com/ HTTP/1.1\r\n\r\n", bad_target);
    }

    #[test]
    fn control_characters_never_reach_the_host() {
        for bad in [0x00u8, 0x01, b'\t', b'\n', b'\r', b' ', 0x7F] {
            let mut buf = b"GET http://ex".to_vec();
            buf.push(bad);
            buf.extend_from_slice(b"ample/ HTTP/1.1\r\n\r\n");
            let result = parse_request_head(&buf);
            assert!(result.is_err(), "{bad:#04x}: {result:?}");
        }
    }

    #[test]
    fn origin_form() {
        let head = request(b"GET /proxy.pac HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
        assert_eq!(head.target, RequestTarget::Origin { path: "/proxy.pac".to_owned() });
        assert_eq!(head.forwarded(), None);
        let head = request(b"GET /a?b=c#d HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, RequestTarget::Origin { path: "/a?b=c".to_owned() });
    }

    #[test]
    fn leading_empty_lines_are_part_of_the_head() {
        let head = request(b"\r\nGET /x HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, RequestTarget::Origin { path: "/x".to_owned() });
    }

    #[test]
    fn malformed_heads() {
        let malformed = |e: &HttpError| matches!(e, HttpError::Malformed(_));
        request_error(b"GET / HTTP/2.0\r\n\r\n", malformed);
        request_error(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", malformed);
        request_error(b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", malformed);
        request_error(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", malformed);
        request_error(b"G\xC3T / HTTP/1.1\r\n\r\n", malformed);
        request_error(b"\x04\x01\x00\x50\x01\x02\x03\x04\x00", malformed);
    }

    #[test]
    fn header_limit() {
        let mut ok = b"GET http://h/ HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut too_many = ok.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(request(&ok).headers.len(), MAX_HEADERS);
        too_many.extend_from_slice(b"X-last: v\r\n\r\n");
        request_error(&too_many, |e| *e == HttpError::TooManyHeaders);
    }

    #[test]
    fn head_size_limit() {
        let start = b"GET http://h/ HTTP/1.1\r\nX: ";
        let fill = MAX_HEAD - start.len() - 4;
        let mut exact = start.to_vec();
        exact.extend(std::iter::repeat_n(b'a', fill));
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), MAX_HEAD);
        let Ok(Parse::Done { consumed, .. }) = parse_request_head(&exact) else {
            panic!("a head of exactly MAX_HEAD bytes is accepted");
        };
        assert_eq!(consumed, MAX_HEAD);

        let mut over = start.to_vec();
        over.extend(std::iter::repeat_n(b'a', fill + 1));
        over.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request_head(&over), Err(HttpError::HeadTooLarge));
        assert_eq!(parse_request_head(&over[..MAX_HEAD - 1]), Ok(Parse::NeedMore));
        assert_eq!(parse_request_head(&over[..MAX_HEAD]), Err(HttpError::HeadTooLarge));
        request_error(&over, |e| *e == HttpError::HeadTooLarge);
    }

    #[test]
    fn body_framing() {
        assert_eq!(framing(b"GET http://h/ HTTP/1.1\r\n\r\n"), Ok(BodyFraming::None));
        assert_eq!(
            framing(b"POST http://h/ HTTP/1.1\r\nContent-Length: 42\r\n\r\n"),
            Ok(BodyFraming::Length(42))
        );
        assert_eq!(
            framing(
                b"POST http://h/ HTTP/1.1\r\ncontent-length: 5\r\nContent-Length: 5, 5\r\n\r\n"
            ),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            framing(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            framing(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            framing(
                b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\
                  transfer-encoding: chunked\r\n\r\n"
            ),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn body_framing_errors() {
        for head in [
            &b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                [..],
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            b"POST http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 5,\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
        ] {
            let result = framing(head);
            assert!(
                matches!(result, Err(HttpError::BadBodyFraming(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn forwarded_strips_hop_by_hop_headers() {
        let head = request(
            b"POST http://Origin.example:8080/submit?x=1 HTTP/1.1\r\n\
              Host: elsewhere.example\r\n\
              Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
              Proxy-Connection: keep-alive\r\n\
              Connection: keep-alive, X-Foo\r\n\
              X-Foo: secret\r\n\
              Keep-Alive: timeout=5\r\n\
              TE: trailers\r\n\
              Upgrade: h2c\r\n\
              Accept: text/html\r\n\
              X-Raw: caf\xC3\xA9 \x80\r\n\
              Content-Length: 3\r\n\
              \r\n",
        );
        assert_eq!(
            head.forwarded().unwrap_or_default(),
            b"POST /submit?x=1 HTTP/1.1\r\n\
              Host: Origin.example:8080\r\n\
              Accept: text/html\r\n\
              X-Raw: caf\xC3\xA9 \x80\r\n\
              Content-Length: 3\r\n\
              Connection: close\r\n\
              \r\n"
        );
    }

    #[test]
    fn forwarded_keeps_framing_headers_listed_in_connection() {
        let head = request(
            b"POST http://h/ HTTP/1.1\r\nConnection: transfer-encoding, Trailer\r\n\
              Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
        );
        assert_eq!(
            head.forwarded().unwrap_or_default(),
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let head = request(b"GET /x HTTP/1.1\r\nX-Thing: one\r\nx-thing: two\r\n\r\n");
        assert_eq!(head.header("x-THING"), Some(&b"one"[..]));
        assert_eq!(head.header("absent"), None);
    }

    #[test]
    fn basic_credentials() {
        let creds = |value: &str| {
            let buf = format!("GET http://h/ HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n");
            request(buf.as_bytes()).proxy_basic_credentials()
        };
        assert_eq!(creds("Basic dXNlcjpwYXNz"), Some((b"user".to_vec(), b"pass".to_vec())));
        assert_eq!(creds("basic  dXNlcjpwYXNz"), Some((b"user".to_vec(), b"pass".to_vec())));
        // "me:pa:ss"
        assert_eq!(creds("Basic bWU6cGE6c3M="), Some((b"me".to_vec(), b"pa:ss".to_vec())));
        // ":" and "a:"
        assert_eq!(creds("Basic Og=="), Some((Vec::new(), Vec::new())));
        assert_eq!(creds("Basic YTo="), Some((b"a".to_vec(), Vec::new())));
        // "nocolon"
        assert_eq!(creds("Basic bm9jb2xvbg=="), None);
        assert_eq!(creds("Bearer dXNlcjpwYXNz"), None);
        assert_eq!(creds("Basic"), None);
        assert_eq!(creds("Basic dXNlcjpwYXNz="), None);
        assert_eq!(creds("Basic dXNlcjpwYXN"), None);
        assert_eq!(creds("Basic dXNl=jpwYXNz"), None);
        assert_eq!(creds("Basic dXNlcjpwYXNz!!!!"), None);
        let none = request(b"GET http://h/ HTTP/1.1\r\n\r\n");
        assert_eq!(none.proxy_basic_credentials(), None);
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(decode_base64(b""), Some(Vec::new()));
        assert_eq!(decode_base64(b"Zg=="), Some(b"f".to_vec()));
        assert_eq!(decode_base64(b"Zm8="), Some(b"fo".to_vec()));
        assert_eq!(decode_base64(b"Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(decode_base64(b"Zm9vYg=="), Some(b"foob".to_vec()));
        assert_eq!(decode_base64(b"+/+/"), Some(vec![0xFB, 0xFF, 0xBF]));
        assert_eq!(decode_base64(b"Zg==Zm9v"), None);
        assert_eq!(decode_base64(b"Z==="), None);
    }

    #[test]
    fn response_heads() {
        let head = check_splits(
            parse_response_head,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
              X-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
              Content-Length: 2\r\n\r\n",
        );
        assert_eq!((head.version, head.status, head.reason.as_str()), (1, 200, "OK"));
        assert!(!head.is_interim());
        assert_eq!(head.header("content-length"), Some(&b"2"[..]));
        assert_eq!(
            head.closing(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\n"
        );

        let head = check_splits(parse_response_head, b"HTTP/1.0 404 Not Found\r\n\r\n");
        assert_eq!(head.closing(), b"HTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\n");

        let head = check_splits(parse_response_head, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(head.is_interim());
        let head =
            check_splits(parse_response_head, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        assert!(head.is_interim());
        let head = check_splits(parse_response_head, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(!head.is_interim());
        let head = check_splits(parse_response_head, b"HTTP/1.1 204 \r\n\r\n");
        assert_eq!(head.closing(), b"HTTP/1.1 204 \r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn response_errors() {
        let malformed = |e: &HttpError| matches!(e, HttpError::Malformed(_));
        check_error(parse_response_head, b"HTTP/2 200 OK\r\n\r\n", malformed);
        check_error(parse_response_head, b"HTTP/1.1 20 OK\r\n\r\n", malformed);
        check_error(parse_response_head, b"SSH-2.0-OpenSSH\r\n\r\n", malformed);
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        check_error(parse_response_head, &huge, |e| *e == HttpError::HeadTooLarge);
    }

    const CHUNKED: &[u8] = b"4;name=value\r\nWiki\r\n\
        5 ; a=\"b c\";flag\r\npedia\r\n\
        E\r\n in\r\n\r\nchunks.\r\n\
        00000;last\r\n\
        Expires: never\r\nX-Sum: 1\r\n\
        \r\n";

    fn scan_all(pieces: &[&[u8]]) -> Result<Vec<Scanned>, HttpError> {
        let mut scanner = ChunkedScanner::new();
        pieces.iter().map(|p| scanner.scan(p)).collect()
    }

    fn scan_error(body: &[u8]) -> String {
        let mut scanner = ChunkedScanner::new();
        match scanner.scan(body) {
            Err(HttpError::BadChunk(why)) => {
                assert!(scanner.scan(b"0\r\n\r\n").is_err(), "the scanner stays failed");
                why
            }
            other => panic!("not a chunk error: {other:?}"),
        }
    }

    #[test]
    fn chunked_in_two_pieces() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(EARLY_DATA);
        for k in 0..=input.len() {
            let mut scanner = ChunkedScanner::new();
            let first = scanner.scan(&input[..k]).unwrap();
            assert_eq!(first.consumed, k.min(CHUNKED.len()), "split at {k}");
            assert_eq!(first.done, k >= CHUNKED.len(), "split at {k}");
            let second = scanner.scan(&input[first.consumed..]).unwrap();
            assert_eq!(first.consumed + second.consumed, CHUNKED.len(), "split at {k}");
            assert!(second.done);
        }
    }

    #[test]
    fn chunked_byte_by_byte() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(EARLY_DATA);
        let mut scanner = ChunkedScanner::new();
        let mut total = 0;
        for (i, byte) in input.iter().enumerate() {
            let scanned = scanner.scan(std::slice::from_ref(byte)).unwrap();
            total += scanned.consumed;
            let inside = i < CHUNKED.len();
            assert_eq!(scanned.consumed, usize::from(inside), "byte {i}");
            assert_eq!(scanned.done, i + 1 >= CHUNKED.len(), "byte {i}");
        }
        assert_eq!(total, CHUNKED.len());
    }

    #[test]
    fn chunked_large_sizes_and_empty_body() {
        let scanned = scan_all(&[&b"0\r\n\r\n"[..], b"more"]).unwrap();
        assert_eq!(scanned[0], Scanned { consumed: 5, done: true });
        assert_eq!(scanned[1], Scanned { consumed: 0, done: true });
        let scanned = scan_all(&[&b"FFFFFFFFFFFFFFFF\r\n"[..], &[0; 4096]]).unwrap();
        assert_eq!(scanned[1], Scanned { consumed: 4096, done: false });
        assert_eq!(
            scan_all(&[&b"0\r\n\r"[..], b""]).unwrap()[1],
            Scanned { consumed: 0, done: false }
        );
    }

    #[test]
    fn chunked_errors() {
        assert!(scan_error(b"g\r\n").contains("chunk size"));
        assert!(scan_error(b"\r\n").contains("missing chunk size"));
        assert!(scan_error(b";ext\r\n").contains("missing chunk size"));
        assert!(scan_error(b" 5\r\n").contains("missing chunk size"));
        assert!(scan_error(b"5x\r\n").contains("bad hex"));
        assert!(scan_error(b"-5\r\n").contains("chunk size"));
        assert!(scan_error(b"5\n").contains("bad hex"));
        assert!(scan_error(b"5\r\r\n").contains("CRLF"));
        assert!(scan_error(b"10000000000000000\r\n").contains("overflow"));
        assert!(scan_error(b"3\r\nabcX").contains("missing CRLF after chunk data"));
        assert!(scan_error(b"3\r\nabc\rX").contains("missing CRLF after chunk data"));
        assert!(scan_error(b"3\r\nabc\n").contains("missing CRLF after chunk data"));
        assert!(scan_error(b"1;a=\x01\r\n").contains("control"));
        assert!(scan_error(b"0\r\nX: 1\n\r\n").contains("bare LF"));
        assert!(scan_error(b"0\r\n\n").contains("bare LF"));
        assert!(scan_error(b"0\r\nX: 1\rY\r\n\r\n").contains("bare CR"));
        assert!(scan_error(b"0\r\n\rX").contains("bare CR"));

        let mut long_line = b"1;".to_vec();
        long_line.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE - 2));
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(&long_line).unwrap().consumed, MAX_CHUNK_LINE);
        assert!(scan_error(&[&long_line[..], &b"x\r\n"[..]].concat()).contains("1 KiB"));

        let mut trailer = b"0\r\n".to_vec();
        while trailer.len() < 3 + MAX_TRAILER {
            trailer.extend_from_slice(b"X-Pad: 0123456789\r\n");
        }
        trailer.extend_from_slice(b"\r\n");
        assert!(scan_error(&trailer).contains("16 KiB"));
    }

    #[test]
    fn trailer_section_up_to_the_limit() {
        let mut body = b"0\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'X', MAX_TRAILER - 4));
        body.extend_from_slice(b"\r\n\r\n");
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(&body).unwrap(), Scanned { consumed: body.len(), done: true });
    }
}
