//! A push's result becoming the next version: the one place a version is
//! written.
//!
//! The order is what makes a commit atomic (see [`super`]): the previous
//! version's changed pages go to the page store (synced), the new file is
//! made durable under its final name, and only then does one metadata
//! transaction point at it. A failure before that transaction gives back
//! the appended page bytes at once ([`PackTailGuard`]) and removes the new
//! file; a crash leaves what start-up recovery removes.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use super::disk::{header_page_size, normalise_journal_mode, sync_dir};
use super::live::{ReplicaState, VersionFile};
use super::meta::{self, LatestState, NewKey, NewVersion, ReplicaRow, VersionRow};
use super::pages::{BlobLocation, BlobPosition, PageHash, page_hash};
use super::spare::{Recycle, SPARE_HOT, SPARE_TTL};
use super::{Store, lock};
use crate::sqlite::{HashKind, VersionHasher, page_digest, page_digest_with};

/// What a finished push amounted to.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The pushed database equals the latest version: nothing stored.
    NoChange(Option<VersionRow>),
    /// A new version.
    Committed(VersionRow),
}

/// What a push sent, as the commit needs it.
#[derive(Debug)]
pub struct Pushed<'a> {
    /// The staging file the helper wrote.
    pub staging: &'a Path,
    /// Page numbers the push's stream carried.
    pub sent_pages: &'a BTreeSet<u32>,
    /// Its ORIGIN_TXN size, in pages.
    pub final_count: u32,
    /// The commit message (may be empty).
    pub message: &'a str,
    /// Keys issued during the push, stored in the version's transaction.
    pub keys: &'a [NewKey],
    /// A delta push: the versionXxh3 the client hashed its database to. A
    /// result that hashes otherwise is [`NotTheHashedVersion`] and stores
    /// nothing.
    pub expect_xxh3: Option<&'a str>,
}

/// A delta push whose pages, applied to the latest version, do not make
/// the database the client hashed (a stale page cache, or a damaged or
/// lying client): nothing is stored.
#[derive(Debug, thiserror::Error)]
#[error("the pushed pages make versionXxh3 {got}, not the {want} the client hashed")]
pub struct NotTheHashedVersion {
    pub want: String,
    pub got: String,
}

/// The latest version a commit builds on.
struct Previous {
    /// Its file, if there is a version.
    file: Option<Arc<VersionFile>>,
    /// Its row and page digests.
    meta: LatestState,
}

impl Previous {
    fn page_count(&self) -> u32 {
        self.meta.row.as_ref().map_or(0, |p| p.page_count)
    }
}

/// The pages of the new version, and which of them changed.
struct NewPages {
    /// SHA-256 of every page.
    sums: Vec<PageHash>,
    /// XXH3-128 of every page.
    xxh3: Vec<[u8; 16]>,
    /// Pages whose bytes changed (or are new).
    changed: Vec<u32>,
    /// True when the page size is the previous version's and its checksums
    /// are whole: only candidate pages were read.
    same_geometry: bool,
}

/// The previous version's side of a commit.
#[derive(Default)]
struct BackDelta {
    /// (page number, page hash) of every page the new version changed or
    /// dropped, as the previous version had it.
    entries: Vec<(u32, PageHash)>,
    /// The pages among them that the page store did not hold yet, where
    /// they were appended.
    new_blobs: Vec<(PageHash, BlobLocation)>,
}

impl Store {
    /// Records the staging file of a finished push as the next version of
    /// `r` (blocking). Pages whose bytes did not really change are not
    /// counted. The push's keys are stored inside the version's metadata
    /// transaction, so they exist if and only if the version is recorded;
    /// they are not stored for [`CommitOutcome::NoChange`]. The staging
    /// file is gone afterwards either way.
    pub fn commit(&self, r: &ReplicaRow, pushed: &Pushed<'_>) -> Result<CommitOutcome> {
        let result = self.commit_inner(r, pushed);
        let _ = std::fs::remove_file(pushed.staging);
        result
    }

    /// Long: the commit's steps in their one order (module doc), with the
    /// guard that undoes them; split up, that order would be spread out.
    fn commit_inner(&self, r: &ReplicaRow, pushed: &Pushed<'_>) -> Result<CommitOutcome> {
        let (staging, final_count) = (pushed.staging, pushed.final_count);
        ensure!(final_count > 0, "the pushed database is empty");
        let t0 = Instant::now();
        normalise_journal_mode(staging)?;
        let page_size = header_page_size(staging)?;
        let len = std::fs::metadata(staging)?.len();
        ensure!(
            len == page_size as u64 * final_count as u64,
            "replica file is {len} bytes, expected {final_count} pages of {page_size}"
        );
        let state = self.replica_state(r);
        let prev = self.previous(r, &state)?;
        let staging_file = File::open(staging)?;
        let Some(pages) = new_pages(&staging_file, &prev, pushed, page_size)? else {
            let got = prev.meta.row.as_ref().and_then(|p| p.version_xxh3.clone());
            if let Some(want) = pushed.expect_xxh3
                && got.as_deref() != Some(want)
            {
                let got = got.unwrap_or_default();
                let want = want.to_string();
                return Err(NotTheHashedVersion { want, got }.into());
            }
            return Ok(CommitOutcome::NoChange(prev.meta.row));
        };
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "commit: new sums");
        let (version_hash, version_xxh3) = version_hashes(&staging_file, &pages, page_size)?;
        if let Some(want) = pushed.expect_xxh3
            && want != version_xxh3
        {
            return Err(NotTheHashedVersion {
                want: want.to_string(),
                got: version_xxh3,
            }
            .into());
        }
        if let Some(p) = &prev.meta.row
            && p.version_hash == version_hash
            && p.page_size == page_size
            && p.page_count == final_count
        {
            return Ok(CommitOutcome::NoChange(prev.meta.row));
        }
        // One commit at a time, from its first append to its commit
        // point, so that what a crash leaves past the last commit belongs
        // to the one commit whose start is on record (see recovery).
        let _one_at_a_time = lock(&self.commit_serial);
        let number = prev.file.as_ref().map_or(0, |p| p.number) + 1;
        let start = lock(&self.pages).end();
        let in_flight = self.meta().begin_commit(r.id, number, start)?;
        // Gives the page bytes this commit appends back if it fails.
        let mut tail = PackTailGuard {
            store: self,
            appended: None,
            in_flight: Some(in_flight),
            file: Some(self.version_path(r, number)),
        };
        let back = self.store_back_delta(r, &prev, &pages, final_count, &mut tail)?;
        tracing::debug!(
            changed = pages.changed.len(),
            back = back.entries.len(),
            secs = t0.elapsed().as_secs_f64(),
            "commit: back delta done"
        );
        // The new latest file, durable before the metadata points at it.
        drop(staging_file);
        let path = self.install_file(r, staging, number)?;
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            "commit: latest file durable"
        );
        let row = VersionRow {
            number,
            created: meta::now(),
            page_size,
            page_count: final_count,
            changed_pages: pages.changed.len() as u32,
            message: pushed.message.to_string(),
            version_hash,
            version_xxh3: Some(version_xxh3),
            pruned: None,
        };
        let txn = self.meta().commit_version(&NewVersion {
            replica: r.id,
            row: &row,
            blobs: &back.new_blobs,
            back_delta: &back.entries,
            sums: &pages.sums,
            xxh3: &pages.xxh3,
            keys: pushed.keys,
            in_flight: Some(in_flight),
        });
        // On an error the guard removes the new file and gives the bytes
        // back.
        txn?;
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            "commit: metadata committed"
        );
        // Committed: the appended pages are referenced now, and the
        // transaction ended the in-flight record.
        tail.appended = None;
        tail.in_flight = None;
        tail.file = None;
        if let Some(old) = &prev.file
            && state.committed_within(SPARE_HOT)
        {
            // Hot: the retired file becomes the next push's staging copy.
            let mut changed = pages.changed.clone();
            changed.push(1);
            old.recycle_into(Recycle {
                staging: self.data_dir.join("staging"),
                uid: r.uid.clone(),
                state: Arc::downgrade(&state),
                number,
                page_size,
                page_count: final_count,
                changed,
                xxh3: row.version_xxh3.clone().unwrap_or_default(),
            });
        }
        state.publish(VersionFile::new(path, number, false));
        self.drop_stale_spares();
        Ok(CommitOutcome::Committed(row))
    }

    /// Removes every replica's spare not taken within [`SPARE_TTL`].
    fn drop_stale_spares(&self) {
        let states: Vec<_> = lock(&self.replicas).values().cloned().collect();
        for s in states {
            s.drop_stale_spare(SPARE_TTL);
        }
    }

    /// The latest version of `r` as its live state has it, with its
    /// checksums.
    fn previous(&self, r: &ReplicaRow, state: &ReplicaState) -> Result<Previous> {
        let file = state.latest();
        let meta = match &file {
            Some(p) => self.meta().latest_state(r, p.number)?,
            None => LatestState::default(),
        };
        Ok(Previous { file, meta })
    }

    /// Back delta of the previous version: its contents of every page the
    /// new version changed or dropped (all of it if the page size changed),
    /// with the pages not stored yet appended to the page store and synced.
    fn store_back_delta(
        &self,
        r: &ReplicaRow,
        prev: &Previous,
        pages: &NewPages,
        final_count: u32,
        tail: &mut PackTailGuard<'_>,
    ) -> Result<BackDelta> {
        let mut delta = BackDelta::default();
        let (Some(prev_file), Some(prow)) = (&prev.file, &prev.meta.row) else {
            return Ok(delta);
        };
        let prev_count = prev.page_count();
        let wanted: Vec<u32> = if pages.same_geometry {
            pages
                .changed
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
        let mut store = lock(&self.pages);
        let start = store.end();
        let mut seen: BTreeSet<PageHash> = BTreeSet::new();
        for pgno in wanted {
            old.read_exact_at(&mut obuf, (pgno as u64 - 1) * prow.page_size as u64)?;
            let h = page_hash(&obuf);
            if let Some(expected) = prev.meta.sums.get(pgno as usize - 1) {
                ensure!(
                    *expected == h,
                    "page {pgno} of the latest version of {} fails its checksum",
                    r.path
                );
            }
            delta.entries.push((pgno, h));
            if seen.insert(h) && self.meta().blob(&h)?.is_none() {
                delta.new_blobs.push((h, store.append(&obuf)?));
                tail.appended = Some((start, store.end()));
            }
        }
        store.sync()?;
        Ok(delta)
    }

    /// Makes the staging file durable as `v<number>.db` of `r`.
    fn install_file(
        &self,
        r: &ReplicaRow,
        staging: &Path,
        number: u64,
    ) -> Result<std::path::PathBuf> {
        File::open(staging)?.sync_all()?;
        let dir = self.replica_dir(r);
        std::fs::create_dir_all(&dir)?;
        let path = self.version_path(r, number);
        std::fs::rename(staging, &path)?;
        sync_dir(&dir)?;
        Ok(path)
    }
}

/// The new version's page checksums and digests and the pages that really
/// changed; None when nothing changed.
fn new_pages(
    staging: &File,
    prev: &Previous,
    pushed: &Pushed<'_>,
    page_size: u32,
) -> Result<Option<NewPages>> {
    let final_count = pushed.final_count;
    let same_geometry = prev
        .meta
        .row
        .as_ref()
        .is_some_and(|p| p.page_size == page_size)
        && prev.meta.sums.len() as u64 == prev.page_count() as u64;
    let mut buf = vec![0u8; page_size as usize];
    // (SHA-256, XXH3-128) of a page of the new version.
    let mut read_page = |pgno: u32| -> Result<(PageHash, [u8; 16])> {
        staging.read_exact_at(&mut buf, (pgno as u64 - 1) * page_size as u64)?;
        Ok((
            page_hash(&buf),
            xxhash_rust::xxh3::xxh3_128(&buf).to_be_bytes(),
        ))
    };
    if !same_geometry {
        let mut sums = Vec::with_capacity(final_count as usize);
        let mut xxh3 = Vec::with_capacity(final_count as usize);
        for pgno in 1..=final_count {
            let (h, x) = read_page(pgno)?;
            sums.push(h);
            xxh3.push(x);
        }
        return Ok(Some(NewPages {
            sums,
            xxh3,
            changed: (1..=final_count).collect(),
            same_geometry,
        }));
    }
    let prev_count = prev.page_count();
    let mut sums = prev.meta.sums.clone();
    sums.resize(final_count as usize, [0u8; 32]);
    // A store from before XXH3 digests were kept hashes every page once,
    // at its first commit.
    let have_xxh3 = prev.meta.xxh3.len() == prev.meta.sums.len();
    let mut xxh3 = if have_xxh3 {
        prev.meta.xxh3.clone()
    } else {
        Vec::new()
    };
    xxh3.resize(final_count as usize, [0u8; 16]);
    if !have_xxh3 {
        for pgno in 1..=final_count {
            xxh3[pgno as usize - 1] = read_page(pgno)?.1;
        }
    }
    let mut candidates: BTreeSet<u32> = pushed.sent_pages.clone();
    candidates.insert(1); // journal-mode normalisation may rewrite page 1
    candidates.extend(prev_count + 1..=final_count);
    let mut changed = Vec::new();
    for pgno in candidates
        .into_iter()
        .filter(|p| *p >= 1 && *p <= final_count)
    {
        let (h, x) = read_page(pgno)?;
        if pgno > prev_count || h != prev.meta.sums[pgno as usize - 1] {
            changed.push(pgno);
        }
        sums[pgno as usize - 1] = h;
        xxh3[pgno as usize - 1] = x;
    }
    if changed.is_empty() && final_count == prev_count {
        return Ok(None);
    }
    Ok(Some(NewPages {
        sums,
        xxh3,
        changed,
        same_geometry,
    }))
}

/// versionHash and versionXxh3 from the page digests already at hand: only
/// page 1 needs its own, with the header counters masked.
fn version_hashes(staging: &File, pages: &NewPages, page_size: u32) -> Result<(String, String)> {
    let mut page1 = vec![0u8; page_size as usize];
    staging.read_exact_at(&mut page1, 0)?;
    let mut h = VersionHasher::new();
    h.digest(1, &page_digest(1, &page1));
    for (i, d) in pages.sums.iter().enumerate().skip(1) {
        h.digest(i as u32 + 1, d);
    }
    let mut x = VersionHasher::with_kind(HashKind::Xxh3);
    x.digest(1, &page_digest_with(HashKind::Xxh3, 1, &page1));
    for (i, d) in pages.xxh3.iter().enumerate().skip(1) {
        let mut wide = [0u8; 32];
        wide[..16].copy_from_slice(d);
        x.digest(i as u32 + 1, &wide);
    }
    Ok((h.finish(), x.finish()))
}

/// Cuts the page bytes a failed commit appended, so that a commit that
/// failed for lack of space gives the space back at once, and then ends
/// its in-flight record. When the bytes cannot be cut the record stays:
/// it is what proves them garbage at the next start.
struct PackTailGuard<'a> {
    /// The store whose page store was appended to.
    store: &'a Store,
    /// (start, end) of this commit's appends; None once committed.
    appended: Option<(BlobPosition, BlobPosition)>,
    /// The in-flight record; None once committed.
    in_flight: Option<i64>,
    /// The new version's file, wherever the commit got to; None once
    /// committed.
    file: Option<std::path::PathBuf>,
}

impl Drop for PackTailGuard<'_> {
    fn drop(&mut self) {
        let mut given_back = true;
        if let Some(f) = &self.file {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => given_back = false,
            }
        }
        if let Some((start, end)) = self.appended {
            given_back = lock(&self.store.pages).cut_back(start, end);
            tracing::info!(
                cut = given_back,
                "commit failed; giving back its pack bytes"
            );
        }
        if let Some(id) = self.in_flight
            && given_back
            && let Err(e) = self.store.meta().end_commit(id)
        {
            tracing::warn!(error = %format!("{e:#}"), "could not end a failed commit's record; the next start cleans up");
        }
    }
}
