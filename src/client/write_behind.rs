//! Write-behind for the database a pull is filling.
//!
//! Part of the pull's sink ([`super::apply::PullSink`]), hence under
//! `client`: only a pull writes a local database as a stream arrives.
//!
//! The helper writes the pulled pages through SQLite into the page cache and
//! makes them durable with one `fsync` at its commit. On a large pull that
//! fsync writes everything at once: about 70 ms of a 100 MB initial pull,
//! with the disk idle until then. As pages arrive we ask the kernel (on a
//! thread of its own) to start writing what is already in the file, so that
//! the commit's fsync only waits for the last few megabytes. This changes
//! no data and no ordering SQLite relies on: the kernel may write dirty
//! pages back at any time anyway, and durability still comes from the
//! helper's own fsync.

use std::path::PathBuf;

/// Start writing back after this many stream bytes have gone to the helper.
const EVERY: u64 = 8 << 20;

/// Nudges the kernel to write back a file while it is being written.
pub struct WriteBehind {
    /// Wakes the writeback thread; `None` where the platform has no
    /// `sync_file_range`, so the nudges cost nothing there.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// Stream bytes since the last nudge.
    since: u64,
}

impl WriteBehind {
    /// Write-behind for the database at `path` (opened on the first nudge:
    /// the helper creates it).
    pub fn start(path: PathBuf) -> WriteBehind {
        WriteBehind {
            wake: spawn(path),
            since: 0,
        }
    }

    /// Notes `n` more stream bytes handed to the helper.
    pub fn wrote(&mut self, n: usize) {
        self.since += n as u64;
        if self.since >= EVERY {
            self.since = 0;
            if let Some(w) = &self.wake {
                // Full: a writeback is already pending, which covers these.
                let _ = w.try_send(());
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn spawn(path: PathBuf) -> Option<std::sync::mpsc::SyncSender<()>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("write-behind".into())
        .spawn(move || {
            let mut file: Option<std::fs::File> = None;
            // Ends when the WriteBehind is dropped.
            while rx.recv().is_ok() {
                if file.is_none() {
                    file = std::fs::File::open(&path).ok();
                }
                if let Some(f) = &file {
                    use std::os::fd::AsRawFd;
                    // SAFETY: a plain syscall on a descriptor we own. It
                    // only starts writeback of dirty pages; a failure just
                    // leaves the work to the helper's fsync.
                    unsafe {
                        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                    }
                }
            }
        })
        .ok()?;
    Some(tx)
}

#[cfg(not(target_os = "linux"))]
fn spawn(_path: PathBuf) -> Option<std::sync::mpsc::SyncSender<()>> {
    None
}
