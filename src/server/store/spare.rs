//! Spare copies of a replica's latest version: the next push's staging
//! copy, made before the push arrives.
//!
//! Why: a push writes into a copy of the latest file. Copying 100 MB is
//! quick, but the commit must make the new file durable, and on ext4
//! (ordered mode) any fsync then waits for all of the copy's 100 MB to
//! reach the disk: about 200 ms of a push that changed one page. The file a
//! commit retires (the previous latest) already holds every page but the
//! ones that commit changed. So, once its last reader has let go
//! ([`super::live::VersionFile`]), it is moved into `staging/`, brought up
//! to the new version by copying just those pages, synced, and checked:
//! its versionXxh3 must be the new version's, or it is deleted. The next
//! push takes it in place of a copy, if it still is the latest version
//! ([`super::ReplicaState::take_spare`]).
//!
//! This is the one place the server rewrites a version file in place.
//! Inside the server, readers pin files (no spare is made under one);
//! outside it, `verify` holds a shared `flock` on the latest file it reads,
//! and the spare maker takes the exclusive lock first, deleting the file as
//! before when it cannot. Anything else reading `replicas/` in place next to
//! a live server must do the same (SERVER.md "Storage layout").
//!
//! Bounds: only replicas committed twice within [`SPARE_HOT`] get one (a
//! replica pushed by an hourly cron keeps no second copy of itself); a
//! spare not taken within [`SPARE_TTL`] is removed at the next commit of
//! any replica; `staging/` is emptied at every start, so a crash leaves
//! nothing behind. A spare needs no new space beyond its growth: it is the
//! retired file, reused.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use super::live::ReplicaState;

/// A replica committed again within this long gets a spare.
pub const SPARE_HOT: Duration = Duration::from_secs(120);

/// A spare not taken within this long is removed.
pub const SPARE_TTL: Duration = Duration::from_secs(600);

/// A file in `staging/` holding exactly version `number`; removed when
/// dropped unless taken.
#[derive(Debug)]
pub struct Spare {
    path: PathBuf,
    pub(super) number: u64,
    pub(super) made: Instant,
}

impl Spare {
    /// The file, now the taker's to remove.
    pub(super) fn take(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How to bring a retired latest file up to the version that replaced it.
pub struct Recycle {
    /// `staging/` of the data dir.
    pub(super) staging: PathBuf,
    /// The replica's uid (for the spare's name).
    pub(super) uid: String,
    /// The replica's live state, where the spare goes.
    pub(super) state: Weak<ReplicaState>,
    /// The version the retired file is to become.
    pub(super) number: u64,
    pub(super) page_size: u32,
    pub(super) page_count: u32,
    /// Pages that version changed (page 1 always among them).
    pub(super) changed: Vec<u32>,
    /// Its versionXxh3, which the spare must have.
    pub(super) xxh3: String,
}

impl std::fmt::Debug for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recycle(into version {})", self.number)
    }
}

impl Recycle {
    /// Turns `old` (the retired file, no reader left) into the spare of
    /// version `number`, or removes it. Blocking; runs on its own thread.
    pub(super) fn run(self, old: PathBuf) {
        let gone = |p: &Path| {
            let _ = std::fs::remove_file(p);
        };
        let Some(state) = self.state.upgrade() else {
            return gone(&old);
        };
        // Pinned while it is read, and still the latest, or no use.
        let Some(latest) = state.latest().filter(|f| f.number == self.number) else {
            return gone(&old);
        };
        // `verify` (another process, allowed next to a live server) holds a
        // shared lock on a latest file while it reads it: then the file is
        // only deleted, as before spares, and the reader keeps its bytes.
        let Ok(held) = std::fs::File::open(&old) else {
            return gone(&old);
        };
        if held.try_lock().is_err() {
            return gone(&old);
        }
        let name = format!("spare-{}-{}.db", self.uid, uuid::Uuid::new_v4().simple());
        let spare = self.staging.join(name);
        if std::fs::rename(&old, &spare).is_err() {
            return gone(&old);
        }
        match self.bring_up(&spare, &latest.path) {
            Ok(()) => state.put_spare(Spare {
                path: spare,
                number: self.number,
                made: Instant::now(),
            }),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not make a spare copy; the next push copies");
                gone(&spare);
            }
        }
    }

    /// Copies the changed pages of `latest` into `spare`, sets its length,
    /// syncs it and checks its versionXxh3.
    fn bring_up(&self, spare: &Path, latest: &Path) -> Result<()> {
        let src = std::fs::File::open(latest)?;
        let dst = std::fs::OpenOptions::new().write(true).open(spare)?;
        let size = self.page_size as u64;
        let mut buf = vec![0u8; self.page_size as usize];
        for &pgno in &self.changed {
            if pgno == 0 || pgno > self.page_count {
                continue;
            }
            let at = (pgno as u64 - 1) * size;
            src.read_exact_at(&mut buf, at)?;
            dst.write_all_at(&buf, at)?;
        }
        dst.set_len(self.page_count as u64 * size)?;
        dst.sync_all()?;
        let got = crate::sqlite::xxh3_file_pages(spare, self.page_size, self.page_count)?;
        ensure!(
            got == self.xxh3,
            "the spare copy of version {} hashes {got}, not {}",
            self.number,
            self.xxh3
        );
        Ok(())
    }
}
