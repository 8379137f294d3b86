//! The HTTP proxy: `CONNECT host:port`, plain requests with an absolute URI, and the PAC file.
//!
//! A CONNECT becomes a tunnel like a SOCKS request. A plain request (`GET http://host/path`)
//! is forwarded in origin form with its hop-by-hop headers and `Proxy-Authorization` removed
//! and `Connection: close` added; exactly its body follows (by `Content-Length` or chunked
//! framing), the server's answer comes back with `Connection: close` too, and the connection
//! ends after that one exchange: the client opens a new one for its next request. So every
//! request a client sends is parsed, never passed on unread.
//!
//! Failures are a status code with a short text page saying why (see
//! [`FailureKind::http_status`]). A request to the proxy itself (origin form) may only ask for
//! `/proxy.pac`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::buffered::Buffered;
use crate::failure::FailureKind;
use crate::server::{Handshake, HandshakeError, Protocol, Request, Rules};
use crate::target::Target;
use crate::wire::Parse;
use crate::wire::http::{
    self, BodyFraming, ChunkedScanner, MAX_HEAD, RequestHead, RequestTarget, ResponseHead,
};

/// The reply that opens a CONNECT tunnel.
pub(crate) const CONNECTED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The path of the PAC file on the proxy's own address.
pub const PAC_PATH: &str = "/proxy.pac";

/// Bytes a client may send after its request's body on a connection that ends after one
/// exchange (a pipelined request it will send again); more is a misbehaving client.
const DISCARD_BUDGET: usize = 64 * 1024;

/// Read and act on one request head.
pub(crate) async fn http<S>(
    client: &mut Buffered<S>,
    rules: &Rules,
    foreign: bool,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match client.read_message(MAX_HEAD, http::parse_request_head).await? {
        None => return Err(HandshakeError::Closed),
        Some(Ok(head)) => head,
        Some(Err(e)) => {
            let too_large =
                matches!(e, http::HttpError::HeadTooLarge | http::HttpError::TooManyHeaders);
            let status = if too_large { 431 } else { 400 };
            client.write_all(&page(status, &format!("a malformed request: {e}"))).await?;
            return Ok(Handshake::Refused("a malformed HTTP request"));
        }
    };
    if foreign {
        client.write_all(&page(403, "this proxy serves only its own user's programs")).await?;
        return Ok(Handshake::Refused("a client of another user"));
    }
    let own = |host: &str, port: u16| rules.is_own_address(host, port);
    let path = match &head.target {
        RequestTarget::Origin { path } => Some(path.as_str()),
        RequestTarget::Absolute { host, port, path } if own(host, *port) => Some(path.as_str()),
        _ => None,
    };
    if let Some(path) = path {
        // A request to the proxy itself: only the PAC file lives here.
        let reply = match (path, head.method.as_str()) {
            (PAC_PATH, "GET") => rules.pac_response(true),
            (PAC_PATH, "HEAD") => rules.pac_response(false),
            _ => page(404, &format!("this is a proxy; the only page here is {PAC_PATH}")),
        };
        client.write_all(&reply).await?;
        return Ok(Handshake::Answered);
    }
    if let Some(credentials) = &rules.auth {
        let good = head
            .proxy_basic_credentials()
            .is_some_and(|(user, password)| credentials.matches(&user, &password));
        if !good {
            client.write_all(&proxy_auth_required()).await?;
            return Ok(Handshake::Refused("missing or wrong Proxy-Authorization"));
        }
    }
    match request_of(head) {
        Ok(request) => Ok(Handshake::Connect(request)),
        Err(why) => {
            client.write_all(&page(400, &format!("a malformed request: {why}"))).await?;
            Ok(Handshake::Refused("a malformed HTTP request"))
        }
    }
}

fn request_of(head: RequestHead) -> Result<Request, String> {
    match &head.target {
        RequestTarget::Authority { host, port } => {
            Ok(Request { target: Target::name(host.clone(), *port), protocol: Protocol::Connect })
        }
        RequestTarget::Absolute { host, port, .. } => {
            let body = head.body().map_err(|e| e.to_string())?;
            let forwarded = head.forwarded().ok_or("no absolute target")?;
            let target = Target::name(host.clone(), *port);
            Ok(Request { target, protocol: Protocol::Plain { forwarded, body } })
        }
        RequestTarget::Origin { .. } => Err("a request in origin form".to_owned()),
    }
}

/// A complete response with a short text body (`Connection: close`).
pub(crate) fn page(status: u16, text: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", &format!("peerup: {text}\n"), true, &[])
}

/// The page for a failed connect: the status of the product table, and why.
pub(crate) fn failure_page(kind: FailureKind, target: &Target) -> Vec<u8> {
    let target = printable(&target.to_string());
    page(kind.http_status(), &format!("{target}: {kind}"))
}

fn proxy_auth_required() -> Vec<u8> {
    let text = "peerup: this proxy requires a username and password\n";
    let challenge = [("Proxy-Authenticate", "Basic realm=\"peerup\"")];
    response(407, "text/plain; charset=utf-8", text, true, &challenge)
}

pub(crate) fn response(
    status: u16,
    content_type: &str,
    body: &str,
    with_body: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Text from a client, safe to put in a page or a log line: controls become `?`.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The client's side of a plain request after its head: the body's bytes by its framing,
/// then nothing more (the connection ends after this exchange). Past the body, the socket is
/// still read so that the client's close (or reset) is seen; bytes it sends there are a
/// request it must send again, and are dropped up to [`DISCARD_BUDGET`].
#[derive(Debug)]
pub(crate) struct RequestBody<L> {
    inner: L,
    state: BodyState,
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedScanner),
    Done { discarded: usize },
}

impl<L> RequestBody<L> {
    pub(crate) fn new(inner: L, framing: BodyFraming) -> Self {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => BodyState::Done { discarded: 0 },
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(ChunkedScanner::new()),
        };
        RequestBody { inner, state }
    }
}

impl<L: AsyncRead + Unpin> AsyncRead for RequestBody<L> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let BodyState::Done { discarded } = &mut this.state {
                let mut scratch = [0u8; 4096];
                let mut buf = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                *discarded += n;
                if *discarded > DISCARD_BUDGET {
                    let e = "the client sent more than one request's worth after its request";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                continue;
            }
            // Read no further than the body can reach, then cut at its end.
            let limit = match &this.state {
                BodyState::Length(left) => usize::try_from(*left).unwrap_or(usize::MAX),
                _ => usize::MAX,
            };
            let mut scratch = [0u8; 8192];
            let room = out.remaining().min(limit).min(scratch.len());
            let mut buf = ReadBuf::new(&mut scratch[..room]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let bytes = buf.filled();
            if bytes.is_empty() {
                // The client closed before its body ended: pass the end on; the server
                // sees a short body.
                return Poll::Ready(Ok(()));
            }
            let taken = match &mut this.state {
                BodyState::Length(left) => {
                    *left -= bytes.len() as u64;
                    if *left == 0 {
                        this.state = BodyState::Done { discarded: 0 };
                    }
                    bytes.len()
                }
                BodyState::Chunked(scanner) => {
                    let scanned = scanner
                        .scan(bytes)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    if scanned.done {
                        let extra = bytes.len() - scanned.consumed;
                        this.state = BodyState::Done { discarded: extra };
                    }
                    scanned.consumed
                }
                BodyState::Done { .. } => 0,
            };
            if taken == 0 {
                continue;
            }
            out.put_slice(&bytes[..taken]);
            return Poll::Ready(Ok(()));
        }
    }
}

crate::bridge::delegate_leg!(RequestBody);

/// The server's side of a plain request: its response head rewritten to `Connection: close`
/// (interim 1xx heads pass as they are), then its bytes as they come. A head that does not
/// parse passes through untouched: the server closes after it anyway.
#[derive(Debug)]
pub(crate) struct ResponseHeads<L> {
    inner: L,
    /// Bytes read while looking for the end of a head.
    pending: Vec<u8>,
    /// Bytes ready to hand out (a rewritten head, or bytes passed through), from `ready_pos`.
    ready: Vec<u8>,
    ready_pos: usize,
    passthrough: bool,
}

impl<L> ResponseHeads<L> {
    pub(crate) fn new(inner: L) -> Self {
        ResponseHeads {
            inner,
            pending: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            passthrough: false,
        }
    }

    /// Parse what is pending: move complete heads (and, once the final one is done, the rest)
    /// to `ready`.
    fn advance(&mut self) {
        while !self.passthrough {
            match http::parse_response_head(&self.pending) {
                Ok(Parse::Done { value, consumed }) => {
                    let head: ResponseHead = value;
                    if head.is_interim() {
                        self.ready.extend(self.pending.drain(..consumed));
                        continue;
                    }
                    self.ready.extend(head.closing());
                    self.pending.drain(..consumed);
                    self.passthrough = true;
                }
                Ok(Parse::NeedMore) => return,
                Err(_) => self.passthrough = true,
            }
        }
        self.ready.append(&mut self.pending);
    }
}

impl<L: AsyncRead + Unpin> AsyncRead for ResponseHeads<L> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = out.remaining().min(this.ready.len() - this.ready_pos);
                out.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.passthrough {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut chunk = [0u8; 8192];
            let mut buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                // The server ended before a complete head: pass on what it sent, then the end.
                this.passthrough = true;
                this.ready.append(&mut this.pending);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.pending.extend_from_slice(buf.filled());
            if this.pending.len() > MAX_HEAD * 4 {
                this.passthrough = true;
            }
            this.advance();
        }
    }
}

crate::bridge::delegate_leg!(ResponseHeads);
