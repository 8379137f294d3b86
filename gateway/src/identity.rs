//! The node's identity: an Ed25519 key in libp2p's protobuf encoding, mode 0600.

use std::path::Path;

use libp2p::identity::Keypair;

use crate::files::{FileError, Kind, create_new, read_checked};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Missing, unreadable, too open, not a regular file: the checked reader's words.
    #[error("{0}{hint}", hint = if .0.is_not_found() { "\nhint: create an identity with `peerup init`" } else { "" })]
    File(#[from] FileError),
    #[error(
        "{path} is empty or truncated ({len} bytes; a key is {KEY_LEN}): restore it from a backup, or move it away and run `peerup init` for a new identity (a new peer ID)",
        path = path.display()
    )]
    Truncated { path: std::path::PathBuf, len: usize },
    #[error(
        "{path} is not a peerup identity ({len} bytes that are not a libp2p protobuf-encoded Ed25519 key): restore it from a backup, or move it away and run `peerup init` for a new identity (a new peer ID)",
        path = path.display()
    )]
    Decode { path: std::path::PathBuf, len: usize },
    #[error("cannot encode the new key: {0}")]
    Encode(String),
}

/// The length of an Ed25519 key in libp2p's protobuf encoding.
const KEY_LEN: usize = 68;

/// Create a new key at `path`; fails if a file is already there.
pub fn generate(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let encoded =
        keypair.to_protobuf_encoding().map_err(|e| IdentityError::Encode(e.to_string()))?;
    create_new(path, &encoded, 0o600)?;
    Ok(keypair)
}

/// Load the key, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<Keypair, IdentityError> {
    let bytes = read_checked(path, Kind::Secret)?;
    let (path, len) = (path.to_owned(), bytes.len());
    if len < KEY_LEN {
        return Err(IdentityError::Truncated { path, len });
    }
    Keypair::from_protobuf_encoding(&bytes).map_err(|_| IdentityError::Decode { path, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let key = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public(), key.public());
        assert!(generate(&path).is_err(), "never overwrites");
    }

    #[test]
    fn each_broken_key_says_what_is_wrong_and_only_a_missing_one_says_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let said = |path: &Path| load(path).unwrap_err().to_string();
        assert!(said(&path).contains("hint: create an identity with `peerup init`"));
        generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let open = said(&path);
        assert!(open.contains("chmod 600") && !open.contains("hint"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 20] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let truncated = said(&path);
            assert!(
                truncated.contains("empty or truncated") && !truncated.contains("rsa"),
                "{truncated}"
            );
        }
        std::fs::write(&path, [0xffu8; 80]).unwrap();
        let garbage = said(&path);
        assert!(
            garbage.contains("not a peerup identity") && !garbage.contains("hint"),
            "{garbage}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let directory = said(&path);
        assert!(
            directory.contains("not a regular file") && !directory.contains("hint"),
            "{directory}"
        );
    }
}
