//! The `authorized_keys` file: one peer per line.
//!
//! ```text
//! # comment lines and blank lines are ignored
//! 12D3KooWExample...  expires=2027-01-31  # laptop
//! k51qzi5uqu5d...     expires=2027-01-31T12:00:00Z
//! ```
//!
//! A line is `<peer-id> [key=value ...] [# comment]`; the peer ID is base58 or base36. The only
//! option is `expires=`: a date (access ends at the end of that day, UTC) or an RFC 3339 time.
//! An unknown option or a malformed line is an error naming its line number. The parsed file
//! keeps every original line, so edits (`peerup auth add|remove`) keep the user's comments.

use std::fmt;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use peerup_resolver::parse_peer;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, Time};

/// One authorized peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub peer: PeerId,
    /// Access ends at this instant (exclusive).
    pub expires: Option<Expiry>,
    pub comment: Option<String>,
}

/// When access ends, as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The end of this day, UTC.
    Date(Date),
    Instant(OffsetDateTime),
}

impl Expiry {
    /// The first instant at which access is over.
    pub fn ends_at(self) -> OffsetDateTime {
        match self {
            Expiry::Date(date) => match date.next_day() {
                Some(next) => next.with_time(Time::MIDNIGHT).assume_utc(),
                None => OffsetDateTime::new_utc(date, Time::MAX),
            },
            Expiry::Instant(instant) => instant,
        }
    }
}

impl std::str::FromStr for Expiry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let date_format = format_description!("[year]-[month]-[day]");
        if let Ok(date) = Date::parse(text, &date_format) {
            return Ok(Expiry::Date(date));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Expiry::Instant)
            .map_err(|_| format!("expires={text:?}: expected YYYY-MM-DD or an RFC 3339 time"))
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Date(date) => {
                let format = format_description!("[year]-[month]-[day]");
                f.write_str(&date.format(&format).map_err(|_| fmt::Error)?)
            }
            Expiry::Instant(at) => f.write_str(&at.format(&Rfc3339).map_err(|_| fmt::Error)?),
        }
    }
}

impl Entry {
    pub fn allows_at(&self, now: OffsetDateTime) -> bool {
        self.expires.is_none_or(|expiry| now < expiry.ends_at())
    }

    fn render(&self) -> String {
        let mut line = self.peer.to_base58();
        if let Some(expiry) = self.expires {
            line.push_str(&format!(" expires={expiry}"));
        }
        if let Some(comment) = &self.comment {
            line.push_str(&format!(" # {comment}"));
        }
        line
    }
}

/// The longest word a line may hold: a peer ID is at most ~60 characters and an option
/// `expires=` with an RFC 3339 time about 45; longer words are refused before any decoding, so
/// parsing stays linear in the file's size.
const MAX_WORD: usize = 128;

/// Check a comment given on the command line: one line of printable text.
pub fn check_comment(comment: &str) -> Result<(), String> {
    match comment.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "the comment holds a control character ({:?}); a comment is one line of text",
            c
        )),
        None => Ok(()),
    }
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}", path = path.display())]
pub struct KeysError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
enum Line {
    /// Blank or comment line, kept verbatim.
    Other(String),
    Entry(Entry),
}

/// A parsed authorized_keys file.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    lines: Vec<Line>,
}

impl AuthorizedKeys {
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeysError> {
        let mut lines = Vec::new();
        let mut seen: std::collections::HashMap<PeerId, usize> = std::collections::HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let error = |message: String| KeysError { path: path.into(), line: index + 1, message };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let entry = parse_entry(trimmed).map_err(error)?;
            if let Some(first) = seen.insert(entry.peer, index + 1) {
                return Err(error(format!(
                    "{} is listed twice (lines {first} and {}); keep one line",
                    entry.peer,
                    index + 1
                )));
            }
            lines.push(Line::Entry(entry));
        }
        Ok(AuthorizedKeys { lines })
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry(entry) => Some(entry),
            Line::Other(_) => None,
        })
    }

    /// Add a peer, or update it if present: options given replace the old ones, options not
    /// given are kept (an `auth add` without `--expires` never lifts an expiry). Returns true
    /// if it was new.
    pub fn upsert(&mut self, entry: Entry) -> bool {
        for line in &mut self.lines {
            if let Line::Entry(existing) = line
                && existing.peer == entry.peer
            {
                existing.expires = entry.expires.or(existing.expires);
                existing.comment = entry.comment.or(existing.comment.take());
                return false;
            }
        }
        self.lines.push(Line::Entry(entry));
        true
    }

    /// Remove a peer. Returns true if it was present.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let before = self.lines.len();
        self.lines.retain(|line| !matches!(line, Line::Entry(entry) if entry.peer == *peer));
        self.lines.len() != before
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(raw) => out.push_str(raw),
                Line::Entry(entry) => out.push_str(&entry.render()),
            }
            out.push('\n');
        }
        out
    }
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let (fields, comment) = match line.split_once('#') {
        Some((fields, comment)) => (fields, Some(comment.trim().to_owned())),
        None => (line, None),
    };
    let mut words = fields.split_whitespace();
    if let Some(long) = fields.split_whitespace().find(|w| w.len() > MAX_WORD) {
        let start: String = long.chars().take(16).collect();
        return Err(format!("{start:?}…: a word of {} bytes is no peer ID or option", long.len()));
    }
    let first = words.next().ok_or("empty entry")?;
    let peer = parse_peer(first).map_err(|e| format!("{first:?}: {e}"))?;
    let mut expires = None;
    for word in words {
        match word.split_once('=') {
            Some(("expires", value)) if expires.is_none() => expires = Some(value.parse()?),
            Some(("expires", _)) => return Err("expires= given twice".into()),
            Some((key, _)) => return Err(format!("unknown option {key:?} (known: expires=)")),
            None => return Err(format!("{word:?}: expected key=value or a # comment")),
        }
    }
    Ok(Entry { peer, expires, comment: comment.filter(|c| !c.is_empty()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn parse(text: &str) -> Result<AuthorizedKeys, KeysError> {
        AuthorizedKeys::parse(text, Path::new("authorized_keys"))
    }

    #[test]
    fn entries_options_and_comments() {
        let a = PeerId::random();
        let b = PeerId::random();
        let label = peerup_resolver::peer_label(&b);
        let text = format!("# team\n\n{a} expires=2030-01-31 # laptop\n  {label}\n");
        let keys = parse(&text).unwrap();
        let entries: Vec<_> = keys.entries().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].peer, a);
        assert_eq!(entries[0].comment.as_deref(), Some("laptop"));
        assert_eq!(entries[1].peer, b, "base36 labels are accepted");
    }

    #[test]
    fn a_date_expiry_lasts_to_the_end_of_that_day_utc() {
        let keys = parse(&format!("{} expires=2030-01-31", PeerId::random())).unwrap();
        let entry = keys.entries().next().unwrap();
        assert!(entry.allows_at(datetime!(2030-01-31 23:59:59 UTC)));
        assert!(!entry.allows_at(datetime!(2030-02-01 00:00:00 UTC)));
        let keys = parse(&format!("{} expires=2030-01-31T12:00:00+02:00", PeerId::random()));
        let entry = keys.unwrap().entries().next().unwrap().clone();
        assert!(entry.allows_at(datetime!(2030-01-31 09:59:59 UTC)));
        assert!(!entry.allows_at(datetime!(2030-01-31 10:00:00 UTC)));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let good = PeerId::random();
        let cases = [
            format!("{good}\nnot-a-peer\n"),
            format!("{good}\n{good} colour=blue\n"),
            format!("{good}\n{good} expires=tomorrow\n"),
            format!("{good}\n{good} stray\n"),
            format!("{good}\n{good} expires=2030-01-01 expires=2031-01-01\n"),
        ];
        for text in cases {
            let error = parse(&text).unwrap_err();
            assert_eq!(error.line, 2, "{text:?}: {error}");
            assert!(error.to_string().starts_with("authorized_keys:2: "), "{error}");
        }
    }

    #[test]
    fn edits_keep_comments_and_order() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut keys = parse(&format!("# keep me\n{a} # first\n\n{b}\n")).unwrap();
        assert!(keys.upsert(Entry { peer: c, expires: None, comment: Some("new".into()) }));
        assert!(!keys.upsert(Entry { peer: a, expires: None, comment: Some("renamed".into()) }));
        assert!(keys.remove(&b));
        assert!(!keys.remove(&b));
        assert_eq!(keys.render(), format!("# keep me\n{a} # renamed\n\n{c} # new\n"));
    }

    #[test]
    fn an_update_keeps_the_options_it_does_not_give() {
        let a = PeerId::random();
        let mut keys = parse(&format!("{a} expires=2030-01-31 # laptop\n")).unwrap();
        assert!(!keys.upsert(Entry { peer: a, expires: None, comment: None }));
        assert_eq!(keys.render(), format!("{a} expires=2030-01-31 # laptop\n"), "expiry kept");
        let later = "2031-01-01".parse().ok();
        assert!(!keys.upsert(Entry { peer: a, expires: later, comment: None }));
        assert_eq!(keys.render(), format!("{a} expires=2031-01-01 # laptop\n"));
    }

    #[test]
    fn a_peer_listed_twice_is_an_error_naming_both_lines() {
        let a = PeerId::random();
        let error = parse(&format!("{a}\n# x\n{a} expires=2030-01-01\n")).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.message.contains("lines 1 and 3"), "{error}");
    }

    #[test]
    fn huge_tokens_are_refused_before_decoding() {
        // Refused by length (the message says so), before base58 decoding, which is quadratic.
        let error = parse(&"1".repeat(1_000_000)).unwrap_err();
        assert!(error.message.contains("1000000 bytes"), "{error}");
    }

    #[test]
    fn comments_are_one_line_of_text() {
        assert!(check_comment("laptop (alice)").is_ok());
        assert!(check_comment("x\n12D3KooWInjected").is_err());
        assert!(check_comment("\u{1b}[31mred").is_err());
    }
}
