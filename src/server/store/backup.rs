//! `sqlrsync-server backup`: a consistent copy of a data dir while a
//! server serves it, without its lock and without disturbing it.
//!
//! Nothing lost, nothing mixed: the copy is one metadata snapshot and
//! exactly the bytes that snapshot names.
//!
//! - `meta.db` through SQLite's online backup API, in one step, inside one
//!   read transaction ([`super::meta::MetaBackend::copy_to`]). Inside that
//!   same transaction, before the copy, every file the snapshot names is
//!   opened: each replica's latest file `replicas/<uid>/v<N>.db` (with a
//!   shared `flock`, as `verify` holds it: the server rewrites a retired
//!   latest file in place only under the exclusive lock, [`super::spare`])
//!   and every pack the page index points into. An open file stays
//!   readable when a commit retires it or compaction deletes it, so from
//!   then on the server may do anything.
//! - A file the snapshot names that is already gone when it is opened (a
//!   commit retired it, compaction deleted a pack) means a new snapshot
//!   and a fresh start, at most [`ATTEMPTS`] times, then one error. The
//!   same file missing (or torn) in two snapshots in a row is no race
//!   (a commit or compaction changes what the next snapshot names): that
//!   is damage, and said so at once.
//! - Packs are copied up to the end the snapshot's index references,
//!   never more (bytes past it belong to commits the snapshot does not
//!   have); bytes at referenced offsets never change while a pack exists.
//!   Each latest file is copied page by page and checked against the
//!   snapshot's page checksums (`latest_sums`), so a torn copy is never
//!   kept. Commits in flight in the snapshot are forgotten in the copy:
//!   none of their bytes were copied.
//! - `staging/`, `cache/`, the spill folder and `server.lock` are never
//!   copied. Everything is written into a private (0700) folder beside
//!   DEST under a temporary name, synced, and renamed to DEST only when
//!   complete (never over anything: DEST must not exist, and a link there
//!   is not followed). DEST may not be inside the data dir.
//!
//! `SQLRSYNC_BACKUP_HOLD_MS` (for tests) waits that long after the files
//! are opened and before their bytes are copied, so that commits retire
//! files the backup holds.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::disk::sync_dir;
use super::meta::{Meta, MetaBackend, ReplicaRow, VersionRow, now};
use super::pages::packs::pack_path;
use super::pages::{PageHash, page_hash};
use super::verify::open_locked;

/// The backup's description, written last into its folder.
pub const MANIFEST: &str = "sqlrsync-backup.json";

/// Snapshots taken before giving up on a store that keeps moving.
pub const ATTEMPTS: u32 = 8;

/// Why a backup was refused or failed (other failures are I/O errors with
/// their context).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} holds no sqlrsync-server store")]
    NotAStore(PathBuf),
    #[error("{0} already exists; a backup goes to a new path (and never through a link)")]
    DestExists(PathBuf),
    #[error("{dest} is inside the data dir {data}; back up to another folder")]
    DestInside { dest: PathBuf, data: PathBuf },
    #[error("{0} names no folder to create")]
    NoName(PathBuf),
    #[error(
        "the store changed under {attempts} snapshots in a row ({last}); nothing was written, try again"
    )]
    KeptMoving { attempts: u32, last: String },
    #[error(
        "{0}, in two snapshots in a row: the store is damaged, nothing was written; run `sqlrsync-server verify`"
    )]
    Damaged(String),
}

/// The snapshot named a file that is gone or not what it named: another
/// snapshot is needed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Moved(String);

/// What was copied.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The backup's folder.
    pub dest: PathBuf,
    /// Replicas with a version.
    pub replicas: u64,
    /// Versions of all replicas.
    pub versions: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Snapshots taken (1 unless the store moved under one).
    pub attempts: u32,
    /// When the snapshot was taken (RFC 3339).
    pub snapshot: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// Backs up `data_dir` into the new folder `dest`.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupReport> {
    let started = Instant::now();
    if !Meta::exists(data_dir) {
        return Err(BackupError::NotAStore(data_dir.to_path_buf()).into());
    }
    let (tmp, dest) = prepare(data_dir, dest)?;
    let done = snapshots(data_dir, &tmp).and_then(|(counts, attempts)| {
        write_manifest(&tmp, &counts)?;
        sync_tree(&tmp)?;
        rename_new(&tmp, &dest)?;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
        Ok(BackupReport {
            dest: dest.clone(),
            replicas: counts.replicas,
            versions: counts.versions,
            bytes: counts.bytes,
            attempts,
            snapshot: counts.snapshot,
            elapsed: started.elapsed(),
        })
    });
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}

/// Checks `dest` and makes the private folder the backup is written in:
/// (that folder, the final path).
fn prepare(data_dir: &Path, dest: &Path) -> Result<(PathBuf, PathBuf)> {
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(BackupError::DestExists(dest.to_path_buf()).into());
    }
    let name = dest
        .file_name()
        .ok_or_else(|| BackupError::NoName(dest.to_path_buf()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("cannot use {}", parent.display()))?;
    let data = data_dir
        .canonicalize()
        .with_context(|| format!("cannot use {}", data_dir.display()))?;
    let dest = parent.join(name);
    if dest.starts_with(&data) {
        return Err(BackupError::DestInside { dest, data }.into());
    }
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    new_dir(&tmp)?;
    Ok((tmp, dest))
}

/// What one snapshot's copy holds.
struct Counts {
    replicas: u64,
    versions: u64,
    bytes: u64,
    snapshot: String,
}

/// Copies one snapshot into `tmp`, taking a new one (into an emptied
/// `tmp`) while the store moves under it; (counts, snapshots taken).
fn snapshots(data_dir: &Path, tmp: &Path) -> Result<(Counts, u32)> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            std::fs::remove_dir_all(tmp)?;
            new_dir(tmp)?;
            std::thread::sleep(Duration::from_millis(20 * attempt as u64));
        }
        match copy_snapshot(data_dir, tmp) {
            Ok(counts) => return Ok((counts, attempt)),
            Err(e) => match e.downcast::<Moved>() {
                Ok(moved) => {
                    if moved.0 == last {
                        return Err(BackupError::Damaged(last).into());
                    }
                    tracing::debug!(attempt, why = %moved, "the store moved; taking a new snapshot");
                    last = moved.0;
                }
                Err(e) => return Err(e),
            },
        }
    }
    Err(BackupError::KeptMoving {
        attempts: ATTEMPTS,
        last,
    }
    .into())
}

/// The files one snapshot names, open.
#[derive(Default)]
struct Held {
    /// Each replica with a version, and its latest file (shared lock).
    latest: Vec<(ReplicaRow, File)>,
    /// Each pack the page index points into.
    packs: Vec<(u32, File)>,
}

/// One snapshot: the metadata copied with the files it names held open,
/// then their bytes copied and checked.
fn copy_snapshot(data_dir: &Path, tmp: &Path) -> Result<Counts> {
    let mut held = Held::default();
    let mut snapshot = String::new();
    {
        let source = Meta::open(data_dir)?;
        source.copy_to(&tmp.join("meta.db"), &mut |b| {
            snapshot = now();
            hold(data_dir, b, &mut held)
        })?;
    }
    if let Some(ms) = std::env::var("SQLRSYNC_BACKUP_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let copy = Meta::open(tmp)?;
    // Commits in flight in the snapshot had not reached their commit
    // point, and none of their bytes were copied: a record of them would
    // only send start-up looking for those bytes.
    for f in copy.commits_in_flight()? {
        copy.end_commit(f.id)?;
    }
    let mut bytes = 0;
    new_dir(&tmp.join("packs"))?;
    for (pack, end) in copy.pack_ends()? {
        let Some((_, src)) = held.packs.iter().find(|(p, _)| *p == pack) else {
            bail!("pack {pack} is in the copy's index but was not in its snapshot");
        };
        bytes += copy_pack(src, pack, end, &pack_path(&tmp.join("packs"), pack))?;
    }
    new_dir(&tmp.join("replicas"))?;
    for (r, src) in &held.latest {
        let snap = copy.latest_snapshot(r)?;
        let row = snap
            .row
            .with_context(|| format!("{}: the latest version row is missing", r.path))?;
        if snap.latest != r.latest {
            bail!("{}: the copy of the metadata is not its snapshot", r.path);
        }
        let dir = tmp.join("replicas").join(&r.uid);
        new_dir(&dir)?;
        let out = dir.join(format!("v{}.db", r.latest));
        bytes += copy_latest(r, src, &row, &snap.sums, &out)?;
    }
    let versions = copy.totals()?.versions;
    drop(copy);
    bytes += std::fs::metadata(tmp.join("meta.db"))?.len();
    Ok(Counts {
        replicas: held.latest.len() as u64,
        versions,
        bytes,
        snapshot,
    })
}

/// Opens every file the snapshot `b` names (inside its read transaction).
fn hold(data_dir: &Path, b: &dyn MetaBackend, held: &mut Held) -> Result<()> {
    let gone = |what: String| -> anyhow::Error { Moved(what).into() };
    for r in b.all_replicas()? {
        if r.latest == 0 {
            continue;
        }
        let path = data_dir
            .join("replicas")
            .join(&r.uid)
            .join(format!("v{}.db", r.latest));
        match open_locked(&path) {
            Ok(Some(f)) => held.latest.push((r, f)),
            Ok(None) => return Err(gone(format!("v{} of {} moved", r.latest, r.path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(gone(format!("v{} of {} is missing", r.latest, r.path)));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    for (pack, _) in b.pack_ends()? {
        let path = pack_path(&data_dir.join("packs"), pack);
        match File::open(&path) {
            Ok(f) => held.packs.push((pack, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(gone(format!("pack {pack} is missing")));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    Ok(())
}

/// Copies the first `end` bytes of pack `pack` into `out`; its length.
fn copy_pack(src: &File, pack: u32, end: u64, out: &Path) -> Result<u64> {
    let dst = new_file(out)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(Moved(format!(
                "pack {pack} has {at} bytes, its index references {end}"
            ))
            .into());
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    dst.sync_all()?;
    Ok(end)
}

/// Copies the latest file of `r` (version `row`) into `out`, page by page,
/// each checked against its checksum in the snapshot; its length.
fn copy_latest(
    r: &ReplicaRow,
    src: &File,
    row: &VersionRow,
    sums: &[PageHash],
    out: &Path,
) -> Result<u64> {
    if sums.len() != row.page_count as usize {
        bail!(
            "{} v{}: its page checksums are missing; run `sqlrsync-server verify`",
            r.path,
            row.number
        );
    }
    let dst = new_file(out)?;
    let size = row.page_size as u64;
    let mut page = vec![0u8; row.page_size as usize];
    for (i, sum) in sums.iter().enumerate() {
        let at = i as u64 * size;
        let torn = || {
            Moved(format!(
                "v{} of {} does not match its checksum at page {}",
                row.number,
                r.path,
                i + 1
            ))
        };
        src.read_exact_at(&mut page, at).map_err(|_| torn())?;
        if page_hash(&page) != *sum {
            return Err(torn().into());
        }
        dst.write_all_at(&page, at)?;
    }
    dst.sync_all()?;
    Ok(row.size())
}

/// The manifest: what the backup holds and when its snapshot was taken.
fn write_manifest(tmp: &Path, c: &Counts) -> Result<()> {
    let text = serde_json::json!({
        "format": "sqlrsync-server backup 1",
        "snapshot": c.snapshot,
        "replicas": c.replicas,
        "versions": c.versions,
        "bytes": c.bytes,
    });
    let f = new_file(&tmp.join(MANIFEST))?;
    f.write_all_at(format!("{text}\n").as_bytes(), 0)?;
    f.sync_all()?;
    Ok(())
}

/// Syncs every folder of the backup (its files were synced as written),
/// deepest first.
fn sync_tree(tmp: &Path) -> Result<()> {
    let replicas = tmp.join("replicas");
    for e in std::fs::read_dir(&replicas)? {
        sync_dir(&e?.path())?;
    }
    sync_dir(&replicas)?;
    sync_dir(&tmp.join("packs"))?;
    // meta.db was closed by SQLite, which syncs it; once more is cheap.
    File::open(tmp.join("meta.db"))?.sync_all()?;
    sync_dir(tmp)
}

/// A new private folder (never an existing one, never through a link).
pub(super) fn new_dir(p: &Path) -> Result<()> {
    DirBuilder::new()
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// A new private file (never an existing one, never through a link).
pub(super) fn new_file(p: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Renames `from` to `to` unless `to` exists (a link included), in one
/// step where the file system can (`renameat2` with `RENAME_NOREPLACE`).
fn rename_new(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Err(BackupError::DestExists(to.to_path_buf()).into()),
        // A file system without RENAME_NOREPLACE: look, then rename.
        Some(libc::EINVAL | libc::ENOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(BackupError::DestExists(to.to_path_buf()).into());
            }
            std::fs::rename(from, to)
                .with_context(|| format!("renaming the backup to {}", to.display()))
        }
        _ => Err(e).with_context(|| format!("renaming the backup to {}", to.display())),
    }
}
