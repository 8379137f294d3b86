//! A SOCKS5 client written out byte by byte, so tests assert the exact reply codes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bytes of a no-auth greeting and a CONNECT to `host:port` by name.
pub fn connect_request(host: &str, port: u16) -> Vec<u8> {
    let mut bytes = vec![0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, host.len() as u8];
    bytes.extend_from_slice(host.as_bytes());
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes
}

/// Read the method choice and the CONNECT reply; return the reply code.
pub async fn read_reply(socket: &mut TcpStream) -> std::io::Result<u8> {
    let mut method = [0u8; 2];
    socket.read_exact(&mut method).await?;
    assert_eq!(method, [0x05, 0x00], "server picks no-auth");
    let mut head = [0u8; 4];
    socket.read_exact(&mut head).await?;
    assert_eq!(head[0], 0x05);
    let rest = match head[3] {
        0x01 => 4 + 2,
        0x04 => 16 + 2,
        0x03 => usize::from(socket.read_u8().await?) + 2,
        other => panic!("bad address type {other}"),
    };
    let mut skip = vec![0u8; rest];
    socket.read_exact(&mut skip).await?;
    Ok(head[1])
}

/// CONNECT through `proxy`; `Err(code)` for a failure reply.
pub async fn connect(proxy: SocketAddr, host: &str, port: u16) -> Result<TcpStream, u8> {
    connect_with_early(proxy, host, port, b"").await
}

/// CONNECT, sending `early` bytes right behind the request, before any reply.
pub async fn connect_with_early(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    early: &[u8],
) -> Result<TcpStream, u8> {
    let mut socket = TcpStream::connect(proxy).await.expect("reach the SOCKS listener");
    let mut request = connect_request(host, port);
    request.extend_from_slice(early);
    socket.write_all(&request).await.expect("send request");
    match read_reply(&mut socket).await.expect("a complete reply") {
        0x00 => Ok(socket),
        code => Err(code),
    }
}
