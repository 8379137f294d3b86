//! The exit codes, in one table: every command fails through [`Failure`], whose [`Exit`] says
//! which code and what it means (as the product's contract lists them).

use std::fmt;

use peerup_proxy::FailureKind;

use crate::runtime::StartError;

/// Why a command failed, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: something went wrong inside peerup (or the system under it).
    Internal,
    /// 2: bad usage or config (a file, a key, an argument).
    Usage,
    /// 3: no such name.
    NoSuchName,
    /// 4: not authorized.
    NotAuthorized,
    /// 5: peer unreachable, timed out or busy; also no daemon to ask.
    Unreachable,
    /// 6: refused: no such service, or its local address refused or did not accept in time.
    Refused,
}

impl Exit {
    /// Every exit, in code order (for the table in `--help` and its test).
    pub const ALL: [Exit; 6] = [
        Exit::Internal,
        Exit::Usage,
        Exit::NoSuchName,
        Exit::NotAuthorized,
        Exit::Unreachable,
        Exit::Refused,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Internal => 1,
            Exit::Usage => 2,
            Exit::NoSuchName => 3,
            Exit::NotAuthorized => 4,
            Exit::Unreachable => 5,
            Exit::Refused => 6,
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Internal => "internal error",
            Exit::Usage => "bad usage or config",
            Exit::NoSuchName => "no such name",
            Exit::NotAuthorized => "not authorized",
            Exit::Unreachable => "peer unreachable, timed out or busy (or no daemon running)",
            Exit::Refused => "refused: no such service, or the service did not accept",
        }
    }

    /// The exit for a connect failure (SOCKS reply kind).
    pub fn of_connect(kind: FailureKind) -> Exit {
        match kind {
            FailureKind::NoSuchName => Exit::NoSuchName,
            FailureKind::NotAllowed => Exit::NotAuthorized,
            FailureKind::Unreachable
            | FailureKind::NameServiceUnreachable
            | FailureKind::TimedOut
            | FailureKind::Busy => Exit::Unreachable,
            FailureKind::NoSuchService | FailureKind::Refused | FailureKind::ServiceTimeout => {
                Exit::Refused
            }
            FailureKind::CommandNotSupported | FailureKind::General => Exit::Internal,
        }
    }

    /// The exit for a daemon that could not start: what is wrong with the home is usage; a
    /// node that would not build or stopped is internal.
    pub fn of_start(error: &StartError) -> Exit {
        match error {
            StartError::Node(_) | StartError::NodeStopped(_) => Exit::Internal,
            _ => Exit::Usage,
        }
    }
}

/// The end of `--help`: how to start, and the exit codes.
pub(super) fn help_footer() -> String {
    format!(
        "Start: peerup init && peerup run, then\n  curl --socks5-hostname 127.0.0.1:1080 http://home.alice.p2p/\n\n{}",
        table()
    )
}

/// The exit codes in one line, as `--help` shows them.
pub(super) fn table() -> String {
    let mut out = String::from("Exit codes: 0 success");
    for exit in Exit::ALL {
        out.push_str(&format!("; {} {}", exit.code(), exit.meaning()));
    }
    out.push('.');
    out
}

/// A failed command: why (its exit code) and the one line to print.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into() }
    }

    /// Bad usage or config.
    pub fn usage(message: impl fmt::Display) -> Self {
        Failure::new(Exit::Usage, message.to_string())
    }

    /// Something failed inside.
    pub fn internal(message: impl fmt::Display) -> Self {
        Failure::new(Exit::Internal, message.to_string())
    }

    /// A daemon that could not start (or whose node stopped): the line says which part failed.
    pub fn start(error: &StartError) -> Self {
        let what = match error {
            StartError::NodeStopped(_) => "stopped",
            _ => "cannot start",
        };
        Failure::new(Exit::of_start(error), format!("{what} ({}): {error}", error.part()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_the_products_and_distinct() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(Exit::of_connect(FailureKind::ServiceTimeout).code(), 6);
        assert_eq!(Exit::of_connect(FailureKind::Busy).code(), 5);
        assert!(table().contains("3 no such name; 4 not authorized"));
    }
}
