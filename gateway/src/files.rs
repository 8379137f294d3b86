//! The home directory and the file rules every node follows.
//!
//! A home holds everything of one node (`--home DIR` or `PEERUP_HOME`; by default the platform
//! config dir), so several nodes run side by side on one machine. Like sshd's StrictModes, files
//! that decide who gets in are refused when group or others could change them, and the key is
//! refused when group or others could read it. Every edit is a temp file plus rename, so a crash
//! never leaves half a file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.yaml";
pub const IDENTITY_FILE: &str = "identity.key";
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";
pub const NAMES_FILE: &str = "names.yaml";
pub const STATE_FILE: &str = "state.json";

/// A file or directory whose permissions are unsafe, or that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "{path} is readable by group or others (mode {mode:03o}); run: chmod 600 {path}",
        path = path.display()
    )]
    KeyReadable { path: PathBuf, mode: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:03o}); run: chmod go-w {path}",
        path = path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{path} is owned by another user (uid {owner}); it must be yours or root's",
        path = path.display()
    )]
    Owner { path: PathBuf, owner: u32 },
    #[error("{path} is not a regular file ({what})", path = path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "{path} is {size} bytes; a {kind} is at most {limit} bytes",
        path = path.display()
    )]
    TooLarge { path: PathBuf, kind: &'static str, size: u64, limit: u64 },
    #[error("{path}: {source}", path = path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is a symlink to nothing ({target}): fix or remove it", path = path.display(), target = target.display())]
    Dangling { path: PathBuf, target: PathBuf },
}

/// What a file read through [`read_checked`] is, and so the rules it must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// config.yaml, names.yaml: nobody else may change them.
    Config,
    /// An authorized_keys file: nobody else may change it.
    Keys,
    /// identity.key: nobody else may read it either.
    Secret,
    /// State the daemon writes for itself (dns_pool.json): larger, and only a cache.
    State,
}

impl Kind {
    fn limit(self) -> u64 {
        match self {
            Kind::Config | Kind::Keys => 1 << 20,
            Kind::Secret => 4096,
            Kind::State => 16 << 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Config => "config file",
            Kind::Keys => "authorized_keys file",
            Kind::Secret => "key file",
            Kind::State => "state file",
        }
    }
}

/// The one way every file of a home is read: opened without blocking (a FIFO cannot hang us),
/// then checked on the open handle (no swap between check and read): a regular file, owned by
/// us or root, not writable by group or others (and for a secret, not readable either), no
/// larger than its kind allows — and read no further than that.
pub fn read_checked(path: &Path, kind: Kind) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match std::fs::read_link(path) {
            // A symlink whose target is gone is not "no file": a file we would write next
            // would replace the link, and what it pointed at would be silently forgotten.
            Ok(target) if e.kind() == io::ErrorKind::NotFound => {
                FileError::Dangling { path: path.to_owned(), target }
            }
            _ => FileError::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| FileError::io(path, e))?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() { "a directory" } else { "a device, FIFO or socket" };
        return Err(FileError::NotRegular { path: path.to_owned(), what });
    }
    let mode = meta.mode() & 0o777;
    if kind == Kind::Secret && mode & 0o077 != 0 {
        return Err(FileError::KeyReadable { path: path.to_owned(), mode });
    }
    check_owner_and_mode(path, &meta)?;
    let limit = kind.limit();
    if meta.len() > limit {
        let (kind, size) = (kind.name(), meta.len());
        return Err(FileError::TooLarge { path: path.to_owned(), kind, size, limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| FileError::io(path, e))?;
    if bytes.len() as u64 > limit {
        let size = bytes.len() as u64;
        return Err(FileError::TooLarge { path: path.to_owned(), kind: kind.name(), size, limit });
    }
    Ok(bytes)
}

/// [`read_checked`] for a text file.
pub fn read_checked_text(path: &Path, kind: Kind) -> Result<String, FileError> {
    let bytes = read_checked(path, kind)?;
    String::from_utf8(bytes).map_err(|_| {
        FileError::io(path, io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    })
}

impl FileError {
    /// The file does not exist (callers with a default for that case).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl FileError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        FileError::Io { path: path.to_owned(), source }
    }
}

/// The home directory of one node.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `explicit` comes from `--home` or `PEERUP_HOME`; otherwise the platform config dir.
    /// The path is made absolute (against the current directory), so everything derived from
    /// it — the control socket named in state.json among them — works from any directory.
    pub fn new(explicit: Option<PathBuf>) -> Home {
        let dir = explicit.unwrap_or_else(|| {
            dirs::config_dir().unwrap_or_else(|| PathBuf::from(".config")).join("peerup")
        });
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Home { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path named in the config: relative paths are relative to the home.
    pub fn join(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    pub fn identity(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Refuse a home that group or others can write (they could swap any file in it).
    pub fn check(&self) -> Result<(), FileError> {
        check_not_writable(&self.dir)
    }
}

/// Refuse a file or directory that group or others can write, or that another user owns (as
/// sshd's StrictModes: whoever owns it can change it).
pub fn check_not_writable(path: &Path) -> Result<(), FileError> {
    let meta = fs::metadata(path).map_err(|e| FileError::io(path, e))?;
    check_owner_and_mode(path, &meta)
}

/// StrictModes on metadata already read: not writable by group or others, owned by us or root.
fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), FileError> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(FileError::Writable { path: path.to_owned(), mode });
    }
    if meta.uid() != my_uid() && meta.uid() != 0 {
        return Err(FileError::Owner { path: path.to_owned(), owner: meta.uid() });
    }
    Ok(())
}

/// The uid this process runs as (the owner of its /proc entry).
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Create a directory (and parents) private to the user.
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| FileError::io(path, e))
}

/// Create `path` with `contents` and `mode`; fails if it exists (never overwrites).
pub fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| FileError::io(path, e))
}

/// Replace `path` atomically: write a temp file beside it, sync, rename over.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|e| FileError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_checks_say_which_chmod_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("identity.key");
        create_new(&key, b"x", 0o644).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_checked(&key, Kind::Secret).unwrap_err().to_string();
        assert!(error.contains("mode 644") && error.contains("chmod 600"), "{error}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        read_checked(&key, Kind::Secret).unwrap();

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = check_not_writable(dir.path()).unwrap_err().to_string();
        assert!(error.contains("chmod go-w"), "{error}");
    }

    #[test]
    fn the_checked_reader_refuses_what_is_not_a_private_regular_file_of_sane_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        create_new(&file, b"a: 1\n", 0o600).unwrap();
        assert_eq!(read_checked_text(&file, Kind::Config).unwrap(), "a: 1\n");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let error = read_checked(&file, Kind::Config).unwrap_err().to_string();
        assert!(error.contains("chmod go-w"), "{error}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_checked(&file, Kind::Config).is_ok());
        let error = read_checked(&file, Kind::Secret).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");

        let error = read_checked(dir.path(), Kind::Config).unwrap_err().to_string();
        assert!(error.contains("a directory"), "{error}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let error = read_checked(&fifo, Kind::Config).unwrap_err().to_string();
        assert!(error.contains("FIFO"), "a FIFO is refused, not waited on: {error}");
        let link = dir.path().join("random");
        std::os::unix::fs::symlink("/dev/urandom", &link).unwrap();
        assert!(read_checked(&link, Kind::Keys).unwrap_err().to_string().contains("not a regular"));

        let big = dir.path().join("big");
        create_new(&big, &vec![b'#'; (1 << 20) + 1], 0o600).unwrap();
        let error = read_checked(&big, Kind::Keys).unwrap_err().to_string();
        assert!(error.contains("at most 1048576 bytes"), "{error}");
        assert!(
            read_checked(&dir.path().join("nothing"), Kind::Config).unwrap_err().is_not_found()
        );
    }

    #[test]
    fn create_new_never_overwrites_and_atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_new(&path, b"one", 0o600).unwrap();
        assert!(create_new(&path, b"two", 0o600).is_err());
        write_atomic(&path, b"three", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left behind");
    }
}
