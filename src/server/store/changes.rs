//! The pages in which an older version differs from the latest, from the
//! metadata alone: what a delta pull ([`crate::wire::delta`]) sends.
//!
//! The back delta of version v lists the pages where v differs from v+1
//! (pages v+1 changed, and those past v+1's page count that v had), so the
//! union of the back deltas of versions N..L-1 holds every page in which N
//! and L differ within N's page count: a page that changed and changed
//! back is listed too, which costs its bytes and nothing else. The pages
//! past N's count up to L's are new to N and always differ. No page is
//! read here, and nothing is trusted beyond the page numbers: a pruned
//! version's pages are in the delta of the kept version below it, so a
//! pruned base has no delta, and the client
//! keeps the result only when its versionXxh3 is the latest's.

use std::collections::BTreeSet;

use anyhow::Result;

use super::Store;
use super::meta::{ReplicaRow, VersionRow};

/// Most versions one delta spans: each costs a metadata read, and a
/// subscriber that far behind is as well served by a full pull.
pub const MAX_DELTA_VERSIONS: u64 = 10_000;

impl Store {
    /// The page numbers, in increasing order, in which version `base` of
    /// `r` differs from `latest` (a later version), or None when a delta
    /// does not fit: more than `max_pages` of them, more than
    /// [`MAX_DELTA_VERSIONS`] versions between, or versions between that do
    /// not all share one page size.
    pub fn pages_changed_since(
        &self,
        r: &ReplicaRow,
        base: &VersionRow,
        latest: &VersionRow,
        max_pages: usize,
    ) -> Result<Option<Vec<u32>>> {
        if base.number >= latest.number
            || base.pruned.is_some()
            || latest.number - base.number > MAX_DELTA_VERSIONS
            || base.page_size != latest.page_size
        {
            return Ok(None);
        }
        let mut pages: BTreeSet<u32> = (base.page_count + 1..=latest.page_count).collect();
        if pages.len() > max_pages {
            return Ok(None);
        }
        for k in base.number..latest.number {
            let (v, delta) = self.meta.version_with_delta(r, k)?;
            if v.pruned.is_some() {
                // Its pages are in the delta of the kept version below.
                continue;
            }
            if v.page_size != latest.page_size {
                return Ok(None);
            }
            pages.extend(
                delta
                    .into_iter()
                    .map(|(pgno, _)| pgno)
                    .filter(|p| *p >= 1 && *p <= latest.page_count),
            );
            if pages.len() > max_pages {
                return Ok(None);
            }
        }
        Ok(Some(pages.into_iter().collect()))
    }
}
