//! The store's maintenance: retention policies applied and packs compacted,
//! by `sqlrsync-server prune` and, in a running server, on a schedule.
//!
//! One pass prunes every replica whose policy drops versions (one
//! transaction per replica), then compacts. On the schedule, a pack is
//! rewritten once a quarter of it is garbage, so that the cost of a
//! rewrite is paid for a worthwhile gain; `prune` rewrites every pack that
//! holds any. The schedule runs one pass at a time in a blocking task, and
//! a failed pass is logged and tried again at the next tick: it changes
//! nothing it has not finished (see [`crate::server::store::compact`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;

use super::store::Store;
use super::store::compact::CompactReport;
use super::store::prune::ReplicaPrune;

/// Garbage share of a pack above which the schedule rewrites it.
pub const SCHEDULED_MIN_GARBAGE: f64 = 0.25;

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// The prunes applied.
    pub prunes: Vec<ReplicaPrune>,
    /// The compaction after them.
    pub compact: CompactReport,
}

/// One pass: prune by policy, then compact packs whose garbage is at least
/// `min_garbage` of their bytes (blocking).
pub fn pass(store: &Store, min_garbage: f64) -> Result<Pass> {
    let prunes = store.plan_prunes()?;
    for p in &prunes {
        store.apply_prune(p)?;
    }
    let compact = store.compact(min_garbage)?;
    Ok(Pass { prunes, compact })
}

/// Runs a pass every `every` until shutdown (the first one `every` after
/// start, so that a restart loop does not compact in a loop).
pub async fn schedule(store: Arc<Store>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || pass(&s, SCHEDULED_MIN_GARBAGE)).await {
            Ok(Ok(p)) => {
                if let Some(why) = p.compact.postponed {
                    tracing::info!(why, "compaction postponed");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "maintenance pass failed"),
            Err(e) => tracing::warn!(error = %e, "maintenance pass panicked"),
        }
    }
}
