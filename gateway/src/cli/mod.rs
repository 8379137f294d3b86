//! The command line: parsing, dispatch, logging set-up, and exit codes.
//!
//! Exit codes are one table ([`Exit`]): 0 success; 1 internal error; 2 bad usage or config;
//! 3 no such name; 4 not authorized; 5 peer unreachable, timed out or busy; 6 refused. Every
//! failure prints one line on stderr saying what went wrong and what to do.

mod admin;
mod connect;
mod exit;
mod names;
mod status;

pub use exit::{Exit, Failure};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::files::Home;

#[derive(Debug, Parser)]
#[command(
    name = "peerup",
    version,
    about = "Reach your own machines by name from any app, without root",
    long_about = "Reach your own machines by name from any app, without root.\n\n\
        `peerup run` serves a proxy (SOCKS5, SOCKS4a, HTTP) on 127.0.0.1:1080 that tunnels connections to \
        HOST.NETWORK.p2p names over authenticated libp2p streams, and offers this machine's \
        services to the peers its authorized_keys files allow.",
    after_help = "Start: peerup init && peerup run, then\n  \
        curl --socks5-hostname 127.0.0.1:1080 http://home.alice.p2p/",
    after_long_help = exit::help_footer()
)]
pub struct Cli {
    /// The node's home directory [default: ~/.config/peerup]
    #[arg(long, env = "PEERUP_HOME", value_name = "DIR", global = true)]
    home: Option<PathBuf>,
    /// More logging (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create identity.key (0600), config.yaml and authorized_keys; never overwrites
    #[command(after_help = "Join a network whose relay's operator gave you its address:\n  \
        peerup init --network lab --relay /ip4/203.0.113.7/tcp/4101/p2p/12D3KooW... --name laptop\n\
        then ask the operator to run `peerup auth add <your peer ID> --relay` on the relay.")]
    Init {
        #[command(flatten)]
        join: admin::Join,
    },
    /// Print this node's peer ID (base58) and its DNS label (base36); on a relay's home, also
    /// the line a new member runs to join and the line that admits it
    Id {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway: proxy (SOCKS5, SOCKS4a, HTTP, PAC file), DNS, services, libp2p node,
    /// relay reservations
    Run,
    /// Run a circuit relay for the members in the relay's authorized_keys (and its network's
    /// name registrar when relay.registry.registrar is its own ID)
    Relay {
        #[command(subcommand)]
        action: Option<RelayCommand>,
    },
    /// Ask the running daemon: peers, paths (direct/relayed), reservations, circuits
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Edit or list authorized_keys files
    Auth {
        #[command(subcommand)]
        action: admin::AuthCommand,
    },
    /// Resolve NAME through the tiers; print peer ID, tier, TTL
    #[command(
        after_help = "Exit: 0 resolved; 3 no such name; 4 refused (the name is pinned to another peer); 5 the name service or the daemon cannot be reached."
    )]
    Resolve {
        /// HOST.NETWORK.p2p, HOST.NETWORK, or a peer label
        name: String,
        /// One JSON object: peer_id, tier, ttl_secs, addrs
        #[arg(long, conflicts_with = "forget")]
        json: bool,
        /// Remove the name's pin from known_names: the next registry answer is pinned afresh
        #[arg(long)]
        forget: bool,
    },
    /// Bridge stdin/stdout to HOST:PORT through the running daemon (ssh ProxyCommand)
    #[command(
        after_help = "In ~/.ssh/config (or see `peerup ssh-config`):\n  Host *.p2p\n    ProxyCommand peerup connect %h:%p\n\nExit: 3 no such name; 4 not authorized; 5 unreachable; 6 refused."
    )]
    Connect {
        /// e.g. home.alice.p2p:22
        #[arg(value_name = "HOST:PORT")]
        target: String,
    },
    /// Listen locally and tunnel every connection to HOST:PORT (like ssh -L), for programs
    /// that know no proxy; prints the bound address on stdout, runs until Ctrl-C
    #[command(
        after_help = "Example: peerup forward 127.0.0.1:2222 home.alice.p2p:22, then ssh -p 2222 127.0.0.1\n\nA bare PORT listens on 127.0.0.1; port 0 picks a free one. Like the proxy, it serves only your own user's programs (socks.same_user)."
    )]
    Forward {
        /// PORT or ADDRESS:PORT to listen on
        #[arg(value_name = "LISTEN")]
        listen: String,
        /// e.g. home.alice.p2p:22
        #[arg(value_name = "HOST:PORT")]
        target: String,
    },
    /// Print a `Host *.p2p` block for ~/.ssh/config: ssh then reaches .p2p names through this
    /// gateway (`peerup ssh-config >> ~/.ssh/config`)
    SshConfig,
    /// Validate the config
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// The network's names, on the registrar's home (through its control socket when running)
    Names {
        #[command(subcommand)]
        action: names::NamesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate config.yaml and every file it references
    Check,
}

/// No daemon answers for `home` (exit 5, like an unreachable peer).
fn not_running(home: &Home) -> Failure {
    let dir = home.dir().display();
    Failure::new(
        Exit::Unreachable,
        format!(
            "no daemon is running for {dir} (start it with `peerup run`, or `peerup relay` for a relay)"
        ),
    )
}

/// Ask the daemon listening on `socket`, if any: `Ok(None)` when nobody listens there (no
/// daemon, or a state.json left by one that died), so the caller works on the files instead.
async fn ask_daemon(
    socket: Option<PathBuf>,
    request: serde_json::Value,
) -> Result<Option<serde_json::Value>, Failure> {
    let Some(socket) = socket else { return Ok(None) };
    match crate::control::request_value(&socket, request).await {
        Ok(answer) => Ok(Some(answer)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Failure::new(Exit::Unreachable, format!("the daemon did not answer: {e}"))),
    }
}

/// The control socket of the gateway running in `home`, as its state.json names it.
fn gateway_socket(home: &Home) -> Option<PathBuf> {
    crate::runtime::State::read(home).filter(|s| s.role == "gateway").map(|s| s.control)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose, cli.quiet);
    let home = Home::new(cli.home);
    let result = match cli.command {
        Command::Init { join } => admin::init(&home, &join),
        Command::Id { json } => admin::id(&home, json),
        Command::Run => refuse_key_log()
            .and_then(|()| daemon_runtime(&home))
            .and_then(|rt| rt.block_on(crate::daemon::run(home)).map_err(|e| Failure::start(&e))),
        Command::Relay { action: None } => {
            refuse_key_log().and_then(|()| daemon_runtime(&home)).and_then(|rt| {
                rt.block_on(crate::relay::daemon::run(home)).map_err(|e| Failure::start(&e))
            })
        }
        Command::Relay { action: Some(RelayCommand::Names { action }) } => {
            runtime().and_then(|rt| rt.block_on(names::run(&home, action)))
        }
        Command::Status { json } => runtime().and_then(|rt| rt.block_on(status::run(&home, json))),
        Command::Auth { action } => admin::auth(&home, action),
        Command::Resolve { name, json, forget: false } => {
            runtime().and_then(|rt| rt.block_on(admin::resolve(&home, &name, json)))
        }
        Command::Resolve { name, forget: true, .. } => {
            runtime().and_then(|rt| rt.block_on(admin::forget(&home, &name)))
        }
        Command::Connect { target } => {
            runtime().and_then(|rt| rt.block_on(connect::run(&home, &target)))
        }
        Command::Forward { listen, target } => {
            runtime().and_then(|rt| rt.block_on(connect::forward(&home, &listen, &target)))
        }
        Command::SshConfig => connect::ssh_config(&home),
        Command::Config { action: ConfigCommand::Check } => admin::config_check(&home),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "peerup", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("peerup: {}", failure.message);
            ExitCode::from(failure.exit.code())
        }
    }
}

/// libp2p's TLS (QUIC's handshake still uses it; our TCP upgrade, `node::tls`, never logs keys)
/// writes every session key to the file named by `SSLKEYLOGFILE`; a daemon must
/// never leak its keys that way, and the variable cannot be removed from inside (unsafe code is
/// forbidden here), so the daemon refuses to start while it is set.
fn refuse_key_log() -> Result<(), Failure> {
    match std::env::var_os("SSLKEYLOGFILE") {
        Some(_) => Err(Failure::usage(
            "SSLKEYLOGFILE is set: the TLS library would write this daemon's session keys to \
             that file; unset it (`env -u SSLKEYLOGFILE peerup ...`) and start again",
        )),
        None => Ok(()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    build_runtime(tokio::runtime::Builder::new_multi_thread())
}

/// A daemon's runtime: `limits.threads` worker threads. A config that cannot be read here is
/// reported by the daemon itself, which reads it again.
fn daemon_runtime(home: &Home) -> Result<tokio::runtime::Runtime, Failure> {
    let limits = crate::config::Config::load(&home.config()).map(|c| c.limits).unwrap_or_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(limits.threads());
    build_runtime(builder)
}

fn build_runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, Failure> {
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the async runtime: {e}")))
}
