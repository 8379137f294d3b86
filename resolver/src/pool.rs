//! The fake-IP pool: each `.p2p` name our DNS answers gets a loopback address of its own.
//!
//! Apps that resolve names themselves then connect to that address through the proxy, and the
//! proxy maps it back to the name. Addresses are drawn at random from the pool (a page that
//! rebinds a name to us cannot guess another name's address), stay with their name (persisted
//! across restarts by the caller), and are taken back only from the least recently used names,
//! and only once no client can still hold them (`hold`, several TTLs). A full pool says so
//! instead of looping.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::Rng;

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    base: u32,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an IPv4 network such as 127.80.0.0/12")]
    Malformed(String),
    #[error(
        "{0}: the pool must be in 127.0.0.0/8 (loopback), hold at least 256 addresses (/24 or wider) and leave 127.0.0.0/24 alone"
    )]
    Unsuitable(String),
}

impl std::str::FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Self, NetError> {
        let malformed = || NetError::Malformed(text.to_owned());
        let (addr, len) = text.split_once('/').ok_or_else(malformed)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
        let len: u8 = len.parse().map_err(|_| malformed())?;
        if len > 32 {
            return Err(malformed());
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = Ipv4Net { base: u32::from(addr) & mask, len };
        if !addr.is_loopback() || !(8..=24).contains(&len) || net.contains(Ipv4Addr::LOCALHOST) {
            return Err(NetError::Unsuitable(text.to_owned()));
        }
        Ok(net)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.len)
    }
}

impl Ipv4Net {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) };
        u32::from(addr) & mask == self.base
    }

    /// In the pool, and neither its network nor its broadcast address.
    fn is_usable(&self, addr: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(addr).wrapping_sub(self.base));
        self.contains(addr) && offset >= 1 && offset <= self.usable()
    }

    /// Usable addresses: all but the network and broadcast addresses.
    fn usable(&self) -> u64 {
        (1u64 << (32 - self.len)) - 2
    }

    fn nth_usable(&self, n: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1 + n as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "the DNS address pool is full: {0} names hold an address they were answered with in the last {1:?}"
    )]
    Full(usize, Duration),
}

#[derive(Debug)]
struct Entry {
    addr: Ipv4Addr,
    used: Instant,
    /// A name anyone can make up (a peer label): these share a small part of the pool.
    limited: bool,
}

/// Names and their addresses; at most `capacity` names.
#[derive(Debug)]
pub struct Pool {
    net: Ipv4Net,
    capacity: usize,
    hold: Duration,
    by_name: HashMap<String, Entry>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Bumped on every change of the mappings, so a saver knows when to write.
    generation: u64,
    /// Limited names held now, and at most.
    limited: usize,
    limited_capacity: usize,
}

/// Random draws before the pool is treated as full (a pool this sparse is never close to it).
const DRAWS: usize = 64;

impl Pool {
    /// A pool in `net` for at most `capacity` names; an address returns to the pool only after
    /// `hold` without a query for its name.
    pub fn new(net: Ipv4Net, capacity: usize, hold: Duration) -> Pool {
        let capacity = capacity.min(usize::try_from(net.usable() / 2).unwrap_or(usize::MAX));
        Pool {
            net,
            capacity,
            hold,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            generation: 0,
            limited: 0,
            limited_capacity: (capacity / 16).max(1),
        }
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// Changes so far (allocations and reclaims).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Restore a saved mapping (at start-up). Mappings outside the pool, or clashing with one
    /// already restored, are skipped; so is anything past the capacity.
    pub fn restore(&mut self, name: &str, addr: Ipv4Addr, now: Instant) -> bool {
        let fits = self.net.is_usable(addr)
            && self.by_name.len() < self.capacity
            && !self.by_addr.contains_key(&addr)
            && !self.by_name.contains_key(name);
        if fits {
            self.by_name.insert(name.to_owned(), Entry { addr, used: now, limited: false });
            self.by_addr.insert(addr, name.to_owned());
        }
        fits
    }

    /// The address of `name`, allocating one if it has none. A `limited` name (one anyone can
    /// make up, such as a peer label) draws from a share of the pool (1/16 of the names), so a
    /// flood of made-up names cannot crowd out the configured ones.
    pub fn address(
        &mut self,
        name: &str,
        limited: bool,
        now: Instant,
    ) -> Result<Ipv4Addr, PoolError> {
        if let Some(entry) = self.by_name.get_mut(name) {
            entry.used = now;
            return Ok(entry.addr);
        }
        if limited && self.limited >= self.limited_capacity {
            self.reclaim(now, true)?;
        }
        if self.by_name.len() >= self.capacity {
            self.reclaim(now, false)?;
        }
        let mut rng = rand::rng();
        for _ in 0..DRAWS {
            let addr = self.net.nth_usable(rng.random_range(0..self.net.usable()));
            if !self.by_addr.contains_key(&addr) {
                self.by_name.insert(name.to_owned(), Entry { addr, used: now, limited });
                self.by_addr.insert(addr, name.to_owned());
                self.limited += usize::from(limited);
                self.generation += 1;
                return Ok(addr);
            }
        }
        Err(PoolError::Full(self.by_name.len(), self.hold))
    }

    /// The name an address was given to.
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    /// Every mapping, for saving.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.by_name.iter().map(|(name, entry)| (name.as_str(), entry.addr))
    }

    /// Free the least recently used name (a limited one, if `limited`), if no client can still
    /// hold its address.
    fn reclaim(&mut self, now: Instant, limited: bool) -> Result<(), PoolError> {
        let oldest = self
            .by_name
            .iter()
            .filter(|(_, entry)| entry.limited || !limited)
            .min_by_key(|(_, entry)| entry.used);
        match oldest {
            Some((name, entry)) if now.duration_since(entry.used) >= self.hold => {
                let (name, addr, was_limited) = (name.clone(), entry.addr, entry.limited);
                self.by_name.remove(&name);
                self.by_addr.remove(&addr);
                self.limited -= usize::from(was_limited);
                self.generation += 1;
                Ok(())
            }
            _ => Err(PoolError::Full(self.by_name.len(), self.hold)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_only_loopback_pools_of_some_size_are_taken() {
        assert_eq!(net("127.80.0.0/12").to_string(), "127.80.0.0/12");
        assert!(net("127.80.0.0/12").contains("127.95.255.254".parse().unwrap()));
        assert!(!net("127.80.0.0/12").contains("127.96.0.1".parse().unwrap()));
        for bad in [
            "10.0.0.0/8",
            "127.0.0.0/30",
            "127.0.0.0",
            "127.0.0.0/33",
            "x/8",
            "127.0.0.0/8",
            "127.0.0.0/16",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_keeps_its_address_and_two_names_never_share_one() {
        let mut pool = Pool::new(net("127.80.0.0/24"), 100, Duration::from_secs(60));
        let now = Instant::now();
        let a = pool.address("a.lab", false, now).unwrap();
        let b = pool.address("b.lab", false, now).unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.address("a.lab", false, now).unwrap(), a);
        assert_eq!(pool.name_of(b), Some("b.lab"));
        assert!(net("127.80.0.0/24").contains(a) && a != "127.80.0.0".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn a_full_pool_reclaims_only_names_unused_for_the_hold_time() {
        let hold = Duration::from_secs(60);
        let mut pool = Pool::new(net("127.80.0.0/24"), 2, hold);
        let start = Instant::now();
        pool.address("a", false, start).unwrap();
        pool.address("b", false, start + Duration::from_secs(10)).unwrap();
        let full = pool.address("c", false, start + Duration::from_secs(30));
        assert!(matches!(full, Err(PoolError::Full(2, _))), "{full:?}");
        let later = start + hold + Duration::from_secs(1);
        pool.address("c", false, later).unwrap();
        assert_eq!(pool.len(), 2);
        assert!(pool.entries().all(|(name, _)| name != "a"), "the oldest went");
    }

    #[test]
    fn made_up_names_share_a_sixteenth_of_the_pool() {
        let hold = Duration::from_secs(60);
        let mut pool = Pool::new(net("127.80.0.0/16"), 160, hold);
        let now = Instant::now();
        for i in 0..10 {
            pool.address(&format!("label{i}"), true, now).unwrap();
        }
        assert!(pool.address("label10", true, now).is_err(), "the limited share is full");
        pool.address("home.lab", false, now).unwrap();
        pool.address("label10", true, now + hold).unwrap();
        assert_eq!(pool.len(), 11, "an old made-up name made room");
    }

    #[test]
    fn restored_mappings_outside_the_pool_or_clashing_are_skipped() {
        let mut pool = Pool::new(net("127.80.0.0/24"), 10, Duration::from_secs(60));
        let now = Instant::now();
        assert!(pool.restore("a", "127.80.0.7".parse().unwrap(), now));
        assert!(!pool.restore("b", "127.80.0.7".parse().unwrap(), now), "clash");
        assert!(!pool.restore("c", "127.81.0.7".parse().unwrap(), now), "outside");
        assert!(!pool.restore("d", "127.80.0.255".parse().unwrap(), now), "broadcast");
        assert_eq!(
            pool.address("a", false, now).unwrap(),
            "127.80.0.7".parse::<Ipv4Addr>().unwrap()
        );
    }
}
