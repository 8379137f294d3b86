//! `known_names`: registry answers pinned on first use, like ssh's known_hosts.
//!
//! One line per name, `HOST.NETWORK PEER-ID`; `#` starts a comment. The first registry answer
//! for a name is written here; a later answer naming another peer is refused until the user
//! runs `peerup resolve --forget NAME`. The file is the daemon's: it is rewritten whole (a new
//! file, renamed over the old one) at every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libp2p::PeerId;
use peerup_resolver::{Label, parse_peer};
use tracing::warn;

use crate::files::{self, FileError, Kind};

pub const PINS_FILE: &str = "known_names";
/// Names pinned at most; past it, answers are used but no longer pinned (with a warning).
pub const MAX_PINS: usize = 65_536;

const HEADER: &str = "\
# Registry answers pinned on first use: HOST.NETWORK PEER-ID. A name that later answers with
# another peer is refused; `peerup resolve --forget HOST.NETWORK` removes its line. The running
# daemon writes this file; an edit by hand is read within a second, like the other files.
";

/// What the pins say of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The name was pinned to this peer already (or is now).
    Trusted,
    /// The name is pinned to another peer.
    Mismatch { pinned: PeerId },
}

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}:{line}: expected `HOST.NETWORK PEER-ID`", path = path.display())]
    Malformed { path: PathBuf, line: usize },
    #[error("{path}:{line}: {name} is pinned twice", path = path.display())]
    Twice { path: PathBuf, line: usize, name: String },
}

#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    pins: Mutex<BTreeMap<String, PeerId>>,
}

impl Pins {
    /// Load `path` (missing: no pins yet).
    pub fn load(path: &Path) -> Result<Pins, PinsError> {
        let pins = match files::read_checked_text(path, Kind::Config) {
            Ok(text) => parse(&text, path)?,
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Pins { path: path.to_owned(), pins: Mutex::new(pins) })
    }

    /// Read the file again (an edit by hand); on an error the pins stay as they were.
    pub fn reload(&self) -> Result<usize, PinsError> {
        let fresh = Pins::load(&self.path)?;
        let fresh = fresh.pins.into_inner().unwrap_or_else(|e| e.into_inner());
        let count = fresh.len();
        *self.pins.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Check an answer for `name` (`host.network`), pinning it if the name is new.
    pub fn check(&self, name: &str, peer: PeerId) -> Verdict {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        match pins.get(name) {
            Some(pinned) if *pinned == peer => Verdict::Trusted,
            Some(pinned) => Verdict::Mismatch { pinned: *pinned },
            None if pins.len() >= MAX_PINS => {
                warn!(name, "known_names is full: this answer is used without being pinned");
                Verdict::Trusted
            }
            None => {
                pins.insert(name.to_owned(), peer);
                if let Err(error) = self.save(&pins) {
                    warn!(%error, name, "could not write known_names: the pin lasts until restart");
                }
                Verdict::Trusted
            }
        }
    }

    /// Remove the pin of `name`; returns the peer it was pinned to.
    pub fn forget(&self, name: &str) -> Result<Option<PeerId>, FileError> {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let removed = pins.remove(name);
        if removed.is_some() {
            self.save(&pins)?;
        }
        Ok(removed)
    }

    fn save(&self, pins: &BTreeMap<String, PeerId>) -> Result<(), FileError> {
        let mut text = HEADER.to_owned();
        for (name, peer) in pins {
            text.push_str(&format!("{name} {peer}\n"));
        }
        files::write_atomic(&self.path, text.as_bytes(), 0o600)
    }
}

fn parse(text: &str, path: &Path) -> Result<BTreeMap<String, PeerId>, PinsError> {
    let mut pins = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || PinsError::Malformed { path: path.to_owned(), line: index + 1 };
        let mut words = line.split_whitespace();
        let (Some(name), Some(peer), None) = (words.next(), words.next(), words.next()) else {
            return Err(malformed());
        };
        let peer = parse_peer(peer).map_err(|_| malformed())?;
        let (host, network) = name.split_once('.').ok_or_else(malformed)?;
        let (host, network) = match (host.parse::<Label>(), network.parse::<Label>()) {
            (Ok(host), Ok(network)) => (host, network),
            _ => return Err(malformed()),
        };
        let name = format!("{host}.{network}");
        if pins.insert(name.clone(), peer).is_some() {
            return Err(PinsError::Twice { path: path.to_owned(), line: index + 1, name });
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_answer_is_pinned_a_different_one_refused_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let pins = Pins::load(&path).unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(pins.check("home.lab", a), Verdict::Trusted);
        assert_eq!(pins.check("home.lab", a), Verdict::Trusted);
        assert_eq!(pins.check("home.lab", b), Verdict::Mismatch { pinned: a });
        let reloaded = Pins::load(&path).unwrap();
        assert_eq!(reloaded.check("home.lab", b), Verdict::Mismatch { pinned: a }, "persisted");
        assert_eq!(reloaded.forget("home.lab").unwrap(), Some(a));
        assert_eq!(reloaded.check("home.lab", b), Verdict::Trusted);
        std::fs::write(&path, "home.lab not-a-peer\n").unwrap();
        assert!(matches!(Pins::load(&path), Err(PinsError::Malformed { line: 1, .. })));
        std::fs::write(&path, format!("!!! {a}\n")).unwrap();
        assert!(matches!(Pins::load(&path), Err(PinsError::Malformed { line: 1, .. })));
        std::fs::write(&path, format!("home.lab.p2p {a}\n")).unwrap();
        assert!(matches!(Pins::load(&path), Err(PinsError::Malformed { line: 1, .. })));
        std::fs::write(&path, format!("home.lab {a}\n# x\nHOME.lab {b}\n")).unwrap();
        assert!(matches!(Pins::load(&path), Err(PinsError::Twice { line: 3, .. })));
        // A hand edit is read by reload; a bad one leaves the pins as they were.
        std::fs::write(&path, format!("home.lab {b}\n")).unwrap();
        assert_eq!(reloaded.reload().unwrap(), 1);
        assert_eq!(reloaded.check("home.lab", a), Verdict::Mismatch { pinned: b });
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(reloaded.reload().is_err());
        assert_eq!(reloaded.check("home.lab", a), Verdict::Mismatch { pinned: b });
    }
}
