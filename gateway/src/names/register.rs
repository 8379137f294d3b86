//! A member keeps its `register_as` name registered: it claims `HOST` with the network's
//! registrar, renews at half of the record's life, and retries failures with a capped backoff.
//! Every outcome is logged once when it changes (renewals quietly) and shown by `peerup status`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use peerup_resolver::Label;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::protocol::{NamesRequest, NamesResponse, Refusal, encode_bytes};
use super::record::{Action, Claim, Record, unix_now};
use crate::config::{Config, RelayAddr};
use crate::files;
use crate::logging::escaped;
use crate::node::Handle;

/// The first pause after a failure, doubled after each until [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Renewal never comes sooner than this after a success.
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// One name this node registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub network: Label,
    pub host: Label,
    pub registrar: RelayAddr,
}

/// The registrations the config asks for.
pub fn registrations_of(config: &Config) -> Vec<Registration> {
    config
        .networks
        .iter()
        .filter_map(|(name, network)| {
            let host = network.register_as.as_ref()?.0.clone();
            let registrar = network.registrar?.0;
            let relay = network.relays.iter().find(|r| r.peer == registrar)?.clone();
            Some(Registration { network: name.0.clone(), host, registrar: relay })
        })
        .collect()
}

/// What `peerup status` shows of one registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub name: String,
    /// `trying`, `registered` or `refused`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The file in the home that remembers which name this node registered in each network
/// (`NETWORK HOST` per line), so that a changed or removed `register_as` releases the old name
/// instead of leaving it held.
pub const REGISTERED_FILE: &str = "registered_names";

impl RegistrationStatus {
    /// Not registered (yet): asking.
    fn trying(name: &str) -> RegistrationStatus {
        RegistrationStatus {
            name: name.to_owned(),
            state: "trying".into(),
            serial: None,
            expires: None,
            error: None,
        }
    }
}

/// Every registration's latest outcome, shared with the node's status, and the names this
/// node holds (kept in [`REGISTERED_FILE`] when a home is given).
#[derive(Debug, Clone, Default)]
pub struct Registrations {
    statuses: Arc<Mutex<Vec<RegistrationStatus>>>,
    held: Arc<Mutex<BTreeMap<String, String>>>,
    file: Option<PathBuf>,
}

impl Registrations {
    /// Registrations remembered in `path` (a missing or unreadable file: none, with a warning
    /// for the latter).
    pub fn with_file(path: PathBuf) -> Registrations {
        let held = match files::read_checked_text(&path, files::Kind::State) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(network, host)| (network.to_owned(), host.trim().to_owned()))
                .collect(),
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(error) => {
                warn!(%error, "cannot read the names registered before: old names are not released");
                BTreeMap::new()
            }
        };
        Registrations {
            statuses: Arc::default(),
            held: Arc::new(Mutex::new(held)),
            file: Some(path),
        }
    }

    pub fn snapshot(&self) -> Vec<RegistrationStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, status: RegistrationStatus) {
        let mut all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|s| s.name == status.name) {
            Some(slot) => *slot = status,
            None => all.push(status),
        }
    }

    /// The name held in `network` before this start, if any.
    fn held_in(&self, network: &Label) -> Option<String> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(network.as_str()).cloned()
    }

    /// Remember that `host` (or nothing) is held in `network`.
    fn remember(&self, network: &Label, host: Option<&Label>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let before = held.get(network.as_str()).cloned();
        match host {
            Some(host) => held.insert(network.to_string(), host.to_string()),
            None => held.remove(network.as_str()),
        };
        if before.as_deref() == host.map(Label::as_str) {
            return;
        }
        let Some(path) = &self.file else { return };
        let text: String = held.iter().map(|(n, h)| format!("{n} {h}\n")).collect();
        if let Err(error) = files::write_atomic(path, text.as_bytes(), 0o600) {
            warn!(%error, "cannot remember the registered names");
        }
    }

    /// Names held before this start that the config no longer registers, in networks whose
    /// registrar is still configured: to be released.
    pub fn stale(&self, config: &Config) -> Vec<Registration> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let wanted = registrations_of(config);
        held.into_iter()
            .filter_map(|(network, host)| {
                let (name, net) = config.networks.iter().find(|(n, _)| n.0.as_str() == network)?;
                let registrar = net.registrar?.0;
                let relay = net.relays.iter().find(|r| r.peer == registrar)?.clone();
                let host: Label = host.parse().ok()?;
                let still = wanted.iter().any(|w| w.network == name.0 && w.host == host);
                (!still).then(|| Registration { network: name.0.clone(), host, registrar: relay })
            })
            .collect()
    }
}

/// Release a name this node no longer registers, retrying while the registrar is unreachable.
pub async fn release_stale(
    registration: Registration,
    key: Keypair,
    node: Handle,
    board: Registrations,
    stop: CancellationToken,
) {
    let Registration { network, host, registrar } = &registration;
    let name = format!("{host}.{network}");
    let mut backoff = FIRST_BACKOFF;
    loop {
        let claim = Claim::new(&key, registrar.peer, host, Action::Release, unix_now()).sign(&key);
        let request = NamesRequest::Release { claim: encode_bytes(&claim) };
        match ask(&node, registrar, request, CLAIM_TIMEOUT).await {
            Ok(NamesResponse::Record { .. }) => {
                info!(name, "released the name this node registered before (register_as changed)");
                break;
            }
            Ok(NamesResponse::Refused { message, .. }) => {
                info!(name, why = message, "the name registered before is not ours any more");
                break;
            }
            Ok(NamesResponse::NotFound) => break,
            Err(error) => debug!(name, %error, "cannot release the old name yet"),
        }
        let pause = next_backoff(&mut backoff);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if board.held_in(network).as_deref() == Some(host.as_str()) {
        board.remember(network, None);
    }
}

/// What one attempt came to.
enum Outcome {
    Registered(Record),
    Refused(Refusal, String),
    Failed(String),
}

/// Keep `registration` registered until `stop`.
pub async fn keep_registered(
    registration: Registration,
    key: Keypair,
    node: Handle,
    board: Registrations,
    stop: CancellationToken,
) {
    let Registration { network, host, registrar } = &registration;
    let name = format!("{host}.{network}");
    let me = key.public().to_peer_id();
    board.set(RegistrationStatus::trying(&name));
    let mut backoff = FIRST_BACKOFF;
    let mut last_said: Option<String> = None;
    loop {
        let outcome = attempt(&key, me, host, registrar, &node).await;
        let registered = matches!(outcome, Outcome::Registered(_));
        let pause = match outcome {
            Outcome::Registered(record) => {
                backoff = FIRST_BACKOFF;
                board.remember(network, Some(host));
                let said = "registered".to_owned();
                if last_said.as_ref() != Some(&said) {
                    info!(name, registrar = %registrar.peer, expires = record.expires, serial = record.serial, "name registered");
                } else {
                    debug!(name, expires = record.expires, serial = record.serial, "name renewed");
                }
                last_said = Some(said);
                board.set(RegistrationStatus {
                    name: name.clone(),
                    state: "registered".into(),
                    serial: Some(record.serial),
                    expires: Some(record.expires),
                    error: None,
                });
                let life = record.expires.saturating_sub(unix_now());
                Duration::from_secs(life / 2).max(MIN_RENEWAL)
            }
            Outcome::Refused(code, message) => {
                let hint = match code {
                    Refusal::Taken => format!(
                        "choose another networks.{network}.register_as, or ask the registrar's operator (`peerup relay names list`; they can assign {host} to this key in relay.registry.names)"
                    ),
                    Refusal::NotMember => format!(
                        "not a member of the registrar (on the relay: peerup auth add {me} --relay)"
                    ),
                    Refusal::NotRegistrar => format!(
                        "{} is not this network's registrar: check networks.{network}.registrar",
                        registrar.peer
                    ),
                    Refusal::TooMany => "names this key no longer uses lapse after their record's life, or the registrar's operator frees them (`peerup relay names release HOST`)".to_owned(),
                    _ => String::new(),
                };
                let told = match hint.is_empty() {
                    true => message.clone(),
                    false => format!("{message}; {hint}"),
                };
                let said = format!("refused: {told}");
                if last_said.as_ref() != Some(&said) {
                    warn!(name, why = message, hint, retry_in = ?backoff, "registration refused");
                }
                last_said = Some(said);
                board.set(RegistrationStatus {
                    name: name.clone(),
                    state: "refused".into(),
                    serial: None,
                    expires: None,
                    error: Some(told),
                });
                next_backoff(&mut backoff)
            }
            Outcome::Failed(error) => {
                let said = format!("unreachable: {error}");
                if last_said.as_ref() != Some(&said) {
                    warn!(name, registrar = %registrar.peer, %error, retry_in = ?backoff, "registrar unreachable; retrying");
                } else {
                    debug!(name, %error, retry_in = ?backoff, "registrar still unreachable");
                }
                last_said = Some(said);
                let mut status = board.snapshot().into_iter().find(|s| s.name == name);
                // A registered name stays so while its record lives.
                let still = status.as_ref().is_some_and(|s| {
                    s.state == "registered" && s.expires.is_some_and(|e| e > unix_now())
                });
                if !still {
                    status = Some(RegistrationStatus::trying(&name));
                }
                if let Some(mut status) = status {
                    status.error = Some(format!("registrar unreachable: {error}"));
                    board.set(status);
                }
                next_backoff(&mut backoff)
            }
        };
        let renew_at = tokio::time::Instant::now() + pause;
        loop {
            // While registered, look now and then whether the name is still ours (the operator
            // may have released or rebound it): `status` then says so within a minute.
            let wake = match registered {
                true => renew_at.min(tokio::time::Instant::now() + CHECK_EVERY),
                false => renew_at,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            if wake >= renew_at {
                break;
            }
            if !still_ours(me, host, registrar, &node).await {
                warn!(name, "the registrar no longer gives this name to this node; asking again");
                break;
            }
        }
    }
}

/// How often a registered name is checked between renewals.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Does the registrar still give `host` to `me`? An answer that cannot be had says yes (the
/// renewal will tell).
async fn still_ours(me: PeerId, host: &Label, registrar: &RelayAddr, node: &Handle) -> bool {
    let request = NamesRequest::Lookup { host: host.to_string() };
    match ask(node, registrar, request, super::tier::LOOKUP_TIMEOUT).await {
        Ok(NamesResponse::Record { record }) => {
            Record::from_wire(&record, &registrar.peer, host.as_str(), unix_now())
                .map_or(true, |record| record.owner_peer() == Some(me))
        }
        Ok(NamesResponse::NotFound) => false,
        _ => true,
    }
}

/// Send `request` to the registrar and wait for its answer at most `within`.
async fn ask(
    node: &Handle,
    registrar: &RelayAddr,
    request: NamesRequest,
    within: Duration,
) -> Result<NamesResponse, String> {
    let asked = node.names(registrar.peer, vec![registrar.full()], request);
    match tokio::time::timeout(within, asked).await {
        Ok(answer) => answer,
        Err(_) => Err("no answer in time".into()),
    }
}

/// How long a claim may take to be answered (the registrar writes it to disk first).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

fn next_backoff(backoff: &mut Duration) -> Duration {
    let now = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    now
}

async fn attempt(
    key: &Keypair,
    me: PeerId,
    host: &Label,
    registrar: &RelayAddr,
    node: &Handle,
) -> Outcome {
    let claim = Claim::new(key, registrar.peer, host, Action::Register, unix_now()).sign(key);
    let request = NamesRequest::Register { claim: encode_bytes(&claim) };
    let answer = match ask(node, registrar, request, CLAIM_TIMEOUT).await {
        Ok(answer) => answer,
        Err(error) => return Outcome::Failed(error),
    };
    match answer {
        NamesResponse::Record { record } => {
            match Record::from_wire(&record, &registrar.peer, host.as_str(), unix_now()) {
                Ok(record) if record.owner_peer() == Some(me) => Outcome::Registered(record),
                Ok(_) => {
                    Outcome::Failed("the registrar answered with a record for another key".into())
                }
                Err(why) => Outcome::Failed(format!("the registrar's record {why}")),
            }
        }
        // The relay's words, escaped: they end up in `peerup status` on a terminal.
        NamesResponse::Refused { code, message } => Outcome::Refused(code, escaped(&message)),
        NamesResponse::NotFound => Outcome::Failed("the registrar answered not found".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Command;

    /// `keep_registered` for `home.lab` running against a registrar played by the test: the
    /// node's command channel, the registrar's key, our peer ID, the status board.
    struct Fixture {
        commands: tokio::sync::mpsc::Receiver<Command>,
        registrar_key: Keypair,
        me: PeerId,
        board: Registrations,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Fixture {
        fn start() -> Fixture {
            let (node, commands) = Handle::new();
            let registrar_key = Keypair::generate_ed25519();
            let registrar = RelayAddr {
                addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                peer: registrar_key.public().to_peer_id(),
            };
            let registration = Registration {
                network: "lab".parse().unwrap(),
                host: "home".parse().unwrap(),
                registrar,
            };
            let key = Keypair::generate_ed25519();
            let me = key.public().to_peer_id();
            let (board, stop) = (Registrations::default(), CancellationToken::new());
            let task =
                tokio::spawn(keep_registered(registration, key, node, board.clone(), stop.clone()));
            Fixture { commands, registrar_key, me, board, stop, task }
        }

        /// A record for home signed by the registrar, living `life` seconds from now.
        fn record(&self, owner: Option<PeerId>, serial: u64, life: u64) -> NamesResponse {
            let now = unix_now();
            let record = Record {
                registrar: self.registrar_key.public().to_peer_id().to_base58(),
                host: "home".into(),
                owner: owner.map(|o| o.to_base58()),
                serial,
                issued: now,
                expires: now + life,
                why: None,
            };
            NamesResponse::Record { record: encode_bytes(&record.sign(&self.registrar_key)) }
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap();
        }
    }

    /// Our own timers, on paused time: failures back off 1 s, 2 s, ...; a granted record is
    /// renewed at half of its life (50 s, before any check at [`CHECK_EVERY`]).
    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_a_record_is_renewed_at_half_life() {
        let mut f = Fixture::start();
        let started = tokio::time::Instant::now();
        let mut at = Vec::new();
        for attempt in 0..5 {
            let Some(Command::Names { request, reply, .. }) = f.commands.recv().await else {
                panic!("a names request")
            };
            assert!(matches!(request, NamesRequest::Register { .. }));
            at.push(started.elapsed().as_secs());
            if attempt < 2 {
                let _ = reply.send(Err("connection refused".into()));
                continue;
            }
            let _ = reply.send(Ok(f.record(Some(f.me), attempt, 100)));
            tokio::task::yield_now().await;
        }
        assert_eq!(at, vec![0, 1, 3, 53, 103], "backoff 1 s, 2 s; renewal every 50 s");
        let status = f.board.snapshot();
        assert_eq!((status[0].name.as_str(), status[0].state.as_str()), ("home.lab", "registered"));
        f.stop().await;
    }

    /// A name the operator took away shows within [`CHECK_EVERY`]: the check finds another
    /// owner, and the registration is asked again (and refused, with the reason).
    #[tokio::test(start_paused = true)]
    async fn a_name_taken_away_is_noticed_at_the_next_check() {
        let mut f = Fixture::start();
        let started = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let Some(Command::Names { request, reply, .. }) = f.commands.recv().await else {
                panic!("a names request")
            };
            let t = started.elapsed().as_secs();
            let answer = match (&request, seen.len()) {
                (NamesRequest::Register { .. }, 0) | (NamesRequest::Lookup { .. }, 1) => {
                    f.record(Some(f.me), 1, 1000)
                }
                (NamesRequest::Lookup { .. }, 2) => f.record(Some(PeerId::random()), 2, 1000),
                (NamesRequest::Register { .. }, 3) => NamesResponse::Refused {
                    code: Refusal::Taken,
                    message: "home is held by another key".into(),
                },
                other => panic!("unexpected {other:?} at {t} s"),
            };
            seen.push(t);
            let _ = reply.send(Ok(answer));
        }
        tokio::task::yield_now().await;
        assert_eq!(seen, vec![0, 60, 120, 120], "checked every minute; asked again at once");
        assert_eq!(f.board.snapshot()[0].state, "refused");
        f.stop().await;
    }
}
