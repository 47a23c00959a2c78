//! The embedded sqlite3_rsync helper: its bytes, their extraction to a cache
//! file, and [`HelperCommand`], the one way client, server and tests run it.
//!
//! build.rs compiles tool/sqlite3_rsync.c with the SQLite amalgamation into a
//! static executable and this module embeds it. At run time [`prepared`]
//! writes it once to `<cache dir>/sqlrsync/sqlite3_rsync-<hash>`
//! (content-addressed, so versions never collide) through a temp file and an
//! atomic rename, and reuses it while its bytes still equal the embedded
//! ones; where the cache cannot hold or run it, a private temp dir or an
//! in-memory file does (extract.rs). Nothing on PATH is needed.

mod command;
mod extract;

pub use command::{Helper, HelperCommand, HelperExit, SpawnError, Stderr};
pub use extract::{ExtractedHelper, Place, path, prepared, refused};

/// Build-time facts about the helper: hash and SQLite versions.
pub mod info {
    include!(concat!(env!("OUT_DIR"), "/helper_info.rs"));
}

/// The helper executable, as compiled by build.rs.
pub static HELPER_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sqlite3_rsync"));

/// Which side of the sqlite3_rsync protocol the helper plays when it talks
/// over stdin/stdout (the `--origin` / `--replica` forms that ssh runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reads the database and sends pages (`--origin`).
    Origin,
    /// Receives pages and writes the database (`--replica`).
    Replica,
}

impl Side {
    /// The helper's command-line flag for this side.
    pub fn flag(self) -> &'static str {
        match self {
            Side::Origin => "--origin",
            Side::Replica => "--replica",
        }
    }
}

/// A one-line description of the embedded helper, for `--version`.
pub fn version_line() -> String {
    format!(
        "SQLite {}, sqlite3_rsync from SQLite {}",
        info::SQLITE_VERSION,
        info::TOOL_VERSION
    )
}

/// Capacity asked for the pipes to and from a helper (Linux caps it at
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// Widens a pipe to the helper from the default 64 KiB to 1 MiB. With the
/// default, a helper streaming 4 KiB pages fills the pipe after 16 of them
/// and sleeps until the link reads; every page then costs context switches
/// on both ends, and measured over loopback those switches, not the copying,
/// were most of what a remote sync cost beyond a LOCAL one. Failure (another
/// OS, a lower system limit) only costs speed, so it is ignored.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ on a descriptor we own changes only its buffer
    // size; a non-pipe or a refused size just returns -1.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}
