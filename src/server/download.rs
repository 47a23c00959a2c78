//! A version read for a web download: page by page, straight from the
//! store, every page checked before it is sent.
//!
//! Pulls are checked by the client (versionHash), a download by nobody but
//! us: a browser saves whatever arrives. So the download checks what it
//! sends, as it sends it, and a damaged page ends the transfer (the body
//! is aborted, never completed with bad bytes; see [`super::web`]).
//!
//! Nothing is materialised. Version N's page p is the latest file's page
//! p unless one of the back deltas N..latest-1 holds it; then it is the
//! one of the lowest such delta (the version closest to N that differs
//! from its successor there). A back delta holds every page its version
//! changed or dropped, all of them when the page size changed, so a page
//! that is in none of them is in the latest file, at the same offset. The
//! delta pages come from the page store, checked by their SHA-256 address;
//! the latest file's pages are checked against `latest_sums`. The
//! versionHash of the whole is checked before the last chunk leaves, which
//! also covers a store without per-page sums.
//!
//! A stalled reader therefore holds no rebuilt copy of an older version
//! (a cache file the size of the database each), only the pinned latest
//! file it reads from, one chunk, and the list of the delta pages: 36 bytes
//! for each page the version does not share with the latest (under 1% of
//! those pages' size).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};

use super::store::Pin;
use super::store::pages::{PageHash, page_hash};
use super::store::prune::VersionPruned;
use super::store::{ReplicaRow, Store, VersionFile, VersionRow};
use crate::sqlite::{VersionHasher, page_digest};

/// Bytes read (and checked) per chunk of the response body.
const CHUNK: usize = 128 * 1024;

/// How often the latest version may move under the snapshot before we give
/// up (each retry follows a commit that landed in between).
const SNAPSHOT_ATTEMPTS: usize = 20;

/// Version `row.number` of a replica, read for a download.
pub struct CheckedVersion {
    /// The store the delta pages come from.
    store: Arc<Store>,
    /// The replica's path, for the log.
    path: String,
    /// The version served.
    row: VersionRow,
    /// The latest version's file, pinned (a commit never removes it under us).
    _latest: Arc<VersionFile>,
    /// The epoch the overlay was planned in: compaction drops no page it
    /// names until the download ends ([`crate::server::store`]'s pins).
    _planned: Pin,
    /// It, open.
    file: File,
    /// Its per-page SHA-256, when the store has them whole (else only the
    /// versionHash at the end checks its pages).
    latest_sums: Option<Vec<PageHash>>,
    /// Pages of this version held by a back delta, sorted by page number.
    overlay: Vec<(u32, PageHash)>,
    /// The first entry of `overlay` not read yet (pages are read in order).
    cursor: usize,
    /// The next page to read (from 1).
    next: u32,
    /// The versionHash so far.
    hasher: Option<VersionHasher>,
    /// A chunk failed (damage, or a read error): the download is over.
    broken: bool,
}

impl CheckedVersion {
    /// Opens version `number` of `r` (blocking: reads metadata).
    pub fn open(store: Arc<Store>, r: &ReplicaRow, number: u64) -> Result<CheckedVersion> {
        let state = store.replica_state(r);
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let latest = state.latest().context("the replica has no versions yet")?;
            // The file and the checksums must be of the same version: a
            // commit between the two reads moves one and not the other.
            let snap = store.meta().latest_snapshot(r)?;
            if snap.latest != latest.number {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            ensure!(
                number >= 1 && number <= latest.number,
                "no version {number}"
            );
            let latest_row = snap.row.context("the latest version's row is missing")?;
            let file = File::open(&latest.path)
                .with_context(|| format!("opening {}", latest.path.display()))?;
            let row = if number == latest.number {
                latest_row.clone()
            } else {
                store
                    .meta()
                    .version(r, number)?
                    .context("version row missing")?
            };
            if let Some(pruned) = VersionPruned::of(&row) {
                return Err(pruned.into());
            }
            let planned = store.pin_pages();
            let overlay = delta_pages(&store, r, &row, latest.number)?;
            let whole = snap.sums.len() == latest_row.page_count as usize;
            return Ok(CheckedVersion {
                store,
                path: r.path.clone(),
                row,
                _latest: latest,
                _planned: planned,
                file,
                latest_sums: whole.then_some(snap.sums),
                overlay,
                cursor: 0,
                next: 1,
                hasher: Some(VersionHasher::new()),
                broken: false,
            });
        }
        bail!("the latest version kept moving; try again")
    }

    /// The version served.
    pub fn row(&self) -> &VersionRow {
        &self.row
    }

    /// Every page was read, and the whole matched its versionHash.
    pub fn finished(&self) -> bool {
        !self.broken && self.next > self.row.page_count
    }

    /// The replica's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next chunk of the file, checked; None after the last (blocking).
    /// The chunk that holds the last page comes only once the versionHash
    /// of the whole matched. After an error there is nothing more.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        ensure!(!self.broken, "the download already failed");
        let r = self.read_chunk();
        self.broken = r.is_err();
        r
    }

    fn read_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let (size, count) = (self.row.page_size as usize, self.row.page_count);
        if self.next > count {
            return Ok(None);
        }
        let pages = (CHUNK / size).max(1) as u32;
        let last = (self.next + pages - 1).min(count);
        let mut out = vec![0u8; (last - self.next + 1) as usize * size];
        for (i, pgno) in (self.next..=last).enumerate() {
            let buf = &mut out[i * size..(i + 1) * size];
            let digest = self.read_page(pgno, buf)?;
            self.hasher
                .as_mut()
                .expect("hashing until the end")
                .digest(pgno, &digest);
        }
        if last == count {
            let h = self.hasher.take().expect("hashed once").finish();
            if h != self.row.version_hash {
                bail!(
                    "version {} of {} does not match its versionHash: the store is damaged \
(run `sqlrsync-server verify`)",
                    self.row.number,
                    self.path
                );
            }
        }
        self.next = last + 1;
        Ok(Some(out))
    }

    /// The delta page `pgno` is, if it is one (pages come in order).
    fn delta_page(&mut self, pgno: u32) -> Option<PageHash> {
        while self
            .overlay
            .get(self.cursor)
            .is_some_and(|(p, _)| *p < pgno)
        {
            self.cursor += 1;
        }
        match self.overlay.get(self.cursor) {
            Some((p, hash)) if *p == pgno => Some(*hash),
            _ => None,
        }
    }

    /// Reads page `pgno` into `buf`, checked; returns its versionHash
    /// digest.
    fn read_page(&mut self, pgno: u32, buf: &mut [u8]) -> Result<[u8; 32]> {
        if let Some(hash) = self.delta_page(pgno) {
            // Checked against its address by the page store.
            let data = self.store.read_page(&hash)?;
            ensure!(data.len() == buf.len(), "stored page has the wrong size");
            buf.copy_from_slice(&data);
            // Only page 1's digest masks bytes; every other is the address.
            return Ok(if pgno == 1 { page_digest(1, buf) } else { hash });
        }
        self.file
            .read_exact_at(buf, (pgno as u64 - 1) * buf.len() as u64)
            .with_context(|| format!("reading page {pgno} of the latest file"))?;
        let digest = page_digest(pgno, buf);
        if let Some(sums) = &self.latest_sums {
            let sum = if pgno == 1 { page_hash(buf) } else { digest };
            if sums.get(pgno as usize - 1) != Some(&sum) {
                bail!(
                    "page {pgno} of {} fails its checksum: the store is damaged \
(run `sqlrsync-server verify`)",
                    self.path
                );
            }
        }
        Ok(digest)
    }
}

/// The pages of version `row` of `r` that are not the latest's (version
/// `latest`): for each page in any back delta from `row.number` up, the
/// one of the lowest such delta, sorted by page number.
fn delta_pages(
    store: &Store,
    r: &ReplicaRow,
    row: &VersionRow,
    latest: u64,
) -> Result<Vec<(u32, PageHash)>> {
    let count = row.page_count as usize;
    let mut seen = vec![0u64; count.div_ceil(64)];
    let mut pages = Vec::new();
    for k in row.number..latest {
        let (_, delta) = store.meta().version_with_delta(r, k)?;
        for (pgno, hash) in delta {
            let Some(i) = (pgno as usize).checked_sub(1) else {
                continue;
            };
            if i < count && seen[i / 64] & (1 << (i % 64)) == 0 {
                seen[i / 64] |= 1 << (i % 64);
                pages.push((pgno, hash));
            }
        }
    }
    pages.sort_unstable_by_key(|(p, _)| *p);
    Ok(pages)
}
