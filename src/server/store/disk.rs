//! File-system rules the store relies on: durable renames, telling a full
//! disk from damage, where older versions spill to, and the checks a
//! pushed database file must pass before it becomes a version.
//!
//! Kept apart from the version logic because every part of the store (the
//! commit, the rebuilds, `verify` and the pack backend) uses them the same
//! way. [`normalise_journal_mode`] opens the pushed file with SQLite: that
//! is a database file's own journal mode, not the store's metadata.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rusqlite::Connection;

/// fsync a directory so a rename or new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Creates `dir` (and its parents) if needed and makes it private (0700):
/// the data dir holds every version and the key hashes, whatever the
/// umask of whoever started the server.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// True when `e` comes from a full disk (or quota).
pub fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    })
}

/// A new file at `out` holding a copy of `latest` (read from its start),
/// open for reading and writing: where older versions are rebuilt.
pub(super) fn copy_of(latest: &File, out: &Path) -> Result<File> {
    let mut f = new_file(out)?;
    let mut src = latest;
    src.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut src, &mut f).context("copying the latest version")?;
    Ok(f)
}

/// A new empty file at `out` (replacing any), open for reading and writing.
pub(super) fn new_file(out: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))
}

/// The versionHash of a rollback-journal database file, read page by page.
pub fn hash_file(path: &Path, page_size: u32, page_count: u32) -> Result<String> {
    crate::sqlite::hash_file_pages(path, page_size, page_count)
        .with_context(|| format!("hashing {}", path.display()))
}

/// Page size from the database header (see [`crate::sqlite::header`]).
pub fn header_page_size(path: &Path) -> Result<u32> {
    let mut hdr = [0u8; crate::sqlite::header::HEADER_LEN];
    File::open(path)?.read_exact(&mut hdr)?;
    match crate::sqlite::header::decode(&hdr) {
        Ok(h) => Ok(h.page_size),
        Err(crate::sqlite::header::HeaderError::NotADatabase) => {
            bail!("the replica file is not an SQLite database")
        }
        Err(e) => bail!("{e}"),
    }
}

/// Puts a database written by the helper back in rollback (DELETE) mode: a
/// pushed WAL-mode origin leaves page 1 saying WAL, and a WAL-mode file must
/// never be renamed away from its -wal/-shm. Afterwards neither exists.
pub fn normalise_journal_mode(path: &Path) -> Result<()> {
    let mut hdr = [0u8; 20];
    File::open(path)?.read_exact(&mut hdr)?;
    if crate::sqlite::header::is_rollback(&hdr) {
        return Ok(());
    }
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = c.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
    drop(c);
    if !mode.eq_ignore_ascii_case("delete") {
        bail!("could not put the replica in rollback mode (got {mode})");
    }
    for ext in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        ensure!(
            !Path::new(&p).exists(),
            "{} left behind",
            Path::new(&p).display()
        );
    }
    Ok(())
}
