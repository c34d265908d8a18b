//! The store's advisory lock file (`<database>.lock`): a server's writer holds it shared, `funkrec import` exclusive, so neither runs while the other uses the store.
//!
//! `funkrec import` assigns new user and item keys from its own snapshot of the
//! largest key, so a server writing to the same store at the same time would make it
//! fail. The lock is a `flock(2)` on a file beside the database (taken without
//! waiting, released by the kernel when the process ends, even by SIGKILL); several
//! servers may share the store, as before.

use anyhow::Context;
use fs4::{FileExt, TryLockError};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A held lock on the store; released when dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

/// The lock file of the database at `db`: the same path with `.lock` appended.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn open(lock: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .with_context(|| format!("opening the store's lock file {}", lock.display()))
}

impl StoreLock {
    /// The lock a running server holds (shared): refused while `funkrec import` holds it.
    pub(crate) fn for_server(db: &Path) -> anyhow::Result<StoreLock> {
        let lock = lock_path(db);
        let file = open(&lock)?;
        match FileExt::try_lock_shared(&file) {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "refusing to start: `funkrec import` is loading ratings into {} (it holds the \
                 lock {}); start the server once the import has finished",
                db.display(),
                lock.display()
            ),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", lock.display()))
            }
        }
    }

    /// The lock `funkrec import` holds (exclusive): refused while a server (or another
    /// import) uses the store.
    pub(crate) fn for_import(db: &Path) -> anyhow::Result<StoreLock> {
        let lock = lock_path(db);
        let file = open(&lock)?;
        match FileExt::try_lock(&file) {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                // Who holds it: a shared lock is still to be had next to servers only.
                let servers = FileExt::try_lock_shared(&open(&lock)?).is_ok();
                if servers {
                    anyhow::bail!(
                        "refusing to import: a running funkrec server uses {} (it holds the \
                         lock {}); stop the server first, or send the ratings to it with \
                         POST /v1/ratings",
                        db.display(),
                        lock.display()
                    )
                }
                anyhow::bail!(
                    "refusing to import: another `funkrec import` is loading ratings into {} \
                     (it holds the lock {})",
                    db.display(),
                    lock.display()
                )
            }
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", lock.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_the_lock_and_an_import_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("funkrec.db");
        let a = StoreLock::for_server(&db).unwrap();
        let b = StoreLock::for_server(&db).unwrap();
        let refused = StoreLock::for_import(&db).unwrap_err().to_string();
        assert!(refused.contains("a running funkrec server"), "{refused}");
        assert!(refused.contains("funkrec.db.lock"), "{refused}");
        drop((a, b));
        let import = StoreLock::for_import(&db).unwrap();
        let refused = StoreLock::for_server(&db).unwrap_err().to_string();
        assert!(refused.contains("`funkrec import` is loading"), "{refused}");
        let refused = StoreLock::for_import(&db).unwrap_err().to_string();
        assert!(refused.contains("another `funkrec import`"), "{refused}");
        drop(import);
        StoreLock::for_server(&db).unwrap();
    }
}
