//! Pruning: the versions a retention policy drops, with their pages handed
//! down to the kept versions.
//!
//! Version K is stored as its back delta: the pages in which it differs
//! from K+1. Dropping K alone would break every older version, which is
//! rebuilt through it. So K's back delta is merged into that of the kept
//! version J just below it: applying K's delta and then J's equals applying
//! J's over K's, J's pages winning, K's cut to J's page count (and J's
//! alone when J's page size differs from K's, since J's delta then holds
//! every page of J). J's delta then leads from J straight to K+1. Versions
//! are merged newest first, so a run of dropped versions folds into the kept
//! one below it. Nothing is read but metadata, and the whole prune of a
//! replica is one transaction ([`super::meta::PruneWrite`]).
//!
//! A pruned version keeps its row, marked with the time and the policy, so
//! its number is never reused and a pull of it is told it was pruned
//! ([`VersionPruned`]). Its pages that no kept version needs are garbage;
//! [`super::compact`] frees them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::Result;

use super::Store;
use super::meta::{PruneWrite, ReplicaRow, VersionRow, now};
use super::pages::PageHash;
use crate::server::retention::{self, Policy};

/// A back delta: (page number, page hash) records.
type Delta = Vec<(u32, PageHash)>;

/// What pruning one replica does.
#[derive(Debug, Clone)]
pub struct ReplicaPrune {
    /// The replica.
    pub replica: ReplicaRow,
    /// The policy applied (its canonical text).
    pub policy: String,
    /// The versions it drops, oldest first.
    pub drop: Vec<u64>,
    /// The new back deltas of the kept versions that take over their pages.
    merged: Vec<(u64, Delta)>,
}

/// A pull of a version that a retention policy pruned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("version {number} was pruned at {at} by the retention policy `{reason}`")]
pub struct VersionPruned {
    pub number: u64,
    pub at: String,
    pub reason: String,
}

impl VersionPruned {
    /// The refusal for `row`, if it was pruned.
    pub fn of(row: &VersionRow) -> Option<VersionPruned> {
        row.pruned.as_ref().map(|p| VersionPruned {
            number: row.number,
            at: p.at.clone(),
            reason: p.reason.clone(),
        })
    }
}

/// Stored bytes no version needs, as a prune would leave them.
#[derive(Debug, Clone, Default)]
pub struct Garbage {
    /// Pages stored.
    pub pages: u64,
    /// Of them, the ones no kept version references.
    pub dead_pages: u64,
    /// Their stored (compressed) bytes.
    pub dead_bytes: u64,
}

impl Store {
    /// The policy that applies to `r` (its own, else its namespace's).
    pub fn retention_of(&self, r: &ReplicaRow) -> Result<Option<Policy>> {
        let own = self.meta().retention(&r.path)?;
        let ns = self.meta().retention(&r.namespace)?;
        match retention::resolve(own.as_deref(), ns.as_deref()) {
            Some(text) => Ok(Some(Policy::parse(text)?)),
            None => Ok(None),
        }
    }

    /// What applying each replica's policy would do, for every replica with
    /// a policy that drops something.
    pub fn plan_prunes(&self) -> Result<Vec<ReplicaPrune>> {
        let mut plans = Vec::new();
        for r in self.meta().all_replicas()? {
            if let Some(policy) = self.retention_of(&r)? {
                let plan = self.plan_prune(&r, &policy)?;
                if !plan.drop.is_empty() {
                    plans.push(plan);
                }
            }
        }
        Ok(plans)
    }

    /// What applying `policy` to `r` would do.
    pub fn plan_prune(&self, r: &ReplicaRow, policy: &Policy) -> Result<ReplicaPrune> {
        let rows = self.meta().versions(r)?;
        let kept_rows: Vec<&VersionRow> = rows.iter().filter(|v| v.pruned.is_none()).collect();
        let dated: Vec<(u64, chrono::DateTime<chrono::Utc>)> = kept_rows
            .iter()
            .filter_map(|v| {
                let at = chrono::DateTime::parse_from_rfc3339(&v.created).ok()?;
                Some((v.number, at.to_utc()))
            })
            .collect();
        let keep = if dated.len() == kept_rows.len() {
            policy.keep(&dated)
        } else {
            // A time the store cannot read: keep everything rather than guess.
            kept_rows.iter().map(|v| v.number).collect()
        };
        let drop: Vec<u64> = kept_rows
            .iter()
            .map(|v| v.number)
            .filter(|n| !keep.contains(n) && Some(*n) != rows.first().map(|l| l.number))
            .rev()
            .collect();
        let merged = self.merged_deltas(r, &kept_rows, &drop)?;
        Ok(ReplicaPrune {
            replica: r.clone(),
            policy: policy.to_string(),
            drop,
            merged,
        })
    }

    /// The new back deltas of the kept versions when `drop` (oldest first)
    /// go, merged newest first (module doc). `live` are the unpruned rows,
    /// newest first.
    fn merged_deltas(
        &self,
        r: &ReplicaRow,
        live: &[&VersionRow],
        drop: &[u64],
    ) -> Result<Vec<(u64, Delta)>> {
        let by_number: HashMap<u64, &VersionRow> = live.iter().map(|v| (v.number, *v)).collect();
        let mut deltas: HashMap<u64, Delta> = HashMap::new();
        let delta_of = |n: u64, deltas: &mut HashMap<u64, Delta>| -> Result<Delta> {
            match deltas.remove(&n) {
                Some(d) => Ok(d),
                None => Ok(self.meta().version_with_delta(r, n)?.1),
            }
        };
        let dropped: BTreeSet<u64> = drop.iter().copied().collect();
        let mut changed = BTreeSet::new();
        for &k in drop.iter().rev() {
            let newer = delta_of(k, &mut deltas)?;
            // The unpruned version just below k (dropped later, or kept).
            let Some(j) = live.iter().map(|v| v.number).find(|n| *n < k) else {
                continue;
            };
            let older = delta_of(j, &mut deltas)?;
            deltas.insert(j, merge(&older, by_number[&j], &newer, by_number[&k]));
            changed.insert(j);
        }
        Ok(changed
            .into_iter()
            .filter(|n| !dropped.contains(n))
            .map(|n| (n, deltas.remove(&n).unwrap_or_default()))
            .collect())
    }

    /// Records `plan` (one transaction).
    pub fn apply_prune(&self, plan: &ReplicaPrune) -> Result<()> {
        if plan.drop.is_empty() {
            return Ok(());
        }
        let at = now();
        let reason = plan.policy.clone();
        self.meta().prune_versions(&PruneWrite {
            replica: plan.replica.id,
            pruned: &plan.drop,
            merged: &plan.merged,
            at: &at,
            reason: &reason,
        })?;
        tracing::info!(
            replica = %plan.replica.path,
            versions = plan.drop.len(),
            policy = %plan.policy,
            "pruned"
        );
        Ok(())
    }

    /// The stored pages no version references once `plans` are applied
    /// (none given: as the store is now).
    pub fn garbage(&self, plans: &[ReplicaPrune]) -> Result<Garbage> {
        let live = self.live_pages(plans)?;
        let mut g = Garbage::default();
        for (h, loc) in self.meta().all_blobs()? {
            g.pages += 1;
            if !live.contains(&h) {
                g.dead_pages += 1;
                g.dead_bytes += loc.stored_len as u64;
            }
        }
        Ok(g)
    }

    /// Every page hash a version's back delta names, with `plans` applied.
    pub(super) fn live_pages(&self, plans: &[ReplicaPrune]) -> Result<HashSet<PageHash>> {
        let mut replaced: HashMap<(i64, u64), Option<&Delta>> = HashMap::new();
        for p in plans {
            for n in &p.drop {
                replaced.insert((p.replica.id, *n), None);
            }
            for (n, d) in &p.merged {
                replaced.insert((p.replica.id, *n), Some(d));
            }
        }
        let mut live = HashSet::new();
        self.meta().for_each_delta(&mut |replica, number, delta| {
            match replaced.get(&(replica, number)) {
                Some(Some(d)) => live.extend(d.iter().map(|e| e.1)),
                Some(None) => {}
                None => live.extend(delta.into_iter().map(|e| e.1)),
            }
            Ok(())
        })?;
        Ok(live)
    }
}

/// The back delta of `older` (J) once `newer` (K, the version above it) is
/// dropped: J's pages over K's, K's cut to J's page count; J's alone when
/// the page sizes differ (module doc).
fn merge(
    older: &[(u32, PageHash)],
    j: &VersionRow,
    newer: &[(u32, PageHash)],
    k: &VersionRow,
) -> Delta {
    if j.page_size != k.page_size {
        return older.to_vec();
    }
    let mut pages: BTreeMap<u32, PageHash> = newer
        .iter()
        .copied()
        .filter(|(p, _)| *p <= j.page_count)
        .collect();
    pages.extend(older.iter().copied());
    pages.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(number: u64, page_size: u32, page_count: u32) -> VersionRow {
        VersionRow {
            number,
            created: now(),
            page_size,
            page_count,
            changed_pages: 0,
            message: String::new(),
            version_hash: String::new(),
            version_xxh3: None,
            pruned: None,
        }
    }

    /// Applies deltas to a page map as a rebuild does: write, then cut to
    /// the version's page count.
    fn apply(
        mut pages: BTreeMap<u32, PageHash>,
        delta: &[(u32, PageHash)],
        v: &VersionRow,
    ) -> BTreeMap<u32, PageHash> {
        pages.extend(delta.iter().copied());
        pages.retain(|p, _| *p <= v.page_count);
        pages
    }

    #[test]
    fn a_merged_delta_rebuilds_what_the_two_did() {
        let h = |b: u8| [b; 32];
        // v3 (latest): 4 pages; v2 shrank to 2 and changed page 1; v1 had
        // 3 pages and its own page 2.
        let v3: BTreeMap<u32, PageHash> = (1..=4).map(|p| (p, h(30 + p as u8))).collect();
        let (r1, r2) = (row(1, 4096, 3), row(2, 4096, 2));
        let d2 = vec![(1, h(21))];
        let d1 = vec![(2, h(12)), (3, h(13))];
        let step = apply(apply(v3.clone(), &d2, &r2), &d1, &r1);
        let merged = merge(&d1, &r1, &d2, &r2);
        assert_eq!(apply(v3.clone(), &merged, &r1), step);
        assert_eq!(step[&1], h(21), "v2's page 1 survives into v1");
        // Another page size below: v1's delta alone (it holds every page).
        let r1b = row(1, 1024, 2);
        let full = vec![(1, h(1)), (2, h(2))];
        assert_eq!(merge(&full, &r1b, &d2, &r2), full);
    }
}
