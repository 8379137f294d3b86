//! Our TLS security upgrade for TCP (and relayed) connections.
//!
//! It speaks the libp2p TLS handshake (`/tls/1.0.0`): TLS 1.3 only, ALPN `libp2p`, no SNI,
//! both sides present one self-signed certificate carrying the libp2p extension (the host key
//! and its signature over the certificate key), and the remote [`PeerId`] is the one that
//! extension names. Certificates are made and checked with `libp2p::tls::certificate`, so a
//! peer running the stock libp2p TLS upgrade talks to us unchanged.
//!
//! What differs is the cipher suite order. The stock upgrade offers ChaCha20-Poly1305 first,
//! so two of our nodes always agreed on it, and it cost about a third of the CPU on a busy
//! tunnel. Where the CPU accelerates AES (x86-64 with AES-NI and CLMUL, aarch64 with the AES
//! extension) we offer AES-128-GCM first, AES-256-GCM second and ChaCha20 last; elsewhere
//! ChaCha20 stays first. A TLS 1.3 server of ours picks the first suite *in the client's list*
//! that it supports (rustls's `ignore_client_order = false`), so the dialler's CPU decides: two
//! of our nodes on AES-capable machines use AES-128-GCM, and a stock dialler still gets the
//! ChaCha20 it asks for. Session keys are never logged (no `SSLKEYLOGFILE`).
//!
//! [`TlsOrNoise`] offers this upgrade and Noise in the order config.yaml's `security` lists
//! them, on the gateway's TCP and relayed connections and on the relay's TCP.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::{self, BoxFuture};
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::{PeerId, noise};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, CipherSuite, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, SignatureScheme, SupportedCipherSuite,
};
use tracing::debug;

use crate::config::SecureChannel;

pub use futures_rustls::TlsStream;

/// The security protocol's name, as multistream-select negotiates it.
pub const PROTOCOL: &str = "/tls/1.0.0";
/// The ALPN token of libp2p's TLS handshake.
const ALPN: &[u8] = b"libp2p";
/// libp2p's handshake is TLS 1.3 and nothing older.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Our TLS upgrade: one certificate for our host key, client and server configurations.
#[derive(Debug, Clone)]
pub struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    /// When dialling, the peer we mean to reach (see [`Tls::expecting`]).
    expected: Option<PeerId>,
}

/// Why a TLS upgrade could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make our TLS certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("the peer did not present exactly one certificate")]
    CertificateCount,
    #[error("the peer's certificate: {0}")]
    PeerCertificate(#[from] certificate::ParseError),
    #[error("{0}")]
    WrongPeer(Box<WrongPeer>),
}

/// A dial that reached another peer than the one it expected.
#[derive(Debug, thiserror::Error)]
#[error("reached {actual}, not the peer we dialled ({expected})")]
pub struct WrongPeer {
    pub expected: PeerId,
    pub actual: PeerId,
}

impl Tls {
    /// The upgrade for `keypair`'s identity; usable in `SwarmBuilder::with_tcp` and
    /// `with_relay_client` like `libp2p::tls::Config::new`.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        let (certificate, key) = certificate::generate(keypair)?;
        let provider = Arc::new(provider());
        // One certificate for both roles: the spec lets an endpoint reuse it across
        // connections, and its key is not our host key. (Not `CertifiedKey::from_der`: its
        // consistency check parses the certificate with webpki, which refuses the critical
        // libp2p extension. We made both halves just now.)
        let signer = provider.key_provider.load_private_key(key)?;
        let ours = Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![certificate], signer)));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCertificate { expected: None }))
            .with_client_cert_resolver(ours.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.key_log = Arc::new(rustls::NoKeyLog);

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)?
            .with_client_cert_verifier(Arc::new(PeerCertificate { expected: None }))
            .with_cert_resolver(ours);
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.key_log = Arc::new(rustls::NoKeyLog);
        // The client's order decides (see the module's documentation).
        server.ignore_client_order = false;

        Ok(Tls { client: Arc::new(client), server: Arc::new(server), expected: None })
    }

    /// The same upgrade, whose dials fail unless they reach `peer`. The handshake is aborted
    /// as soon as the listener's certificate names another peer. (A swarm checks the dialled
    /// peer itself after any security upgrade; this is for upgrades applied by hand.)
    pub fn expecting(mut self, peer: PeerId) -> Self {
        let mut client = (*self.client).clone();
        client
            .dangerous()
            .set_certificate_verifier(Arc::new(PeerCertificate { expected: Some(peer) }));
        self.client = Arc::new(client);
        self.expected = Some(peer);
        self
    }
}

/// aws-lc-rs with its default key exchange groups (X25519MLKEM768 first) and TLS 1.3 suites
/// in [`cipher_suites`]'s order.
fn provider() -> CryptoProvider {
    CryptoProvider { cipher_suites: cipher_suites(), ..aws_lc_rs::default_provider() }
}

/// The TLS 1.3 suites, fastest on this CPU first.
fn cipher_suites() -> Vec<SupportedCipherSuite> {
    if aes_accelerated() {
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
    }
}

/// Whether AES-GCM runs in hardware here (AES rounds and the carry-less multiply GHASH needs).
pub fn aes_accelerated() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        // Rust's "aes" on aarch64 covers the AES instructions and PMULL.
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

/// The cipher suite a finished handshake agreed on.
pub fn negotiated_suite<C>(stream: &TlsStream<C>) -> Option<CipherSuite> {
    stream.get_ref().1.negotiated_cipher_suite().map(|suite| suite.suite())
}

impl UpgradeInfo for Tls {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            let stream = TlsStream::from(stream);
            log_negotiated(&stream, peer, "inbound");
            Ok((peer, stream))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec wants no SNI; rustls sends none for an IP address.
            let name = ServerName::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            // The verifier refused any other peer's certificate, and rustls resumes only
            // sessions that verifier accepted; checked once more here all the same.
            if let Some(expected) = self.expected.filter(|expected| *expected != peer) {
                return Err(TlsError::WrongPeer(Box::new(WrongPeer { expected, actual: peer })));
            }
            let stream = TlsStream::from(stream);
            log_negotiated(&stream, peer, "outbound");
            Ok((peer, stream))
        }
        .boxed()
    }
}

/// The peer named by the one certificate the handshake verified.
fn peer_of(state: &CommonState) -> Result<PeerId, TlsError> {
    let Some([certificate]) = state.peer_certificates() else {
        return Err(TlsError::CertificateCount);
    };
    Ok(certificate::parse(certificate)?.peer_id())
}

/// One debug line per connection: the suite and key exchange group it agreed on.
fn log_negotiated<C>(stream: &TlsStream<C>, peer: PeerId, direction: &str) {
    let state = stream.get_ref().1;
    // A finished TLS 1.3 handshake has both (rustls resumes with a fresh key exchange too).
    let (Some(suite), Some(group)) =
        (state.negotiated_cipher_suite(), state.negotiated_key_exchange_group())
    else {
        return;
    };
    debug!(%peer, direction, suite = ?suite.suite(), kx = ?group.name(), "TLS connection negotiated");
}

/// Checks a peer's certificate the libp2p way, in both roles: exactly one certificate, a valid
/// libp2p extension and self-signature (`certificate::parse`), and handshake signatures made by
/// that certificate's key. As a client it may also require a given peer.
#[derive(Debug)]
struct PeerCertificate {
    expected: Option<PeerId>,
}

impl PeerCertificate {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a libp2p peer presents exactly one certificate".into(),
            ));
        }
        let peer = certificate::parse(end_entity).map_err(invalid)?.peer_id();
        match self.expected {
            Some(expected) if expected != peer => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }
}

/// The handshake signature in a TLS 1.3 CertificateVerify, checked with the key of the
/// certificate the peer presented.
fn verify_signature(
    certificate: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    message: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let parsed = certificate::parse(certificate).map_err(invalid)?;
    parsed
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

fn invalid(error: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("libp2p's TLS handshake is TLS 1.3 only".into())
}

/// The handshake signature schemes we accept, preferred first: elliptic curves, then RSA
/// (which the spec allows only without elliptic curve support).
fn schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ]
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(certificate, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for PeerCertificate {
    // Both sides authenticate: a client without a certificate fails the handshake.
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(certificate, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Our TLS and Noise, as many and in the order `security` lists: the dialler proposes them in
/// that order and the listener takes the first it supports.
#[derive(Clone)]
pub struct TlsOrNoise {
    tls: Tls,
    noise: noise::Config,
    /// The protocols offered (dialling) and accepted (listening), preferred first.
    offered: Vec<&'static str>,
}

impl fmt::Debug for TlsOrNoise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOrNoise")
            .field("tls", &self.tls)
            .field("offered", &self.offered)
            .finish_non_exhaustive()
    }
}

/// Why [`TlsOrNoise`] could not be made or its handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("Noise: {0}")]
    Noise(#[from] noise::Error),
}

/// A connection secured by whichever of [`TlsOrNoise`]'s protocols was negotiated.
pub type Secured<C> = future::Either<TlsStream<C>, noise::Output<C>>;

fn secured_tls<C>((peer, stream): (PeerId, TlsStream<C>)) -> (PeerId, Secured<C>) {
    (peer, future::Either::Left(stream))
}

fn secured_noise<C>(
    (peer, stream): (PeerId, noise::Output<C>),
    direction: &str,
) -> (PeerId, Secured<C>) {
    debug!(%peer, direction, "Noise connection negotiated");
    (peer, future::Either::Right(stream))
}

impl TlsOrNoise {
    /// The channels in `order` (config.yaml's `security`): a dial proposes them in this
    /// order, a listener accepts only these.
    pub fn new(keypair: &Keypair, order: &[SecureChannel]) -> Result<Self, SecurityError> {
        let tls = Tls::new(keypair)?;
        let noise = noise::Config::new(keypair)?;
        let offered = order
            .iter()
            .flat_map(|channel| match channel {
                SecureChannel::Tls => tls.protocol_info().collect::<Vec<_>>(),
                SecureChannel::Noise => noise.protocol_info().collect(),
            })
            .collect();
        Ok(TlsOrNoise { tls, noise, offered })
    }
}

impl UpgradeInfo for TlsOrNoise {
    type Info = &'static str;
    type InfoIter = std::vec::IntoIter<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.offered.clone().into_iter()
    }
}

impl<C> InboundConnectionUpgrade<C> for TlsOrNoise
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, protocol: Self::Info) -> Self::Future {
        if protocol == PROTOCOL {
            self.tls.upgrade_inbound(socket, protocol).map_ok(secured_tls).err_into().boxed()
        } else {
            let noise = self.noise.upgrade_inbound(socket, protocol);
            noise.map_ok(|out| secured_noise(out, "inbound")).err_into().boxed()
        }
    }
}

impl<C> OutboundConnectionUpgrade<C> for TlsOrNoise
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, protocol: Self::Info) -> Self::Future {
        if protocol == PROTOCOL {
            self.tls.upgrade_outbound(socket, protocol).map_ok(secured_tls).err_into().boxed()
        } else {
            let noise = self.noise.upgrade_outbound(socket, protocol);
            noise.map_ok(|out| secured_noise(out, "outbound")).err_into().boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::tls as stock;
    use rustls::NamedGroup;
    use tokio::io::DuplexStream;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    use super::*;

    type Pipe = Compat<DuplexStream>;

    /// Dial over an in-memory pipe with `dialler` while `listener` accepts; both results.
    async fn handshake<D, L>(
        dialler: D,
        listener: L,
        protocol: &'static str,
    ) -> (Result<D::Output, D::Error>, Result<L::Output, L::Error>)
    where
        D: OutboundConnectionUpgrade<Pipe, Info = &'static str>,
        L: InboundConnectionUpgrade<Pipe, Info = &'static str>,
    {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::join!(
            dialler.upgrade_outbound(a.compat(), protocol),
            listener.upgrade_inbound(b.compat(), protocol)
        )
    }

    /// Bytes cross the secured pipe both ways.
    async fn exchange(
        mut a: impl AsyncRead + AsyncWrite + Unpin,
        mut b: impl AsyncRead + AsyncWrite + Unpin,
    ) {
        let mut buf = [0u8; 5];
        a.write_all(b"hello").await.unwrap();
        a.flush().await.unwrap();
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        b.write_all(b"again").await.unwrap();
        b.flush().await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }

    /// The suite two of our nodes should agree on here.
    fn fastest() -> CipherSuite {
        match aes_accelerated() {
            true => CipherSuite::TLS13_AES_128_GCM_SHA256,
            false => CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }

    #[tokio::test]
    async fn our_nodes_agree_on_the_fastest_suite() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (out, inb) =
            handshake(Tls::new(&dialler).unwrap(), Tls::new(&listener).unwrap(), PROTOCOL).await;
        let (seen_by_dialler, out) = out.unwrap();
        let (seen_by_listener, inb) = inb.unwrap();
        assert_eq!(seen_by_dialler, listener.public().to_peer_id());
        assert_eq!(seen_by_listener, dialler.public().to_peer_id());
        assert_eq!(negotiated_suite(&out), Some(fastest()));
        assert_eq!(negotiated_suite(&inb), Some(fastest()));
        let group = out.get_ref().1.negotiated_key_exchange_group().map(|g| g.name());
        assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
        exchange(out, inb).await;
    }

    #[test]
    fn suites_follow_the_cpu() {
        let suites: Vec<_> = cipher_suites().iter().map(|s| s.suite()).collect();
        assert_eq!(suites.len(), 3);
        assert_eq!(suites[0], fastest());
        let keypair = Keypair::generate_ed25519();
        let tls = Tls::new(&keypair).unwrap();
        assert!(!tls.server.ignore_client_order);
        assert_eq!(tls.client.alpn_protocols, vec![b"libp2p".to_vec()]);
        assert_eq!(tls.client.crypto_provider().kx_groups[0].name(), NamedGroup::X25519MLKEM768);
    }

    #[tokio::test]
    async fn a_dial_expecting_the_listener_succeeds() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let expected = listener.public().to_peer_id();
        let (out, inb) = handshake(
            Tls::new(&dialler).unwrap().expecting(expected),
            Tls::new(&listener).unwrap(),
            PROTOCOL,
        )
        .await;
        assert_eq!(out.unwrap().0, expected);
        assert_eq!(inb.unwrap().0, dialler.public().to_peer_id());
    }

    #[tokio::test]
    async fn a_dial_expecting_another_peer_fails() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let (out, inb) = handshake(
            Tls::new(&dialler).unwrap().expecting(other),
            Tls::new(&listener).unwrap(),
            PROTOCOL,
        )
        .await;
        let error = out.err().unwrap();
        assert!(matches!(error, TlsError::Handshake(_)), "{error}");
        assert!(inb.is_err());
    }

    #[tokio::test]
    async fn resumed_sessions_name_the_peer_and_keep_their_expectation() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let expected = listener.public().to_peer_id();
        let ours = Tls::new(&dialler).unwrap().expecting(expected);
        let theirs = Tls::new(&listener).unwrap();
        let (out, inb) = handshake(ours.clone(), theirs.clone(), PROTOCOL).await;
        // Reading lets the dialler take the session tickets the listener sent.
        exchange(out.unwrap().1, inb.unwrap().1).await;

        // The second dial resumes: no certificate crosses, the session's is reported.
        let (out, inb) = handshake(ours.clone(), theirs.clone(), PROTOCOL).await;
        let (peer, out) = out.unwrap();
        assert_eq!(out.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(peer, expected);
        assert_eq!(inb.unwrap().0, dialler.public().to_peer_id());

        // A dial expecting someone else never resumes that session (rustls ties sessions to
        // the verifier that accepted them), so the listener's certificate is refused.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let (out, _) = handshake(ours.expecting(other), theirs, PROTOCOL).await;
        let error = out.err().unwrap();
        assert!(matches!(error, TlsError::Handshake(_)), "{error}");
    }

    #[tokio::test]
    async fn a_stock_listener_takes_our_order() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (out, inb) = handshake(
            Tls::new(&dialler).unwrap(),
            stock::Config::new(&listener).unwrap(),
            PROTOCOL,
        )
        .await;
        let (seen_by_dialler, out) = out.unwrap();
        let (seen_by_listener, inb) = inb.unwrap();
        assert_eq!(seen_by_dialler, listener.public().to_peer_id());
        assert_eq!(seen_by_listener, dialler.public().to_peer_id());
        // rustls servers (the stock upgrade's too) follow the client's preference.
        assert_eq!(negotiated_suite(&out), Some(fastest()));
        exchange(out, inb).await;
    }

    #[tokio::test]
    async fn a_stock_dialler_gets_its_own_order() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (out, inb) = handshake(
            stock::Config::new(&dialler).unwrap(),
            Tls::new(&listener).unwrap(),
            PROTOCOL,
        )
        .await;
        let (seen_by_dialler, out) = out.unwrap();
        let (seen_by_listener, inb) = inb.unwrap();
        assert_eq!(seen_by_dialler, listener.public().to_peer_id());
        assert_eq!(seen_by_listener, dialler.public().to_peer_id());
        // The stock upgrade offers ChaCha20 first, and our listener follows the client.
        assert_eq!(negotiated_suite(&inb), Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
        exchange(out, inb).await;
    }

    #[tokio::test]
    async fn tls_or_noise_speaks_both() {
        let (dialler, listener) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (out, inb) = handshake(
            Tls::new(&dialler).unwrap(),
            TlsOrNoise::new(&listener, BOTH).unwrap(),
            PROTOCOL,
        )
        .await;
        let (_, out) = out.unwrap();
        let (peer, inb) = inb.unwrap();
        assert_eq!(peer, dialler.public().to_peer_id());
        assert!(matches!(inb, future::Either::Left(_)));
        exchange(out, inb).await;

        let (out, inb) = handshake(
            noise::Config::new(&dialler).unwrap(),
            TlsOrNoise::new(&listener, BOTH).unwrap(),
            "/noise",
        )
        .await;
        let (peer, out) = out.unwrap();
        assert_eq!(peer, listener.public().to_peer_id());
        let (peer, inb) = inb.unwrap();
        assert_eq!(peer, dialler.public().to_peer_id());
        assert!(matches!(inb, future::Either::Right(_)));
        exchange(out, inb).await;
    }

    const BOTH: &[SecureChannel] = &[SecureChannel::Tls, SecureChannel::Noise];

    #[test]
    fn the_configured_protocols_are_offered_in_order() {
        let key = Keypair::generate_ed25519();
        let offered =
            |order| -> Vec<_> { TlsOrNoise::new(&key, order).unwrap().protocol_info().collect() };
        assert_eq!(offered(BOTH), vec![PROTOCOL, "/noise"]);
        assert_eq!(offered(&[SecureChannel::Noise, SecureChannel::Tls]), vec!["/noise", PROTOCOL]);
        assert_eq!(offered(&[SecureChannel::Noise]), vec!["/noise"]);
        assert_eq!(offered(&[SecureChannel::Tls]), vec![PROTOCOL]);
    }
}
