//! An older version written in one pass: every page read once (from the
//! latest file or the page store), digested, and written once.
//!
//! [`super::rebuild`] plans which pages of the version come from back
//! deltas; every other page is the latest file's page at the same offset
//! (a back delta holds every page its version changed or dropped, as
//! [`crate::server::download`] explains). Copying the whole latest file and
//! then overwriting most of it, reading a stored page with one metadata
//! query and one file opening each, and then reading the whole result back
//! to hash it made an old version cost two to three times the latest's
//! pull. Here the pages go out in 1 MiB stretches of the file, on up to
//! four threads, each stretch read from where its pages are and written
//! with one call; the stored pages' places are looked up all at once.
//!
//! What is checked, and what is trusted. The versionHash is computed from
//! the very bytes written: a stored page's SHA-256 is its address, checked
//! as it is read (so its digest costs nothing more), and a latest-file page
//! is hashed as it is copied; page 1, whose digest masks header bytes, is
//! hashed again either way. The caller compares the result with the
//! version's versionHash before the file gets a name anyone reads, so a
//! damaged latest file, a damaged stored page or a wrong plan still refuses
//! the version. What is trusted is the file system keeping what was
//! written, as a pull trusts SQLite's write path (see
//! [`crate::sqlite::version_hash_with`]); reading the file back to check
//! that would read every byte a second time.
//!
//! The file is not fsynced: a rebuilt version never outlives the process
//! (start-up empties `cache/`), and its readers read it through the page
//! cache. A full disk still shows as the write failing with ENOSPC, which
//! sends the rebuild to the spill folder.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use anyhow::{Context, Result, bail};

use super::meta::VersionRow;
use super::pages::{BlobLocation, PageHash, PageReader};
use super::{Store, lock};
use crate::sqlite::{VersionHasher, page_digest};

/// Bytes of the file each stretch covers (one read of the latest file and
/// one write per stretch, at most).
const STRETCH: usize = 1 << 20;

/// Most threads writing a rebuild (besides the one looking pages up).
const MAX_THREADS: usize = 4;

/// Stretches whose stored pages are looked up together (256 MiB of the
/// file). Looked up in hash order, the lookups walk the page index once
/// from one end to the other, each of its pages read once; looked up a
/// stretch at a time, nearly every lookup read an index page of its own,
/// and the lookups were three quarters of a 200 MB rebuild's metadata
/// time. A group rather than the whole version, so that the writers of a
/// larger one start before its last lookup.
const LOOKUP_GROUP: usize = 256;

/// Most pages of a version [`PagePlan`] indexes (4 bytes each: 64 MB, a
/// 64 GB database of 4 KiB pages); a larger one is rebuilt step by step.
const MAX_INDEXED_PAGES: u32 = 16 << 20;

/// The stored pages of a version being planned: for each of its pages, the
/// first one added (the deltas are added oldest first), found through a
/// dense index by page number. A map was a tenth of a rebuild's time: a
/// plan adds every page of every delta between, about a third of the
/// database for each version in the benchmark.
pub(super) struct PagePlan {
    /// Page number - 1 -> index in `pages`, or `u32::MAX`.
    slot: Vec<u32>,
    /// (page number, stored page), in the order added.
    pages: Vec<(u32, PageHash)>,
}

impl PagePlan {
    /// A plan for a version of `page_count` pages (None when it has more
    /// than [`MAX_INDEXED_PAGES`]).
    pub(super) fn new(page_count: u32) -> Option<PagePlan> {
        (page_count <= MAX_INDEXED_PAGES).then(|| PagePlan {
            slot: vec![u32::MAX; page_count as usize],
            pages: Vec::new(),
        })
    }

    /// Adds the pages of `delta` the plan has none for yet; pages past the
    /// version's end (a later version's) are not the version's.
    pub(super) fn add_missing(&mut self, delta: &[(u32, PageHash)]) {
        for &(pgno, hash) in delta {
            let Some(slot) = (pgno as usize)
                .checked_sub(1)
                .and_then(|i| self.slot.get_mut(i))
            else {
                continue;
            };
            if *slot == u32::MAX {
                *slot = self.pages.len() as u32;
                self.pages.push((pgno, hash));
            }
        }
    }

    /// How many pages it holds.
    pub(super) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Its pages, sorted by page number.
    pub(super) fn into_sorted(self) -> Vec<(u32, PageHash)> {
        let PagePlan { slot, pages } = self;
        slot.into_iter()
            .filter(|&i| i != u32::MAX)
            .map(|i| pages[i as usize])
            .collect()
    }
}

/// A page of the version that comes from the page store.
#[derive(Debug, Clone, Copy)]
struct StoredPage {
    /// Its page number.
    pgno: u32,
    /// Its SHA-256 (its address).
    hash: PageHash,
    /// Where it is.
    loc: BlobLocation,
}

/// One stretch to write: its number and its stored pages, located.
type Located = (usize, Vec<StoredPage>);

/// The digests of one stretch's pages, from its first page index.
type Digests = (usize, Vec<[u8; 32]>);

/// One rebuild's work: what each thread reads and where it writes.
struct Job<'a> {
    /// The latest version's file, open.
    latest: &'a File,
    /// The file being written.
    out: &'a File,
    /// Page size and count of the version.
    page_size: usize,
    page_count: usize,
    /// Pages per stretch.
    per: usize,
    /// The stretches, located, as the lookups finish them.
    todo: Mutex<mpsc::Receiver<Located>>,
    /// A thread failed: the others stop.
    failed: AtomicBool,
    /// The metadata, to look a page up again that compaction moved
    /// between its lookup and its read ([`super::compact`]).
    meta: &'a super::Meta,
}

impl Store {
    /// Writes version `row` into `out` (a new, empty file): its pages from
    /// `latest` (the latest version's file) except those of `overlay` (page
    /// number and stored page, sorted by page number), and returns the
    /// versionHash of what it wrote, for the caller to check. This thread
    /// looks the stored pages up while the writers write the stretches
    /// already located.
    pub(super) fn write_one_pass(
        &self,
        latest: &File,
        row: &VersionRow,
        overlay: &[(u32, PageHash)],
        out: &File,
    ) -> Result<String> {
        let page_size = row.page_size as usize;
        let per = (STRETCH / page_size).max(1);
        let (tx, rx) = mpsc::channel();
        let job = Job {
            latest,
            out,
            page_size,
            page_count: row.page_count as usize,
            per,
            todo: Mutex::new(rx),
            failed: AtomicBool::new(false),
            meta: &self.meta,
        };
        let stretches = job.page_count.div_ceil(per);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS)
            .min(stretches.max(1));
        let (located, written) = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let reader = lock(&self.pages).reader();
                    let job = &job;
                    s.spawn(move || job.work(reader))
                })
                .collect();
            let located = self.locate_stretches(overlay, &job, tx);
            let written = workers
                .into_iter()
                .map(|w| w.join().expect("a rebuild thread panicked"))
                .collect::<Result<Vec<_>>>();
            (located, written)
        });
        located?;
        let written = written?;
        out.set_len(row.size())?;
        let mut digests = vec![[0u8; 32]; job.page_count];
        let mut covered = 0;
        for (first, d) in written.into_iter().flatten() {
            covered += d.len();
            digests[first..first + d.len()].copy_from_slice(&d);
        }
        anyhow::ensure!(covered == job.page_count, "a rebuild left pages out");
        let mut hasher = VersionHasher::new();
        for (i, d) in digests.iter().enumerate() {
            hasher.digest(i as u32 + 1, d);
        }
        Ok(hasher.finish())
    }

    /// Looks up where the stored pages are, [`LOOKUP_GROUP`] stretches at
    /// a time (one metadata call each, which looks them up in hash order),
    /// and hands each stretch to the writers; stops at the first page the
    /// store lacks, or when a writer failed.
    fn locate_stretches(
        &self,
        overlay: &[(u32, PageHash)],
        job: &Job<'_>,
        tx: mpsc::Sender<Located>,
    ) -> Result<()> {
        let stretches = job.page_count.div_ceil(job.per);
        // Pages 0 and past the version's end are not the version's.
        let start = overlay.partition_point(|(pgno, _)| *pgno == 0);
        let mut rest = &overlay[start..];
        for group in (0..stretches).step_by(LOOKUP_GROUP) {
            if job.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let last = (group + LOOKUP_GROUP).min(stretches);
            let end = (last * job.per).min(job.page_count);
            let (mine, more) = rest.split_at(rest.partition_point(|(p, _)| (*p as usize) <= end));
            rest = more;
            let mut located = match self.locate(mine) {
                Ok(pages) => pages.into_iter().peekable(),
                Err(e) => {
                    job.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            };
            for i in group..last {
                let end = ((i + 1) * job.per).min(job.page_count);
                let mut pages = Vec::new();
                while let Some(p) = located.next_if(|p| (p.pgno as usize) <= end) {
                    pages.push(p);
                }
                if tx.send((i, pages)).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Where each page of `pages` is stored.
    fn locate(&self, pages: &[(u32, PageHash)]) -> Result<Vec<StoredPage>> {
        let hashes: Vec<PageHash> = pages.iter().map(|(_, h)| *h).collect();
        let locs = self.meta.blobs(&hashes)?;
        pages
            .iter()
            .zip(locs)
            .map(|(&(pgno, hash), loc)| match loc {
                Some(loc) => Ok(StoredPage { pgno, hash, loc }),
                None => bail!("page {} is not in the store", hex::encode(&hash[..8])),
            })
            .collect()
    }
}

impl Job<'_> {
    /// One thread's part: located stretches taken one at a time until none
    /// is left; the digests of the pages it wrote.
    fn work(&self, mut reader: Box<dyn PageReader>) -> Result<Vec<Digests>> {
        let mut buf = vec![0u8; self.per * self.page_size];
        let mut done = Vec::new();
        loop {
            let next = lock(&self.todo).recv();
            let Ok((i, stored)) = next else {
                return Ok(done);
            };
            if self.failed.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let first = i * self.per;
            let end = (first + self.per).min(self.page_count);
            let bytes = &mut buf[..(end - first) * self.page_size];
            match self.stretch(&mut *reader, first, end, &stored, bytes) {
                Ok(d) => done.push((first, d)),
                Err(e) => {
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }

    /// Reads pages `first..end` (page indexes, from 0; `stored` are those
    /// among them that come from the page store) into `buf`, writes them,
    /// and returns their digests.
    fn stretch(
        &self,
        reader: &mut dyn PageReader,
        first: usize,
        end: usize,
        stored: &[StoredPage],
        buf: &mut [u8],
    ) -> Result<Vec<[u8; 32]>> {
        let ps = self.page_size;
        let mut digests = vec![[0u8; 32]; end - first];
        let mut at = first;
        for p in stored {
            let i = p.pgno as usize - 1;
            self.copy_latest(at, i, first, buf, &mut digests)?;
            let page = &mut buf[(i - first) * ps..(i - first + 1) * ps];
            self.read_stored(reader, p, page)?;
            // Only page 1's digest masks bytes; every other is the address.
            digests[i - first] = if p.pgno == 1 {
                page_digest(1, page)
            } else {
                p.hash
            };
            at = i + 1;
        }
        self.copy_latest(at, end, first, buf, &mut digests)?;
        self.out
            .write_all_at(buf, (first * ps) as u64)
            .context("writing a rebuilt version")?;
        Ok(digests)
    }

    /// Reads stored page `p` into `page`; when that fails, looks it up
    /// again (compaction may have moved it and deleted its pack) and reads
    /// it from where it went, a few times at most.
    fn read_stored(
        &self,
        reader: &mut dyn PageReader,
        p: &StoredPage,
        page: &mut [u8],
    ) -> Result<()> {
        let mut loc = p.loc;
        for _ in 0..3 {
            match reader.read_into(&p.hash, &loc, page) {
                Ok(()) => return Ok(()),
                Err(e) => match self.meta.blob(&p.hash)? {
                    Some(moved) if moved != loc => loc = moved,
                    _ => return Err(e),
                },
            }
        }
        reader.read_into(&p.hash, &loc, page)
    }

    /// Reads the latest file's pages `from..to` into their place in `buf`
    /// (which holds pages from `first`) and digests them.
    fn copy_latest(
        &self,
        from: usize,
        to: usize,
        first: usize,
        buf: &mut [u8],
        digests: &mut [[u8; 32]],
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let ps = self.page_size;
        let run = &mut buf[(from - first) * ps..(to - first) * ps];
        self.latest
            .read_exact_at(run, (from * ps) as u64)
            .with_context(|| {
                format!(
                    "reading pages {} to {} of the latest file: the store is damaged",
                    from + 1,
                    to
                )
            })?;
        for (k, page) in run.chunks_exact(ps).enumerate() {
            let pgno = from + k + 1;
            digests[pgno - 1 - first] = page_digest(pgno as u32, page);
        }
        Ok(())
    }
}
