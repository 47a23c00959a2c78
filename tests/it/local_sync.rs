//! LOCAL mode (`sqlrsync ORIGIN REPLICA`) on real databases with the real
//! embedded helper: first copies, incremental syncs, journal modes, page
//! sizes, a database over 1 GiB, and `--version`.

use std::path::Path;

use crate::support::*;
use rusqlite::Connection;

/// Runs `sqlrsync ORIGIN REPLICA [extra...]` in `env` and asserts success.
#[track_caller]
fn sync(env: &TestEnv, origin: &Path, replica: &Path, extra: &[&str]) {
    let o = run(env.sqlrsync().arg(origin).arg(replica).args(extra));
    assert_ok(&o);
}

/// The journal mode SQLite reports for a database.
fn journal_mode(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

fn page_size(path: &Path) -> u32 {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

#[test]
fn initial_copy_into_a_new_file() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(&origin, DbSpec::default());
    assert!(!replica.exists());
    // Relative arguments, as a user types them, from the env's directory.
    let o = run(env.sqlrsync().args(["origin.db", "./replica.db"]));
    assert_ok(&o);
    assert_eq!(content_digest(&replica), content_digest(&origin));
    assert_eq!(row_count(&replica), 2000);
    assert_integrity(&replica);
    // Page for page the same bytes; only the header's change counters and
    // SQLite version number (bytes 24..100) are the replica's own.
    let (a, b) = (
        std::fs::read(&origin).unwrap(),
        std::fs::read(&replica).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a[100..] == b[100..], "pages differ");
}

#[test]
fn incremental_sync_after_one_percent_of_rows_changed() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(
        &origin,
        DbSpec {
            rows: 5000,
            ..DbSpec::default()
        },
    );
    sync(&env, &origin, &replica, &[]);
    let before = content_digest(&replica);
    let changed = change_rows(&origin, 0.01);
    assert!(changed >= 49, "changed {changed} rows");
    assert_ne!(content_digest(&origin), before, "the change must show");
    // -vvv makes the helper report how many pages it sent: far fewer than
    // the whole database, or this was no incremental sync.
    let o = run(env.sqlrsync().arg(&origin).arg(&replica).arg("-vvv"));
    assert_ok(&o);
    let out = stdout(&o);
    let updates: u64 = out
        .split("page updates: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no page count in:\n{out}"));
    let total = std::fs::metadata(&origin).unwrap().len() / 4096;
    assert!(
        updates > 0 && updates < total / 2,
        "{updates} of {total} pages sent for a 1% change"
    );
    assert!(
        out.contains("protocol: 1"),
        "LOCAL defaults to protocol 1:\n{out}"
    );
    assert_eq!(content_digest(&replica), content_digest(&origin));
    assert_integrity(&replica);
}

#[test]
fn protocol_two_on_request_gives_the_same_result() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(&origin, DbSpec::default());
    sync(&env, &origin, &replica, &["--protocol", "2"]);
    change_rows(&origin, 0.05);
    let o = run(env
        .sqlrsync()
        .arg(&origin)
        .arg(&replica)
        .args(["--protocol", "2", "-vvv"]));
    assert_ok(&o);
    assert!(stdout(&o).contains("protocol: 2"), "{}", stdout(&o));
    assert_eq!(content_digest(&replica), content_digest(&origin));
    assert_integrity(&replica);
    // Out-of-range protocols are refused before anything runs.
    let o = run(env
        .sqlrsync()
        .arg(&origin)
        .arg(&replica)
        .args(["--protocol", "3"]));
    assert_one_line_error(&o, "--protocol");
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn wal_and_rollback_journal_databases_in_every_combination() {
    let env = TestEnv::new();
    for (origin_wal, replica_wal) in [(false, false), (true, true), (true, false), (false, true)] {
        let tag = format!("{origin_wal}-{replica_wal}");
        let origin = env.path(&format!("origin-{tag}.db"));
        let replica = env.path(&format!("replica-{tag}.db"));
        make_db(
            &origin,
            DbSpec {
                wal: origin_wal,
                ..DbSpec::default()
            },
        );
        // An existing replica in its own journal mode, with other content.
        make_db(
            &replica,
            DbSpec {
                rows: 300,
                wal: replica_wal,
                ..DbSpec::default()
            },
        );
        sync(&env, &origin, &replica, &[]);
        assert_eq!(content_digest(&replica), content_digest(&origin), "{tag}");
        assert_integrity(&replica);
        change_rows(&origin, 0.01);
        sync(&env, &origin, &replica, &[]);
        assert_eq!(content_digest(&replica), content_digest(&origin), "{tag}");
        assert_integrity(&replica);
        // sqlite3_rsync keeps a WAL replica in WAL mode.
        if replica_wal {
            assert_eq!(journal_mode(&replica), "wal", "{tag}");
        }
    }
}

#[test]
fn wal_only_refuses_a_rollback_journal_origin() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(&origin, DbSpec::default());
    make_db(
        &replica,
        DbSpec {
            rows: 10,
            wal: true,
            ..DbSpec::default()
        },
    );
    let before = file_sha256(&replica);
    let o = run(env.sqlrsync().arg(&origin).arg(&replica).arg("--wal-only"));
    assert!(
        !o.status.success(),
        "--wal-only must refuse a non-WAL origin"
    );
    assert_eq!(file_sha256(&replica), before);
}

#[test]
fn origins_of_every_page_size_copy_into_new_replicas() {
    let env = TestEnv::new();
    for size in [1024u32, 8192, 65536] {
        let origin = env.path(&format!("origin-{size}.db"));
        let replica = env.path(&format!("replica-{size}.db"));
        make_db(
            &origin,
            DbSpec {
                rows: 800,
                page_size: size,
                ..DbSpec::default()
            },
        );
        sync(&env, &origin, &replica, &[]);
        assert_eq!(page_size(&replica), size);
        assert_eq!(content_digest(&replica), content_digest(&origin));
        assert_integrity(&replica);
        change_rows(&origin, 0.02);
        sync(&env, &origin, &replica, &[]);
        assert_eq!(content_digest(&replica), content_digest(&origin));
    }
}

#[test]
fn an_existing_replica_with_another_page_size_is_refused_untouched() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(
        &origin,
        DbSpec {
            page_size: 8192,
            ..DbSpec::default()
        },
    );
    make_db(
        &replica,
        DbSpec {
            rows: 100,
            page_size: 1024,
            ..DbSpec::default()
        },
    );
    let before = file_sha256(&replica);
    let o = run(env.sqlrsync().arg(&origin).arg(&replica));
    assert_one_line_error(&o, "page size");
    assert!(stderr(&o).contains("8192") && stderr(&o).contains("1024"));
    assert_eq!(file_sha256(&replica), before);
    assert!(!env.path("replica.db-journal").exists());
}

#[test]
fn a_database_larger_than_one_gib() {
    let env = TestEnv::new();
    let origin = env.path("big.db");
    let replica = env.path("big-replica.db");
    {
        // 1100 rows of 1 MB zero blobs in 64 KiB pages: SQLite writes them
        // at disk speed, no random numbers to generate.
        let c = Connection::open(&origin).unwrap();
        c.execute_batch(
            "PRAGMA page_size=65536; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
             CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<1100)
             INSERT INTO b SELECT i, zeroblob(1000000) FROM c;
             PRAGMA journal_mode=DELETE;",
        )
        .unwrap();
    }
    let len = std::fs::metadata(&origin).unwrap().len();
    assert!(len > 1 << 30, "origin is only {len} bytes");
    sync(&env, &origin, &replica, &[]);
    assert_eq!(std::fs::metadata(&replica).unwrap().len(), len);
    {
        let c = Connection::open(&origin).unwrap();
        c.execute_batch(
            "UPDATE b SET x = randomblob(1000) WHERE id IN (3, 555, 1099);
             INSERT INTO b VALUES (5000, randomblob(70000));",
        )
        .unwrap();
    }
    sync(&env, &origin, &replica, &[]);
    let c = Connection::open(&replica).unwrap();
    let (n, small, sum): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), sum(length(x) < 100000), sum(length(x)) FROM b",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((n, small), (1101, 4));
    assert_eq!(sum, 1097 * 1_000_000 + 3 * 1000 + 70000);
    let quick: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(quick, "ok");
}

#[test]
fn version_names_ours_and_sqlites() {
    let env = TestEnv::new();
    let o = run(env.sqlrsync().arg("--version"));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("sqlrsync {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let sqlite = sqlrsync::helper::info::SQLITE_VERSION;
    assert!(sqlite.starts_with("3."), "{sqlite}");
    assert!(out.contains(&format!("SQLite {sqlite}")), "{out}");
    // --version works without extracting the helper.
    assert!(
        !env.home().join(".cache/sqlrsync").exists(),
        "--version must not extract the helper"
    );
    // -V is the same.
    let o = run(env.sqlrsync().arg("-V"));
    assert_ok(&o);
    assert_eq!(stdout(&o), out);
}

#[test]
fn a_sync_with_nothing_to_do_touches_nothing_and_a_last_page_change_still_syncs() {
    let env = TestEnv::new();
    for wal in [false, true] {
        let origin = env.path(&format!("origin-{wal}.db"));
        let replica = env.path(&format!("replica-{wal}.db"));
        make_db(
            &origin,
            DbSpec {
                wal,
                ..DbSpec::default()
            },
        );
        sync(&env, &origin, &replica, &[]);
        let before = file_sha256(&replica);
        let o = run(env.sqlrsync().arg(&origin).arg(&replica).arg("-v"));
        assert_ok(&o);
        assert!(stdout(&o).contains("nothing to send"), "{}", stdout(&o));
        assert_eq!(
            file_sha256(&replica),
            before,
            "an in-sync replica was rewritten"
        );
        // No -wal/-shm left behind by looking.
        assert!(!env.path(&format!("replica-{wal}.db-shm")).exists());
        // One changed byte on the last page is found and sent.
        let c = Connection::open(&origin).unwrap();
        c.execute(
            "UPDATE t SET n = n + 1 WHERE id = (SELECT max(id) FROM t)",
            [],
        )
        .unwrap();
        drop(c);
        let o = run(env.sqlrsync().arg(&origin).arg(&replica).arg("-v"));
        assert_ok(&o);
        assert!(!stdout(&o).contains("nothing to send"), "{}", stdout(&o));
        assert_eq!(content_digest(&replica), content_digest(&origin));
        assert_integrity(&replica);
    }
}
