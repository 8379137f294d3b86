//! The daemon's DNS server: the resolver crate's server on `dns.listen`, its address pool kept
//! in `dns_pool.json` so a name keeps its address across restarts.
//!
//! The pool file is written by one saver task at most four times a second, only after a change,
//! and once more at shutdown; it is read through the checked reader at start.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerup_resolver::{DnsHandler, DnsOptions, DnsServer, Pool, Tiers, Warm};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::files::{self, Home, Kind};

/// Names kept in the pool at most (an entry is a few dozen bytes).
const POOL_CAPACITY: usize = 65_536;
/// Answers a flood of queries can hold at once.
const MAX_IN_FLIGHT: usize = 256;
/// How often the saver looks for changes (a change is written within this; at most one write
/// per interval however many names are added).
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// A running DNS server and its pool.
#[derive(Debug)]
pub struct DnsService {
    server: DnsServer,
    pub pool: Arc<Mutex<Pool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the DNS server on {addr} (UDP and TCP): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl DnsService {
    /// The address pool, with the mappings saved in the home, when `dns.listen` is set.
    pub fn pool(config: &Config, home: &Home) -> Option<Arc<Mutex<Pool>>> {
        config.dns.listen.addr?;
        // A mapping returns to the pool only after many TTLs without a query.
        let hold = config.dns.ttl.0.saturating_mul(30).max(Duration::from_secs(300));
        let mut pool = Pool::new(config.dns.pool.0, POOL_CAPACITY, hold);
        load(&pool_path(home), &mut pool, &config.dns.suffix.0);
        Some(Arc::new(Mutex::new(pool)))
    }

    /// Start the server on `pool` (from [`DnsService::pool`]); the saver runs on `tasks` until
    /// `stop`.
    pub async fn start(
        config: &Config,
        home: &Home,
        pool: Arc<Mutex<Pool>>,
        tiers: Tiers,
        warm: Option<Warm>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Option<DnsService>, DnsError> {
        let Some(listen) = config.dns.listen.addr else { return Ok(None) };
        if !listen.ip().is_loopback() {
            warn!(%listen, "the DNS server listens beyond this machine: others can read your names");
        }
        let ttl = config.dns.ttl.0;
        let path = pool_path(home);
        let options = DnsOptions {
            suffix: config.dns.suffix.0.clone(),
            ttl,
            max_in_flight: MAX_IN_FLIGHT,
            tcp_timeout: Duration::from_secs(10),
        };
        let handler = DnsHandler::new(options, tiers, pool.clone(), warm);
        let server = match DnsServer::bind(listen, handler).await {
            Ok(server) => server,
            // The default port is taken (another daemon, another home): no DNS server, said.
            Err(error) if !config.dns.listen.explicit => {
                warn!(%listen, %error, "no DNS server: its default address is taken; set dns.listen (null: off)");
                return Ok(None);
            }
            Err(source) => return Err(DnsError::Bind { addr: listen, source }),
        };
        tasks.spawn(save_loop(pool.clone(), path, stop));
        info!(dns = %server.local_addr(), pool = %config.dns.pool.0, "DNS server answering .p2p names");
        Ok(Some(DnsService { server, pool }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn pool_path(home: &Home) -> PathBuf {
    home.dir().join("dns_pool.json")
}

/// Restore the saved mappings. The file is only a cache: one that cannot be read or parsed is
/// set aside with a warning (names then get new addresses), never a reason not to start.
fn load(path: &std::path::Path, pool: &mut Pool, suffix: &peerup_resolver::Label) {
    let text = match files::read_checked_text(path, Kind::State) {
        Ok(text) => text,
        Err(error) if error.is_not_found() => return,
        Err(error) => {
            warn!(%error, "the saved DNS addresses cannot be read: starting with an empty pool");
            return;
        }
    };
    let saved: BTreeMap<String, Ipv4Addr> = match serde_json::from_str(&text) {
        Ok(saved) => saved,
        Err(error) => {
            let path = path.display();
            warn!(%path, %error, "the saved DNS addresses are not a pool file: starting with an empty pool");
            return;
        }
    };
    let now = Instant::now();
    // A name that no longer parses under the suffix (it changed) must not keep an address.
    let ours = |name: &str| matches!(peerup_resolver::Name::parse(name, suffix), Ok(Some(_)));
    let skipped = saved
        .iter()
        .filter(|(name, addr)| !(ours(name) && pool.restore(name, **addr, now)))
        .count();
    if skipped > 0 {
        warn!(skipped, pool = %pool.net(), "saved DNS addresses outside the pool, clashing or not under the suffix were dropped");
    }
}

/// Write the mappings: copied under the lock, serialised and written off the async workers.
async fn save(pool: &Mutex<Pool>, path: &std::path::Path) -> u64 {
    let (generation, entries) = {
        let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<(String, Ipv4Addr)> =
            pool.entries().map(|(name, addr)| (name.to_owned(), addr)).collect();
        (pool.generation(), entries)
    };
    let path = path.to_owned();
    let written = tokio::task::spawn_blocking(move || {
        let entries: BTreeMap<String, Ipv4Addr> = entries.into_iter().collect();
        let text = serde_json::to_string(&entries).unwrap_or_default();
        files::write_atomic(&path, text.as_bytes(), 0o600)
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "cannot save the DNS pool"),
        Err(error) => warn!(%error, "cannot save the DNS pool"),
    }
    generation
}

async fn save_loop(pool: Arc<Mutex<Pool>>, path: PathBuf, stop: CancellationToken) {
    let generation = || pool.lock().unwrap_or_else(|e| e.into_inner()).generation();
    let mut saved = generation();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SAVE_EVERY) => {}
        }
        if generation() != saved {
            saved = save(&pool, &path).await;
        }
    }
    if generation() != saved {
        save(&pool, &path).await;
    }
}
