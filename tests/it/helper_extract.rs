//! Extracting the embedded helper at run time: once into the user's cache,
//! named by its content hash, safe when many first runs race, and falling
//! back to a fresh private temp dir (removed once the helper is open) when
//! the cache cannot be written. tests/it/client_setup.rs covers `noexec`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::support::*;

/// Files in `dir` (names only), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn expected_name() -> String {
    format!(
        "sqlite3_rsync-{}",
        &sqlrsync::helper::info::HELPER_SHA256[..16]
    )
}

/// Checks `path` is the helper: the embedded bytes, mode 0755.
#[track_caller]
fn assert_is_helper(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o755,
        "{}",
        path.display()
    );
    assert!(std::fs::read(path).unwrap() == sqlrsync::helper::HELPER_BYTES);
}

#[test]
fn first_run_extracts_into_the_cache_once() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(&origin, DbSpec::default());
    assert_ok(&run(env.sqlrsync().arg(&origin).arg(env.path("r1.db"))));
    let cache = env.home().join(".cache/sqlrsync");
    assert_eq!(names(&cache), vec![expected_name()]);
    let helper = cache.join(expected_name());
    assert_is_helper(&helper);
    let mtime = std::fs::metadata(&helper).unwrap().modified().unwrap();
    assert_ok(&run(env.sqlrsync().arg(&origin).arg(env.path("r2.db"))));
    assert_eq!(
        std::fs::metadata(&helper).unwrap().modified().unwrap(),
        mtime,
        "a verified helper is reused, not rewritten"
    );
    // A damaged cached helper is replaced, not run.
    std::fs::write(&helper, b"#!/bin/sh\nexit 3\n").unwrap();
    assert_ok(&run(env.sqlrsync().arg(&origin).arg(env.path("r3.db"))));
    assert_is_helper(&helper);
    assert_eq!(content_digest(&env.path("r3.db")), content_digest(&origin));
}

#[test]
fn concurrent_first_runs_on_an_empty_cache_all_succeed() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(&origin, DbSpec::default());
    let children: Vec<_> = (0..8)
        .map(|i| {
            env.sqlrsync()
                .arg(&origin)
                .arg(env.path(&format!("replica-{i}.db")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_ok(&child.wait_with_output().unwrap());
    }
    let digest = content_digest(&origin);
    for i in 0..8 {
        assert_eq!(
            content_digest(&env.path(&format!("replica-{i}.db"))),
            digest
        );
    }
    // One helper, no temp files left from the race.
    let cache = env.home().join(".cache/sqlrsync");
    assert_eq!(names(&cache), vec![expected_name()]);
    assert_is_helper(&cache.join(expected_name()));
}

/// Runs a sync with the cache pointed at `cache` and TMPDIR at the env's
/// own `tmp`; returns the `-v` note on where the helper ran from, after
/// checking that nothing of it was left in the temp dir.
fn sync_with_cache(env: &TestEnv, cache_home: &Path) -> String {
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let origin = env.path("origin.db");
    if !origin.exists() {
        make_db(&origin, DbSpec::default());
    }
    let replica = env.path("replica.db");
    let _ = std::fs::remove_file(&replica);
    let o = run(env
        .sqlrsync()
        .env("XDG_CACHE_HOME", cache_home)
        .env("TMPDIR", &tmp)
        .arg("-v")
        .arg(&origin)
        .arg(&replica));
    assert_ok(&o);
    assert_eq!(content_digest(&replica), content_digest(&origin));
    // The private dir had a random name and was removed once the helper was
    // open: the helper runs by descriptor, so LOCAL mode (which becomes the
    // helper and never cleans up) leaves nothing behind.
    assert_eq!(names(&tmp), Vec::<String>::new());
    stderr(&o)
}

#[test]
fn a_cache_that_cannot_be_created_falls_back_to_a_private_temp_dir() {
    let env = TestEnv::new();
    // A regular file where the cache directory should be: no one, root
    // included, can create a directory inside it.
    let blocker = env.path("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let note = sync_with_cache(&env, &blocker);
    assert!(note.contains("helper from a private temp dir"), "{note}");
    assert!(note.contains("not the cache"), "{note}");
}

#[test]
fn a_read_only_cache_falls_back_to_a_private_temp_dir() {
    let env = TestEnv::new();
    // procfs takes no new directories, not even from root.
    let note = sync_with_cache(&env, Path::new("/proc/sqlrsync-no-cache"));
    assert!(note.contains("helper from a private temp dir"), "{note}");
    // Every run does the same, and leaves nothing either.
    let again = sync_with_cache(&env, Path::new("/proc/sqlrsync-no-cache"));
    assert!(again.contains("helper from a private temp dir"), "{again}");
}

#[test]
fn an_explicit_cache_dir_is_used() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(&origin, DbSpec::default());
    let cache = env.path("my-cache");
    let o = run(env
        .sqlrsync()
        .env("SQLRSYNC_CACHE_DIR", &cache)
        .arg(&origin)
        .arg(env.path("replica.db")));
    assert_ok(&o);
    assert_eq!(names(&cache), vec![expected_name()]);
    assert!(!env.home().join(".cache/sqlrsync").exists());
}
