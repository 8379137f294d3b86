//! Parsers for the client protocols the front end speaks besides SOCKS5: bytes in, a result out.
//!
//! Nothing here reads or writes a socket. A caller accumulates what it has read and hands the
//! whole buffer to a parser each time; the parser answers [`Parse::NeedMore`], a complete message
//! with the number of bytes it took, or an error as soon as the bytes seen so far cannot begin a
//! valid message. Bytes after a message (early data) are never consumed.
//!
//! - [`socks4`]: SOCKS4 and SOCKS4a requests, and the reply.
//! - [`http`]: HTTP/1.x proxy request heads, response heads, and request body framing.

pub mod http;
pub mod socks4;

/// The outcome of feeding bytes to a parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The input is a valid prefix; read more bytes and call again with all of them.
    NeedMore,
    /// A complete message, and how many bytes of the input it took (the rest belongs to what
    /// follows).
    Done {
        /// The parsed message.
        value: T,
        /// The length of the message at the start of the input.
        consumed: usize,
    },
}
