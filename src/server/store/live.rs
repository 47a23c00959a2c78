//! The live side of a replica: its materialised version files and the
//! state its sessions share.
//!
//! A version file is pinned by an `Arc` for as long as a session reads it,
//! so that neither a commit (which replaces the latest) nor the cache
//! clean-up removes a file under a reader; the last holder of an obsolete
//! file deletes it. [`ReplicaState`] is what a replica's pushes, pulls and
//! subscribers share: the push lock, the latest file, the notices of new
//! versions and the older versions currently materialised.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::lock;
use super::spare::{Recycle, Spare};

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
    /// Set by the commit that retired it: instead of deleting it, the last
    /// holder makes it the replica's spare ([`super::spare`]).
    recycle: Mutex<Option<Recycle>>,
}

impl VersionFile {
    pub(super) fn new(path: PathBuf, number: u64, obsolete: bool) -> Arc<VersionFile> {
        Arc::new(VersionFile {
            path,
            number,
            obsolete: AtomicBool::new(obsolete),
            recycle: Mutex::new(None),
        })
    }

    /// When this file is retired and its last reader lets go, `r` turns it
    /// into a spare rather than deleting it.
    pub(super) fn recycle_into(&self, r: Recycle) {
        *lock(&self.recycle) = Some(r);
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
            let recycle = lock(&self.recycle).take();
            let removal = std::thread::Builder::new()
                .name("remove-version".into())
                .spawn({
                    let path = path.clone();
                    move || match recycle {
                        Some(r) => r.run(path),
                        None => {
                            let _ = std::fs::remove_file(&path);
                        }
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
    pub(super) older: Mutex<HashMap<u64, Weak<VersionFile>>>,
    /// One materialisation at a time per replica.
    pub(super) materialising: Mutex<()>,
    /// A ready staging copy of the latest version ([`super::spare`]).
    spare: Mutex<Option<Spare>>,
    /// When the latest version was committed by this process.
    last_commit: Mutex<Option<Instant>>,
}

impl ReplicaState {
    /// The state of a replica whose latest version is `latest`.
    pub(super) fn new(latest: Option<Arc<VersionFile>>) -> Arc<ReplicaState> {
        Arc::new(ReplicaState {
            push_lock: Arc::new(tokio::sync::Mutex::new(())),
            latest: Mutex::new(latest),
            notify: broadcast::channel(16).0,
            older: Mutex::new(HashMap::new()),
            materialising: Mutex::new(()),
            spare: Mutex::new(None),
            last_commit: Mutex::new(None),
        })
    }

    /// Makes `file` the latest version (the previous latest file goes when
    /// its last reader lets go) and tells the subscribers.
    pub(super) fn publish(&self, file: Arc<VersionFile>) {
        let number = file.number;
        *lock(&self.last_commit) = Some(Instant::now());
        if let Some(old) = lock(&self.latest).replace(file) {
            old.obsolete.store(true, Ordering::SeqCst);
        }
        let _ = self.notify.send(VersionNotice {
            number,
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
    }

    pub fn latest(&self) -> Option<Arc<VersionFile>> {
        lock(&self.latest).clone()
    }

    /// True when this process committed the latest version within `d`.
    pub(super) fn committed_within(&self, d: Duration) -> bool {
        lock(&self.last_commit).is_some_and(|t| t.elapsed() < d)
    }

    /// The spare copy of version `number`, the caller's to use (and
    /// remove): none when there is none of that version (an older one is
    /// removed).
    pub fn take_spare(&self, number: u64) -> Option<PathBuf> {
        let spare = lock(&self.spare).take()?;
        (spare.number == number).then(|| spare.take())
    }

    /// Keeps `spare` if it is of the latest version (else it is removed).
    pub(super) fn put_spare(&self, spare: Spare) {
        let latest = self.latest().map(|f| f.number);
        if latest == Some(spare.number) {
            *lock(&self.spare) = Some(spare);
        }
    }

    /// Removes a spare older than `ttl`.
    pub(super) fn drop_stale_spare(&self, ttl: Duration) {
        let mut g = lock(&self.spare);
        if g.as_ref().is_some_and(|s| s.made.elapsed() > ttl) {
            *g = None;
        }
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
