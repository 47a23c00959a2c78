//! Following an origin: sync once, then again after each local change
//! (`--subscribe`/`--watch` on a push or a LOCAL sync).
//!
//! [`follow`] is the loop, the same for both modes: the mode hands it one
//! sync as a closure. [`changes`] says when the origin changed; [`Policy`]
//! says when to act on it:
//! - a change is acted on once the database has been idle for `wait_idle`
//!   (a burst of commits becomes one sync),
//! - never sooner than `min_interval` after the previous sync began,
//! - and with `max_interval`, a check-in runs even without a change (it
//!   sends nothing when nothing changed: the push's unchanged check, LOCAL's
//!   same-pages check), which also catches changes no notification told of.
//!
//! Commits during a sync are never lost: the data version is noted as a
//! sync starts, so whatever is committed after that is the next change. A
//! sync that fails for a reason time can fix (server down, network cut) is
//! retried after a capped backoff, without waiting for another change; one
//! that cannot (a refusal, a conflict with another machine's push) ends the
//! watch with its error. Ctrl-C or SIGTERM ends it between syncs, or stops
//! the sync under way safely (the sync's own guarantee), with exit 130.

pub mod changes;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::SyncError;
use crate::ui::Printer;
use changes::Changes;

/// First wait after a failed sync.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// When changes are acted on (`--waitIdle`, `--minInterval`,
/// `--maxInterval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub wait_idle: Duration,
    pub min_interval: Duration,
    pub max_interval: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            wait_idle: Duration::from_secs(1),
            min_interval: Duration::ZERO,
            max_interval: None,
        }
    }
}

impl Policy {
    /// When a sync may start, for a change last seen at `last_change` and
    /// the previous sync begun at `last_sync`.
    pub fn due(&self, last_change: Instant, last_sync: Instant) -> Instant {
        (last_change + self.wait_idle).max(last_sync + self.min_interval)
    }
}

/// `500ms`, `10s`, `5m`, `1h`, `3d`, `1h30m`; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 10s, 5m, 1h or 3d ({e})"))
}

/// Why the loop woke up.
enum Wake {
    Change,
    CheckIn,
    Stop,
}

/// Syncs once, then after every change of `origin` as `policy` says, until
/// Ctrl-C (exit 130) or a sync that cannot be retried (its error). `once`
/// runs one sync and prints its report.
pub async fn follow<F, Fut>(
    origin: &Path,
    policy: Policy,
    printer: &Printer,
    mut interrupt: watch::Receiver<bool>,
    mut once: F,
) -> anyhow::Result<ExitCode>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SyncError>>,
{
    let mut changes = Changes::new(origin).await?;
    if !changes.notifying {
        printer.note(&format!(
            "sqlrsync: no file notifications for {}; checking for changes every {}s",
            origin.display(),
            changes::POLL.as_secs()
        ));
    }
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        changes.mark_synced().await?;
        match once().await {
            Ok(()) => backoff = BACKOFF_START,
            Err(SyncError::Interrupted(e)) => return Ok(stopped(printer, Some(e))),
            // Also on the first sync: a service started while its server
            // is down waits for it.
            Err(e) if !e.retryable() => return Err(e.into_anyhow()),
            Err(e) => {
                printer.stderr(&format!(
                    "sqlrsync: sync failed: {:#}; retrying in {:.1}s",
                    e.into_anyhow(),
                    backoff.as_secs_f64()
                ));
                if sleep_or_stop(backoff, &mut interrupt).await {
                    return Ok(stopped(printer, None));
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
                continue;
            }
        }
        match next_due(&mut changes, policy, started, &mut interrupt).await? {
            Wake::Stop => return Ok(stopped(printer, None)),
            Wake::Change | Wake::CheckIn => {}
        }
    }
}

/// Waits for the next sync: a change, once idle and past the minimum
/// interval; or a check-in at the maximum interval.
async fn next_due(
    changes: &mut Changes,
    policy: Policy,
    last_sync: Instant,
    interrupt: &mut watch::Receiver<bool>,
) -> anyhow::Result<Wake> {
    let check_in = policy.max_interval.map(|m| last_sync + m);
    let never = || Instant::now() + Duration::from_secs(365 * 86400);
    let mut last_change = tokio::select! {
        t = changes.changed() => t?,
        _ = tokio::time::sleep_until(check_in.unwrap_or_else(never)) => return Ok(Wake::CheckIn),
        _ = crate::link::wait_true(interrupt) => return Ok(Wake::Stop),
    };
    // Debounce: every further commit pushes the start back, to the idle
    // time after it (but a check-in deadline still holds).
    loop {
        let mut due = policy.due(last_change, last_sync);
        if let Some(c) = check_in {
            due = due.min(c.max(last_sync + policy.min_interval));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => return Ok(Wake::Change),
            t = changes.changed() => last_change = t?,
            _ = crate::link::wait_true(interrupt) => return Ok(Wake::Stop),
        }
    }
}

/// Sleeps `d`; true when Ctrl-C came first.
async fn sleep_or_stop(d: Duration, interrupt: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = crate::link::wait_true(interrupt) => true,
    }
}

fn stopped(printer: &Printer, why: Option<anyhow::Error>) -> ExitCode {
    match why {
        Some(e) => printer.stderr(&format!("sqlrsync: {e:#}")),
        None => printer.note("sqlrsync: stopped"),
    }
    crate::client::interrupted_exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn due_waits_for_idle_and_the_minimum_interval() {
        let t0 = Instant::now();
        let p = Policy {
            wait_idle: Duration::from_secs(1),
            min_interval: Duration::from_secs(5),
            max_interval: None,
        };
        assert_eq!(p.due(t0, t0), t0 + Duration::from_secs(5));
        let late = t0 + Duration::from_secs(10);
        assert_eq!(p.due(late, t0), late + Duration::from_secs(1));
    }
}
