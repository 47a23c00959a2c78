//! Support shared by the fault-injection tests (faults_*.rs): the real
//! `sqlrsync` run as a child that can be SIGKILLed at a chosen moment (the
//! server is killed and restarted by the [`Fixture`]), a ledger database
//! whose every committed state keeps an invariant, and read-only looks into
//! the server's metadata (latest version, versions count, versionHash) to
//! check what a fault left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

pub use crate::support::ledger::*;
use crate::support::*;

/// `SQLRSYNC_LONG_TESTS=1` runs the long variants (more trials).
pub fn long_tests() -> bool {
    std::env::var("SQLRSYNC_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// `ci` trials normally, `long` under SQLRSYNC_LONG_TESTS=1.
pub fn trials(ci: usize, long: usize) -> usize {
    if long_tests() { long } else { ci }
}

impl Fixture {
    /// The replica's state in the server's metadata.
    pub fn meta(&self, remote: &str) -> MetaState {
        meta_state(&self.data, remote)
    }

    /// `sqlrsync-server verify --data-dir DIR` succeeds and reports no damage.
    pub fn verify_store(&self) -> String {
        let o = run(self
            .env
            .command(SERVER)
            .args(["verify", "--data-dir"])
            .arg(&self.data));
        assert_ok(&o);
        let out = stdout(&o);
        assert!(out.contains("no damage"), "verify: {out}");
        out
    }
}

/// What the server's metadata says about one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaState {
    /// Latest version number (0: none yet).
    pub latest: u64,
    /// Versions stored.
    pub versions: u64,
    /// versionHash of every version, oldest first.
    pub hashes: Vec<String>,
}

impl MetaState {
    /// versionHash of the latest version.
    pub fn latest_hash(&self) -> Option<&str> {
        self.hashes.last().map(String::as_str)
    }
}

/// Reads `meta.db` read-only (it is in WAL mode, so this never blocks the
/// server, and the server never blocks this).
pub fn meta_state(data: &Path, remote: &str) -> MetaState {
    let c = Connection::open_with_flags(data.join("meta.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    c.execute_batch("BEGIN").unwrap();
    let row: Option<(i64, u64)> = c
        .query_row(
            "SELECT id, latest FROM replicas WHERE path = ?1",
            [remote],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .ok();
    let Some((id, latest)) = row else {
        return MetaState {
            latest: 0,
            versions: 0,
            hashes: Vec::new(),
        };
    };
    let hashes: Vec<String> = c
        .prepare("SELECT version_hash FROM versions WHERE replica = ?1 ORDER BY number")
        .unwrap()
        .query_map([id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    c.execute_batch("COMMIT").unwrap();
    MetaState {
        latest,
        versions: hashes.len() as u64,
        hashes,
    }
}

/// Spawns `cmd` with both output streams captured.
pub fn spawn_captured(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts")
}

/// Waits for `child` (at most `limit`, then fails the test) and collects
/// what it printed.
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("process {pid} did not exit within {limit:?}");
        }
    }
}

/// Polls `pred` until it holds; fails the test after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of live processes (not zombies) whose command line mentions
/// `needle`: the helpers our children started, found by their arguments.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in rd.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty command line; it is gone for our purposes.
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Waits until no helper process working on `file` is left (a SIGKILLed
/// client's helper exits on its own once its input pipe closes).
pub fn wait_helpers_gone(file: &Path) {
    let needle = file.display().to_string();
    wait_until(
        &format!("helpers on {needle} to exit"),
        Duration::from_secs(30),
        || processes_mentioning(&needle).is_empty(),
    );
}

/// Every regular file under `dir` with its size.
pub fn files_with_sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out.sort();
    out
}

/// (files, bytes) in the server's scratch areas: `staging/` (pushes in
/// flight) and `cache/` (older versions rebuilt for pulls).
pub fn scratch_usage(data: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for d in ["staging", "cache"] {
        for (path, len) in files_with_sizes(&data.join(d)) {
            if is_spare(&path) {
                continue;
            }
            files += 1;
            bytes += len;
        }
    }
    (files, bytes)
}

/// A hot replica's spare copy of its latest version (SERVER.md "Storage
/// layout"): the next push's staging file, made after a commit, not a
/// session's leftover.
pub fn is_spare(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("spare-"))
}

/// Bytes in pack files that no index row references (a commit that never
/// landed); start-up must cut them.
pub fn unreferenced_pack_bytes(data: &Path) -> u64 {
    let c = Connection::open_with_flags(data.join("meta.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut extra = 0;
    for (path, len) in files_with_sizes(&data.join("packs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("pack-")
            .and_then(|s| s.strip_suffix(".dat"))
            .and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        let end: Option<i64> = c
            .query_row(
                "SELECT max(offset + stored_len) FROM blobs WHERE pack = ?1",
                [n],
                |r| r.get(0),
            )
            .unwrap();
        extra += len.saturating_sub(end.unwrap_or(0) as u64);
    }
    extra
}

/// Copies `snapshot` to `dest` through a temp file and a rename, so a
/// helper that still has the old file open never sees it change.
pub fn install(snapshot: &Path, dest: &Path) {
    let tmp = dest.with_extension("installing");
    std::fs::copy(snapshot, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// A frozen database state: its file and what identifies its content.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub path: PathBuf,
    /// Logical content (tables and rows).
    pub digest: String,
    /// The versionHash the server records for it.
    pub hash: String,
}

impl Snapshot {
    pub fn of(path: &Path) -> Snapshot {
        Snapshot {
            path: path.to_path_buf(),
            digest: content_digest(path),
            hash: version_hash(path),
        }
    }
}

// ---- The ledger: every committed state keeps an invariant ----------------

/// Accounts of the ledgers these tests push around (a few MB).
pub const ACCOUNTS: i64 = 3000;

/// One large transaction: rewrites the pads of the accounts in one residue
/// class of `modulus` (so a push or pull carries several MB), moves money
/// within pairs of accounts (the total stays), and appends one sequence
/// number. Returns the new counter.
pub fn ledger_bulk(path: &Path, class: i64, modulus: i64) -> i64 {
    let mut c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let last: i64 = tx
        .query_row("SELECT v FROM meta WHERE k='last'", [], |r| r.get(0))
        .unwrap();
    let n = last + 1;
    // Pairs (2k, 2k+1): one gives what the other gets.
    tx.execute(
        "UPDATE acct SET pad = randomblob(1000),
                bal = bal + CASE WHEN id % 2 = 0 THEN ?3 ELSE -?3 END
         WHERE ((id + 1) / 2) % ?2 = ?1",
        [class, modulus, n % 7 + 1],
    )
    .unwrap();
    tx.execute("INSERT INTO seq VALUES (?1, randomblob(300))", [n])
        .unwrap();
    tx.execute("UPDATE meta SET v = ?1 WHERE k = 'last'", [n])
        .unwrap();
    tx.commit().unwrap();
    n
}

/// The ledger counter of a database file, checking the invariant.
#[track_caller]
pub fn ledger_counter(path: &Path) -> i64 {
    ledger_check(&open_checked(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The non-empty lines of a command's stderr.
pub fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}
