//! The daemon's log: level filters, colour only on a terminal, and every field escaped.
//!
//! Fields carry strings from outside (a SOCKS hostname, a DNS name, a peer's error text). A
//! newline in one would forge a log line, an ESC would drive the reader's terminal, a bidi
//! override would reorder what they read. So the field formatter escapes, once, for every
//! event and span: control characters and bidi controls are written as `\n`, `\u{1b}` and so
//! on (line and paragraph separators too). Our own messages and field names contain none of
//! them, so nothing else changes. A backslash is kept as it is: a hostname may spell `\n`
//! literally, but that cannot break a line.

use std::fmt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// Install the global subscriber: `-q` warnings only, `-v` debug, `-vv` trace; `RUST_LOG`
/// overrides both.
pub fn init(verbose: u8, quiet: bool) {
    let ours = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // libp2p is chatty at info; our own crates follow -v/-q.
    let default = format!(
        "warn,peerup={ours},peerup_gateway={ours},peerup_proxy={ours},peerup_resolver={ours}"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // fast-socks5 logs a client's password at debug: never below warn, whatever RUST_LOG says.
    let filter = match "fast_socks5=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Colour only for a person at a terminal, never into a log file or a pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .fmt_fields(EscapedFields::default())
        .try_init();
}

/// The default field layout (`name=value`), with every value escaped (see the module doc).
#[derive(Debug, Default)]
pub struct EscapedFields {
    inner: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut plain = String::new();
        self.inner.format_fields(Writer::new(&mut plain), fields)?;
        write_escaped(&mut writer, &plain)
    }
}

/// Write `text` with control characters and bidi controls escaped.
pub fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        if needs_escape(c) {
            write!(out, "{}", c.escape_default())?;
        } else {
            out.write_char(c)?;
        }
    }
    Ok(())
}

/// `text` as [`write_escaped`] writes it.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = write_escaped(&mut out, text);
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("web.lab\x1b[31m\nFAKE"), "web.lab\\u{1b}[31m\\nFAKE");
        assert_eq!(escaped("a\u{202e}b\tc\r"), "a\\u{202e}b\\tc\\r");
        assert_eq!(escaped("x\u{2028}y\u{061c}"), "x\\u{2028}y\\u{61c}");
        assert_eq!(escaped("héllo wörld, \"quoted\" 名前"), "héllo wörld, \"quoted\" 名前");
    }
}
