//! The server never loses or mixes a version because of how it was started
//! or restored (issue 12, items 1, 2, 4, 6): one server per data dir,
//! start-up that deletes only proven garbage and refuses the rest,
//! `repair` that keeps everything, a spill folder no one can point
//! elsewhere, private files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::faults::files_with_sizes;
use crate::support::{Fixture, SERVER, change_rows, content_digest};

/// `sqlrsync-server ARGS --data-dir DATA` in the fixture's env.
fn server_cmd(f: &Fixture, args: &[&str]) -> Command {
    let mut c = f.env.command(SERVER);
    c.args(args).arg("--data-dir").arg(&f.data);
    c
}

/// `serve` on the fixture's data dir that is expected to refuse: its
/// stderr, after it exited non-zero.
fn serve_refused(f: &Fixture) -> String {
    let o = server_cmd(f, &["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "serve started: {err}");
    err
}

/// Every file under `dir` with its size, as a sorted list.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = files_with_sizes(dir);
    v.sort();
    v
}

/// A consistent copy of `meta.db` now (VACUUM INTO), for a "restore".
fn backup_meta(data: &Path, to: &Path) {
    let c = rusqlite::Connection::open(data.join("meta.db")).unwrap();
    c.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
}

/// Puts a copy made by [`backup_meta`] back, as an operator restoring
/// meta.db from a backup would.
fn restore_meta(data: &Path, from: &Path) {
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("meta.db{ext}")));
    }
    std::fs::copy(from, data.join("meta.db")).unwrap();
}

fn push(f: &Fixture, db: &Path) {
    let o = f.cmd(&[db.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn pull_digest(f: &Fixture, remote: &str, name: &str) -> String {
    let out = f.path(name);
    let o = f
        .admin_cmd(&[remote, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    content_digest(&out)
}

/// `app.db` pushed as team/app.db twice: (db, content of v1, of v2).
fn two_versions(f: &Fixture, rows: u32) -> (PathBuf, String, String) {
    let db = f.make("app.db", rows);
    f.first_push(db.to_str().unwrap(), "team/app.db");
    let v1 = content_digest(&db);
    change_rows(&db, 0.3);
    push(f, &db);
    (db.clone(), v1, content_digest(&db))
}

/// `repair` that must succeed: its stdout.
fn repair_ok(f: &Fixture) -> String {
    let o = server_cmd(f, &["repair"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn assert_verify_clean(f: &Fixture) {
    let v = server_cmd(f, &["verify"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_second_server_on_one_data_dir_is_refused_and_admin_commands_work_beside() {
    let f = Fixture::start();
    let err = serve_refused(&f);
    assert!(err.contains("in use by another sqlrsync-server"), "{err}");
    let pid = f.server().child.id().to_string();
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // The key and namespace commands write beside the running server.
    let o = server_cmd(&f, &["namespace", "create", "other"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = server_cmd(&f, &["keys", "list", "other"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // And the running server still serves.
    let db = f.make("a.db", 200);
    f.first_push(db.to_str().unwrap(), "team/a.db");
}

#[test]
fn metadata_behind_the_files_refuses_to_start_and_repair_rebuilds_the_lost_version() {
    let mut f = Fixture::start();
    let (db, _, v2) = two_versions(&f, 600);
    let addr = f.stop_server();
    // A backup of meta.db and of the replica files at version 2.
    backup_meta(&f.data, &f.path("meta-v2.db"));
    let replicas = f.data.join("replicas");
    let backup_files = f.path("replicas-v2");
    copy_tree(&replicas, &backup_files);
    f.restart_server_at(&addr);
    change_rows(&db, 0.3);
    push(&f, &db);
    let v3 = content_digest(&db);
    f.stop_server();
    // The operator restores meta.db and the version-2 file; version 3's
    // file (and its pages in the pack) survive.
    restore_meta(&f.data, &f.path("meta-v2.db"));
    copy_tree(&backup_files, &replicas);
    let before = snapshot(&f.data.join("replicas"));
    let packs_before = snapshot(&f.data.join("packs"));
    let err = serve_refused(&f);
    assert!(err.contains("does not match its metadata"), "{err}");
    assert!(err.contains("v3.db"), "{err}");
    assert!(err.contains("sqlrsync-server repair"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(snapshot(&f.data.join("replicas")), before, "files touched");
    assert_eq!(
        snapshot(&f.data.join("packs")),
        packs_before,
        "packs touched"
    );

    let out = repair_ok(&f);
    assert!(
        out.contains("v3.db of team/app.db is now version 3"),
        "{out}"
    );
    assert!(out.contains("lost+found"), "{out}");
    // Nothing was deleted: the set-aside v3.db is kept.
    let kept = files_with_sizes(&f.data.join("lost+found"));
    assert!(kept.iter().any(|(p, _)| p.ends_with("v3.db")), "{kept:?}");
    f.restart_server_at(&addr);
    assert_eq!(pull_digest(&f, "team/app.db", "latest.db"), v3);
    assert_eq!(pull_digest(&f, "team/app.db@2", "two.db"), v2);
    assert_verify_clean(&f);
}

#[test]
fn a_lost_latest_file_or_pack_is_a_refusal_not_a_silent_empty_store() {
    let mut f = Fixture::start();
    two_versions(&f, 600);
    f.stop_server();
    let pack = f.data.join("packs/pack-000001.dat");
    std::fs::rename(&pack, f.path("pack-aside")).unwrap();
    let err = serve_refused(&f);
    assert!(err.contains("pack 1 is missing"), "{err}");
    assert!(!pack.exists(), "start-up made a new empty pack");
    std::fs::rename(f.path("pack-aside"), &pack).unwrap();
    let latest = files_with_sizes(&f.data.join("replicas"));
    assert_eq!(latest.len(), 1, "{latest:?}");
    std::fs::rename(&latest[0].0, f.path("v-aside")).unwrap();
    let err = serve_refused(&f);
    assert!(err.contains("is missing"), "{err}");
    std::fs::rename(f.path("v-aside"), &latest[0].0).unwrap();
    f.restart_server_at("127.0.0.1:0");
}

#[test]
fn a_link_where_the_spill_folder_used_to_be_is_never_followed() {
    let mut f = Fixture::start();
    let db = f.make("app.db", 300);
    f.first_push(db.to_str().unwrap(), "team/app.db");
    change_rows(&db, 0.3);
    push(&f, &db);
    f.kill_server();
    // What another local user could plant in the shared temp dir: the
    // name older releases used, pointing at the packs.
    use sha2::{Digest, Sha256};
    let abs = std::fs::canonicalize(&f.data).unwrap();
    let h = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
    let tmp = std::env::temp_dir();
    let link = tmp.join(format!("sqlrsync-server-spill-{}", &h[..16]));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(f.data.join("packs"), &link).unwrap();
    let packs = snapshot(&f.data.join("packs"));
    f.restart_server_at("127.0.0.1:0");
    f.kill_server();
    let _ = std::fs::remove_file(&link);
    assert_eq!(
        snapshot(&f.data.join("packs")),
        packs,
        "the packs were touched"
    );
}

#[test]
fn the_data_dir_is_private_whatever_the_umask() {
    let mut f = Fixture::start();
    f.kill_server();
    // A restart under umask 000, then a push.
    let data = f.data.clone();
    let server = crate::support::TestServer::start_cmd(&f.env, &data, &[], |c| {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    let url = server.ws_url();
    let db = f.make("app.db", 300);
    let o = f
        .admin_cmd_to(&url, &[db.to_str().unwrap(), "team/app.db"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "only {seen} files");
    drop(server);
}

/// Copies every file under `from` to the same place under `to`.
fn copy_tree(from: &Path, to: &Path) {
    for (p, _) in files_with_sizes(from) {
        let dest = to.join(p.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&p, &dest).unwrap();
    }
}

#[test]
fn a_bit_flipped_on_the_wire_is_never_committed() {
    use crate::support::proxy::{Fault, FaultProxy};
    let f = Fixture::start();
    let db = f.make("app.db", 2000);
    f.first_push(db.to_str().unwrap(), "team/app.db");
    let v1 = content_digest(&db);
    change_rows(&db, 0.5);
    let changed = content_digest(&db);
    let addr = f.ws_url().trim_start_matches("ws://").to_string();
    // Well inside the pages of the push (hundreds of KB of them).
    let proxy = FaultProxy::start(&addr, Fault::FlipUpstreamBitAt(200_000));
    let o = f
        .admin_cmd_to(&proxy.ws_url(), &[db.to_str().unwrap(), "team/app.db"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a corrupted push succeeded: {err}");
    assert!(err.contains("damaged on its way"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Nothing was stored: the latest is still version 1.
    assert_eq!(pull_digest(&f, "team/app.db", "latest.db"), v1);
    // The same push without the corruption lands.
    push(&f, &db);
    assert_eq!(pull_digest(&f, "team/app.db", "again.db"), changed);
}

#[test]
fn metadata_one_commit_behind_loses_no_version_after_repair() {
    // The case: meta.db one commit behind the files (restored, or
    // a lost WAL tail). v2.db is gone (the commit of 3 removed it); v3.db
    // and the pack bytes of that commit remain.
    let mut f = Fixture::start();
    let (db, v1, v2) = two_versions(&f, 600);
    let addr = f.stop_server();
    backup_meta(&f.data, &f.path("meta-v2.db"));
    f.restart_server_at(&addr);
    change_rows(&db, 0.3);
    push(&f, &db);
    let v3 = content_digest(&db);
    f.stop_server();
    restore_meta(&f.data, &f.path("meta-v2.db"));
    let err = serve_refused(&f);
    assert!(err.contains("v2.db) is missing"), "{err}");
    assert!(err.contains("v3.db"), "{err}");
    let out = repair_ok(&f);
    assert!(
        out.contains("v2.db of team/app.db rebuilt from v3.db"),
        "{out}"
    );
    assert!(
        out.contains("v3.db of team/app.db is now version 3"),
        "{out}"
    );
    f.restart_server_at(&addr);
    assert_eq!(pull_digest(&f, "team/app.db", "latest.db"), v3);
    assert_eq!(pull_digest(&f, "team/app.db@2", "two.db"), v2);
    assert_eq!(pull_digest(&f, "team/app.db@1", "one.db"), v1);
    assert_verify_clean(&f);
}

#[test]
fn verify_checks_version_xxh3_too() {
    let mut f = Fixture::start();
    two_versions(&f, 300);
    f.stop_server();
    let c = rusqlite::Connection::open(f.data.join("meta.db")).unwrap();
    let n = c
        .execute("UPDATE versions SET version_xxh3=?1", [&"0".repeat(32)])
        .unwrap();
    assert_eq!(n, 2);
    drop(c);
    let v = server_cmd(&f, &["verify"]).output().unwrap();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(!v.status.success(), "{out}");
    assert!(out.contains("v2: versionXxh3 does not match"), "{out}");
    assert!(
        out.contains("v1: rebuilt with the wrong versionXxh3"),
        "{out}"
    );
}
