//! Which local user owns the other end of an accepted loopback TCP connection.
//!
//! TCP has no `SO_PEERCRED`, but on Linux the client's socket is visible to us: it is the socket
//! whose local address is the peer address of our accepted socket and whose remote address is our
//! local address. Its owner is asked from the kernel with one exact `sock_diag` request
//! (`NETLINK_SOCK_DIAG`, no privilege needed); where that is unavailable the tables in
//! `/proc/net/tcp` and `/proc/net/tcp6` are scanned instead.
//!
//! # Invariants
//! - A socket counts as the client only if its addresses are exactly the pair asked about, it is
//!   a connection (not a listener, not in `TIME_WAIT` or `SYN_RECV`), and it still belongs to a
//!   file (inode not 0). Sockets the kernel keeps after their owner closed them (orphans,
//!   time-wait and request sockets) report uid 0 or the listener's uid, so they are never taken
//!   for a client: such a lookup gives `Ok(None)`.
//! - A lookup never blocks longer than [`NETLINK_TIMEOUT`] waiting for the kernel; answers to an
//!   earlier request that timed out are recognised by their sequence number and skipped.
//! - Both the netlink answer and the `/proc` rows are read in the network namespace of this
//!   process, the one the listener lives in.
//!
//! Lookups are blocking system calls of a few microseconds (netlink); the `/proc` fallback grows
//! with the number of TCP sockets on the host.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// How long one lookup waits for the kernel's answer at most.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

const AF_NETLINK: i32 = 16;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_V2_LEN: usize = 56;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;
/// Offset of `struct inet_diag_sockid` in both the request and the answer.
const SOCKID_OFFSET: usize = 4;
const DIAG_UID_OFFSET: usize = 64;
const DIAG_INODE_OFFSET: usize = 68;
const RECV_BUFFER: usize = 8192;

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EPROTONOSUPPORT: i32 = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
    120
} else if cfg!(any(target_arch = "sparc", target_arch = "sparc64")) {
    43
} else {
    93
};

/// TCP states (`include/net/tcp_states.h`) that a client's own socket of a live connection can
/// be in.
fn is_connection_state(state: u8) -> bool {
    matches!(
        state,
        1 // ESTABLISHED
        | 2 // SYN_SENT
        | 4 // FIN_WAIT1
        | 5 // FIN_WAIT2
        | 8 // CLOSE_WAIT
        | 9 // LAST_ACK
        | 11 // CLOSING
    )
}

/// Why the owner of a connection's other end could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum PeerUidError {
    /// Sending the request or receiving the answer failed, or the kernel answered an error
    /// other than "no such socket".
    #[error("sock_diag lookup failed: {0}")]
    Netlink(#[source] io::Error),
    /// The kernel did not answer within [`NETLINK_TIMEOUT`].
    #[error("sock_diag did not answer within {NETLINK_TIMEOUT:?}")]
    Timeout,
    /// The kernel's answer could not be decoded.
    #[error("sock_diag answer malformed: {0}")]
    Malformed(&'static str),
    /// A `/proc/net` table could not be read.
    #[error("reading {path}: {source}")]
    Proc {
        /// The table.
        path: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Who owns the other end of an accepted loopback TCP connection.
#[derive(Debug)]
pub struct PeerUids {
    /// The netlink socket, or `None` once sock_diag proved unavailable (then `/proc` is read).
    diag: Mutex<Option<Diag>>,
}

impl Default for PeerUids {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerUids {
    /// Opens a `sock_diag` socket and checks that the kernel answers TCP lookups on it (by
    /// looking up a listener of our own on 127.0.0.1); never fails: without `sock_diag`, lookups
    /// read `/proc/net/tcp{,6}`.
    pub fn new() -> Self {
        let diag = match Diag::open() {
            Ok(mut diag) => match diag.probe() {
                Ok(()) => Some(diag),
                Err(error) => {
                    tracing::debug!(%error, "sock_diag does not answer TCP lookups; reading /proc/net/tcp instead");
                    None
                }
            },
            Err(error) => {
                tracing::debug!(%error, "no sock_diag socket; reading /proc/net/tcp instead");
                None
            }
        };
        Self { diag: Mutex::new(diag) }
    }

    /// Whether lookups go through `sock_diag` (else through `/proc/net/tcp{,6}`).
    pub fn uses_netlink(&self) -> bool {
        self.diag.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The uid owning the client socket of the connection whose accepted side has `local` as
    /// local address and `peer` as peer address. `Ok(None)` when no such socket is found (e.g. it
    /// already closed, or the client is on another host).
    pub fn lookup(&self, local: SocketAddr, peer: SocketAddr) -> Result<Option<u32>, PeerUidError> {
        let Some(key) = ClientKey::of(local, peer) else {
            return Ok(None);
        };
        let mut guard = self.diag.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(diag) = guard.as_mut() {
            match diag.query(key.local, key.remote)? {
                Answer::Found(msg) => return Ok(key.owner(&msg)),
                Answer::Errno(0 | ENOENT) => return Ok(None),
                Answer::Errno(errno) if errno == EINVAL || errno == EPROTONOSUPPORT => {
                    tracing::debug!(
                        error = %io::Error::from_raw_os_error(errno),
                        "sock_diag refused a TCP lookup; reading /proc/net/tcp from now on"
                    );
                    *guard = None;
                }
                Answer::Errno(errno) => {
                    return Err(PeerUidError::Netlink(io::Error::from_raw_os_error(errno)));
                }
            }
        }
        drop(guard);
        key.lookup_proc()
    }
}

/// The `/proc/net/tcp{,6}` fallback of [`PeerUids::lookup`], same arguments and meaning. Reads
/// the tables afresh on every call, so its cost grows with the number of TCP sockets.
pub fn lookup_proc(local: SocketAddr, peer: SocketAddr) -> Result<Option<u32>, PeerUidError> {
    match ClientKey::of(local, peer) {
        Some(key) => key.lookup_proc(),
        None => Ok(None),
    }
}

/// This process's effective uid, the `Uid:` line of `/proc/self/status` (the owner of
/// `/proc/self` would read as root for a process that is not dumpable).
pub fn own_uid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no Uid: line in /proc/self/status")
        })
}

/// The client socket's own addresses, both of one family (IPv4-mapped addresses made plain
/// IPv4: the kernel keeps IPv4 connections of dual-stack sockets in the IPv4 tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientKey {
    /// The client socket's local address, the accepted side's peer address.
    local: SocketAddr,
    /// The client socket's remote address, the accepted side's local address.
    remote: SocketAddr,
}

impl ClientKey {
    fn of(accepted_local: SocketAddr, accepted_peer: SocketAddr) -> Option<Self> {
        let local = canonical(accepted_peer);
        let remote = canonical(accepted_local);
        (local.is_ipv4() == remote.is_ipv4()).then_some(Self { local, remote })
    }

    /// The owner of a socket the kernel reported, if it is the client's socket of a live
    /// connection.
    fn owner(&self, msg: &DiagMsg) -> Option<u32> {
        let is_client = msg.local == self.local
            && msg.remote == self.remote
            && is_connection_state(msg.state)
            && msg.inode != 0;
        is_client.then_some(msg.uid)
    }

    fn lookup_proc(&self) -> Result<Option<u32>, PeerUidError> {
        if self.local.is_ipv4() {
            // The client may be an IPv4 socket or a dual-stack IPv6 socket with mapped addresses.
            if let Some(uid) = scan_proc_table("/proc/net/tcp", self.local, self.remote)? {
                return Ok(Some(uid));
            }
            let mapped = |addr: SocketAddr| match addr.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
                IpAddr::V6(_) => addr,
            };
            scan_proc_table("/proc/net/tcp6", mapped(self.local), mapped(self.remote))
        } else {
            scan_proc_table("/proc/net/tcp6", self.local, self.remote)
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The row of a `/proc/net/tcp{,6}` table with `local` and `remote` as addresses, if it is a live
/// connection: its uid.
fn scan_proc_table(
    path: &'static str,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<Option<u32>, PeerUidError> {
    let proc_error = |source| PeerUidError::Proc { path, source };
    let file = match File::open(path) {
        Ok(file) => file,
        // No IPv6 in this kernel: no IPv6 sockets either.
        Err(error) if error.kind() == io::ErrorKind::NotFound && path.ends_with('6') => {
            return Ok(None);
        }
        Err(error) => return Err(proc_error(error)),
    };
    let want_local = proc_address(local);
    let want_remote = proc_address(remote);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(proc_error)? == 0 {
            return Ok(None);
        }
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let mut fields = line.split_whitespace();
        let (Some(_), Some(row_local), Some(row_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !row_local.eq_ignore_ascii_case(&want_local)
            || !row_remote.eq_ignore_ascii_case(&want_remote)
        {
            continue;
        }
        let mut rest = fields.skip(3);
        let uid = rest.next().and_then(|uid| uid.parse::<u32>().ok());
        let inode = rest.nth(1).and_then(|inode| inode.parse::<u64>().ok());
        let state = u8::from_str_radix(state, 16).ok();
        match (uid, inode, state) {
            (Some(uid), Some(inode), Some(state)) => {
                if inode != 0 && is_connection_state(state) {
                    return Ok(Some(uid));
                }
                // A time-wait or orphaned socket of the same pair; a live one cannot coexist,
                // but keep looking rather than assume.
            }
            _ => {
                return Err(proc_error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected row format",
                )));
            }
        }
    }
}

/// An address as the kernel prints it in `/proc/net/tcp{,6}`: each 32-bit word of the address
/// (kept in network byte order in memory) printed as a native-endian number, then the port.
fn proc_address(addr: SocketAddr) -> String {
    let word = |bytes: &[u8]| {
        let mut word = [0; 4];
        word.copy_from_slice(bytes);
        format!("{:08X}", u32::from_ne_bytes(word))
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) => word(&ip.octets()),
        IpAddr::V6(ip) => ip.octets().chunks(4).map(word).collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

/// A `NETLINK_SOCK_DIAG` socket and the sequence number of its last request.
#[derive(Debug)]
struct Diag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What the kernel answered to one request.
#[derive(Debug)]
enum Answer {
    Found(DiagMsg),
    /// A positive errno (0 for a bare acknowledgement).
    Errno(i32),
}

/// The fields of an `inet_diag_msg` that matter here.
#[derive(Debug, Clone, Copy)]
struct DiagMsg {
    state: u8,
    local: SocketAddr,
    remote: SocketAddr,
    uid: u32,
    inode: u32,
}

impl Diag {
    fn open() -> io::Result<Self> {
        let socket = Socket::new(
            Domain::from(AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(NETLINK_SOCK_DIAG)),
        )?;
        socket.set_read_timeout(Some(NETLINK_TIMEOUT))?;
        Ok(Self {
            socket,
            seq: std::process::id().wrapping_mul(0x9E37_79B9),
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Whether the kernel finds a TCP socket through this socket: it answers `ENOENT` for
    /// everything when TCP's diag handler (`tcp_diag`) is missing.
    fn probe(&mut self) -> Result<(), PeerUidError> {
        let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            // No loopback to test with; trust the socket.
            return Ok(());
        };
        let Ok(addr) = listener.local_addr() else {
            return Ok(());
        };
        // The exact lookup falls back to listeners: this finds ours.
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        match self.query(addr, unspecified)? {
            Answer::Found(_) => Ok(()),
            Answer::Errno(errno) => Err(PeerUidError::Netlink(io::Error::from_raw_os_error(errno))),
        }
    }

    /// Asks for the one TCP socket with local address `src` and remote address `dst` (both of one
    /// family).
    fn query(&mut self, src: SocketAddr, dst: SocketAddr) -> Result<Answer, PeerUidError> {
        self.seq = self.seq.wrapping_add(1);
        let request = encode_request(self.seq, src, dst);
        self.socket.send(&request).map_err(PeerUidError::Netlink)?;
        let deadline = Instant::now() + NETLINK_TIMEOUT;
        loop {
            let len = match (&self.socket).read(&mut self.buf) {
                Ok(len) => len,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(PeerUidError::Timeout);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(PeerUidError::Netlink(error)),
            };
            if let Some(answer) = decode_answer(&self.buf[..len], self.seq)? {
                return Ok(answer);
            }
            // Only answers to earlier, timed-out requests: wait on, within the deadline.
            if Instant::now() >= deadline {
                return Err(PeerUidError::Timeout);
            }
        }
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request for the TCP socket with local address `src` and remote
/// address `dst`, in any state.
fn encode_request(seq: u32, src: SocketAddr, dst: SocketAddr) -> [u8; NLMSG_HDRLEN + REQ_V2_LEN] {
    let mut msg = [0u8; NLMSG_HDRLEN + REQ_V2_LEN];
    // struct nlmsghdr, host byte order.
    msg[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_V2_LEN) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: to the kernel.
    // struct inet_diag_req_v2.
    let req = &mut msg[NLMSG_HDRLEN..];
    req[0] = if src.is_ipv4() { AF_INET } else { AF_INET6 };
    req[1] = IPPROTO_TCP;
    // idiag_ext 0, pad 0; idiag_states: every state.
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports and addresses in network byte order.
    let id = &mut req[8..];
    id[0..2].copy_from_slice(&src.port().to_be_bytes());
    id[2..4].copy_from_slice(&dst.port().to_be_bytes());
    put_ip(&mut id[4..20], src.ip());
    put_ip(&mut id[20..36], dst.ip());
    // idiag_if 0 (any); idiag_cookie INET_DIAG_NOCOOKIE.
    id[40..48].fill(0xFF);
    msg
}

fn put_ip(slot: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => slot[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => slot.copy_from_slice(&ip.octets()),
    }
}

/// The answer to request `seq` in one datagram from the kernel, or `None` when it holds only
/// answers to other requests.
fn decode_answer(datagram: &[u8], seq: u32) -> Result<Option<Answer>, PeerUidError> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = read_u32(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(PeerUidError::Malformed("netlink message length"));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let msg_seq = read_u32(rest, 8);
        let payload = &rest[NLMSG_HDRLEN..len];
        if msg_seq == seq {
            match kind {
                SOCK_DIAG_BY_FAMILY => {
                    return decode_diag_msg(payload).map(Answer::Found).map(Some);
                }
                NLMSG_ERROR => {
                    if payload.len() < 4 {
                        return Err(PeerUidError::Malformed("short NLMSG_ERROR"));
                    }
                    let error =
                        i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return Ok(Some(Answer::Errno(error.saturating_neg())));
                }
                _ => {}
            }
        }
        // Messages are padded to 4 bytes.
        let next = len.saturating_add(3) & !3;
        rest = rest.get(next..).unwrap_or_default();
    }
    Ok(None)
}

fn decode_diag_msg(payload: &[u8]) -> Result<DiagMsg, PeerUidError> {
    if payload.len() < DIAG_MSG_LEN {
        return Err(PeerUidError::Malformed("short inet_diag_msg"));
    }
    let family = payload[0];
    let id = &payload[SOCKID_OFFSET..];
    let ip = |at: usize| -> Result<IpAddr, PeerUidError> {
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(id[at], id[at + 1], id[at + 2], id[at + 3]))),
            AF_INET6 => {
                let mut octets = [0; 16];
                octets.copy_from_slice(&id[at..at + 16]);
                Ok(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => Err(PeerUidError::Malformed("inet_diag_msg family")),
        }
    };
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    Ok(DiagMsg {
        state: payload[1],
        local: canonical(SocketAddr::new(ip(4)?, port(0))),
        remote: canonical(SocketAddr::new(ip(20)?, port(2))),
        uid: read_u32(payload, DIAG_UID_OFFSET),
        inode: read_u32(payload, DIAG_INODE_OFFSET),
    })
}

/// A host-order u32 at `at`; the caller checked the length.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A connected pair through `listener`: (client, accepted).
    fn connection(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted)
    }

    fn ends(accepted: &TcpStream) -> (SocketAddr, SocketAddr) {
        (accepted.local_addr().unwrap(), accepted.peer_addr().unwrap())
    }

    /// Listeners to test on: IPv4 loopback, IPv6 loopback and a dual-stack `[::]` (IPv4 clients
    /// then appear with mapped addresses), those that this host has.
    fn listeners() -> Vec<(&'static str, TcpListener, SocketAddr)> {
        let mut out = Vec::new();
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v4_addr = v4.local_addr().unwrap();
        out.push(("ipv4", v4, v4_addr));
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let addr = v6.local_addr().unwrap();
            out.push(("ipv6", v6, addr));
        } else {
            eprintln!("no IPv6 loopback: IPv6 cases skipped");
        }
        if let Ok(dual) = TcpListener::bind("[::]:0") {
            let port = dual.local_addr().unwrap().port();
            out.push(("dual-stack, v4 client", dual, SocketAddr::from(([127, 0, 0, 1], port))));
        }
        out
    }

    fn connect_to(target: SocketAddr, listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(target).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted)
    }

    #[test]
    fn own_uid_matches_status() {
        let uid = own_uid().unwrap();
        let std_uid =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(uid, std_uid);
    }

    #[test]
    fn a_client_of_ours_is_found_with_our_uid() {
        let me = own_uid().unwrap();
        let uids = PeerUids::new();
        if !uids.uses_netlink() {
            eprintln!("sock_diag unavailable here: PeerUids reads /proc");
        }
        for (name, listener, target) in listeners() {
            let (_client, accepted) = connect_to(target, &listener);
            let (local, peer) = ends(&accepted);
            assert_eq!(uids.lookup(local, peer).unwrap(), Some(me), "{name} via PeerUids");
            assert_eq!(lookup_proc(local, peer).unwrap(), Some(me), "{name} via /proc");
            // Swapped ends name the accepted socket, which is ours too.
            assert_eq!(uids.lookup(peer, local).unwrap(), Some(me), "{name} swapped");
        }
    }

    #[test]
    fn a_dual_stack_client_to_an_ipv4_listener_is_found() {
        let me = own_uid().unwrap();
        let uids = PeerUids::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Ok(socket) = Socket::new(Domain::IPV6, Type::STREAM, None) else {
            eprintln!("no IPv6 sockets: skipped");
            return;
        };
        socket.set_only_v6(false).unwrap();
        let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port));
        socket.connect(&mapped.into()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (local, peer) = ends(&accepted);
        assert!(local.is_ipv4() && peer.is_ipv4());
        assert_eq!(uids.lookup(local, peer).unwrap(), Some(me));
        assert_eq!(lookup_proc(local, peer).unwrap(), Some(me));
    }

    #[test]
    fn no_socket_for_the_pair_is_none() {
        let uids = PeerUids::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let gone = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(uids.lookup(local, gone).unwrap(), None);
        assert_eq!(lookup_proc(local, gone).unwrap(), None);
        // A listener at the "client" address is not a client: the exact lookup falls back to
        // listeners, and that answer is refused.
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], gone.port()));
        assert_eq!(uids.lookup(elsewhere, local).unwrap(), None);
        assert_eq!(lookup_proc(elsewhere, local).unwrap(), None);
        // A client on another host.
        let remote = SocketAddr::from(([192, 0, 2, 1], 40000));
        assert_eq!(uids.lookup(local, remote).unwrap(), None);
        assert_eq!(lookup_proc(local, remote).unwrap(), None);
    }

    #[test]
    fn a_closed_client_is_not_an_error() {
        let uids = PeerUids::new();
        for (name, listener, target) in listeners() {
            // Client closes first: its socket goes to TIME_WAIT (uid 0 in the kernel's report).
            let (client, accepted) = connect_to(target, &listener);
            let (local, peer) = ends(&accepted);
            drop(client);
            drop(accepted);
            assert_eq!(uids.lookup(local, peer).unwrap(), None, "{name}");
            assert_eq!(lookup_proc(local, peer).unwrap(), None, "{name} via /proc");
            // Accepted side closes first.
            let (client, accepted) = connect_to(target, &listener);
            let (local, peer) = ends(&accepted);
            drop(accepted);
            drop(client);
            assert_eq!(uids.lookup(local, peer).unwrap(), None, "{name}");
            assert_eq!(lookup_proc(local, peer).unwrap(), None, "{name} via /proc");
        }
    }

    #[test]
    fn request_layout() {
        let src = SocketAddr::from(([127, 0, 0, 2], 0x1234));
        let dst = SocketAddr::from(([127, 0, 0, 1], 0x0050));
        let msg = encode_request(7, src, dst);
        assert_eq!(msg.len(), 72);
        assert_eq!(read_u32(&msg, 0), 72);
        assert_eq!(read_u32(&msg, 8), 7);
        assert_eq!(&msg[16..20], &[AF_INET, IPPROTO_TCP, 0, 0]);
        assert_eq!(&msg[24..28], &[0x12, 0x34, 0x00, 0x50]);
        assert_eq!(&msg[28..32], &[127, 0, 0, 2]);
        assert_eq!(&msg[44..48], &[127, 0, 0, 1]);
        assert_eq!(&msg[64..72], &[0xFF; 8]);
    }

    #[test]
    fn proc_address_format() {
        let v4 = SocketAddr::from(([127, 0, 0, 1], 8080));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 8080));
        if cfg!(target_endian = "little") {
            assert_eq!(proc_address(v4), "0100007F:1F90");
            assert_eq!(proc_address(v6), "00000000000000000000000001000000:1F90");
        }
    }

    #[test]
    fn stale_answers_are_skipped() {
        let mut datagram = Vec::new();
        for seq in [5u32, 6] {
            let mut msg = vec![0u8; NLMSG_HDRLEN + 4 + 16];
            let len = u32::try_from(msg.len()).unwrap();
            msg[0..4].copy_from_slice(&len.to_ne_bytes());
            msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            msg[8..12].copy_from_slice(&seq.to_ne_bytes());
            msg[16..20].copy_from_slice(&(-(seq as i32)).to_ne_bytes());
            datagram.extend_from_slice(&msg);
        }
        assert!(decode_answer(&datagram, 4).unwrap().is_none());
        assert!(matches!(decode_answer(&datagram, 6).unwrap(), Some(Answer::Errno(6))));
    }

    fn mean_micros(iterations: u32, mut lookup: impl FnMut()) -> f64 {
        let start = Instant::now();
        for _ in 0..iterations {
            lookup();
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
    }

    #[test]
    fn measure_lookup_cost() {
        let me = own_uid().unwrap();
        let uids = PeerUids::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_client, accepted) = connection(&listener);
        let (local, peer) = ends(&accepted);
        let absent = SocketAddr::from(([127, 0, 0, 1], 1));
        let netlink = uids.uses_netlink();

        // /proc reads walk the kernel's whole TCP hash table (milliseconds each): fewer rounds.
        let (netlink_rounds, proc_rounds) = (1000, 100);
        let measure = |label: &str| {
            let hit = mean_micros(netlink_rounds, || {
                assert_eq!(uids.lookup(local, peer).unwrap(), Some(me));
            });
            let proc_hit = mean_micros(proc_rounds, || {
                assert_eq!(lookup_proc(local, peer).unwrap(), Some(me));
            });
            let proc_miss = mean_micros(proc_rounds, || {
                assert_eq!(lookup_proc(local, absent).unwrap(), None);
            });
            eprintln!(
                "peer_uid ({label}): {} {hit:.1} µs/lookup ({netlink_rounds} lookups); /proc \
                 {proc_hit:.1} µs/lookup found, {proc_miss:.1} µs/lookup absent (tcp and tcp6 \
                 read whole) ({proc_rounds} lookups each)",
                if netlink { "netlink" } else { "PeerUids (/proc)" },
            );
        };
        measure("few sockets");

        let extra = 2000;
        let crowd = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut open = Vec::with_capacity(extra);
        for _ in 0..extra {
            open.push(connection(&crowd));
        }
        measure(&format!("{extra} extra connections, {} sockets", 2 * extra));
    }
}
