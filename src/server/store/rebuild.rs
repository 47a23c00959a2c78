//! Older versions rebuilt on demand: the latest file, copied, with the back
//! deltas of the versions between put in.
//!
//! Applying the back deltas one after another, newest first, writes a page
//! once for every version that changed it, so an old version cost more the
//! more versions came after it. The result is the same when each page is
//! written once, from the oldest back delta (at or after the version asked
//! for) that holds it: that is the last write the step-by-step rebuild
//! would make. So the deltas are read first (metadata only), then each page
//! written once, in page order, by [`super::one_pass`], which reads every
//! other page from the latest file instead of copying it whole first; when
//! the versions between differ in page size, or their pages are too many
//! to hold in memory, the rebuild goes step by step from a copy of the
//! latest file. Either way the result is checked against its versionHash.
//!
//! Pulls and downloads of an older version share one rebuilt file per
//! version (materialised once, pinned while read, removed by its last
//! reader). A full data-dir disk, which refuses pushes, must not also make
//! older versions unreadable: the rebuild then goes to the spill folder.
//! Every rebuild is checked against its versionHash before anyone reads it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use anyhow::{Context, Result, ensure};

use super::disk::{copy_of, hash_file, is_out_of_space, new_file};
use super::live::VersionFile;
use super::meta::{ReplicaRow, VersionRow};
use super::one_pass::PagePlan;
use super::pages::PageHash;
use super::prune::VersionPruned;
use super::{Store, lock};

/// A one-pass rebuild: the target version's row and the pages to write.
type OnePass = (VersionRow, Vec<(u32, PageHash)>);

/// Most distinct stored pages a one-pass rebuild holds in memory (about 40
/// bytes each: 160 MB at most); a rebuild touching more goes step by step.
const ONE_PASS_MAX_PAGES: usize = 4 << 20;

impl Store {
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
        let row = self
            .meta
            .version(r, number)?
            .context("version row missing")?;
        if let Some(pruned) = VersionPruned::of(&row) {
            return Err(pruned.into());
        }
        let _planned_now = self.pin_pages();
        let name = format!("{}-v{number}-{}.db", r.uid, uuid::Uuid::new_v4().simple());
        let started = std::time::Instant::now();
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
        tracing::info!(replica = %r.path, version = number, latest = latest.number,
            secs = started.elapsed().as_secs_f64(), "older version rebuilt");
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
        let (row, hash) = match self.one_pass_plan(r, latest_number, number)? {
            Some((row, pages)) => {
                let f = new_file(out)?;
                let hash = self.write_one_pass(latest, &row, &pages, &f)?;
                (row, hash)
            }
            None => {
                let f = copy_of(latest, out)?;
                let mut row = None;
                for k in (number..latest_number).rev() {
                    row = self.step_back(r, &f, k)?.or(row);
                }
                let row = row.context("nothing to materialise")?;
                f.sync_all()?;
                let hash = hash_file(out, row.page_size, row.page_count)?;
                (row, hash)
            }
        };
        ensure!(
            hash == row.version_hash,
            "version {number} of {} rebuilt with the wrong hash: the store is damaged",
            r.path
        );
        Ok(row)
    }

    /// For a one-pass rebuild of version `number`: its row and, in page
    /// order, each page to write with the stored page to write there (from
    /// the oldest back delta at or after `number` that holds it). None when
    /// the versions between do not all share one page size, or hold more
    /// pages than [`ONE_PASS_MAX_PAGES`], or the version has more pages
    /// than [`PagePlan`] indexes: then the rebuild goes step by step.
    fn one_pass_plan(
        &self,
        r: &ReplicaRow,
        latest_number: u64,
        number: u64,
    ) -> Result<Option<OnePass>> {
        let mut plan: Option<(VersionRow, PagePlan)> = None;
        for k in number..latest_number {
            let (v, delta) = self.meta.version_with_delta(r, k)?;
            if v.pruned.is_some() {
                // Its pages are in the delta of the kept version below.
                continue;
            }
            if plan.is_none() {
                let Some(pages) = PagePlan::new(v.page_count) else {
                    return Ok(None);
                };
                plan = Some((v.clone(), pages));
            }
            let (target, pages) = plan.as_mut().expect("made above");
            if v.page_size != target.page_size {
                return Ok(None);
            }
            // Going up, the first delta to hold a page is the oldest: it wins.
            pages.add_missing(&delta);
            if pages.len() > ONE_PASS_MAX_PAGES {
                return Ok(None);
            }
        }
        let latest = self.meta.version(r, latest_number)?;
        let Some((target, pages)) = plan else {
            return Ok(None);
        };
        if latest.is_none_or(|l| l.page_size != target.page_size) {
            return Ok(None);
        }
        Ok(Some((target, pages.into_sorted())))
    }

    /// Turns `f`, holding the next kept version above `k` of `r`, into
    /// version `k` by applying that version's back delta; returns version
    /// `k`'s row. A pruned `k` is passed over (None): its pages are in the
    /// delta of the kept version below it.
    pub(super) fn step_back(&self, r: &ReplicaRow, f: &File, k: u64) -> Result<Option<VersionRow>> {
        let (v, delta) = self.meta.version_with_delta(r, k)?;
        if v.pruned.is_some() {
            return Ok(None);
        }
        for (pgno, hash) in delta {
            let data = self.read_page(&hash)?;
            ensure!(
                data.len() == v.page_size as usize,
                "stored page has the wrong size"
            );
            f.write_all_at(&data, (pgno as u64 - 1) * v.page_size as u64)?;
        }
        f.set_len(v.size())?;
        Ok(Some(v))
    }

    /// Reads one stored page by hash, checking its checksum. Compaction
    /// may move the page (and delete the pack it was in) between the lookup
    /// and the read; then it is looked up again.
    pub fn read_page(&self, hash: &PageHash) -> Result<Vec<u8>> {
        let missing = || format!("page {} is not in the store", hex::encode(&hash[..8]));
        let mut loc = self.meta.blob(hash)?.with_context(missing)?;
        let mut moves = 0;
        loop {
            let read = lock(&self.pages).read(hash, &loc);
            match read {
                Ok(data) => return Ok(data),
                Err(e) => match self.meta.blob(hash)? {
                    Some(moved) if moved != loc && moves < 3 => {
                        loc = moved;
                        moves += 1;
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Pins the current epoch for a reader of stored pages ([`super::pins`]).
    pub fn pin_pages(&self) -> super::pins::Pin {
        self.pins.pin()
    }
}
