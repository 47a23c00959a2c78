//! The client never overwrites what the user meant to keep
//! (src/client/guard.rs, src/client/matched.rs): pulls that would roll an
//! origin back or discard local changes, pushes that would put another
//! machine's version behind this one, stale stored keys, one-off pushes
//! that rebind a database, and new files a failed pull leaves behind.
//!
//! Real server on loopback, real client; "another machine" is another
//! TestEnv (its own HOME, so its own records and secrets).

use std::path::Path;
use std::process::Command;

use crate::support::fake::*;
use crate::support::*;
use sqlrsync::wire as proto;

/// Adds one row nobody pushed.
fn add_row(db: &Path, text: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS local_only(t TEXT); INSERT INTO local_only VALUES ('{text}');"
    ))
    .unwrap();
}

fn local_rows(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM local_only", [], |r| r.get(0))
        .unwrap_or(-1)
}

/// The push key stored for `remote` in this env's local-secrets.toml.
fn stored_push_key(env: &TestEnv, remote: &str) -> String {
    let text =
        std::fs::read_to_string(env.home().join(".config/sqlrsync/local-secrets.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    t["sqlrsync-databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["remotePath"].as_str() == Some(remote))
        .and_then(|e| e["pushKey"].as_str())
        .unwrap_or_else(|| panic!("no entry for {remote} in {text}"))
        .to_string()
}

fn secrets_entries(env: &TestEnv) -> usize {
    let text =
        std::fs::read_to_string(env.home().join(".config/sqlrsync/local-secrets.toml")).unwrap();
    text.matches("[[sqlrsync-databases]]").count()
}

/// `sqlrsync ARGS --server URL` in `env`, no key.
fn cmd_in(env: &TestEnv, url: &str, args: &[&str]) -> Command {
    let mut c = env.sqlrsync();
    c.args(args).arg("--server").arg(url);
    c
}

#[test]
fn a_pull_never_rolls_the_origin_back() {
    let r = Fixture::start();
    let app = r.make("app.db", 300);
    r.first_push("app.db", "team/app.db");
    change_rows(&app, 0.1);
    assert_ok(&run(&mut r.cmd(&["app.db"])));
    add_row(&app, "not pushed yet");
    let before = content_digest(&app);

    // In the origin's folder, `sqlrsync team/app.db@1` names ./app.db.
    let o = run(&mut r.admin_cmd(&["team/app.db@1"]));
    assert_one_line_error(&o, "is the origin of team/app.db");
    assert!(stderr(&o).contains("OTHER.db"), "{}", stderr(&o));
    assert_eq!(content_digest(&app), before, "the origin was changed");
    assert_eq!(local_rows(&app), 1);

    // --dry says so too, and touches nothing.
    let o = run(&mut r.admin_cmd(&["team/app.db@1", "--dry"]));
    assert_ok(&o);
    assert!(
        stdout(&o).contains("refused:    ") && stdout(&o).contains("is the origin of"),
        "{}",
        stdout(&o)
    );
    assert_eq!(content_digest(&app), before);

    // Into another file, as the error says, it works.
    let o = run(&mut r.admin_cmd(&["team/app.db@1", "v1.db"]));
    assert_ok(&o);
    assert_eq!(local_rows(&app), 1);

    // --force does what was asked.
    let o = run(&mut r.admin_cmd(&["team/app.db@1", "--force"]));
    assert_ok(&o);
    assert_eq!(content_digest(&app), content_digest(&r.path("v1.db")));
}

#[test]
fn a_pull_refuses_a_copy_with_local_changes_or_of_unknown_origin() {
    let r = Fixture::start();
    let a = r.make("a.db", 300);
    r.first_push("a.db", "team/a.db");
    let key = crate::support::remote::dash_pull_key(&a);
    let copy = r.path("copy.db");
    let pull = |extra: &[&str]| {
        let mut c = r.cmd(&["team/a.db", "copy.db", "--pullKey", &key]);
        c.args(extra);
        run(&mut c)
    };
    assert_ok(&pull(&[]));
    // Again, unchanged: fine; touched (a checkpoint, a backup tool) but
    // the same content: fine, by hash.
    assert_ok(&pull(&[]));
    let f = std::fs::File::options().append(true).open(&copy).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    assert_ok(&pull(&[]));

    add_row(&copy, "mine");
    let changed = content_digest(&copy);
    let o = pull(&[]);
    assert_one_line_error(&o, "has changed since it matched version 1");
    assert_eq!(content_digest(&copy), changed);
    assert_ok(&pull(&["--force"]));
    assert_eq!(content_digest(&copy), content_digest(&a));

    // A database that never came from this replica.
    let stranger = r.make("stranger.db", 50);
    let before = content_digest(&stranger);
    let o = run(&mut r.cmd(&["team/a.db", "stranger.db", "--pullKey", &key]));
    assert_one_line_error(&o, "was never pulled from team/a.db");
    assert_eq!(content_digest(&stranger), before);
}

#[test]
fn a_push_refuses_to_put_another_machines_version_behind() {
    let r = Fixture::start();
    let a = r.make("a.db", 300);
    r.first_push("a.db", "team/a.db");

    // Machine B pulls, changes and pushes: version 2 (B matched version 1,
    // the latest, so its push is a fast-forward).
    let b_env = TestEnv::new();
    let url = r.ws_url();
    let o = run(cmd_in(&b_env, &url, &["team/a.db", "b.db"]).env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    let b = b_env.path("b.db");
    add_row(&b, "from b");
    let o =
        run(cmd_in(&b_env, &url, &["b.db", "team/a.db", "--json"])
            .env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2");

    // Machine A, which last matched version 1, would bury it.
    change_rows(&a, 0.1);
    let o = run(&mut r.cmd(&["a.db"]));
    assert_one_line_error(&o, "is at version 2 on the server");
    assert!(stderr(&o).contains("version 1"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // Nothing was stored: B's version is still the latest.
    let o = run(&mut r.admin_cmd(&["team/a.db", "latest.db"]));
    assert_ok(&o);
    assert_eq!(local_rows(&r.path("latest.db")), 1);

    // A database that never pushed or pulled the replica, on a third
    // machine, is refused too.
    let c_env = TestEnv::new();
    let c = c_env.path("c.db");
    make_db(&c, DbSpec::default());
    let o = run(cmd_in(&c_env, &url, &["c.db", "team/a.db"]).env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_one_line_error(&o, "never pushed or pulled");

    // --force makes A the latest, as asked.
    let o = run(&mut r.cmd(&["a.db", "--force", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "3");
    // And A's next push is an ordinary one again.
    change_rows(&a, 0.1);
    let o = run(&mut r.cmd(&["a.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "4");
}

#[test]
fn keys_given_now_beat_a_revoked_stored_key() {
    let r = Fixture::start();
    let big = r.make("big.db", 200);
    r.first_push("big.db", "team/big.db");
    let stored = stored_push_key(&r.env, "team/big.db");
    let o = run(r
        .env
        .command(SERVER)
        .args(["keys", "revoke", "team", &stored, "--data-dir"])
        .arg(&r.data));
    assert_ok(&o);
    change_rows(&big, 0.1);

    // The stored key is refused, and the error says it was the stored one.
    let o = run(&mut r.cmd(&["big.db", "team/big.db"]));
    assert_one_line_error(&o, "that was the Replica Push key stored for team/big.db");
    assert!(stderr(&o).contains("local-secrets.toml"), "{}", stderr(&o));

    // An explicit admin key wins over it, and the key the server then
    // issues replaces the stored one.
    let o = run(&mut r.cmd(&["big.db", "team/big.db", "--adminKey", &r.admin, "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2");
    let fresh = stored_push_key(&r.env, "team/big.db");
    assert_ne!(fresh, stored);
    change_rows(&big, 0.1);
    let o = run(&mut r.cmd(&["big.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "3");
}

#[test]
fn a_one_off_push_elsewhere_does_not_rebind_the_database() {
    let r = Fixture::start();
    let app = r.make("app.db", 200);
    r.first_push("app.db", "team/app.db");
    let dash = std::fs::read_to_string(r.path("app.db-sqlrsync")).unwrap();
    let o = run(&mut r.admin_cmd(&["app.db", "team/app.txt", "--json"]));
    assert_ok(&o);
    assert_eq!(secrets_entries(&r.env), 2);
    assert_eq!(
        std::fs::read_to_string(r.path("app.db-sqlrsync")).unwrap(),
        dash,
        "the -sqlrsync file was rebound"
    );

    // Each replica keeps its own key: no admin key needed for either.
    change_rows(&app, 0.1);
    let o = run(&mut r.cmd(&["app.db", "team/app.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["remote"], "team/app.db");
    assert_eq!(json(&o)["version"], "2");

    // No name: the replica pushed to last, and it says which.
    change_rows(&app, 0.1);
    let o = run(&mut r.cmd(&["app.db"]));
    assert_ok(&o);
    assert!(
        stderr(&o).contains("pushing to team/app.db"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("version 3"), "{}", stderr(&o));

    // --dry tells the truth about an existing replica's visibility.
    let o = run(&mut r.cmd(&["app.db", "team/app.txt", "--dry"]));
    assert_ok(&o);
    assert!(
        stdout(&o).contains("visibility: unchanged: the replica exists"),
        "{}",
        stdout(&o)
    );
    let o = run(&mut r.cmd(&["app.db", "team/new.db", "--dry", "--unlisted"]));
    assert_ok(&o);
    assert!(
        stdout(&o).contains("unlisted if this push creates the replica"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_new_file_from_a_failed_pull_is_removed() {
    // Page 1 arrives damaged (its b-tree page type byte): the helper
    // commits a file SQLite calls malformed, and the verification cannot
    // even hash it. The new file must go, so that a retry starts afresh.
    fn damage_page_one(buf: &mut [u8]) {
        if let Some(at) = buf.windows(16).position(|w| w == b"SQLite format 3\0")
            && at + 100 < buf.len()
        {
            buf[at + 100] = 0xff;
        }
    }
    let theirs = tempfile::tempdir().unwrap();
    let origin = theirs.path().join("their.db");
    make_db(&origin, DbSpec::default());
    let env = TestEnv::new();
    let fake = Fake::start(honest_tampered(
        "--origin",
        origin.clone(),
        proto::ServerConfig {
            replica_id: Some("r-1".into()),
            replica_path: Some("team/x.db".into()),
            committed_version_id: Some("1".into()),
            version_hash: Some(version_hash(&origin)),
            ..Default::default()
        },
        damage_page_one,
    ));
    let o = run(env.sqlrsync().args([
        "team/x.db",
        "new.db",
        "--pullKey",
        "AAAAbbbbCCCCddddEEEE1234",
        "--server",
        &fake.url,
        "--timeout",
        "5",
    ]));
    assert!(!o.status.success(), "{}", stderr(&o));
    eprintln!("{}", stderr(&o).trim());
    fake.sent();
    for suffix in ["", "-journal", "-wal", "-shm", "-sqlrsync"] {
        let p = env.path(&format!("new.db{suffix}"));
        assert!(!p.exists(), "{} was left behind", p.display());
    }
}
