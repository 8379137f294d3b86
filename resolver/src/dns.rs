//! The local DNS server: `.p2p` names for apps that resolve names themselves.
//!
//! Answers come from our own [`RequestHandler`] (no zone files): a name under the suffix that
//! the tiers resolve gets an A record from the [`Pool`] and a TXT record with the peer ID in
//! base58; AAAA gets an empty answer (NODATA); an unknown name NXDOMAIN; a tier that cannot
//! answer now SERVFAIL; anything outside the suffix REFUSED (never forwarded); a message that is
//! not a single standard query FORMERR or NOTIMP. hickory spawns a task per UDP query with no
//! limit, so queries past `max_in_flight` get SERVFAIL at once instead of a lookup.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, TXT};
use hickory_server::proto::rr::{DNSClass, Name as DnsName, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
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

/// A running DNS server on one UDP socket and one TCP listener (same address).
pub struct DnsServer {
    server: Server<DnsHandler>,
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
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, tcp_timeout, 64 * 1024);
        Ok(DnsServer { server, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop answering and wait for the listeners to end.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            debug!(%error, "DNS server shutdown");
        }
    }
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
}
