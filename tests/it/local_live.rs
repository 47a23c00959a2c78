//! LOCAL syncs of databases in use: a writer committing to ORIGIN all
//! through the syncs, a reader querying REPLICA during them, and Ctrl-C or
//! SIGTERM in the middle of a long sync. REPLICA must always be a consistent
//! snapshot: every transaction of the writer keeps an invariant (the balance
//! total is constant, the sequence table and its counter move together),
//! and a torn copy would break it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::ledger::*;
use crate::support::*;
use rusqlite::Connection;

/// A ledger big enough (about 9 MB) that a sync takes a while.
const ACCOUNTS: i64 = 8000;

/// Syncs `rounds` times while a writer commits to ORIGIN; every replica
/// state must satisfy the invariant and the counter must move forward.
fn writer_through_syncs(origin_wal: bool, replica_wal: bool) {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_ledger(&origin, origin_wal, ACCOUNTS);
    if replica_wal {
        make_ledger(&replica, true, ACCOUNTS);
    }
    let writer = Writer::start(&origin, Duration::from_micros(300));
    let mut last_seen = -1;
    let mut commits_during = Vec::new();
    for _ in 0..6 {
        let before = writer.commits();
        let o = run(env.sqlrsync().arg(&origin).arg(&replica));
        commits_during.push(writer.commits() - before);
        // On a rollback-journal ORIGIN the helper waits for the writer's
        // lock (its busy timeout) instead of failing.
        assert_ok(&o);
        if replica.exists() {
            let c = open_checked(&replica);
            let seen = ledger_check(&c).unwrap();
            assert!(
                seen >= last_seen,
                "replica went back from {last_seen} to {seen}"
            );
            last_seen = seen;
        }
    }
    let total = writer.stop();
    assert!(total > 0 && commits_during.iter().sum::<u64>() > 0);
    // Quiet now: one more sync gives the final state exactly.
    let o = run(env.sqlrsync().arg(&origin).arg(&replica));
    assert_ok(&o);
    assert_eq!(content_digest(&replica), content_digest(&origin));
    assert_eq!(ledger_check(&open_checked(&replica)).unwrap(), total as i64);
    assert_integrity(&replica);
}

#[test]
fn writer_commits_to_a_wal_origin_all_through_syncs() {
    writer_through_syncs(true, false);
    writer_through_syncs(true, true);
}

#[test]
fn writer_commits_to_a_rollback_journal_origin_all_through_syncs() {
    writer_through_syncs(false, true);
}

/// A reader in a loop on REPLICA while ORIGIN changes and syncs run.
fn reader_during_syncs(replica_wal: bool) {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_ledger(&origin, true, ACCOUNTS);
    make_ledger(&replica, replica_wal, ACCOUNTS);
    let o = run(env.sqlrsync().arg(&origin).arg(&replica));
    assert_ok(&o);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, path) = (stop.clone(), reads.clone(), replica.clone());
        thread::spawn(move || -> Result<(), String> {
            let c = open_checked(&path);
            let mut last = -1;
            while !stop.load(Ordering::Relaxed) {
                let seen = ledger_check(&c)?;
                if seen < last {
                    return Err(format!("reader saw {seen} after {last}"));
                }
                last = seen;
                reads.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };
    let mut w = open_checked(&origin);
    let mut n = 0;
    for _ in 0..5 {
        for _ in 0..40 {
            n += 1;
            ledger_commit(&mut w, n).unwrap();
        }
        // A reader holding a rollback-journal REPLICA delays the commit
        // (the helper's busy timeout), it does not fail it.
        let o = run(env.sqlrsync().arg(&origin).arg(&replica));
        assert_ok(&o);
        assert!(ledger_check(&open_checked(&replica)).unwrap() == n);
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 10, "the reader hardly ran");
    let o = run(env.sqlrsync().arg(&origin).arg(&replica));
    assert_ok(&o);
    assert_eq!(ledger_check(&open_checked(&replica)).unwrap(), n);
    assert_integrity(&replica);
}

#[test]
fn reader_queries_a_wal_replica_during_syncs() {
    reader_during_syncs(true);
}

#[test]
fn reader_queries_a_rollback_journal_replica_during_syncs() {
    reader_during_syncs(false);
}

/// Processes whose command line mentions `needle` (our test dir).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Waits until `pred` holds, polling, for at most `limit`.
fn wait_for(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    pred()
}

/// What tells the big database's versions apart, computed by SQLite
/// (hashing 600 MB in an unoptimised test build would take minutes): row
/// count, total length, and the small rows' bytes.
fn blob_digest(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    c.query_row(
        "SELECT count(*) || ':' || sum(length(x)) || ':' ||
                coalesce((SELECT group_concat(hex(x), ',')
                          FROM (SELECT x FROM b WHERE length(x) < 100000 ORDER BY id)), '')
         FROM b",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Starts a long sync, interrupts it with `signal` (to the process group
/// for Ctrl-C, as a terminal does, or to sqlrsync alone), and checks that
/// no helper survives and REPLICA is its old or new self, intact.
fn interrupt_long_sync(signal: libc::c_int, whole_group: bool) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let env = TestEnv::new();
    let origin = env.path("big.db");
    let replica = env.path("replica.db");
    {
        let c = Connection::open(&origin).unwrap();
        c.execute_batch(
            "PRAGMA page_size=65536; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
             CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<600)
             INSERT INTO b SELECT i, zeroblob(1000000) FROM c;
             PRAGMA journal_mode=DELETE;",
        )
        .unwrap();
    }
    assert_ok(&run(env.sqlrsync().arg(&origin).arg(&replica)));
    Connection::open(&origin)
        .unwrap()
        .execute_batch("UPDATE b SET x = randomblob(5000) WHERE id % 50 = 0")
        .unwrap();
    let old = blob_digest(&replica);
    let new = blob_digest(&origin);
    assert_ne!(old, new);

    let needle = env.dir.path().display().to_string();
    let mut cmd = env.sqlrsync();
    cmd.arg(&origin)
        .arg(&replica)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if whole_group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().unwrap();
    // In the middle of the sync: the replica-side helper is running.
    assert!(
        wait_for(Duration::from_secs(10), || {
            processes_mentioning(&needle)
                .iter()
                .any(|(_, c)| c.contains("--replica"))
        }),
        "the replica side never started"
    );
    thread::sleep(Duration::from_millis(100));
    let pid = child.id() as libc::pid_t;
    let rc = unsafe {
        if whole_group {
            libc::kill(-pid, signal)
        } else {
            libc::kill(pid, signal)
        }
    };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(!status.success(), "the sync finished before the signal");
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    let left = || processes_mentioning(&needle);
    assert!(
        wait_for(Duration::from_secs(10), || left().is_empty()),
        "helper processes outlived sqlrsync: {:?}",
        left()
    );
    let now = blob_digest(&replica);
    assert!(now == old || now == new, "replica is neither old nor new");
    let quick: String = Connection::open(&replica)
        .unwrap()
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(quick, "ok");
    // And a sync afterwards completes normally.
    assert_ok(&run(env.sqlrsync().arg(&origin).arg(&replica)));
    assert_eq!(blob_digest(&replica), new);
}

#[test]
fn sigterm_during_a_long_sync_leaves_no_helper_behind() {
    interrupt_long_sync(libc::SIGTERM, false);
}

#[test]
fn ctrl_c_during_a_long_sync_leaves_no_helper_behind() {
    interrupt_long_sync(libc::SIGINT, true);
}
