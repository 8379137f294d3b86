//! The local DNS server: `.p2p` names for apps that resolve names themselves.
//!
//! Answers come from our own [`RequestHandler`] (no zone files): a name under the suffix that
//! the tiers resolve gets an A record from the [`Pool`] and a TXT record with the peer ID in
//! base58; AAAA gets an empty answer (NODATA); an unknown name NXDOMAIN; a tier that cannot
//! answer now SERVFAIL; anything outside the suffix REFUSED (never forwarded); a message that is
//! not a single standard query FORMERR or NOTIMP. Queries past `max_in_flight` get SERVFAIL at
//! once instead of a lookup.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, TXT};
use hickory_server::proto::rr::{DNSClass, Name as DnsName, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::name::{Label, Name};
use crate::pool::{Pool, PoolError};
use crate::tier::{Resolution, ResolveError, Tiers};

/// How the server answers.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub suffix: Label,
    /// TTL of every answer: short, so edits and pool changes show quickly.
    pub ttl: Duration,
    /// Queries answered at once; more get SERVFAIL without a lookup.
    pub max_in_flight: usize,
    /// A TCP client that sends nothing for this long is closed.
    pub tcp_timeout: Duration,
}

/// Called for every name the server answered for, so its peer can be reached ahead of the
/// connect that follows (the caller bounds the work it starts).
pub type Warm = Arc<dyn Fn(&Name, &Resolution) + Send + Sync>;

/// Answers queries; shared by the UDP and TCP listeners.
pub struct DnsHandler {
    options: DnsOptions,
    tiers: Tiers,
    pool: Arc<Mutex<Pool>>,
    in_flight: Semaphore,
    warm: Option<Warm>,
}

impl std::fmt::Debug for DnsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsHandler").field("suffix", &self.options.suffix).finish()
    }
}

impl DnsHandler {
    /// `suffix.` or `LABEL.suffix.`: nodes of our zone that hold no records themselves.
    fn is_zone_node(&self, qname: &str) -> bool {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        let suffix = self.options.suffix.as_str();
        match name.strip_suffix(suffix) {
            Some("") => true,
            Some(rest) => rest
                .strip_suffix('.')
                .is_some_and(|label| !label.contains('.') && label.parse::<Label>().is_ok()),
            None => false,
        }
    }

    pub fn new(
        options: DnsOptions,
        tiers: Tiers,
        pool: Arc<Mutex<Pool>>,
        warm: Option<Warm>,
    ) -> Self {
        let in_flight = Semaphore::new(options.max_in_flight);
        DnsHandler { options, tiers, pool, in_flight, warm }
    }

    /// What to answer for `qname` and `qtype`.
    async fn answer(&self, qname: &str, qtype: RecordType) -> Result<Vec<RData>, ResponseCode> {
        let name = match Name::parse(qname, &self.options.suffix) {
            Ok(Some(name)) => name,
            Ok(None) => return Err(ResponseCode::Refused),
            // The suffix itself and `NETWORK.suffix` exist (names live below them): no records,
            // not NXDOMAIN, which would tell a minimising resolver that nothing is below.
            Err(_) if self.is_zone_node(qname) => return Ok(Vec::new()),
            Err(_) => return Err(ResponseCode::NXDomain),
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            warn!("too many DNS queries at once: answering SERVFAIL");
            return Err(ResponseCode::ServFail);
        };
        let resolution = match self.tiers.resolve(&name).await {
            Ok(resolution) => resolution,
            Err(ResolveError::NoSuchName(_)) => return Err(ResponseCode::NXDomain),
            Err(error @ (ResolveError::Unavailable { .. } | ResolveError::Refused { .. })) => {
                debug!(%error, "cannot answer now");
                return Err(ResponseCode::ServFail);
            }
        };
        // Warm a path only for an address query on a name the user configured: a made-up peer
        // label (any page can ask for one) must not make us dial.
        let made_up = resolution.tier == crate::tier::Tier::PeerLabel;
        if let Some(warm) = self.warm.as_ref().filter(|_| qtype == RecordType::A && !made_up) {
            warm(&name, &resolution);
        }
        match qtype {
            RecordType::A => {
                let key = qname.trim_end_matches('.').to_ascii_lowercase();
                let addr = self.pool.lock().unwrap_or_else(|e| e.into_inner()).address(
                    &key,
                    made_up,
                    Instant::now(),
                );
                match addr {
                    Ok(addr) => Ok(vec![RData::A(A(addr))]),
                    Err(error @ PoolError::Full(..)) => {
                        warn!(%error, "no address for a name");
                        Err(ResponseCode::ServFail)
                    }
                }
            }
            RecordType::TXT => Ok(vec![RData::TXT(TXT::new(vec![resolution.peer.to_base58()]))]),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Answer EDNS with EDNS (our payload size is what the client offered, at least 512).
        let mut response_edns = Edns::new();
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = request.edns.as_ref() {
            response_edns.set_max_payload(edns.max_payload().max(512));
            builder.edns(&response_edns);
        }
        let metadata = &request.metadata;
        let standard =
            metadata.message_type == MessageType::Query && metadata.op_code == OpCode::Query;
        let info = match (standard, request.request_info()) {
            (false, _) => Err(ResponseCode::NotImp),
            (true, Err(_)) => Err(ResponseCode::FormErr),
            (true, Ok(info)) => Ok(info),
        };
        let outcome = match &info {
            // Zone transfers and classes other than IN are not ours to answer.
            Ok(info)
                if info.query.query_class() != DNSClass::IN
                    || matches!(info.query.query_type(), RecordType::AXFR | RecordType::IXFR) =>
            {
                Err(ResponseCode::Refused)
            }
            Ok(info) => {
                let qname = info.query.name().to_string();
                let qtype = info.query.query_type();
                self.answer(&qname, qtype)
                    .await
                    .map(|rdata| (info.query.original().name().clone(), rdata))
            }
            Err(code) => Err(*code),
        };
        let sent = match outcome {
            Ok((qname, rdata)) => {
                let ttl = u32::try_from(self.options.ttl.as_secs()).unwrap_or(u32::MAX);
                let records: Vec<Record> = rdata
                    .into_iter()
                    .map(|rdata| Record::from_rdata(DnsName::clone(&qname), ttl, rdata))
                    .collect();
                let mut response_meta = Metadata::response_from_request(metadata);
                response_meta.authoritative = true;
                let response = builder.build(response_meta, records.iter(), [], [], []);
                response_handle.send_response(response).await
            }
            Err(code) => {
                let response = builder.error_msg(metadata, code);
                response_handle.send_response(response).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "could not send a DNS response");
                let mut failed = Metadata::response_from_request(metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata: failed, counts: HeaderCounts::default() })
            }
        }
    }
}

/// Largest query read over UDP (EDNS clients offer at most this much; a longer datagram is cut
/// and answered FORMERR).
const UDP_QUERY_MAX: usize = 4096;

/// A running DNS server on one UDP socket and one TCP listener (same address).
///
/// UDP is served by our own loop on a thread of its own (a current-thread runtime): each query
/// is answered in the loop itself when its answer is ready at once (names from the config, the
/// pool, the caches: nearly all of them), and only a lookup that has to wait (a registry)
/// becomes a task there, at most `max_in_flight` of them. hickory's UDP server spawns a task per
/// query on the shared runtime and hands each reply back through a channel; with the thread
/// hops that brings, it answered ~0.75x the queries per second of dnsmasq. TCP is hickory's.
pub struct DnsServer {
    tcp: Server<Shared>,
    /// Dropping it (or sending) stops the UDP thread.
    stop_udp: Option<oneshot::Sender<()>>,
    /// Resolves when the UDP thread has ended.
    udp_ended: Option<oneshot::Receiver<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").field("addr", &self.addr).finish()
    }
}

impl DnsServer {
    /// Bind UDP and TCP on `listen` (port 0: one free port for both) and start answering.
    pub async fn bind(listen: SocketAddr, handler: DnsHandler) -> std::io::Result<DnsServer> {
        let tcp_timeout = handler.options.tcp_timeout;
        let (udp, tcp) = bind_both(listen).await?;
        let addr = udp.local_addr()?;
        let handler = Arc::new(handler);
        let (stop_udp, udp_ended) = spawn_udp(udp.into_std()?, handler.clone())?;
        let mut server = Server::new(Shared(handler));
        server.register_listener(tcp, tcp_timeout, 64 * 1024);
        Ok(DnsServer { tcp: server, stop_udp: Some(stop_udp), udp_ended: Some(udp_ended), addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop answering and wait for the listeners to end.
    pub async fn shutdown(mut self) {
        drop(self.stop_udp.take());
        if let Some(ended) = self.udp_ended.take() {
            let _ = ended.await;
        }
        if let Err(error) = self.tcp.shutdown_gracefully().await {
            debug!(%error, "DNS server shutdown");
        }
    }
}

/// Start the UDP thread: it answers on `socket` until `stop` is sent or dropped, then drops its
/// runtime (and with it any lookup still waiting) and reports on `ended`.
fn spawn_udp(
    socket: std::net::UdpSocket,
    handler: Arc<DnsHandler>,
) -> std::io::Result<(oneshot::Sender<()>, oneshot::Receiver<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (report_end, ended) = oneshot::channel::<()>();
    std::thread::Builder::new().name("peerup-dns-udp".into()).spawn(move || {
        runtime.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(socket) => Arc::new(socket),
                Err(error) => {
                    warn!(%error, "the DNS server's UDP socket cannot be used: no UDP answers");
                    return;
                }
            };
            tokio::select! {
                () = serve_udp(socket, handler) => {}
                _ = stopped => {}
            }
        });
        drop(runtime);
        let _ = report_end.send(());
    })?;
    Ok((stop, ended))
}

/// The handler shared by the UDP loop and hickory's TCP server.
struct Shared(Arc<DnsHandler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.handle_request::<R, T>(request, response_handle).await
    }
}

/// Queries read in one go (those already queued on the socket) before their answers are sent.
const UDP_BATCH: usize = 32;

/// The UDP side: reads queries, answers them, owns the lookups that had to wait.
struct UdpLoop {
    socket: Arc<UdpSocket>,
    handler: Arc<DnsHandler>,
    /// Answers that had to wait (at most `max_in_flight`; past that a query is dropped and
    /// the client asks again). Dropped with the loop.
    waiting: JoinSet<()>,
}

/// Read queries from `socket` and answer each, until the socket fails.
async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<DnsHandler>) {
    let mut udp = UdpLoop { socket, handler, waiting: JoinSet::new() };
    let mut buf = vec![0u8; UDP_QUERY_MAX];
    loop {
        let first = udp.socket.recv_from(&mut buf).await;
        while udp.waiting.try_join_next().is_some() {}
        // Queries already queued are read and answered before any answer is sent: one wake-up
        // of the client for the batch rather than one per answer.
        let outbox = Arc::new(Mutex::new(Outbox { open: true, replies: Vec::new() }));
        let mut received = first;
        for n in 1..=UDP_BATCH {
            match received {
                Ok((len, src)) => udp.answer(&buf[..len], src, &outbox),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier reply (the client left) shows up here: not ours.
                Err(error) if !is_fatal(&error) => debug!(%error, "DNS over UDP: receive failed"),
                Err(error) => {
                    warn!(%error, "the DNS server's UDP socket failed: no more UDP answers");
                    return;
                }
            }
            if n == UDP_BATCH {
                break;
            }
            received = udp.socket.try_recv_from(&mut buf);
        }
        let replies = {
            let mut outbox = outbox.lock().unwrap_or_else(|e| e.into_inner());
            outbox.open = false;
            std::mem::take(&mut outbox.replies)
        };
        for (bytes, dst) in replies {
            send_now(&udp.socket, &bytes, dst);
        }
    }
}

fn is_fatal(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::NotConnected | std::io::ErrorKind::ConnectionAborted)
}

impl UdpLoop {
    /// Answer one query: its reply goes to `outbox` when it is ready now, or is sent later by
    /// the task that waits for it.
    fn answer(&mut self, query: &[u8], src: SocketAddr, outbox: &Arc<Mutex<Outbox>>) {
        if src.port() == 0 || src.ip().is_unspecified() {
            return;
        }
        let reply = UdpReply { socket: self.socket.clone(), dst: src, outbox: outbox.clone() };
        let request = match Request::from_bytes(query.to_vec(), src, Protocol::Udp) {
            Ok(request) => request,
            Err(error) => return form_error(query, reply, &error),
        };
        // Never answer a response: that is how reflection loops start.
        if request.metadata.message_type == MessageType::Response {
            return;
        }
        let handler = self.handler.clone();
        let mut answer = Box::pin(async move {
            handler.handle_request::<_, TokioTime>(&request, reply).await;
        });
        // Answer in place when nothing has to wait; a future polled here with a no-op waker
        // is polled again (with the task's waker) as soon as it is spawned.
        let mut cx = Context::from_waker(Waker::noop());
        if answer.as_mut().poll(&mut cx).is_pending()
            && self.waiting.len() < self.handler.options.max_in_flight
        {
            self.waiting.spawn(answer);
        }
    }
}

/// Replies of one batch, sent when the batch is done; once it is closed, a reply (from a lookup
/// that had to wait) is sent at once.
struct Outbox {
    open: bool,
    replies: Vec<(Vec<u8>, SocketAddr)>,
}

/// Send without waiting; a full socket buffer drops the reply (the client asks again).
fn send_now(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    if let Err(error) = socket.try_send_to(bytes, dst) {
        debug!(%error, "DNS over UDP: reply not sent");
    }
}

/// FORMERR for a query that does not parse past its header (shorter than a header: no answer).
fn form_error(query: &[u8], reply: UdpReply, error: &dyn std::fmt::Display) {
    let Ok(header) = Header::read(&mut BinDecoder::new(query)) else { return };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    debug!(%error, "DNS over UDP: a query that does not parse");
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    if let Ok((_, bytes)) = bare_reply(metadata) {
        reply.send(bytes);
    }
}

/// A UDP reply to one client.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    outbox: Arc<Mutex<Outbox>>,
}

impl UdpReply {
    fn send(&self, bytes: Vec<u8>) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if outbox.open {
            outbox.replies.push((bytes, self.dst));
        } else {
            drop(outbox);
            send_now(&self.socket, &bytes, self.dst);
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // At most the client's EDNS payload size, 512 bytes without EDNS (past it the encoder
        // truncates and sets TC); an answer that cannot be encoded becomes SERVFAIL.
        let max = response.edns().map_or(512, |edns| edns.max_payload());
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "a DNS answer could not be encoded: SERVFAIL");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let (header, header_bytes) = bare_reply(metadata)?;
                bytes = header_bytes;
                ResponseInfo::from(header)
            }
        };
        self.send(bytes);
        Ok(info)
    }
}

/// A reply that is only a header (no records).
fn bare_reply(metadata: Metadata) -> Result<(Header, Vec<u8>), NetError> {
    let header = Header { metadata, counts: HeaderCounts::default() };
    let mut bytes = Vec::with_capacity(12);
    header.emit(&mut BinEncoder::new(&mut bytes))?;
    Ok((header, bytes))
}

/// UDP and TCP on the same port: with port 0, try free UDP ports until TCP gets the same one.
async fn bind_both(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        return Ok((UdpSocket::bind(listen).await?, TcpListener::bind(listen).await?));
    }
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for both UDP and TCP")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::{Resolve, Tier, TierAnswer};

    /// A tier that knows `box.lab`, cannot be asked about `down.lab`, and knows nothing else.
    #[derive(Debug)]
    struct Fixed(libp2p_identity::PeerId);

    impl Resolve for Fixed {
        fn resolve<'a>(&'a self, host: &'a Label, _: &'a Label) -> TierAnswer<'a> {
            let peer = self.0;
            Box::pin(async move {
                match host.as_str() {
                    "box" => Ok(Some(Resolution {
                        peer,
                        addrs: Vec::new(),
                        tier: Tier::Local,
                        ttl: Duration::from_secs(60),
                    })),
                    // A lookup that has to wait (as a registry's does).
                    "slow" => {
                        tokio::task::yield_now().await;
                        Ok(Some(Resolution {
                            peer,
                            addrs: Vec::new(),
                            tier: Tier::Local,
                            ttl: Duration::from_secs(60),
                        }))
                    }
                    "down" => Err(ResolveError::Unavailable {
                        name: "down.lab".into(),
                        reason: "registry unreachable".into(),
                    }),
                    _ => Ok(None),
                }
            })
        }
    }

    fn handler(max_in_flight: usize) -> (DnsHandler, libp2p_identity::PeerId) {
        let peer = libp2p_identity::PeerId::random();
        let options = DnsOptions {
            suffix: "p2p".parse().unwrap(),
            ttl: Duration::from_secs(10),
            max_in_flight,
            tcp_timeout: Duration::from_secs(1),
        };
        let pool = Pool::new("127.80.0.0/24".parse().unwrap(), 16, Duration::from_secs(60));
        let tiers = Tiers::new(vec![Arc::new(Fixed(peer)) as Arc<dyn Resolve>]);
        (DnsHandler::new(options, tiers, Arc::new(Mutex::new(pool)), None), peer)
    }

    #[tokio::test]
    async fn each_kind_of_name_gets_its_answer() {
        let (dns, peer) = handler(8);
        let a = dns.answer("box.lab.p2p.", RecordType::A).await.unwrap();
        assert!(matches!(a.as_slice(), [RData::A(_)]), "{a:?}");
        assert_eq!(
            dns.answer("BOX.lab.p2p.", RecordType::A).await.unwrap(),
            a,
            "one address per name"
        );
        let txt = dns.answer("box.lab.p2p.", RecordType::TXT).await.unwrap();
        assert_eq!(txt, vec![RData::TXT(TXT::new(vec![peer.to_base58()]))]);
        assert_eq!(dns.answer("box.lab.p2p.", RecordType::AAAA).await, Ok(Vec::new()), "NODATA");
        assert_eq!(dns.answer("nas.lab.p2p.", RecordType::A).await, Err(ResponseCode::NXDomain));
        assert_eq!(dns.answer("down.lab.p2p.", RecordType::A).await, Err(ResponseCode::ServFail));
        assert_eq!(dns.answer("example.com.", RecordType::A).await, Err(ResponseCode::Refused));
        assert_eq!(dns.answer("a.b.c.p2p.", RecordType::A).await, Err(ResponseCode::NXDomain));
        assert_eq!(dns.answer("p2p.", RecordType::SOA).await, Ok(Vec::new()), "the apex exists");
        assert_eq!(dns.answer("lab.p2p.", RecordType::A).await, Ok(Vec::new()), "so do networks");
    }

    #[tokio::test]
    async fn queries_past_the_limit_get_servfail_without_a_lookup() {
        let (dns, _) = handler(0);
        assert_eq!(dns.answer("box.lab.p2p.", RecordType::A).await, Err(ResponseCode::ServFail));
        assert_eq!(dns.answer("example.com.", RecordType::A).await, Err(ResponseCode::Refused));
    }

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = hickory_server::proto::op::Message::query();
        message.metadata.id = id;
        let name = DnsName::from_ascii(name).unwrap();
        message.add_query(hickory_server::proto::op::Query::query(name, qtype));
        message.to_vec().unwrap()
    }

    /// Our own UDP loop: a burst of queries (more than one batch), answers that are ready and
    /// one that has to wait, a query cut short: every one gets its answer, by ID.
    #[tokio::test]
    async fn udp_answers_every_query_of_a_burst_ready_or_waiting() {
        let (dns, peer) = handler(8);
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), dns).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(server.local_addr()).await.unwrap();
        let burst = u16::try_from(UDP_BATCH * 3).unwrap();
        for id in 0..burst {
            client.send(&query(id, "box.lab.p2p.", RecordType::A)).await.unwrap();
        }
        client.send(&query(1000, "slow.lab.p2p.", RecordType::TXT)).await.unwrap();
        client.send(&query(1001, "example.com.", RecordType::A)).await.unwrap();
        let mut cut = query(1002, "box.lab.p2p.", RecordType::A);
        cut.truncate(cut.len() - 3);
        client.send(&cut).await.unwrap();
        // Shorter than a header: no answer at all (nothing to address it with).
        client.send(b"\x12\x34").await.unwrap();

        let mut answers = std::collections::BTreeMap::new();
        let mut buf = [0u8; 1500];
        while answers.len() < usize::from(burst) + 3 {
            let len = tokio::time::timeout(Duration::from_secs(30), client.recv(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("no answer to {} queries", usize::from(burst) + 3 - answers.len())
                })
                .unwrap();
            let reply = hickory_server::proto::op::Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            answers.insert(reply.metadata.id, reply);
        }
        for id in 0..burst {
            let reply = &answers[&id];
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError, "query {id}");
            assert!(matches!(reply.answers.as_slice(), [r] if matches!(r.data, RData::A(_))));
        }
        let slow = &answers[&1000];
        assert_eq!(slow.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            slow.answers.first().map(|r| r.data.clone()),
            Some(RData::TXT(TXT::new(vec![peer.to_base58()])))
        );
        assert_eq!(answers[&1001].metadata.response_code, ResponseCode::Refused);
        assert_eq!(answers[&1002].metadata.response_code, ResponseCode::FormErr);
        server.shutdown().await;
    }
}
