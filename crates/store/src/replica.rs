//! Replica identities (DESIGN §4): a SQLite database keeps one in a file
//! beside it, so a restarted single server takes its own experiments back at
//! once; otherwise a replica gets a random identity per process.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use runnel_core::ReplicaId;

use crate::error::StoreError;

/// The file that holds the replica identity of the SQLite database `db`:
/// `runnel.db` → `runnel.db.replica-id`.
pub fn replica_id_file(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".replica-id");
    PathBuf::from(name)
}

/// A fresh random identity, `replica-<uuid>`.
pub fn random_replica_id() -> ReplicaId {
    ReplicaId::new(format!("replica-{}", uuid::Uuid::new_v4().simple()))
}

/// The identity kept beside the SQLite database `db`, generated and written
/// on first use. Two processes starting at once agree on one identity: the
/// file is created exclusively and the loser reads the winner's.
pub fn replica_id_beside(db: &Path) -> Result<ReplicaId, StoreError> {
    let file = replica_id_file(db);
    let unusable = |e: std::io::Error| StoreError::Config {
        key: "url",
        message: format!("cannot use the replica id file {}: {e}", file.display()),
    };
    for _ in 0..2 {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let id = text.trim();
                if !id.is_empty() && !id.contains(char::is_control) {
                    return Ok(ReplicaId::new(id));
                }
                return Err(StoreError::Config {
                    key: "url",
                    message: format!(
                        "the replica id file {} is empty or garbled; delete it to get a new identity",
                        file.display()
                    ),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unusable(e)),
        }
        let id = random_replica_id();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => {
                f.write_all(format!("{id}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(unusable)?;
                return Ok(id);
            }
            // Someone else created it meanwhile: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unusable(e)),
        }
    }
    Err(StoreError::Config {
        key: "url",
        message: format!("the replica id file {} keeps changing", file.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runnel-replica-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_identity_is_generated_once_and_kept() {
        let dir = temp_dir();
        let db = dir.join("runnel.db");
        let first = replica_id_beside(&db).unwrap();
        assert!(first.as_str().starts_with("replica-"));
        assert_eq!(replica_id_beside(&db).unwrap(), first);
        assert_eq!(replica_id_file(&db), dir.join("runnel.db.replica-id"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let dir = temp_dir();
        let db = dir.join("x.db");
        std::fs::write(replica_id_file(&db), "  \n").unwrap();
        let err = replica_id_beside(&db).unwrap_err().to_string();
        assert!(err.contains("x.db.replica-id"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn random_identities_differ() {
        assert_ne!(random_replica_id(), random_replica_id());
    }
}
