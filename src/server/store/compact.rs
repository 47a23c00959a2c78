//! Compaction: packs rewritten without the pages no version references.
//!
//! Packs are append-only, so the space of garbage pages (those only pruned
//! versions or deleted replicas needed) comes back only by rewriting a
//! pack: its live pages are copied, as stored, to the end of the current
//! pack, and one metadata transaction moves their index rows there, drops
//! the pack's other rows and records the pack as retired
//! ([`super::meta::PackRewrite`]); then the file is deleted. Every step is
//! safe to be killed at:
//!
//! - before the transaction, the copies are bytes past the last indexed
//!   page, proven garbage by the compaction's in-flight record (the one
//!   commits use), and start-up cuts them; the old pack is untouched;
//! - after it, the old pack is retired and indexes nothing: start-up
//!   deletes it ([`super::recovery`]).
//!
//! What is garbage is decided under the commit lock, which a commit holds
//! from its lookup of existing pages to its commit point, so no commit can
//! start to reference a page between the decision and the transaction. Only
//! after every reader of an epoch from before the prune finished
//! ([`super::pins`]), so none still plans to read a dropped page.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::meta::PackRewrite;
use super::pages::PageHash;
use super::{Store, lock};

/// How long compaction waits for readers of older epochs before it gives
/// up for this round.
const READERS_WAIT: Duration = Duration::from_secs(30);

/// What one compaction did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    /// Packs rewritten.
    pub packs: u32,
    /// Live pages copied.
    pub pages_moved: u64,
    /// Bytes of the packs before, and of what they became.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Set when compaction did not run: why.
    pub postponed: Option<String>,
    /// Seconds it took.
    pub secs: f64,
}

/// One pack's bytes: its file's length and how much of it is live.
#[derive(Debug, Clone, Copy, Default)]
struct PackUse {
    len: u64,
    live: u64,
}

impl Store {
    /// Rewrites every pack in which garbage is at least `min_garbage` (a
    /// fraction, 0 for any) of its bytes. Blocking; pushes wait while a
    /// pack is rewritten.
    pub fn compact(&self, min_garbage: f64) -> Result<CompactReport> {
        let t0 = Instant::now();
        let mut report = CompactReport::default();
        self.remove_retired_packs()?;
        if !self.pins.advance_and_wait(READERS_WAIT) {
            report.postponed = Some(
                "older versions are still being read; compaction waits for the next round".into(),
            );
            return Ok(report);
        }
        loop {
            let _one_at_a_time = lock(&self.commit_serial);
            let live = self.live_pages(&[])?;
            let Some((pack, use_)) = self.pick_pack(&live, min_garbage)? else {
                break;
            };
            let moved = self.rewrite_pack(pack, &live)?;
            report.packs += 1;
            report.pages_moved += moved.0;
            report.bytes_before += use_.len;
            report.bytes_after += moved.1;
        }
        report.secs = t0.elapsed().as_secs_f64();
        if report.packs > 0 {
            tracing::info!(
                packs = report.packs,
                before = report.bytes_before,
                after = report.bytes_after,
                secs = report.secs,
                "compacted"
            );
        }
        Ok(report)
    }

    /// The first pack worth rewriting, with its use.
    fn pick_pack(
        &self,
        live: &HashSet<PageHash>,
        min_garbage: f64,
    ) -> Result<Option<(u32, PackUse)>> {
        let mut uses: BTreeMap<u32, PackUse> = BTreeMap::new();
        for (h, loc) in self.meta().all_blobs()? {
            let u = uses.entry(loc.pack).or_default();
            if live.contains(&h) {
                u.live += loc.stored_len as u64;
            }
        }
        for (pack, u) in uses.iter_mut() {
            let path = super::pages::packs::pack_path(&self.data_dir.join("packs"), *pack);
            u.len = std::fs::metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
        }
        Ok(uses.into_iter().find(|(_, u)| {
            let garbage = u.len.saturating_sub(u.live);
            garbage > 0 && garbage as f64 >= min_garbage * u.len as f64
        }))
    }

    /// Copies the live pages of `pack` to the current pack and retires it
    /// (module doc); returns the pages moved and their bytes. The caller
    /// holds the commit lock.
    fn rewrite_pack(&self, pack: u32, live: &HashSet<PageHash>) -> Result<(u64, u64)> {
        // The page store's lock is taken for each step, not for the whole
        // copy, so that reads of stored pages go on meanwhile; the commit
        // lock the caller holds keeps every other append out.
        let start = {
            let mut pages = lock(&self.pages);
            if pages.end().pack == pack {
                pages.seal()?;
            }
            pages.end()
        };
        let in_flight = self.meta().begin_commit(0, 0, start)?;
        let copied = (|| {
            let mut moved = Vec::new();
            let mut bytes = 0;
            for (h, loc) in self.meta().blobs_in_pack(pack)? {
                if live.contains(&h) {
                    let new = lock(&self.pages).copy(&h, &loc)?;
                    bytes += new.stored_len as u64;
                    moved.push((h, new));
                }
            }
            lock(&self.pages).sync()?;
            self.meta().rewrite_pack(&PackRewrite {
                pack,
                moved: &moved,
                in_flight,
            })?;
            Ok::<_, anyhow::Error>((moved.len() as u64, bytes))
        })();
        let (n, bytes) = match copied {
            Ok(x) => x,
            Err(e) => {
                let mut pages = lock(&self.pages);
                let end = pages.end();
                if pages.cut_back(start, end) {
                    let _ = self.meta().end_commit(in_flight);
                }
                return Err(e.context(format!("compacting pack {pack}")));
            }
        };
        lock(&self.pages).remove_pack(pack)?;
        self.meta().forget_retired_pack(pack)?;
        Ok((n, bytes))
    }

    /// Deletes the files of packs a compaction retired but did not get to
    /// delete (it failed, or was killed, after its transaction).
    fn remove_retired_packs(&self) -> Result<()> {
        for pack in self.meta().retired_packs()? {
            if self.meta().blobs_in_pack(pack)?.is_empty() {
                lock(&self.pages).remove_pack(pack)?;
                self.meta().forget_retired_pack(pack)?;
            }
        }
        Ok(())
    }
}
