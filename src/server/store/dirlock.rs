//! One server per data dir.
//!
//! Two processes serving one data dir destroy it: both number versions,
//! append to the same pack and clean up each other's files as leftovers.
//! The store that recovers and writes (`serve`, `repair`) holds an
//! exclusive lock on `DATA_DIR/server.lock` for its lifetime; a second one
//! refuses with the holder's pid. The lock is the kernel's (`flock`), so
//! it goes away with the process however it ends: a stale lock file never
//! keeps a server from starting. The key and namespace commands only write
//! the metadata (SQLite serialises them with the server), and `verify` and
//! `backup` only read, so they take no lock (`restore` takes it on the dir
//! it fills).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "server.lock";

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another sqlrsync-server{}; one process serves a data dir (give --listen several times to serve more addresses)",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist), writing our pid
    /// into the file for whoever is refused next.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Never through a link: the data dir is ours, a link in it is not.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(LockError::Held {
                    dir: data_dir.to_path_buf(),
                    pid: s.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let e = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(e, LockError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{e}"
        );
        assert!(e.to_string().contains("in use by another sqlrsync-server"));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
