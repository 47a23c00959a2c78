//! Versioned replica storage: every version kept, each stored page once.
//!
//! [`Store`] is the one door to it: the server's handlers, the key checks
//! and the `sqlrsync-server` commands call its typed methods (and those of
//! its [`Meta`]), never SQL or a connection. Behind it, two small traits
//! keep the backends replaceable one file at a time: [`pages::PageStore`]
//! (today the pack files, [`pages::packs`]) and [`meta::MetaBackend`]
//! (today SQLite, [`meta::sqlite`]). Both are blocking, like the store:
//! the handlers run commits, rebuilds and `verify` in `spawn_blocking`
//! tasks and call the short lookups directly, so an async trait would buy
//! nothing today. The modules:
//!
//! - [`meta`]: namespaces, hashed keys, replicas, versions, page index.
//! - [`pages`]: the bytes of older versions' pages.
//! - [`live`]: the version files sessions pin, and each replica's shared
//!   state; [`spare`]: the retired latest file kept as the next push's
//!   staging copy; [`commit`]: a push becoming a version; [`rebuild`]: older
//!   versions materialised on demand; [`changes`]: the pages two versions
//!   differ in (delta pulls); [`verify`]: the whole store re-read;
//!   [`prune`]: versions a retention policy drops; [`compact`]: packs
//!   rewritten without garbage; [`pins`]: what keeps compaction from
//!   pages a reader still needs; [`disk`]: the file-system rules they share.
//! - [`backup`] and [`restore`]: a consistent copy of the data dir made
//!   next to a live server, and made a data dir again (checked first).
//!
//! Layout under DATA_DIR:
//!
//! - `meta.db`: namespaces, hashed keys, replicas, versions, page index
//!   ([`meta::sqlite`]).
//! - `packs/pack-NNNNNN.dat`: content-addressed pages ([`pages::packs`]).
//! - `replicas/<replica id>/v<N>.db`: the latest version N, materialised as
//!   an ordinary rollback-journal SQLite file for the helper to read.
//! - `staging/`: copies being written by push sessions, and spare copies
//!   of hot replicas' latest versions ([`spare`]) (deleted on start).
//! - `cache/`: older versions materialised on demand for pulls (deleted when
//!   their last reader finishes, and on start). When the data dir's disk is
//!   full, they go to a spill folder in the system temp dir instead: a
//!   fresh private (0700) folder with a random name made by this process
//!   and removed when it ends, never a name another user could prepare as
//!   a link, so that a full disk, which already refuses new pushes, does
//!   not also make older versions unreadable.
//! - `server.lock`: held by the one process serving the dir ([`dirlock`]).
//! - `lost+found/`: what `sqlrsync-server repair` could not account for
//!   ([`recovery`]).
//!
//! The latest file *is* the store of the latest version's pages (its per-page
//! SHA-256 checksums are kept in `replicas.latest_sums`). Every older version
//! N is stored as a back delta: the pages in which it differs from N+1, as
//! (page number, page hash) records plus its page count, with the page bytes
//! in the packs. A version therefore costs only the pages its successor
//! changed, and the whole store is about `db size + sum of changed pages`.
//! Version N is rebuilt from the latest file's pages, each page that a back
//! delta from N up holds taken from the oldest such delta ([`rebuild`]). A
//! pruned version keeps its row but not its back delta, which was merged
//! into the kept version below it ([`prune`]); pages no back delta names
//! any more are garbage that [`compact`] removes. Pruned pack files are
//! listed in `retired_packs` until deleted.
//!
//! A commit writes the old contents of the changed pages to a pack (fsync),
//! fsyncs the new file and renames it to `v<N+1>.db` (fsync of the folder),
//! and then commits one metadata transaction (new version row, back delta of
//! N, new checksums, page index). That transaction is the commit point: a
//! crash before it leaves `v<N>.db` and the metadata of N untouched, and
//! start-up removes the orphan `v<N+1>.db` and cuts unreferenced pack tails;
//! a crash after it leaves `v<N>.db` as an orphan that start-up removes.

pub mod backup;
mod changes;
mod commit;
pub mod compact;
pub mod dirlock;
pub mod disk;
mod live;
pub mod meta;
mod one_pass;
pub mod pages;
mod pins;
pub mod prune;
mod rebuild;
pub mod recovery;
pub mod repair;
mod repair_latest;
pub mod restore;
mod spare;
mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};

pub use commit::{CommitOutcome, NotTheHashedVersion, Pushed};
pub use dirlock::{DataDirLock, LockError};
pub use disk::{is_out_of_space, normalise_journal_mode, private_dir};
pub use live::{ReplicaState, VersionFile, VersionNotice};
pub use meta::{Meta, ReplicaRow, VersionRow};
pub use pins::Pin;
pub use verify::VerifyCounts;

use pages::{PackStore, PageStore};

/// The store: metadata, page store and materialised files under one data
/// dir, behind typed methods.
pub struct Store {
    /// DATA_DIR.
    pub data_dir: PathBuf,
    /// The metadata (its backend serialises calls).
    meta: Meta,
    /// The page store (appends are serialised).
    pages: Mutex<Box<dyn PageStore>>,
    /// Live replica states by replica row id.
    replicas: Mutex<HashMap<i64, Arc<ReplicaState>>>,
    /// Where older versions are materialised when `cache/` has no room:
    /// the path of `_spill`.
    spill_dir: PathBuf,
    /// The private spill folder, removed with the store.
    _spill: tempfile::TempDir,
    /// The data dir's lock, for a store that writes (see [`dirlock`]).
    _lock: Option<DataDirLock>,
    /// Held by a commit from its first page append to its commit point,
    /// and by compaction while it rewrites a pack.
    commit_serial: Mutex<()>,
    /// The epochs readers of stored pages plan in ([`pins`]).
    pins: Arc<pins::Pins>,
}

/// Deletes replica `r` of the store at `data_dir` (safe next to a live
/// server, which serves no more of it from its next request): its metadata
/// in one transaction, the commit point, after which its folder is garbage
/// recovery removes; then its folder. Its stored pages are garbage for the
/// next compaction.
pub fn delete_replica(
    data_dir: &Path,
    meta: &Meta,
    r: &ReplicaRow,
) -> Result<meta::DeletedReplica> {
    let deleted = meta.delete_replica(r.id)?;
    let dir = data_dir.join("replicas").join(&r.uid);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()));
        }
        _ => meta.forget_deleted_replica(&r.uid)?,
    }
    Ok(deleted)
}

/// Locks a std mutex, surviving poisoning (a panicked holder leaves data
/// that is still consistent here: every update is a single assignment).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Default zstd level for stored pages.
pub const DEFAULT_COMPRESSION: i32 = 3;

impl Store {
    /// Opens (creating) the store for serving: locks the data dir (one
    /// server per dir), then recovers from a crash, deleting only what it
    /// can prove is garbage ([`recovery`]). Anything it cannot account for
    /// is a refusal to start ([`recovery::Refusal`], inside the error),
    /// naming `sqlrsync-server repair`, with nothing changed.
    pub fn open(data_dir: &Path, compress_level: i32) -> Result<Store> {
        let (lock, meta) = Store::lock_and_meta(data_dir)?;
        let findings = recovery::recover(data_dir, &meta, false)?;
        if !findings.is_clean() {
            return Err(recovery::Refusal { findings }.into());
        }
        recovery::recover(data_dir, &meta, true)?;
        Store::with_packs(data_dir, meta, compress_level, lock)
    }

    /// `sqlrsync-server repair` ([`repair`]): locked, garbage removed as
    /// at start, what recovery could not account for set aside in
    /// `lost+found/`, newer version files adopted; then checked again
    /// (`remaining` is what still stops a start).
    pub fn repair(data_dir: &Path) -> Result<(repair::RepairReport, recovery::Findings)> {
        let (lock, meta) = Store::lock_and_meta(data_dir)?;
        let findings = recovery::recover(data_dir, &meta, true)?;
        let mut report = repair::RepairReport::default();
        let orphans = repair::set_aside(data_dir, &meta, &findings, &mut report)?;
        let store = Store::with_packs(data_dir, meta, DEFAULT_COMPRESSION, lock)?;
        store.adopt(&orphans, &mut report)?;
        let remaining = recovery::recover(data_dir, store.meta(), false)?;
        Ok((report, remaining))
    }

    fn lock_and_meta(data_dir: &Path) -> Result<(DataDirLock, Meta)> {
        private_dir(data_dir)?;
        let lock = DataDirLock::acquire(data_dir)?;
        for d in ["packs", "replicas", "staging", "cache"] {
            private_dir(&data_dir.join(d))?;
        }
        Ok((lock, Meta::open(data_dir)?))
    }

    fn with_packs(data_dir: &Path, meta: Meta, level: i32, lock: DataDirLock) -> Result<Store> {
        let packs = PackStore::open(&data_dir.join("packs"), level)?;
        Store::assemble(data_dir, meta, Box::new(packs), Some(lock))
    }

    /// Opens the store to read it only, for `verify`, which may run next to
    /// a live server: no lock, no crash recovery. Recovery would delete a live
    /// push's staging file, cut pack bytes that a live commit has appended
    /// but not yet indexed, and remove a version file it has just renamed
    /// into place, destroying the commit in flight.
    pub fn open_read_only(data_dir: &Path) -> Result<Store> {
        let meta = Meta::open(data_dir)?;
        let packs = PackStore::open(&data_dir.join("packs"), 0)?;
        Store::assemble(data_dir, meta, Box::new(packs), None)
    }

    fn assemble(
        data_dir: &Path,
        meta: Meta,
        pages: Box<dyn PageStore>,
        lock: Option<DataDirLock>,
    ) -> Result<Store> {
        let spill = tempfile::Builder::new()
            .prefix("sqlrsync-server-spill-")
            .tempdir()
            .context("creating a private spill folder in the temp dir")?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            meta,
            pages: Mutex::new(pages),
            replicas: Mutex::new(HashMap::new()),
            spill_dir: spill.path().to_path_buf(),
            _spill: spill,
            _lock: lock,
            commit_serial: Mutex::new(()),
            pins: Arc::default(),
        })
    }

    /// Opens only the metadata (for the key and namespace commands, which
    /// may run next to a live server).
    pub fn open_meta(data_dir: &Path) -> Result<Meta> {
        private_dir(data_dir)?;
        Meta::open(data_dir)
    }

    /// The metadata: replicas, versions, keys and namespaces.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn replica_dir(&self, r: &ReplicaRow) -> PathBuf {
        self.data_dir.join("replicas").join(&r.uid)
    }

    pub(super) fn version_path(&self, r: &ReplicaRow, n: u64) -> PathBuf {
        self.replica_dir(r).join(format!("v{n}.db"))
    }

    /// A fresh staging path for a push to `r`.
    pub fn staging_path(&self, r: &ReplicaRow) -> PathBuf {
        self.data_dir.join("staging").join(format!(
            "{}-{}.db",
            r.uid,
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// The live state of a replica (created on first use).
    pub fn replica_state(&self, r: &ReplicaRow) -> Arc<ReplicaState> {
        let mut map = lock(&self.replicas);
        map.entry(r.id)
            .or_insert_with(|| {
                // Read the latest number now: the state is created once,
                // and later commits update it in place.
                let latest = self
                    .meta
                    .replica_by_id(r.id)
                    .ok()
                    .flatten()
                    .map_or(r.latest, |r| r.latest);
                let file = (latest > 0)
                    .then(|| VersionFile::new(self.version_path(r, latest), latest, false));
                ReplicaState::new(file)
            })
            .clone()
    }

    /// Removes replica `r` if it has no version, no key and no live
    /// session (blocking): what a failed first push created. Returns true
    /// when it was removed. Takes the replica map before the metadata, as
    /// [`Store::replica_state`] does, so a session cannot pick the replica
    /// up in between.
    pub fn forget_if_empty(&self, r: &ReplicaRow) -> Result<bool> {
        let mut map = lock(&self.replicas);
        if map.get(&r.id).is_some_and(|s| Arc::strong_count(s) > 1) {
            return Ok(false);
        }
        let removed = self.meta.remove_replica_if_empty(r.id)?;
        if removed {
            map.remove(&r.id);
        }
        Ok(removed)
    }
}
