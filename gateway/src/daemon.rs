//! `peerup run`: load everything, bind every listener, serve until a signal, then drain.
//!
//! Start-up order: config, identity, access lists and names are loaded and checked first (any
//! error stops the daemon before it binds anything); then the libp2p listeners and the SOCKS
//! listener are bound; then `<home>/state.json` is written with every bound address, which is
//! the signal that the daemon is ready. While it runs, allow lists, names and services follow
//! their files ([`GatewayReload`]). Shutdown: stop accepting (new SOCKS clients and new inbound
//! streams), give open tunnels `limits.shutdown_grace` to finish, reset the rest, stop the
//! swarm and every background task, remove state.json.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use peerup_proxy::{ProxyConfig, ProxyServer};
use peerup_resolver::{LocalNames, ReloadableNames, Resolve, Tiers};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Access;
use crate::auth::access::AccessLists;
use crate::config::{Config, ConfigError, NameKey, NameValue, parse_names_file};
use crate::connect::Gateway;
use crate::control::ControlServer;
use crate::dns::DnsService;
use crate::files::{self, Home};
use crate::identity;
use crate::names::pins::PINS_FILE;
use crate::names::register::{keep_registered, registrations_of, release_stale};
use crate::names::tier::networks_of;
use crate::names::{Pins, Registrations, RegistryTier};
use crate::node::{Handle, Node, NodeOptions};
use crate::protocol::frame::Reason;
use crate::reload::Reload;
pub use crate::runtime::StartError;
pub use crate::runtime::State;
use crate::runtime::{Ended, Parts, Runtime, warn_if_root};
use crate::service::{ServiceHost, ServiceTable, StreamLimits};
use crate::tunnels::{Direction, Tunnels};

/// Inbound streams queued between the swarm and the service host before "busy" answers.
const INBOUND_QUEUE: usize = 256;

/// Everything read from a home, validated.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub keypair: Keypair,
    pub lists: AccessLists,
    pub names: LocalNames,
}

/// Load and check config, identity, access lists and names.
pub fn load(home: &Home) -> Result<Loaded, StartError> {
    home.check()?;
    let config = Config::load(&home.config())?;
    let keypair = identity::load(&home.identity())?;
    let (lists, names) = load_lists(home, &config)?;
    Ok(Loaded { config, keypair, lists, names })
}

/// What a running daemon reloads from its home: the allow lists and the local names.
fn load_lists(home: &Home, config: &Config) -> Result<(AccessLists, LocalNames), StartError> {
    Ok((AccessLists::load(home, config)?, load_names(home, config)?))
}

/// `names:` from config.yaml merged with names.yaml; a name in both is an error.
pub fn load_names(home: &Home, config: &Config) -> Result<LocalNames, ConfigError> {
    let path = home.join(files::NAMES_FILE.as_ref());
    let mut names: BTreeMap<NameKey, NameValue> = config.names.clone();
    match files::read_checked_text(&path, files::Kind::Config) {
        Ok(text) => {
            for (key, value) in parse_names_file(&text, &path)? {
                if names.contains_key(&key) {
                    return Err(ConfigError::Invalid {
                        path: path.clone(),
                        key: key.to_string(),
                        message: "also defined under names: in config.yaml".into(),
                    });
                }
                names.insert(key, value);
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(LocalNames::new(names.into_iter().map(|(k, v)| ((k.host, k.network), v.0))))
}

/// The resolution tiers built from a home's local names (`names:` and names.yaml).
pub fn local_tiers(home: &Home, config: &Config) -> Result<Tiers, ConfigError> {
    let names = load_names(home, config)?;
    Ok(Tiers::new(vec![Arc::new(names) as Arc<dyn Resolve>]))
}

/// Run the gateway until SIGINT or SIGTERM, then drain.
pub async fn run(home: Home) -> Result<(), StartError> {
    warn_if_root();
    let mut daemon = Daemon::start(home).await?;
    let ended = daemon.runtime.wait().await;
    daemon.shutdown().await;
    match ended {
        Ended::Signal => Ok(()),
        Ended::NodeStopped(why) => Err(StartError::NodeStopped(why)),
    }
}

/// A running gateway: every listener bound, state.json written.
#[derive(Debug)]
pub struct Daemon {
    runtime: Runtime,
    grace: Duration,
    /// Cancelled at shutdown: no new SOCKS clients, no new inbound streams.
    accepting: CancellationToken,
    /// Cancelled when the grace period is over: open tunnels are reset.
    abort: CancellationToken,
    /// The SOCKS connections and served streams.
    tasks: TaskTracker,
    accept_loops: TaskTracker,
    dns: Option<DnsService>,
}

/// The shared pieces a gateway is made of, as the reload loop needs them.
#[derive(Debug, Clone)]
struct Shared {
    access: Arc<Access>,
    tunnels: Arc<Tunnels>,
    names: Arc<ReloadableNames>,
    /// The registry tier, whose networks a reload replaces.
    registry: Arc<RegistryTier>,
    /// The tiers over `names`, whose answer cache a reload clears.
    tiers: Tiers,
    host: Arc<ServiceHost>,
    node: Handle,
}

impl Daemon {
    /// Load `home`, bind every listener, write state.json, and start serving.
    pub async fn start(home: Home) -> Result<Daemon, StartError> {
        let Loaded { config, keypair, lists, names } = load(&home)?;
        let pins = Arc::new(Pins::load(&home.join(PINS_FILE.as_ref()))?);
        let control = ControlServer::bind(&home).await?;
        let key = keypair.clone();
        let registrations =
            Registrations::with_file(home.join(crate::names::register::REGISTERED_FILE.as_ref()));
        let peer = keypair.public().to_peer_id();
        let access = Arc::new(Access::new(lists));
        let tunnels = Arc::new(Tunnels::default());
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let mut node = Node::build(
            keypair,
            access.clone(),
            tunnels.clone(),
            inbound_tx,
            node_options(&config, registrations.clone()),
        )?;
        let listen: Vec<Multiaddr> = config.listen.iter().map(|a| a.0.clone()).collect();
        node.listen(&listen).await?;
        let socks = bind_socks(&config, &home).await?;
        let socks_addr = socks.local_addr().map_err(|source| socks_error(&config, source))?;

        let (handle, commands) = Handle::new();
        let limits = StreamLimits {
            per_peer: config.limits.streams_per_peer,
            total: config.limits.streams_total,
            service_timeout: config.limits.service_timeout.0,
        };
        let table = ServiceTable::from_config(&config);
        let host = ServiceHost::new(table, access.clone(), tunnels.clone(), limits);
        let names = Arc::new(ReloadableNames::new(names));
        let registry = Arc::new(RegistryTier::new(
            networks_of(&config),
            handle.clone(),
            pins.clone(),
            config.dns.ttl.0,
        ));
        let tiers = Tiers::new(vec![
            names.clone() as Arc<dyn Resolve>,
            registry.clone() as Arc<dyn Resolve>,
        ]);
        let shared = Shared {
            access,
            tunnels,
            names,
            registry,
            tiers,
            host: host.clone(),
            node: handle.clone(),
        };
        let mut gateway = gateway(&config, &shared, node.connected(), node.idle_streams());
        let pool = DnsService::pool(&config, &home);
        gateway.pool = pool.clone();
        let gateway = Arc::new(gateway);
        let (accepting, abort) = (CancellationToken::new(), CancellationToken::new());
        let (tasks, accept_loops) = (TaskTracker::new(), TaskTracker::new());
        let dns = match pool {
            Some(pool) => {
                let warming = gateway.clone();
                let warm: peerup_resolver::Warm =
                    Arc::new(move |name, resolution| warming.warm(name, resolution));
                let tiers = gateway.tiers.clone();
                let stop = accepting.clone();
                let started =
                    DnsService::start(&config, &home, pool, tiers, Some(warm), &accept_loops, stop);
                started.await?
            }
            None => None,
        };

        let stop = CancellationToken::new();
        let addrs = node.addresses();
        let mut state = State::new("gateway", peer, Some(socks_addr), control.path());
        state.libp2p = addrs.borrow().iter().map(ToString::to_string).collect();
        state.dns = dns.as_ref().map(DnsService::local_addr);
        let node_task = tokio::spawn(node.run(stop.clone(), commands));
        let reloader =
            GatewayReload { home: home.clone(), shared, watched: Mutex::new(Vec::new()) };
        reloader.remember_files(&config);
        let control =
            control.with_names(gateway.tiers.clone(), gateway.suffix.clone()).with_pins(pins);
        let node = handle.clone();
        let parts = Parts { home, state, control, node, node_task, stop, addrs: Some(addrs) };
        let runtime = Runtime::start(parts, reloader);

        for stale in registrations.stale(&config) {
            let (node, board, stop) = (handle.clone(), registrations.clone(), accepting.clone());
            accept_loops.spawn(release_stale(stale, key.clone(), node, board, stop));
        }
        for registration in registrations_of(&config) {
            let (node, board, stop) = (handle.clone(), registrations.clone(), accepting.clone());
            accept_loops.spawn(keep_registered(registration, key.clone(), node, board, stop));
        }
        accept_loops.spawn(host.run(inbound_rx, accepting.clone(), abort.clone(), tasks.clone()));
        accept_loops.spawn(socks.run(gateway, accepting.clone(), abort.clone(), tasks.clone()));
        accept_loops.close();
        let dns_addr =
            dns.as_ref().map_or_else(|| "off".to_owned(), |d| d.local_addr().to_string());
        info!(%peer, socks = %socks_addr, dns = %dns_addr, services = config.services.len(), "ready");
        Ok(Daemon {
            runtime,
            grace: config.limits.shutdown_grace.0,
            accepting,
            abort,
            tasks,
            accept_loops,
            dns,
        })
    }

    /// Bound addresses and identity, as written to state.json.
    pub fn state(&self) -> &State {
        self.runtime.state()
    }

    /// Stop accepting, give open tunnels the grace period, reset the rest, stop the node and
    /// every background task, remove state.json.
    pub async fn shutdown(self) {
        info!("shutting down");
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        self.accepting.cancel();
        self.accept_loops.wait().await;
        self.tasks.close();
        info!(open = self.tasks.len(), grace = ?self.grace, "no longer accepting; draining open tunnels");
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
            warn!(open = self.tasks.len(), "tunnels still open at the deadline: resetting them");
            self.abort.cancel();
            self.tasks.wait().await;
        }
        self.runtime.stop().await;
        info!("stopped");
    }
}

/// The SOCKS front end's connector: local names, tunnels through the node, direct connections.
fn gateway(
    config: &Config,
    shared: &Shared,
    connected: crate::node::Connected,
    idle: Arc<crate::node::IdleStreams>,
) -> Gateway {
    Gateway {
        tiers: shared.tiers.clone(),
        node: shared.node.clone(),
        connected,
        idle,
        tunnels: shared.tunnels.clone(),
        access: shared.access.clone(),
        suffix: config.dns.suffix.0.clone(),
        direct: config.socks.direct,
        connect_timeout: config.limits.connect_timeout.0,
        pool: None,
        warmed: Default::default(),
        relays: config
            .networks
            .iter()
            .map(|(name, network)| (name.0.clone(), network.relays.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

fn node_options(config: &Config, registrations: Registrations) -> NodeOptions {
    NodeOptions {
        relays: config.all_relays(),
        mdns: config.mdns,
        security: config.security.clone(),
        keepalive: config.limits.keepalive(),
        streams_per_peer: config.limits.streams_per_peer,
        registrations,
    }
}

fn socks_error(config: &Config, source: std::io::Error) -> StartError {
    StartError::Socks { addr: config.socks.listen, source }
}

async fn bind_socks(config: &Config, home: &crate::files::Home) -> Result<ProxyServer, StartError> {
    let proxy_config = ProxyConfig {
        handshake_timeout: config.socks.handshake_timeout.0,
        max_connections: config.socks.max_clients,
        auth: config.proxy_credentials(home)?,
        same_user: config.socks.same_user,
        suffix: config.dns.suffix.0.to_string(),
    };
    let socks = ProxyServer::bind(config.socks.listen, proxy_config)
        .await
        .map_err(|source| socks_error(config, source))?;
    if let Ok(addr) = socks.local_addr()
        && !addr.ip().is_loopback()
    {
        warn!(%addr, "the proxy listener is not on loopback: other machines can use it");
    }
    Ok(socks)
}

/// What a gateway reloads: its allow lists, local names and services. Other config keys take
/// effect at the next start.
#[derive(Debug)]
struct GatewayReload {
    home: Home,
    shared: Shared,
    watched: Mutex<Vec<PathBuf>>,
}

impl GatewayReload {
    fn remember_files(&self, config: &Config) {
        let home = &self.home;
        let mut files = vec![
            home.config(),
            home.join(files::NAMES_FILE.as_ref()),
            self.shared.registry.pins().path().to_owned(),
        ];
        files.push(home.join(&config.authorized_keys));
        files.extend(
            config
                .services
                .values()
                .filter_map(|s| s.authorized_keys.as_ref())
                .map(|f| home.join(f)),
        );
        *self.watched.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

impl Reload for GatewayReload {
    fn watched(&self) -> Vec<PathBuf> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn reload(&self) -> Result<String, String> {
        let home = &self.home;
        home.check().map_err(|e| e.to_string())?;
        let config = Config::load(&home.config()).map_err(|e| e.to_string())?;
        let (lists, names) = load_lists(home, &config).map_err(|e| e.to_string())?;
        let summary = format!(
            "{} global keys, {} services, {} local names",
            lists.global.len(),
            config.services.len(),
            names.len()
        );
        self.remember_files(&config);
        let shared = &self.shared;
        shared.access.replace(lists);
        shared.names.replace(names);
        shared.registry.replace(networks_of(&config));
        shared.tiers.invalidate();
        shared.host.replace_services(ServiceTable::from_config(&config));
        self.enforce().await;
        // The pins last: a bad hand edit of known_names must not hold up a revocation.
        shared.registry.pins().reload().map_err(|e| format!("{summary} applied, but not: {e}"))?;
        Ok(summary)
    }

    async fn enforce(&self) {
        let Shared { access, tunnels, node, .. } = &self.shared;
        let revoked = |t: &crate::tunnels::Info| {
            t.direction == Direction::In
                && t.service.as_ref().is_some_and(|service| !access.may_use(service, &t.peer))
        };
        let count = tunnels.reset(revoked, Reason::Revoked);
        if count > 0 {
            info!(tunnels = count, "access revoked: reset the tunnels of peers no longer allowed");
        }
        let _ = node.access_changed().await;
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.shared.access.next_expiry()
    }
}
