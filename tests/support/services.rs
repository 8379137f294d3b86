//! Local TCP services for the tests, each bound to 127.0.0.1:0.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can compute what to expect.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed.max(1))
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// SHA-256 of `len` bytes of `Noise::new(seed)`.
pub fn noise_digest(seed: u64, len: usize) -> [u8; 32] {
    let mut noise = Noise::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n;
    }
    hasher.finalize().into()
}

/// Write `len` bytes of `Noise::new(seed)`.
pub async fn write_noise<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    seed: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut noise = Noise::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        noise.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Serve every connection to a fresh 127.0.0.1 port with `handle`, each on its own task.
async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handle(socket));
        }
    });
    addr
}

/// An HTTP server answering every request with `body`.
pub async fn http(body: &'static str) -> SocketAddr {
    serve(move |mut socket| async move {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await
}

/// An echo server: bytes back as they come; EOF in, then EOF out.
pub async fn echo() -> SocketAddr {
    serve(|socket| async move {
        let (mut r, mut w) = socket.into_split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// Sends `download` bytes of noise (seed 2) while hashing everything it receives; after the
/// client's EOF it appends the SHA-256 of what it received, then closes.
pub async fn exchange(download: usize) -> SocketAddr {
    serve(move |socket| async move {
        let (mut r, mut w) = socket.into_split();
        let receive = async move {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(_) => return None,
                }
            }
            Some(<[u8; 32]>::from(hasher.finalize()))
        };
        let (received, sent) = tokio::join!(receive, write_noise(&mut w, 2, download));
        if let (Some(digest), Ok(())) = (received, sent) {
            let _ = w.write_all(&digest).await;
        }
        let _ = w.shutdown().await;
    })
    .await
}

/// A port on which nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// How a service saw a connection end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A clean EOF (FIN) after this many bytes.
    Clean(u64),
    /// A reset or error after this many bytes.
    Reset(u64),
}

/// Each connection's end, as the service saw it, in order.
pub type Ends = tokio::sync::mpsc::UnboundedReceiver<End>;

/// Read `socket` to its end: how it ended, after how many bytes.
async fn read_all(socket: &mut TcpStream) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => return End::Clean(total),
            Ok(n) => total += n as u64,
            Err(_) => return End::Reset(total),
        }
    }
}

/// Reads everything it is sent and reports how each connection ended.
pub async fn sink() -> (SocketAddr, Ends) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(move |mut socket| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(read_all(&mut socket).await);
        }
    })
    .await;
    (addr, rx)
}

/// After reading anything, writes noise until a write fails (or `limit` bytes were sent, then
/// closes cleanly), and reports how each connection ended: `Reset` once a write failed.
pub async fn firehose(limit: u64) -> (SocketAddr, Ends) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(move |mut socket| {
        let tx = tx.clone();
        async move {
            let mut first = [0u8; 1];
            if socket.read(&mut first).await.unwrap_or(0) == 0 {
                return;
            }
            let mut noise = Noise::new(3);
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            let end = loop {
                if sent >= limit {
                    let _ = socket.shutdown().await;
                    break End::Clean(sent);
                }
                noise.fill(&mut buf);
                match socket.write_all(&buf).await {
                    Ok(()) => sent += buf.len() as u64,
                    Err(_) => break End::Reset(sent),
                }
            };
            let _ = tx.send(end);
        }
    })
    .await;
    (addr, rx)
}

/// A listener whose backlog is full: a connect to it hangs (the SYN is dropped), as a service
/// too busy to accept. The returned sockets hold the backlog; keep them alive.
pub fn unaccepting() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Fill the accept queue; once full, further connects time out instead of completing.
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)) {
            Ok(socket) => held.push(socket),
            Err(_) => break,
        }
    }
    (addr, held, listener)
}

/// An HTTP server that answers each request (one per connection) with what it received: the
/// request line, every header line as sent, and the body's length and SHA-256 (Content-Length
/// or chunked bodies, decoded).
pub async fn http_mirror() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, BufReader};
    serve(|socket| async move {
        let (r, mut w) = socket.into_split();
        let mut r = BufReader::new(r);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
            }
        }
        let header = |name: &str| {
            head.iter().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let size = size.trim_end().split(';').next().unwrap_or("");
                let Ok(size) = usize::from_str_radix(size, 16) else { return };
                if size == 0 {
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    break;
                }
                let mut chunk = vec![0u8; size + 2];
                if r.read_exact(&mut chunk).await.is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        let digest: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{}\nbody-len: {}\nbody-sha256: {digest}\n", head.join("\n"), body.len());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\n{text}",
            text.len()
        );
        let _ = w.write_all(response.as_bytes()).await;
        // Like a keep-alive server, wait for the client to close (or send a request it will
        // not get an answer to here).
        let mut rest = [0u8; 1024];
        let _ = r.read(&mut rest).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// A service slow to take an upload: ends its sending side at once (the tunnel's reply
/// direction ends) and reads nothing until released — its connections in the order accepted,
/// the first `n` once `n` is sent on the returned channel — then reads to the end; reports how
/// each connection ended. Its receive buffer is small, so what it has not read waits in the
/// gateway that serves it.
pub async fn held() -> (SocketAddr, tokio::sync::watch::Sender<usize>, Ends) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(0usize);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(socket.into()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            let (tx, mut released, index) = (tx.clone(), released.clone(), accepted);
            accepted += 1;
            tokio::spawn(async move {
                let _ = socket.shutdown().await;
                let _ = released.wait_for(|n| *n > index).await;
                let _ = tx.send(read_all(&mut socket).await);
            });
        }
    });
    (addr, release, rx)
}
