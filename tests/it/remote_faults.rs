//! Faults against the real server: unreachable server, refused handshake,
//! ABORT, a pull stopped or cut mid-way. Each gives one clear error line, a
//! non-zero exit, and leaves the local replica its previous consistent self.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::remote::*;
use crate::support::*;

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Collect what it printed.
    let mut out = Vec::new();
    let mut err = Vec::new();
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut err).unwrap();
    }
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: out,
        stderr: err,
    }
}

fn journal(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push("-journal");
    s.into()
}

/// After a stopped pull: the helper has rolled back (no journal left) and
/// the replica is exactly `want`.
fn assert_unchanged(db: &Path, want: &str) {
    wait_for("the helper to roll back", Duration::from_secs(20), || {
        !journal(db).exists()
    });
    assert_integrity(db);
    assert_eq!(content_digest(db), want, "the replica changed");
}

/// A replica with a small v1 and a large v2, and `old.db` holding v1.
fn two_versions(r: &Fixture) -> (String, String) {
    let a = r.path("a.db");
    make_db(
        &a,
        DbSpec {
            rows: 300,
            row_bytes: 1000,
            ..DbSpec::default()
        },
    );
    r.first_push("a.db", "team/a.db");
    let v1 = content_digest(&a);
    let c = rusqlite::Connection::open(&a).unwrap();
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM n WHERE i<20000)
         INSERT INTO t(v, n) SELECT randomblob(1000), i FROM n;",
    )
    .unwrap();
    drop(c);
    assert_ok(&run(&mut r.cmd(&["a.db"])));
    let v2 = content_digest(&a);
    let key = dash_pull_key(&a);
    assert_ok(&run(&mut r.cmd(&[
        "team/a.db@1",
        "old.db",
        "--pullKey",
        &key,
    ])));
    assert_eq!(content_digest(&r.path("old.db")), v1);
    (v1, v2)
}

/// The pull of v2 into old.db (at v1), through the helper: these tests
/// stop the helper's pull mid-way, so old.db's page cache entry goes first
/// (with it, the pull would be a delta, which runs no helper; see
/// delta_pull.rs).
fn start_pull(r: &Fixture) -> Child {
    let _ = std::fs::remove_dir_all(r.env.home().join(".cache/sqlrsync/pages"));
    let key = dash_pull_key(&r.path("a.db"));
    r.cmd(&["team/a.db", "old.db", "--pullKey", &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn unreachable_server_and_refused_handshake() {
    let r = Fixture::start();
    r.make("a.db", 100);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("ws://127.0.0.1:{port}");
    let o = run(r.env.sqlrsync().args([
        "a.db",
        "team/a.db",
        "--server",
        &dead,
        "--adminKey",
        &r.admin,
    ]));
    assert_one_line_error(&o, "cannot reach the server");
    let o = run(r.env.sqlrsync().args([
        "team/a.db",
        "x.db",
        "--server",
        &dead,
        "--pullKey",
        &r.admin,
    ]));
    assert_one_line_error(&o, "cannot reach the server");
    assert!(!r.path("x.db").exists());
    let o = run(&mut r.cmd(&[
        "a.db",
        "team/a.db",
        "--adminKey",
        "DDDDDDDDDDDDDDDDDDDDDDDD",
    ]));
    assert_one_line_error(&o, "HTTP 401 Unauthorized: ");
    assert!(!r.path("a.db-sqlrsync").exists());
    assert!(
        !r.env
            .home()
            .join(".config/sqlrsync/local-secrets.toml")
            .exists()
    );
}

#[test]
fn abort_from_the_server_is_one_line_and_changes_nothing() {
    let r = Fixture::start();
    let (v1, _v2) = two_versions(&r);
    // Damage the server's page store so that version 1 cannot be read: the
    // server answers the pull with ABORT.
    for f in files_under(&r.data.join("packs")) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(10)
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(r.data.join("cache"));
    let key = dash_pull_key(&r.path("a.db"));
    let o = run(&mut r.cmd(&["team/a.db@1", "old.db", "--pullKey", &key]));
    assert_one_line_error(&o, "the server aborted:");
    assert_unchanged(&r.path("old.db"), &v1);
}

#[test]
fn pull_killed_mid_way_leaves_the_old_replica() {
    let r = Fixture::start();
    let (v1, _v2) = two_versions(&r);
    let old = r.path("old.db");
    let mut child = start_pull(&r);
    wait_for("pages to arrive", Duration::from_secs(60), || {
        journal(&old).exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_unchanged(&old, &v1);
}

#[test]
fn pull_interrupted_with_ctrl_c_stops_cleanly() {
    let r = Fixture::start();
    let (v1, _v2) = two_versions(&r);
    let old = r.path("old.db");
    let mut child = start_pull(&r);
    wait_for("pages to arrive", Duration::from_secs(60), || {
        journal(&old).exists()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_one_line_error(&o, "interrupted");
    assert_unchanged(&old, &v1);
}

#[test]
fn server_killed_mid_pull_is_one_line_and_changes_nothing() {
    let mut r = Fixture::start();
    let (v1, _v2) = two_versions(&r);
    let old = r.path("old.db");
    let mut child = start_pull(&r);
    wait_for("pages to arrive", Duration::from_secs(60), || {
        journal(&old).exists()
    });
    r.server_mut().child.kill().unwrap();
    let o = wait_exit(&mut child, Duration::from_secs(30));
    assert_one_line_error(&o, "the local database is unchanged");
    assert_unchanged(&old, &v1);
}

/// Pids of the direct children of `pid` (any of its threads may have
/// spawned them).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|s| s.parse::<i32>().ok()),
        );
    }
    out
}

#[test]
fn helper_crash_mid_pull_is_one_line_and_changes_nothing() {
    let r = Fixture::start();
    let (v1, _v2) = two_versions(&r);
    let old = r.path("old.db");
    let mut child = start_pull(&r);
    wait_for("pages to arrive", Duration::from_secs(60), || {
        journal(&old).exists()
    });
    let helpers = children_of(child.id());
    assert!(!helpers.is_empty(), "no helper process found");
    for h in helpers {
        unsafe { libc::kill(h, libc::SIGKILL) };
    }
    let o = wait_exit(&mut child, Duration::from_secs(30));
    assert_one_line_error(&o, "helper failed");
    // A killed writer leaves a hot journal; SQLite's recovery on the next
    // open (any writer does it) restores the previous version.
    // (A journal whose header never reached the disk is not hot and may
    // stay behind; the database file itself was then never touched.)
    let c = rusqlite::Connection::open(&old).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |_| Ok(()))
        .unwrap();
    drop(c);
    assert_integrity(&old);
    assert_eq!(content_digest(&old), v1, "the replica changed");
}
