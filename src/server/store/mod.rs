//! Versioned replica storage: every version kept, each stored page once.
//!
//! Layout under DATA_DIR:
//!
//! - `meta.db`: namespaces, hashed keys, replicas, versions, page index
//!   ([`meta`]).
//! - `packs/pack-NNNNNN.dat`: content-addressed pages ([`packs`]).
//! - `replicas/<replica id>/v<N>.db`: the latest version N, materialised as
//!   an ordinary rollback-journal SQLite file for the helper to read.
//! - `staging/`: copies being written by push sessions (deleted on start).
//! - `cache/`: older versions materialised on demand for pulls (deleted when
//!   their last reader finishes, and on start). When the data dir's disk is
//!   full, they go to a spill folder in the system temp dir instead (one per
//!   data dir, also cleared on start), so that a full disk, which already
//!   refuses new pushes, does not also make older versions unreadable.
//!
//! The latest file *is* the store of the latest version's pages (its per-page
//! SHA-256 checksums are kept in `replicas.latest_sums`). Every older version
//! N is stored as a back delta: the pages in which it differs from N+1, as
//! (page number, page hash) records plus its page count, with the page bytes
//! in the packs. A version therefore costs only the pages its successor
//! changed, and the whole store is about `db size + sum of changed pages`.
//! Version N is rebuilt by copying the latest file and applying the back
//! deltas from the newest down to N.
//!
//! A commit writes the old contents of the changed pages to a pack (fsync),
//! fsyncs the new file and renames it to `v<N+1>.db` (fsync of the folder),
//! and then commits one metadata transaction (new version row, back delta of
//! N, new checksums, page index). That transaction is the commit point: a
//! crash before it leaves `v<N>.db` and the metadata of N untouched, and
//! start-up removes the orphan `v<N+1>.db` and cuts unreferenced pack tails;
//! a crash after it leaves `v<N>.db` as an orphan that start-up removes.

pub mod meta;
pub mod packs;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use anyhow::{Context, Result, bail, ensure};
use rusqlite::{Connection, params};
use tokio::sync::broadcast;

use meta::{ReplicaRow, VersionRow};
use packs::{BlobLocation, BlobStore, PackStore, PageHash, page_hash, sync_dir};

use crate::sqlite::{HashKind, VersionHasher, page_digest, page_digest_with};

/// A materialised version file that sessions read. Pulls hold an `Arc` for
/// as long as their helper runs, so a commit (or cache clean-up) never
/// removes a file under a reader: the file goes when the last holder drops.
#[derive(Debug)]
pub struct VersionFile {
    /// Where the file is.
    pub path: PathBuf,
    /// Which version it holds.
    pub number: u64,
    /// Set when the file is no longer the latest (or is a cache file): the
    /// last holder deletes it.
    obsolete: AtomicBool,
}

impl VersionFile {
    fn new(path: PathBuf, number: u64, obsolete: bool) -> Arc<VersionFile> {
        Arc::new(VersionFile {
            path,
            number,
            obsolete: AtomicBool::new(obsolete),
        })
    }
}

impl Drop for VersionFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::SeqCst) {
            // Unlinking a 100 MB file (and dropping its cached pages) takes
            // tens of milliseconds; the last holder is often a push session
            // whose client is still waiting for its answer. A file left by
            // a crash before this runs is an orphan that start-up removes.
            let path = std::mem::take(&mut self.path);
            let removal = std::thread::Builder::new()
                .name("remove-version".into())
                .spawn({
                    let path = path.clone();
                    move || {
                        let _ = std::fs::remove_file(&path);
                    }
                });
            if removal.is_err() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Live state of one replica, shared by its sessions.
pub struct ReplicaState {
    /// Held by a push for its whole session: pushes to one replica are
    /// serialised, so none is lost and each builds on the previous one.
    pub push_lock: Arc<tokio::sync::Mutex<()>>,
    /// The latest version's file (None before the first commit).
    latest: Mutex<Option<Arc<VersionFile>>>,
    /// New versions, for subscribers.
    pub notify: broadcast::Sender<VersionNotice>,
    /// Older versions currently materialised, shared by concurrent pulls.
    older: Mutex<HashMap<u64, Weak<VersionFile>>>,
    /// One materialisation at a time per replica.
    materialising: Mutex<()>,
}

impl ReplicaState {
    pub fn latest(&self) -> Option<Arc<VersionFile>> {
        lock(&self.latest).clone()
    }
}

/// A committed version, as told to subscribers.
#[derive(Debug, Clone)]
pub struct VersionNotice {
    /// The new version number.
    pub number: u64,
    /// When its metadata transaction committed (RFC 3339, microseconds), so
    /// subscribers can measure notification latency.
    pub committed_at: String,
}

/// What a finished push amounted to.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The pushed database equals the latest version: nothing stored.
    NoChange(Option<VersionRow>),
    /// A new version.
    Committed(VersionRow),
}

/// The store: metadata, packs and materialised files under one data dir.
pub struct Store {
    /// DATA_DIR.
    pub data_dir: PathBuf,
    /// The metadata connection (short statements and commit transactions).
    meta: Mutex<Connection>,
    /// The page packs (appends are serialised).
    packs: Mutex<PackStore>,
    /// Live replica states by replica row id.
    replicas: Mutex<HashMap<i64, Arc<ReplicaState>>>,
    /// Where older versions are materialised when `cache/` has no room
    /// (see [`spill_dir_for`]).
    spill_dir: PathBuf,
}

/// Locks a std mutex, surviving poisoning (a panicked holder leaves data
/// that is still consistent here: every update is a single assignment).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Default zstd level for stored pages.
pub const DEFAULT_COMPRESSION: i32 = 3;

impl Store {
    /// Opens (creating) the store and recovers from any crash: removes
    /// staging and cache files, orphan version files and unreferenced pack
    /// tails, and checks every latest file is present and whole.
    pub fn open(data_dir: &Path, compress_level: i32) -> Result<Store> {
        for d in ["", "packs", "replicas", "staging", "cache"] {
            std::fs::create_dir_all(data_dir.join(d))
                .with_context(|| format!("creating {}", data_dir.join(d).display()))?;
        }
        let conn = meta::open(&data_dir.join("meta.db"))?;
        let packs = PackStore::open(&data_dir.join("packs"), compress_level, |p| {
            meta::pack_end(&conn, p)
        })?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            meta: Mutex::new(conn),
            packs: Mutex::new(packs),
            replicas: Mutex::new(HashMap::new()),
            spill_dir: spill_dir_for(data_dir),
        };
        store.recover()?;
        Ok(store)
    }

    /// Opens the store to read it only, for `verify`, which may run next to
    /// a live server: no crash recovery. Recovery would delete a live
    /// push's staging file, cut pack bytes that a live commit has appended
    /// but not yet indexed, and remove a version file it has just renamed
    /// into place, destroying the commit in flight.
    pub fn open_read_only(data_dir: &Path) -> Result<Store> {
        let conn = meta::open(&data_dir.join("meta.db"))?;
        // u64::MAX as every pack's referenced end: never cut anything.
        let packs = PackStore::open(&data_dir.join("packs"), 0, |_| Ok(u64::MAX))?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            meta: Mutex::new(conn),
            packs: Mutex::new(packs),
            replicas: Mutex::new(HashMap::new()),
            spill_dir: spill_dir_for(data_dir),
        })
    }

    /// Opens only the metadata (for the key and namespace commands, which
    /// may run next to a live server).
    pub fn open_meta(data_dir: &Path) -> Result<Connection> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        meta::open(&data_dir.join("meta.db"))
    }

    fn recover(&self) -> Result<()> {
        for d in ["staging", "cache"] {
            for e in std::fs::read_dir(self.data_dir.join(d))? {
                let p = e?.path();
                tracing::info!(file = %p.display(), "removing leftover file");
                let _ = std::fs::remove_file(&p);
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.spill_dir) {
            for e in rd.flatten() {
                tracing::info!(file = %e.path().display(), "removing leftover spill file");
                let _ = std::fs::remove_file(e.path());
            }
        }
        let replicas = self.with_meta(meta::all_replicas)?;
        for r in replicas {
            let dir = self.replica_dir(&r);
            std::fs::create_dir_all(&dir)?;
            let keep = (r.latest > 0).then(|| self.version_path(&r, r.latest));
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if Some(&p) != keep.as_ref() {
                    tracing::info!(file = %p.display(), "removing orphan file");
                    let _ = std::fs::remove_file(&p);
                }
            }
            if let Some(path) = keep {
                let v = self.with_meta(|c| meta::version(c, r.id, r.latest))?;
                let len = std::fs::metadata(&path).map(|m| m.len()).ok();
                if v.as_ref().map(|v| v.size()) != len {
                    tracing::error!(replica = %r.path, file = %path.display(),
                        "latest version file is missing or has the wrong size; run `sqlrsync-server verify`");
                }
            }
        }
        Ok(())
    }

    /// Runs `f` with the metadata connection.
    pub fn with_meta<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&lock(&self.meta))
    }

    pub fn replica_dir(&self, r: &ReplicaRow) -> PathBuf {
        self.data_dir.join("replicas").join(&r.uid)
    }

    fn version_path(&self, r: &ReplicaRow, n: u64) -> PathBuf {
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
                    .with_meta(|c| Ok(meta::replica_by_id(c, r.id)?.map(|r| r.latest)))
                    .ok()
                    .flatten()
                    .unwrap_or(r.latest);
                let file = (latest > 0)
                    .then(|| VersionFile::new(self.version_path(r, latest), latest, false));
                Arc::new(ReplicaState {
                    push_lock: Arc::new(tokio::sync::Mutex::new(())),
                    latest: Mutex::new(file),
                    notify: broadcast::channel(16).0,
                    older: Mutex::new(HashMap::new()),
                    materialising: Mutex::new(()),
                })
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
        let n = self.with_meta(|c| {
            Ok(c.execute(
                "DELETE FROM replicas WHERE id=?1 AND latest=0
                   AND NOT EXISTS (SELECT 1 FROM versions WHERE replica=?1)
                   AND NOT EXISTS (SELECT 1 FROM keys WHERE replica=?1)",
                [r.id],
            )?)
        })?;
        if n == 1 {
            map.remove(&r.id);
        }
        Ok(n == 1)
    }

    /// The file of version `number` (blocking: may materialise it).
    pub fn version_file(&self, r: &ReplicaRow, number: u64) -> Result<Arc<VersionFile>> {
        let state = self.replica_state(r);
        let latest = state.latest().context("the replica has no versions yet")?;
        ensure!(
            number >= 1 && number <= latest.number,
            "no version {number}"
        );
        if number == latest.number {
            return Ok(latest);
        }
        let _one_at_a_time = lock(&state.materialising);
        if let Some(f) = lock(&state.older).get(&number).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let name = format!("{}-v{number}-{}.db", r.uid, uuid::Uuid::new_v4().simple());
        let final_path = match self.materialise_in(
            &self.data_dir.join("cache"),
            &name,
            r,
            &latest,
            number,
        ) {
            Err(e) if is_out_of_space(&e) => {
                // The data dir's disk is full (pushes fail cleanly then);
                // older versions stay readable through the temp dir.
                tracing::warn!(
                    replica = %r.path,
                    version = number,
                    spill = %self.spill_dir.display(),
                    "no space to rebuild an older version in the data dir; using the spill folder"
                );
                std::fs::create_dir_all(&self.spill_dir)
                    .with_context(|| format!("creating {}", self.spill_dir.display()))?;
                self.materialise_in(&self.spill_dir, &name, r, &latest, number)
                    .context(
                        "the data dir's disk is full and the spill folder has no room either",
                    )?
            }
            other => other?,
        };
        let f = VersionFile::new(final_path, number, true);
        let mut older = lock(&state.older);
        older.retain(|_, w| w.strong_count() > 0);
        older.insert(number, Arc::downgrade(&f));
        Ok(f)
    }

    /// Materialises version `number` as `dir/name` (through a temp name, so
    /// a half-written file never has the final name); returns its path.
    fn materialise_in(
        &self,
        dir: &Path,
        name: &str,
        r: &ReplicaRow,
        latest: &VersionFile,
        number: u64,
    ) -> Result<PathBuf> {
        let final_path = dir.join(name);
        let tmp = final_path.with_extension("tmp");
        let result = File::open(&latest.path)
            .with_context(|| format!("opening {}", latest.path.display()))
            .and_then(|src| self.materialise(r, &src, latest.number, number, &tmp));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &final_path)?;
        Ok(final_path)
    }

    /// Rebuilds version `number` into `out` from `latest` (the open file of
    /// version `latest_number`) and the back deltas, and checks it against
    /// its versionHash.
    fn materialise(
        &self,
        r: &ReplicaRow,
        latest: &File,
        latest_number: u64,
        number: u64,
        out: &Path,
    ) -> Result<VersionRow> {
        let f = copy_of(latest, out)?;
        let mut row = None;
        for k in (number..latest_number).rev() {
            row = Some(self.step_back(r, &f, k)?);
        }
        let row = row.context("nothing to materialise")?;
        f.sync_all()?;
        let h = hash_file(out, row.page_size, row.page_count)?;
        ensure!(
            h == row.version_hash,
            "version {number} of {} rebuilt with the wrong hash: the store is damaged",
            r.path
        );
        Ok(row)
    }

    /// Turns `f`, holding version `k + 1` of `r`, into version `k` by
    /// applying that version's back delta; returns version `k`'s row.
    fn step_back(&self, r: &ReplicaRow, f: &File, k: u64) -> Result<VersionRow> {
        let (v, delta) = self.with_meta(|c| {
            Ok((
                meta::version(c, r.id, k)?.context("version row missing")?,
                meta::back_delta(c, r.id, k)?,
            ))
        })?;
        for (pgno, hash) in delta {
            let data = self.read_page(&hash)?;
            ensure!(
                data.len() == v.page_size as usize,
                "stored page has the wrong size"
            );
            f.write_all_at(&data, (pgno as u64 - 1) * v.page_size as u64)?;
        }
        f.set_len(v.size())?;
        Ok(v)
    }

    /// Reads one stored page by hash, checking its checksum.
    pub fn read_page(&self, hash: &PageHash) -> Result<Vec<u8>> {
        let loc = self
            .with_meta(|c| meta::blob(c, hash))?
            .with_context(|| format!("page {} is not in the store", hex::encode(&hash[..8])))?;
        lock(&self.packs).read(hash, &loc)
    }

    /// Records the staging file of a finished push as the next version of
    /// `r` (blocking). `sent_pages` are the page numbers the push's stream
    /// carried and `final_count` its ORIGIN_TXN size; pages whose bytes
    /// did not really change are not counted. `also` runs inside the
    /// version's metadata transaction (the push's new keys), so it happens
    /// if and only if the version is recorded; it does not run for
    /// [`CommitOutcome::NoChange`].
    pub fn commit(
        &self,
        r: &ReplicaRow,
        staging: &Path,
        sent_pages: &BTreeSet<u32>,
        final_count: u32,
        message: &str,
        also: &dyn Fn(&Connection) -> Result<()>,
    ) -> Result<CommitOutcome> {
        let result = self.commit_inner(r, staging, sent_pages, final_count, message, also);
        let _ = std::fs::remove_file(staging);
        result
    }

    fn commit_inner(
        &self,
        r: &ReplicaRow,
        staging: &Path,
        sent_pages: &BTreeSet<u32>,
        final_count: u32,
        message: &str,
        also: &dyn Fn(&Connection) -> Result<()>,
    ) -> Result<CommitOutcome> {
        ensure!(final_count > 0, "the pushed database is empty");
        let t0 = std::time::Instant::now();
        normalise_journal_mode(staging)?;
        let page_size = header_page_size(staging)?;
        let len = std::fs::metadata(staging)?.len();
        ensure!(
            len == page_size as u64 * final_count as u64,
            "replica file is {len} bytes, expected {final_count} pages of {page_size}"
        );
        let state = self.replica_state(r);
        let prev = state.latest();
        let (prev_row, prev_sums, prev_xxh3) = match &prev {
            Some(p) => self.with_meta(|c| {
                Ok((
                    meta::version(c, r.id, p.number)?,
                    meta::latest_sums(c, r.id)?,
                    meta::latest_xxh3(c, r.id)?,
                ))
            })?,
            None => (None, Vec::new(), Vec::new()),
        };
        let same_geometry = prev_row.as_ref().is_some_and(|p| p.page_size == page_size)
            && prev_sums.len() as u64 == prev_row.as_ref().map_or(0, |p| p.page_count as u64);

        // New checksums and the pages that really changed.
        let staging_file = File::open(staging)?;
        let mut buf = vec![0u8; page_size as usize];
        // (SHA-256, XXH3-128) of a page of the new version.
        let mut read_page = |pgno: u32| -> Result<(PageHash, [u8; 16])> {
            staging_file.read_exact_at(&mut buf, (pgno as u64 - 1) * page_size as u64)?;
            Ok((
                page_hash(&buf),
                xxhash_rust::xxh3::xxh3_128(&buf).to_be_bytes(),
            ))
        };
        let mut sums: Vec<PageHash>;
        // The XXH3 digests, like `sums`.
        let mut xxh3: Vec<[u8; 16]>;
        let mut changed: Vec<u32> = Vec::new();
        let prev_count = prev_row.as_ref().map_or(0, |p| p.page_count);
        if same_geometry {
            sums = prev_sums.clone();
            sums.resize(final_count as usize, [0u8; 32]);
            // A store from before XXH3 digests were kept hashes every page
            // once, at its first commit.
            let have_xxh3 = prev_xxh3.len() == prev_sums.len();
            xxh3 = if have_xxh3 {
                prev_xxh3.clone()
            } else {
                Vec::new()
            };
            xxh3.resize(final_count as usize, [0u8; 16]);
            if !have_xxh3 {
                for pgno in 1..=final_count {
                    xxh3[pgno as usize - 1] = read_page(pgno)?.1;
                }
            }
            let mut candidates: BTreeSet<u32> = sent_pages.clone();
            candidates.insert(1); // journal-mode normalisation may rewrite page 1
            candidates.extend(prev_count + 1..=final_count);
            for pgno in candidates
                .into_iter()
                .filter(|p| *p >= 1 && *p <= final_count)
            {
                let (h, x) = read_page(pgno)?;
                if pgno > prev_count || h != prev_sums[pgno as usize - 1] {
                    changed.push(pgno);
                }
                sums[pgno as usize - 1] = h;
                xxh3[pgno as usize - 1] = x;
            }
            if changed.is_empty() && final_count == prev_count {
                return Ok(CommitOutcome::NoChange(prev_row));
            }
        } else {
            sums = Vec::with_capacity(final_count as usize);
            xxh3 = Vec::with_capacity(final_count as usize);
            for pgno in 1..=final_count {
                let (h, x) = read_page(pgno)?;
                sums.push(h);
                xxh3.push(x);
            }
            changed = (1..=final_count).collect();
        }
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "commit: new sums");
        // versionHash and versionXxh3 from the page digests already at
        // hand: only page 1 needs its own, with the header counters masked.
        let (version_hash, version_xxh3) = {
            let mut page1 = vec![0u8; page_size as usize];
            staging_file.read_exact_at(&mut page1, 0)?;
            let mut h = VersionHasher::new();
            h.digest(1, &page_digest(1, &page1));
            for (i, d) in sums.iter().enumerate().skip(1) {
                h.digest(i as u32 + 1, d);
            }
            let mut x = VersionHasher::with_kind(HashKind::Xxh3);
            x.digest(1, &page_digest_with(HashKind::Xxh3, 1, &page1));
            for (i, d) in xxh3.iter().enumerate().skip(1) {
                let mut wide = [0u8; 32];
                wide[..16].copy_from_slice(d);
                x.digest(i as u32 + 1, &wide);
            }
            (h.finish(), x.finish())
        };
        if let Some(p) = &prev_row
            && p.version_hash == version_hash
            && p.page_size == page_size
            && p.page_count == final_count
        {
            return Ok(CommitOutcome::NoChange(prev_row));
        }

        // Back delta of the previous version: its contents of every page the
        // new version changed or dropped (all of it if the page size changed).
        let mut back: Vec<(u32, PageHash)> = Vec::new();
        let mut new_blobs: Vec<(PageHash, BlobLocation)> = Vec::new();
        // Gives the pack bytes this commit appends back if it fails.
        let mut tail = PackTailGuard {
            store: self,
            appended: None,
        };
        if let (Some(prev_file), Some(prow)) = (&prev, &prev_row) {
            let pages: Vec<u32> = if same_geometry {
                changed
                    .iter()
                    .copied()
                    .filter(|p| *p <= prev_count)
                    .chain(final_count + 1..=prev_count)
                    .collect()
            } else {
                (1..=prow.page_count).collect()
            };
            let old = File::open(&prev_file.path)
                .with_context(|| format!("opening {}", prev_file.path.display()))?;
            let mut obuf = vec![0u8; prow.page_size as usize];
            let mut packs = lock(&self.packs);
            let start = packs.end();
            let mut seen: BTreeSet<PageHash> = BTreeSet::new();
            for pgno in pages {
                old.read_exact_at(&mut obuf, (pgno as u64 - 1) * prow.page_size as u64)?;
                let h = page_hash(&obuf);
                if let Some(expected) = prev_sums.get(pgno as usize - 1) {
                    ensure!(
                        *expected == h,
                        "page {pgno} of the latest version of {} fails its checksum",
                        r.path
                    );
                }
                back.push((pgno, h));
                if seen.insert(h) && self.with_meta(|c| meta::blob(c, &h))?.is_none() {
                    new_blobs.push((h, packs.append(&obuf)?));
                    tail.appended = Some((start, packs.end()));
                }
            }
            packs.sync()?;
        }

        tracing::debug!(
            changed = changed.len(),
            back = back.len(),
            secs = t0.elapsed().as_secs_f64(),
            "commit: back delta done"
        );
        // The new latest file, durable before the metadata points at it.
        let number = prev.as_ref().map_or(0, |p| p.number) + 1;
        drop(staging_file);
        File::open(staging)?.sync_all()?;
        let dir = self.replica_dir(r);
        std::fs::create_dir_all(&dir)?;
        let path = self.version_path(r, number);
        std::fs::rename(staging, &path)?;
        sync_dir(&dir)?;
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            "commit: latest file durable"
        );

        let row = VersionRow {
            number,
            created: meta::now(),
            page_size,
            page_count: final_count,
            changed_pages: changed.len() as u32,
            message: message.to_string(),
            version_hash,
            version_xxh3: Some(version_xxh3),
        };
        let sums_blob: Vec<u8> = sums.iter().flatten().copied().collect();
        let xxh3_blob: Vec<u8> = xxh3.iter().flatten().copied().collect();
        let txn = self.with_meta(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut ins = tx.prepare(
                    "INSERT OR IGNORE INTO blobs(hash, pack, offset, stored_len, compressed) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (h, loc) in &new_blobs {
                    ins.execute(params![
                        &h[..],
                        loc.pack,
                        loc.offset as i64,
                        loc.stored_len,
                        loc.compressed
                    ])?;
                }
            }
            if number > 1 {
                tx.execute(
                    "UPDATE versions SET back_delta=?3 WHERE replica=?1 AND number=?2",
                    params![r.id, (number - 1) as i64, meta::encode_delta(&back)],
                )?;
            }
            tx.execute(
                "INSERT INTO versions(replica, number, created, page_size, page_count, changed_pages, message, version_hash, version_xxh3)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.id,
                    number as i64,
                    row.created,
                    row.page_size,
                    row.page_count,
                    row.changed_pages,
                    row.message,
                    row.version_hash,
                    row.version_xxh3
                ],
            )?;
            let n = tx.execute(
                "UPDATE replicas SET latest=?2, latest_sums=?3, latest_xxh3=?5 WHERE id=?1 AND latest=?4",
                params![r.id, number as i64, sums_blob, (number - 1) as i64, xxh3_blob],
            )?;
            ensure!(n == 1, "the replica changed under a serialised push");
            also(&tx)?;
            tx.commit()?;
            tracing::debug!(secs = t0.elapsed().as_secs_f64(), "commit: metadata committed");
            // Keep the metadata WAL from growing between idle periods; a
            // busy reader just makes this a no-op.
            let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            Ok(())
        });
        if let Err(e) = txn {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "commit: checkpointed");
        // Committed: the appended pages are referenced now.
        tail.appended = None;
        let new_file = VersionFile::new(path, number, false);
        if let Some(old) = lock(&state.latest).replace(new_file) {
            old.obsolete.store(true, Ordering::SeqCst);
        }
        let _ = state.notify.send(VersionNotice {
            number,
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        Ok(CommitOutcome::Committed(row))
    }

    /// Re-reads the whole store; returns one line per problem found.
    pub fn verify(&self) -> Result<(Vec<String>, VerifyCounts)> {
        let mut damage = Vec::new();
        let mut counts = VerifyCounts::default();
        // Every stored page against its checksum.
        let blobs: Vec<(PageHash, BlobLocation)> = self.with_meta(|c| {
            let mut st =
                c.prepare("SELECT hash, pack, offset, stored_len, compressed FROM blobs")?;
            let rows = st.query_map([], |r| {
                let h: Vec<u8> = r.get(0)?;
                let mut hash = [0u8; 32];
                if h.len() == 32 {
                    hash.copy_from_slice(&h);
                }
                Ok((
                    hash,
                    BlobLocation {
                        pack: r.get(1)?,
                        offset: r.get::<_, i64>(2)? as u64,
                        stored_len: r.get(3)?,
                        compressed: r.get(4)?,
                    },
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })?;
        for (h, loc) in &blobs {
            counts.pages += 1;
            if let Err(e) = lock(&self.packs).read(h, loc) {
                damage.push(format!("{e:#}"));
            }
        }
        // Every version of every replica against its versionHash.
        for r in self.with_meta(meta::all_replicas)? {
            if r.latest == 0 {
                continue;
            }
            counts.replicas += 1;
            match self.verify_replica(&r) {
                Ok((bad, versions)) => {
                    damage.extend(bad);
                    counts.versions += versions;
                }
                Err(e) => damage.push(format!("{}: {e:#}", r.path)),
            }
        }
        Ok((damage, counts))
    }

    /// Checks every version of `r`; returns the damage found and how many
    /// versions were checked.
    ///
    /// `verify` may run next to a live server, whose commits replace the
    /// latest file (and delete the old one) and its checksums. So the
    /// latest version's metadata is read in one transaction, its file is
    /// opened (an open file stays readable even once a commit deletes it;
    /// the server never rewrites it in place), and if a commit moved the
    /// latest in between, the snapshot is taken again. Older versions never
    /// change once their successor exists.
    fn verify_replica(&self, r: &ReplicaRow) -> Result<(Vec<String>, u64)> {
        let mut attempts = 0;
        let (latest, row, sums, file) = loop {
            attempts += 1;
            let (latest, row, sums) = self.with_meta(|c| {
                let tx = c.unchecked_transaction()?;
                let latest = meta::replica_by_id(&tx, r.id)?
                    .context("replica row missing")?
                    .latest;
                let row = meta::version(&tx, r.id, latest)?;
                let sums = meta::latest_sums(&tx, r.id)?;
                tx.commit()?;
                Ok((latest, row, sums))
            })?;
            let Some(row) = row else {
                return Ok((vec![format!("{}: latest version row missing", r.path)], 0));
            };
            let path = self.version_path(r, latest);
            match File::open(&path) {
                Ok(f) => break (latest, row, sums, f),
                // A commit replaced the file after the snapshot: take it again.
                Err(_)
                    if attempts < 20
                        && self.with_meta(|c| {
                            Ok(meta::replica_by_id(c, r.id)?.map(|x| x.latest) != Some(latest))
                        })? =>
                {
                    continue;
                }
                Err(e) => {
                    return Ok((
                        vec![format!(
                            "{} v{latest}: file {} cannot be opened: {e}",
                            r.path,
                            path.display()
                        )],
                        1,
                    ));
                }
            }
        };
        let mut bad = Vec::new();
        let len = file.metadata()?.len();
        if len != row.size() {
            bad.push(format!(
                "{} v{latest}: file is {len} bytes, expected {}",
                r.path,
                row.size()
            ));
            return Ok((bad, 1));
        }
        bad.extend(self.check_latest(r, &file, &row, &sums)?);
        // Older versions: rebuild them one after the other, newest first,
        // applying one back delta at a time to a single copy.
        let tmp = self.data_dir.join("cache").join(format!(
            "verify-{}-{}.tmp",
            r.uid,
            uuid::Uuid::new_v4().simple()
        ));
        let mut older = self.verify_older(r, &file, latest, &tmp);
        let _ = std::fs::remove_file(&tmp);
        if older.as_ref().is_err_and(is_out_of_space) {
            // A full disk is not damage: rebuild in the spill folder.
            let spill = self.spill_dir.join(tmp.file_name().expect("a file name"));
            older = std::fs::create_dir_all(&self.spill_dir)
                .map_err(anyhow::Error::from)
                .and_then(|_| self.verify_older(r, &file, latest, &spill));
            let _ = std::fs::remove_file(&spill);
        }
        match older {
            Ok(more) => bad.extend(more),
            Err(e) => bad.push(format!("{}: older versions: {e:#}", r.path)),
        }
        Ok((bad, latest))
    }

    /// Rebuilds versions `latest-1` down to 1 of `r` in `tmp`, checking each
    /// against its versionHash. A version that cannot be rebuilt makes every
    /// older one unreachable too; each is reported.
    fn verify_older(
        &self,
        r: &ReplicaRow,
        latest: &File,
        latest_number: u64,
        tmp: &Path,
    ) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        if latest_number < 2 {
            return Ok(bad);
        }
        let f = copy_of(latest, tmp)?;
        for k in (1..latest_number).rev() {
            let step = (|| -> Result<()> {
                let v = self.step_back(r, &f, k)?;
                ensure!(
                    hash_file(tmp, v.page_size, v.page_count)? == v.version_hash,
                    "rebuilt with the wrong hash: the store is damaged"
                );
                Ok(())
            })();
            if let Err(e) = step {
                for n in (1..=k).rev() {
                    bad.push(format!("{} v{n}: {e:#}", r.path));
                }
                break;
            }
        }
        Ok(bad)
    }

    fn check_latest(
        &self,
        r: &ReplicaRow,
        file: &File,
        row: &VersionRow,
        sums: &[PageHash],
    ) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        if sums.len() != row.page_count as usize {
            bad.push(format!(
                "{} v{}: page checksums missing",
                r.path, row.number
            ));
        }
        let mut buf = vec![0u8; row.page_size as usize];
        let mut hasher = VersionHasher::new();
        for pgno in 1..=row.page_count {
            file.read_exact_at(&mut buf, (pgno as u64 - 1) * row.page_size as u64)?;
            if let Some(s) = sums.get(pgno as usize - 1)
                && page_hash(&buf) != *s
            {
                bad.push(format!(
                    "{} v{}: page {pgno} fails its checksum",
                    r.path, row.number
                ));
            }
            hasher.page(pgno, &buf);
        }
        if hasher.finish() != row.version_hash {
            bad.push(format!(
                "{} v{}: versionHash does not match",
                r.path, row.number
            ));
        }
        Ok(bad)
    }
}

/// Cuts the pack bytes a failed commit appended (when nothing was appended
/// after them), so that a commit that failed for lack of space gives the
/// space back at once instead of at the next start.
struct PackTailGuard<'a> {
    /// The store whose packs were appended to.
    store: &'a Store,
    /// (start, end) of this commit's appends; None once committed.
    appended: Option<((u32, u64), (u32, u64))>,
}

impl Drop for PackTailGuard<'_> {
    fn drop(&mut self) {
        if let Some((start, end)) = self.appended {
            let cut = lock(&self.store.packs).cut_back(start, end);
            tracing::info!(cut, "commit failed; giving back its pack bytes");
        }
    }
}

/// The spill folder of the store at `data_dir`: in the system temp dir,
/// named after the data dir so that two servers on one machine never clear
/// each other's files.
pub fn spill_dir_for(data_dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let abs = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let h = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
    std::env::temp_dir().join(format!("sqlrsync-server-spill-{}", &h[..16]))
}

/// True when `e` comes from a full disk (or quota).
pub fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    })
}

/// What `verify` looked at.
#[derive(Debug, Default)]
pub struct VerifyCounts {
    /// Stored pages checked.
    pub pages: u64,
    /// Replicas with versions.
    pub replicas: u64,
    /// Versions rebuilt and hashed.
    pub versions: u64,
}

/// A new file at `out` holding a copy of `latest` (read from its start),
/// open for reading and writing: where older versions are rebuilt.
fn copy_of(latest: &File, out: &Path) -> Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let mut src = latest;
    src.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut src, &mut f).context("copying the latest version")?;
    Ok(f)
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

/// Writes `bytes` to `path` atomically (temp, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    sync_dir(dir)
}
