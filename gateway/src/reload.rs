//! Live reload: allow lists, names and services follow their files without a restart.
//!
//! The loop reloads when a watched file changes (checked every [`POLL`]: its inode, size and
//! modification time), on SIGHUP, and when asked through the control socket (`peerup auth`
//! does so after every edit). A reload reads everything first and puts it in force only if all
//! of it is valid: an invalid edit keeps the last good state and is logged with its file and
//! line. Between reloads the loop sleeps until the next `expires=` moment, then enforces the
//! lists again, so access ends at that moment and not at the next connect.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often watched files are checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// What a daemon reloads.
pub trait Reload: Send + Sync + 'static {
    /// The files whose change triggers a reload (re-read after each reload).
    fn watched(&self) -> Vec<PathBuf>;

    /// Read everything again and put it in force; an error keeps the last good state.
    /// Returns a one-line summary.
    fn reload(&self) -> impl Future<Output = Result<String, String>> + Send;

    /// End what the lists in force no longer allow (an `expires=` moment passed).
    fn enforce(&self) -> impl Future<Output = ()> + Send;

    /// The next moment at which some access ends.
    fn next_expiry(&self) -> Option<SystemTime>;
}

/// A reload asked for through the control socket, answered with its outcome.
pub type Request = oneshot::Sender<Result<String, String>>;

/// A file's identity and version, or `None` when it does not exist.
type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

fn fingerprint(path: &PathBuf) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()))
}

fn fingerprints(paths: &[PathBuf]) -> Vec<Fingerprint> {
    paths.iter().map(fingerprint).collect()
}

/// The watched files as they were when the daemon became ready: a change after that moment is
/// a change, even one made before the loop first looks.
#[derive(Debug)]
pub struct Baseline {
    watched: Vec<PathBuf>,
    seen: Vec<Fingerprint>,
}

impl Baseline {
    /// Take it now (before the daemon says it is ready).
    pub fn of<R: Reload>(reloader: &R) -> Baseline {
        let watched = reloader.watched();
        let seen = fingerprints(&watched);
        Baseline { watched, seen }
    }
}

/// Run until `stop`: reload on change (against `baseline` first), SIGHUP or request; enforce
/// at each expiry.
pub async fn run<R: Reload>(
    reloader: R,
    baseline: Baseline,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let Baseline { mut watched, mut seen } = baseline;
    let mut expiry = deadline(reloader.next_expiry());
    loop {
        let expiry_sleep = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let hangup_signal = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = hangup_signal => "SIGHUP",
            Some(reply) = requests.recv() => {
                let outcome = apply(&reloader, "request").await;
                let _ = reply.send(outcome);
                "request"
            }
            () = tokio::time::sleep(POLL) => {
                if fingerprints(&watched) == seen { continue }
                "a file changed"
            }
            () = expiry_sleep => {
                info!("an expires= moment passed: enforcing the allow lists");
                reloader.enforce().await;
                expiry = deadline(reloader.next_expiry());
                continue;
            }
        };
        if why != "request" {
            let _ = apply(&reloader, why).await;
        }
        watched = reloader.watched();
        seen = fingerprints(&watched);
        expiry = deadline(reloader.next_expiry());
    }
}

/// The longest the loop sleeps towards an expiry before looking at the wall clock again.
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(6 * 3600);

/// When to wake for the expiry at `at` (wall clock), on tokio's clock.
fn deadline(at: Option<SystemTime>) -> Option<tokio::time::Instant> {
    at.map(|at| tokio::time::Instant::now() + until(at).min(MAX_EXPIRY_SLEEP))
}

async fn apply<R: Reload>(reloader: &R, why: &str) -> Result<String, String> {
    let outcome = reloader.reload().await;
    match &outcome {
        Ok(summary) => info!(why, %summary, "reloaded"),
        Err(error) => warn!(why, %error, "reload failed: keeping the last good state"),
    }
    outcome
}

/// Time from now until `at` (zero if it passed), in tokio's clock.
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Counts what the loop asked for; its files are whatever the test writes.
    #[derive(Default, Clone)]
    struct Probe {
        files: Arc<Mutex<Vec<PathBuf>>>,
        reloads: Arc<AtomicUsize>,
        enforced: Arc<AtomicUsize>,
        expiry: Arc<Mutex<Option<SystemTime>>>,
    }

    impl Reload for Probe {
        fn watched(&self) -> Vec<PathBuf> {
            self.files.lock().unwrap().clone()
        }
        async fn reload(&self) -> Result<String, String> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            Ok("ok".into())
        }
        async fn enforce(&self) {
            self.enforced.fetch_add(1, Ordering::SeqCst);
            *self.expiry.lock().unwrap() = None;
        }
        fn next_expiry(&self) -> Option<SystemTime> {
            *self.expiry.lock().unwrap()
        }
    }

    /// A probe watching `name` in a fresh directory (the file is not created).
    fn watching(name: &str) -> (tempfile::TempDir, PathBuf, Probe) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        let probe = Probe::default();
        probe.files.lock().unwrap().push(file.clone());
        (dir, file, probe)
    }

    /// Wait until the probe has been reloaded `n` times (a bound of 10 s turns a miss into a
    /// failure).
    async fn reloaded(probe: &Probe, n: usize) {
        let started = std::time::Instant::now();
        while probe.reloads.load(Ordering::SeqCst) < n {
            assert!(started.elapsed() < Duration::from_secs(10), "the change was not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_is_enforced_at_its_moment_and_not_before() {
        let probe = Probe::default();
        *probe.expiry.lock().unwrap() = Some(SystemTime::now() + Duration::from_secs(3600));
        let stop = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run(probe.clone(), Baseline::of(&probe), rx, stop.clone()));
        tokio::time::sleep(Duration::from_secs(3599)).await;
        assert_eq!(probe.enforced.load(Ordering::SeqCst), 0, "not before its moment");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(probe.enforced.load(Ordering::SeqCst), 1, "at its moment");
        assert_eq!(probe.reloads.load(Ordering::SeqCst), 0, "no file changed");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_changed_file_and_a_request_each_reload() {
        let (dir, file, probe) = watching("authorized_keys");
        std::fs::write(&file, "one\n").unwrap();
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run(probe.clone(), Baseline::of(&probe), rx, stop.clone()));
        let (reply, answer) = oneshot::channel();
        tx.send(reply).await.unwrap();
        assert_eq!(answer.await.unwrap(), Ok("ok".to_owned()));
        assert_eq!(probe.reloads.load(Ordering::SeqCst), 1);
        // A replaced file (new inode, as `peerup auth` writes) is noticed within a poll or two.
        let temp = dir.path().join("new");
        std::fs::write(&temp, "two lines\n").unwrap();
        std::fs::rename(&temp, &file).unwrap();
        reloaded(&probe, 2).await;
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_file_changed_between_ready_and_the_first_look_is_reloaded() {
        let (_dir, file, probe) = watching("names.yaml");
        let baseline = Baseline::of(&probe);
        // Written once the daemon said it is ready, before its reload loop ran.
        std::fs::write(&file, "home.alice: x\n").unwrap();
        let stop = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run(probe.clone(), baseline, rx, stop.clone()));
        reloaded(&probe, 1).await;
        stop.cancel();
        task.await.unwrap();
    }
}
