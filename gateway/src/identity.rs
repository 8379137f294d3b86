//! The node's identity: an Ed25519 key in libp2p's protobuf encoding, mode 0600.

use std::path::Path;

use libp2p::identity::Keypair;

use crate::files::{FileError, Kind, create_new, read_checked};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: not a libp2p protobuf-encoded key: {reason}", path = path.display())]
    Decode { path: std::path::PathBuf, reason: String },
}

/// Create a new key at `path`; fails if a file is already there.
pub fn generate(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let encoded = keypair
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Decode { path: path.to_owned(), reason: e.to_string() })?;
    create_new(path, &encoded, 0o600)?;
    Ok(keypair)
}

/// Load the key, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<Keypair, IdentityError> {
    let bytes = read_checked(path, Kind::Secret)?;
    Keypair::from_protobuf_encoding(&bytes)
        .map_err(|e| IdentityError::Decode { path: path.to_owned(), reason: e.to_string() })
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
    fn a_readable_key_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::write(&path, b"garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a libp2p"));
    }
}
