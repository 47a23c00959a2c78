//! `sqlrsync-server restore BACKUP --data-dir NEWDIR`: a backup made by
//! [`super::backup`] becomes a data dir, and is checked before anything
//! may use it.
//!
//! The target must be new or an empty folder (never a link): a restore
//! never mixes a backup with another store's files. It is locked as a
//! serving data dir is ([`super::dirlock`]), so no server starts on it
//! half copied. The backup's files (metadata, packs, latest files; nothing
//! else) are copied and synced, then checked with what `serve` and
//! `verify` check: start-up's look for files the metadata does not account
//! for ([`super::recovery`]) and the whole store re-read
//! ([`super::verify`]). A copy that fails either is removed (the target is
//! left as it was found) and the problems are reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::backup::{MANIFEST, new_dir, new_file};
use super::disk::{private_dir, sync_dir};
use super::{DataDirLock, Store, VerifyCounts, recovery};

/// Why a restore was refused or its result not kept.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} is not a sqlrsync-server backup (no {MANIFEST} and meta.db in it)")]
    NotABackup(PathBuf),
    #[error("{0} is not empty; restore into a new or empty folder")]
    TargetNotEmpty(PathBuf),
    #[error("{0} is a link; restore into a new or empty folder")]
    TargetIsLink(PathBuf),
    #[error(
        "the restored copy failed its check ({} problems; first: {}); it was removed, {target} is as it was",
        .problems.len(), .problems.first().map_or("", String::as_str)
    )]
    Failed {
        target: PathBuf,
        /// Every problem found, one line each.
        problems: Vec<String>,
    },
}

/// What was restored and checked.
#[derive(Debug)]
pub struct RestoreReport {
    /// Bytes copied.
    pub bytes: u64,
    /// What the check looked at.
    pub checked: VerifyCounts,
}

/// Restores `backup` into `target` (new, or an empty folder) and checks it.
pub fn restore(backup: &Path, target: &Path) -> Result<RestoreReport> {
    let is_backup = std::fs::symlink_metadata(backup).is_ok_and(|m| m.is_dir())
        && backup.join(MANIFEST).is_file()
        && backup.join("meta.db").is_file();
    if !is_backup {
        return Err(RestoreError::NotABackup(backup.to_path_buf()).into());
    }
    let created = match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(RestoreError::TargetIsLink(target.to_path_buf()).into());
        }
        Ok(m) if !m.is_dir() || std::fs::read_dir(target)?.next().is_some() => {
            return Err(RestoreError::TargetNotEmpty(target.to_path_buf()).into());
        }
        Ok(_) => false,
        Err(_) => true,
    };
    private_dir(target)?;
    let lock = DataDirLock::acquire(target)?;
    let restored = copy_backup(backup, target).and_then(|bytes| check(target, bytes));
    drop(lock);
    if restored.is_err() {
        undo(target, created);
    }
    restored
}

/// Copies the backup's store files into `target`; the bytes copied.
fn copy_backup(backup: &Path, target: &Path) -> Result<u64> {
    let mut bytes = copy_file(&backup.join("meta.db"), &target.join("meta.db"))?;
    for d in ["packs", "replicas", "staging", "cache"] {
        new_dir(&target.join(d))?;
    }
    for e in read_dir(&backup.join("packs"))? {
        let name = e.file_name();
        let s = name.to_string_lossy();
        if s.starts_with("pack-") && s.ends_with(".dat") && e.file_type()?.is_file() {
            bytes += copy_file(&e.path(), &target.join("packs").join(&name))?;
        }
    }
    sync_dir(&target.join("packs"))?;
    for e in read_dir(&backup.join("replicas"))? {
        if !e.file_type()?.is_dir() {
            continue;
        }
        let dir = target.join("replicas").join(e.file_name());
        new_dir(&dir)?;
        for f in read_dir(&e.path())? {
            let name = f.file_name();
            let s = name.to_string_lossy();
            if s.starts_with('v') && s.ends_with(".db") && f.file_type()?.is_file() {
                bytes += copy_file(&f.path(), &dir.join(&name))?;
            }
        }
        sync_dir(&dir)?;
    }
    sync_dir(&target.join("replicas"))?;
    sync_dir(target)?;
    Ok(bytes)
}

/// The entries of `dir`, sorted by name (none when it does not exist).
fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut v = match std::fs::read_dir(dir) {
        Ok(d) => d.collect::<std::io::Result<Vec<_>>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// Copies `from` (never through a link) into the new file `to`, synced.
fn copy_file(from: &Path, to: &Path) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .with_context(|| format!("reading {}", from.display()))?;
    let mut dst = new_file(to)?;
    let n = std::io::copy(&mut src, &mut dst)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    dst.sync_all()?;
    Ok(n)
}

/// What `serve` would refuse, and what `verify` finds.
fn check(target: &Path, bytes: u64) -> Result<RestoreReport> {
    let store = Store::open_read_only(target)?;
    let findings = recovery::recover(target, store.meta(), false)?;
    let (damage, checked) = store.verify()?;
    let problems: Vec<String> = findings
        .items
        .iter()
        .map(|f| f.to_string())
        .chain(damage)
        .collect();
    if !problems.is_empty() {
        return Err(RestoreError::Failed {
            target: target.to_path_buf(),
            problems,
        }
        .into());
    }
    Ok(RestoreReport { bytes, checked })
}

/// Leaves `target` as it was found: removed if the restore made it, else
/// emptied.
fn undo(target: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(target);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(target) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
