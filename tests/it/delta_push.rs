//! Delta pushes (SERVER.md "Extensions", src/wire/delta.rs): after a push
//! to our server, the next push sends only the pages that changed, without
//! the helper, and the server stores a result only when it hashes to what
//! the client hashed.

use std::path::{Path, PathBuf};

use sqlrsync::sqlite::pages::{self, Snapshot};
use sqlrsync::wire::delta::{DeltaBegin, DeltaFrame, page_frame};
use tokio_tungstenite::tungstenite::Message;

use crate::support::driver;
use crate::support::remote::*;
use crate::support::*;

/// Pushes `db` (already pushed once) and returns the JSON report.
fn push(r: &Fixture, db: &Path, extra: &[&str]) -> serde_json::Value {
    let o = run(r.env.sqlrsync().arg(db).arg("--json").args(extra));
    assert_ok(&o);
    json(&o)
}

/// The push report says it was (or was not) a delta and made `version`.
#[track_caller]
fn assert_push(j: &serde_json::Value, delta: bool, version: &str) {
    assert_eq!(
        (j["delta"].as_bool(), j["version"].as_str()),
        (Some(delta), Some(version)),
        "{j}"
    );
}

/// Pulls `remote` into a fresh `name` and returns its path.
fn pull_fresh(r: &Fixture, remote: &str, key: &str, name: &str) -> PathBuf {
    let o = run(&mut r.cmd(&[remote, name, "--pullKey", key]));
    assert_ok(&o);
    r.path(name)
}

/// The number of versions the server lists for `path`.
fn versions(r: &Fixture, path: &str) -> usize {
    let o = run(r
        .env
        .command(SERVER)
        .args(["versions", path, "--data-dir"])
        .arg(&r.data));
    assert_ok(&o);
    stdout(&o)
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count()
}

#[test]
fn pushes_after_the_first_are_deltas_and_make_whole_versions() {
    let r = Fixture::start();
    let a = r.make("a.db", 3000);
    let j = r.first_push("a.db", "team/a.db");
    assert_eq!(j["delta"], false, "{j}");
    let key = dash_pull_key(&a);

    // A small change: a delta of a few pages, the version whole.
    change_rows(&a, 0.01);
    let j = push(&r, &a, &["-m", "small change"]);
    assert_push(&j, true, "2");
    let sent = j["pagesSent"].as_u64().unwrap();
    assert!(
        sent > 0 && sent < j["pageCount"].as_u64().unwrap() / 4,
        "{j}"
    );
    // Only the pages travel: no hash exchange.
    let page_bytes = sent * j["pageSize"].as_u64().unwrap();
    // Per page its 5-byte header and the frame's; for the push, BEGIN, END,
    // DELTA_DONE and the closes: no CONFIG exchange.
    let overhead = j["bytesOnWire"].as_u64().unwrap() - page_bytes;
    assert!(
        overhead < 16 * sent + 200,
        "{overhead} bytes over the pages: {j}"
    );
    let back = pull_fresh(&r, "team/a.db", &key, "back2.db");
    assert_eq!(content_digest(&back), content_digest(&a));
    assert_eq!(version_hash(&back), version_hash(&a));
    let o = run(r
        .env
        .command(SERVER)
        .args(["versions", "team/a.db", "--data-dir"])
        .arg(&r.data));
    assert!(stdout(&o).contains("small change"), "{}", stdout(&o));

    // It grows, then shrinks (VACUUM drops pages): deltas both ways.
    {
        let c = rusqlite::Connection::open(&a).unwrap();
        c.execute_batch("INSERT INTO t(v, n) SELECT randomblob(200), n FROM t LIMIT 1500")
            .unwrap();
    }
    let j = push(&r, &a, &[]);
    assert_push(&j, true, "3");
    {
        let c = rusqlite::Connection::open(&a).unwrap();
        c.execute_batch("DELETE FROM t WHERE id % 2 = 0; VACUUM")
            .unwrap();
    }
    let j = push(&r, &a, &[]);
    assert_push(&j, true, "4");
    let back = pull_fresh(&r, "team/a.db", &key, "back4.db");
    assert_eq!(content_digest(&back), content_digest(&a));
    assert_eq!(version_hash(&back), version_hash(&a));
    assert_integrity(&back);

    // Unchanged: nothing sent, no version.
    let j = push(&r, &a, &[]);
    assert_eq!(j["unchanged"], true, "{j}");
    assert_eq!(versions(&r, "team/a.db"), 4);
    let o = run(r
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&r.data));
    assert_ok(&o);
}

#[test]
fn a_wal_database_pushes_deltas_of_its_wal_content() {
    let r = Fixture::start();
    let a = r.path("w.db");
    make_db(
        &a,
        DbSpec {
            rows: 2000,
            wal: true,
            ..DbSpec::default()
        },
    );
    r.first_push("w.db", "team/w.db");
    let key = dash_pull_key(&a);
    // A writer keeps its connection open: the change lives in the -wal.
    let c = rusqlite::Connection::open(&a).unwrap();
    c.execute_batch("PRAGMA wal_autocheckpoint=0; UPDATE t SET v = randomblob(200) WHERE id < 30")
        .unwrap();
    let j = push(&r, &a, &[]);
    assert_eq!(j["delta"], true, "{j}");
    let back = pull_fresh(&r, "team/w.db", &key, "wback.db");
    assert_eq!(content_digest(&back), content_digest(&a));
    drop(c);
}

/// The page cache file of the one database pushed in `r`.
fn cache_file(r: &Fixture) -> PathBuf {
    let dir = r.env.home().join(".cache/sqlrsync/pages");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pages"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_stale_page_cache_falls_back_to_a_full_push_and_loses_nothing() {
    let r = Fixture::start();
    let a = r.make("a.db", 2000);
    r.first_push("a.db", "team/a.db");
    let key = dash_pull_key(&a);
    let cache = cache_file(&r);
    let entry = std::fs::read(&cache).unwrap();
    // The database changes; the cache then claims the new pages were
    // already version 1's: the delta would send nothing of the change.
    change_rows(&a, 0.05);
    let now = pages::snapshot(&a, &[], 0, 0).unwrap();
    let digests_at = entry.len() - 16 * now.digests.len();
    let mut lying = entry[..digests_at].to_vec();
    for d in &now.digests {
        lying.extend_from_slice(d);
    }
    std::fs::write(&cache, &lying).unwrap();
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    let j = json(&o);
    assert_push(&j, false, "2");
    // The server refused the delta before the full push.
    let log = r.server().log();
    assert!(
        log.contains("do not make the database the client hashed"),
        "{log}"
    );
    let back = pull_fresh(&r, "team/a.db", &key, "back.db");
    assert_eq!(content_digest(&back), content_digest(&a));
    // The full push left a true cache: the next push is a delta again.
    change_rows(&a, 0.01);
    let j = push(&r, &a, &[]);
    assert_push(&j, true, "3");

    // Garbage in the cache is no cache.
    std::fs::write(&cache, b"SQLRPG1\n garbage").unwrap();
    change_rows(&a, 0.01);
    let j = push(&r, &a, &[]);
    assert_push(&j, false, "4");
    let back = pull_fresh(&r, "team/a.db", &key, "back4.db");
    assert_eq!(content_digest(&back), content_digest(&a));
}

#[test]
fn without_the_offer_every_push_is_a_full_one() {
    let r = Fixture::start();
    let a = r.make("a.db", 1000);
    r.first_push("a.db", "team/a.db");
    change_rows(&a, 0.02);
    let o = run(r
        .env
        .sqlrsync()
        .arg(&a)
        .arg("--json")
        .env("SQLRSYNC_NO_DELTA", "1"));
    assert_ok(&o);
    let j = json(&o);
    assert_push(&j, false, "2");
    let back = pull_fresh(&r, "team/a.db", &dash_pull_key(&a), "back.db");
    assert_eq!(content_digest(&back), content_digest(&a));
}

/// A raw delta session against version 1 of `team/a.db`, as a hostile
/// client would send it; `offer` says whether it offers the extension.
fn raw_delta(r: &Fixture, frames: Vec<Vec<u8>>, offer: bool) -> driver::Outcome {
    let mut opts = driver::with_key(&r.admin);
    if offer {
        opts.headers.push(("X-Sqlrsync-Delta", "1".into()));
    }
    let frames = frames
        .into_iter()
        .map(|f| Message::Binary(f.into()))
        .collect();
    driver::rt().block_on(driver::raw(
        &r.ws_url(),
        "/sapi/push/team/a.db",
        &opts,
        frames,
    ))
}

fn begin_of(snap: &Snapshot, base_version: u64, page_count: u32) -> Vec<u8> {
    DeltaFrame::Begin(DeltaBegin {
        base_version,
        base_xxh3: sqlrsync::wire::delta::xxh3_bytes(&snap.version_xxh3()).unwrap(),
        page_size: snap.page_size,
        page_count,
    })
    .encode()
}

fn end_of(hex_text: &str) -> Vec<u8> {
    DeltaFrame::End {
        version_xxh3: sqlrsync::wire::delta::xxh3_bytes(hex_text).unwrap(),
    }
    .encode()
}

#[test]
fn the_server_stores_no_delta_that_is_not_whole_and_true() {
    let r = Fixture::start();
    let a = r.make("a.db", 1000);
    r.first_push("a.db", "team/a.db");
    let v1 = pages::snapshot(&a, &[], 0, 0).unwrap();
    let n = v1.digests.len() as u32;
    // A real next version, made on a copy.
    let b = r.path("b.db");
    std::fs::copy(&a, &b).unwrap();
    change_rows(&b, 0.01);
    let next = pages::snapshot(&b, &v1.digests, v1.page_size, usize::MAX).unwrap();
    assert_eq!(next.digests.len() as u32, n);
    let true_hash = next.version_xxh3();
    let real: Vec<Vec<u8>> = next
        .changed
        .iter()
        .map(|(p, d)| page_frame(*p, d))
        .collect();
    let (first, some) = (&next.changed[0].1, next.changed[0].0);
    let with = |begin: Vec<u8>, pages: &[Vec<u8>], end: Vec<u8>| {
        let mut v = vec![begin];
        v.extend(pages.iter().cloned());
        v.push(end);
        v
    };
    let twice = [real.clone(), vec![real[0].clone()]].concat();
    let cases: Vec<(&str, Vec<Vec<u8>>, bool, &str)> = vec![
        (
            "a lie about the result",
            with(begin_of(&v1, 1, n), &real, end_of(&v1.version_xxh3())),
            true,
            "do not make the database the client hashed",
        ),
        (
            "another base",
            with(begin_of(&v1, 2, n), &real, end_of(&true_hash)),
            true,
            "the latest is 1",
        ),
        (
            "a page past the end",
            with(
                begin_of(&v1, 1, n),
                &[page_frame(n + 1, first)],
                end_of(&true_hash),
            ),
            true,
            "past the result",
        ),
        (
            "a page twice",
            with(begin_of(&v1, 1, n), &twice, end_of(&true_hash)),
            true,
            "came twice",
        ),
        (
            "a short page",
            with(
                begin_of(&v1, 1, n),
                &[page_frame(some, &first[..first.len() / 2])],
                end_of(&true_hash),
            ),
            true,
            "bytes, not",
        ),
        (
            "a new page never sent",
            with(
                begin_of(&v1, 1, n + 2),
                &[page_frame(n + 1, first)],
                end_of(&true_hash),
            ),
            true,
            "never sent page",
        ),
        (
            "a delta never offered",
            with(begin_of(&v1, 1, n), &real, end_of(&true_hash)),
            false,
            "",
        ),
    ];
    for (what, frames, offer, needle) in cases {
        let o = raw_delta(&r, frames, offer);
        let abort = o.abort.clone().unwrap_or_default();
        assert!(!o.ok() && o.abort.is_some(), "{what}: {o:#?}");
        assert!(abort.contains(needle), "{what}: {abort}");
        assert_eq!(versions(&r, "team/a.db"), 1, "{what} stored a version");
    }
    // The true delta of the same change is stored, and is that database.
    let o = raw_delta(
        &r,
        with(begin_of(&v1, 1, n), &real, end_of(&true_hash)),
        true,
    );
    o.assert_ok();
    // Answered with DELTA_DONE (57 bytes), not texts.
    assert_eq!(o.bytes_in, 57, "{o:#?}");
    assert_eq!(versions(&r, "team/a.db"), 2);
    let back = pull_fresh(&r, "team/a.db", &dash_pull_key(&a), "back.db");
    assert_eq!(content_digest(&back), content_digest(&b));
}

/// The spare files in the server's staging dir.
fn spares(r: &Fixture) -> usize {
    std::fs::read_dir(r.data.join("staging"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("spare-")
        })
        .count()
}

#[test]
fn pushes_in_a_row_build_on_the_spare_copy_and_every_version_stays_whole() {
    let mut r = Fixture::with_env("team", &[], &[("SQLRSYNC_LOG", "sqlrsync=debug")]);
    let a = r.make("a.db", 2000);
    r.first_push("a.db", "team/a.db");
    let key = dash_pull_key(&a);
    let mut kept = vec![content_digest(&a)];
    // Deltas and full pushes alike take the spare once the replica is hot.
    for i in 0..3 {
        change_rows(&a, 0.02);
        let mut c = r.env.sqlrsync();
        c.arg(&a).arg("--json");
        if i == 2 {
            c.env("SQLRSYNC_NO_DELTA", "1");
        }
        let o = run(&mut c);
        assert_ok(&o);
        kept.push(content_digest(&a));
        assert_eq!(json(&o)["version"], (i + 2).to_string());
    }
    let log = r.server().log();
    let used = log.matches("staging copy: the spare").count();
    assert!(used >= 1, "no push used a spare:\n{log}");
    for (n, want) in kept.iter().enumerate() {
        let name = format!("v{}.db", n + 1);
        let remote = format!("team/a.db@{}", n + 1);
        let back = pull_fresh(&r, &remote, &key, &name);
        assert_eq!(&content_digest(&back), want, "version {}", n + 1);
    }
    let o = run(r
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&r.data));
    assert_ok(&o);

    // A crash leaves no spare behind, and pushes go on without one.
    let addr = r.server().addr.clone();
    r.kill_server();
    r.restart_server_at(&addr);
    assert_eq!(spares(&r), 0);
    change_rows(&a, 0.02);
    let j = push(&r, &a, &[]);
    assert_eq!(j["version"], "5", "{j}");
    let back = pull_fresh(&r, "team/a.db", &key, "v5.db");
    assert_eq!(content_digest(&back), content_digest(&a));
}

#[test]
fn a_delta_on_a_moved_replica_is_a_conflict_not_an_overwrite() {
    let r = Fixture::start();
    let a = r.make("a.db", 1000);
    r.first_push("a.db", "team/a.db");
    // Another machine pushes to the replica (it never pulled it: --force).
    let other = TestEnv::new();
    let b = other.path("b.db");
    make_db(
        &b,
        DbSpec {
            rows: 300,
            ..DbSpec::default()
        },
    );
    let o = run(other
        .sqlrsync()
        .arg(&b)
        .arg("team/a.db")
        .arg("--force")
        .arg("--server")
        .arg(r.ws_url())
        .env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    // Our delta names version 1: refused, and the push says conflict.
    change_rows(&a, 0.02);
    let o = run(r.env.sqlrsync().arg(&a));
    assert_one_line_error(&o, "is at version 2 on the server");
    assert_eq!(versions(&r, "team/a.db"), 2);
    let key = dash_pull_key(&a);
    let back = pull_fresh(&r, "team/a.db", &key, "back.db");
    assert_eq!(content_digest(&back), content_digest(&b), "theirs is kept");
    // With --force ours wins, in full, and is whole.
    let j = push(&r, &a, &["--force"]);
    assert_push(&j, false, "3");
    let back = pull_fresh(&r, "team/a.db", &key, "back3.db");
    assert_eq!(content_digest(&back), content_digest(&a));
}
