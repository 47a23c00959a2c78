//! The client where its home is not a normal one: a HOME (and cache) on a
//! `noexec` file system runs the helper from a private temp dir, or from an
//! in-memory file when the temp dir is `noexec` too, and `-v` says which;
//! the `-sqlrsync` file of a pull runs with no `sqlrsync` on PATH (cron,
//! `env -i`).
//!
//! The `noexec` mounts are made in a user and mount namespace of their own
//! (`unshare -rm`), so they need no root and vanish with the command; where
//! namespaces are not available the tests print a `SKIP` line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::remote::*;
use crate::support::*;

/// Mounts a fresh noexec tmpfs on each of the first `$1` arguments after
/// `$1`, then runs the rest.
const MOUNT_NOEXEC: &str = r#"n=$1; shift
while [ "$n" -gt 0 ]; do
  mount -t tmpfs -o noexec,mode=0755 tmpfs "$1" || exit 97
  shift; n=$((n-1))
done
exec "$@""#;

/// `sqlrsync` in this env with HOME on a noexec tmpfs (its cache is under
/// it), TMPDIR at the env's `tmp`, and a noexec tmpfs on each of
/// `also_noexec`; None, after a loud SKIP line, when this machine cannot
/// make the mounts.
fn noexec_home(env: &TestEnv, also_noexec: &[PathBuf], test: &str) -> Option<Command> {
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut dirs = vec![env.home()];
    dirs.extend(also_noexec.iter().cloned());
    // Can this machine make such a mount at all?
    let probe = env.path("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let can = Command::new("unshare")
        .args(["-rm", "sh", "-c", MOUNT_NOEXEC, "sh", "1"])
        .arg(&probe)
        .arg("true")
        .output();
    if !can.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIP {test}: cannot mount a noexec tmpfs in a user+mount namespace \
             (unshare -rm): {can:?}"
        );
        return None;
    }
    let mut c = env.command("unshare");
    c.args(["-rm", "sh", "-c", MOUNT_NOEXEC, "sh"])
        .arg(dirs.len().to_string())
        .args(&dirs)
        .arg(SQLRSYNC)
        .env("TMPDIR", &tmp);
    Some(c)
}

/// Entries left in `dir`.
fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A LOCAL sync of a fresh origin into a new replica, with `-v`; returns
/// stderr after checking the copy.
fn local_sync_noexec(also_noexec: &[&str], test: &str) -> Option<String> {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(&origin, DbSpec::default());
    let replica = env.path("replica.db");
    let also: Vec<PathBuf> = also_noexec.iter().map(|d| env.path(d)).collect();
    let mut cmd = noexec_home(&env, &also, test)?;
    let o = run(cmd.arg("-v").arg(&origin).arg(&replica));
    assert_ok(&o);
    assert_eq!(content_digest(&replica), content_digest(&origin));
    assert_integrity(&replica);
    // Nothing of the helper is left in the temp dir.
    assert_eq!(left_in(&env.path("tmp")), Vec::<String>::new());
    Some(stderr(&o))
}

#[test]
fn a_noexec_home_runs_the_helper_from_a_private_temp_dir() {
    let Some(err) = local_sync_noexec(&[], "a_noexec_home_runs_the_helper_from_a_private_temp_dir")
    else {
        return;
    };
    assert!(err.contains("helper from a private temp dir"), "{err}");
    assert!(err.contains("noexec file system"), "{err}");
}

#[test]
fn a_noexec_home_and_temp_dir_run_the_helper_from_memory() {
    let Some(err) = local_sync_noexec(
        &["tmp"],
        "a_noexec_home_and_temp_dir_run_the_helper_from_memory",
    ) else {
        return;
    };
    assert!(err.contains("helper from an in-memory file"), "{err}");
    assert!(err.contains("not a temp dir in"), "{err}");
}

#[test]
fn a_noexec_home_and_temp_dir_still_push_and_pull() {
    let r = Fixture::start();
    r.make("a.db", 500);
    let test = "a_noexec_home_and_temp_dir_still_push_and_pull";
    let also = [r.path("tmp")];
    let Some(mut push) = noexec_home(&r.env, &also, test) else {
        return;
    };
    // Spawned helpers (push and pull), not exec'd ones as in LOCAL mode.
    let o = run(push
        .args(["a.db", "team/a.db", "-v", "--server", &r.ws_url()])
        .env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    assert!(
        stderr(&o).contains("helper from an in-memory file"),
        "{}",
        stderr(&o)
    );
    let mut pull = noexec_home(&r.env, &also, test).unwrap();
    let o = run(pull
        .args(["team/a.db", "b.db", "-v", "--server", &r.ws_url()])
        .env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    assert!(
        stderr(&o).contains("helper from an in-memory file"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        content_digest(&r.path("b.db")),
        content_digest(&r.path("a.db"))
    );
}

#[test]
fn a_pulled_dash_file_runs_without_sqlrsync_on_path() {
    let r = Fixture::start();
    r.make("a.db", 500);
    r.first_push("a.db", "team/a.db");
    let key = dash_pull_key(&r.path("a.db"));
    // A pull with the key into another directory writes its own file.
    std::fs::create_dir(r.path("copy")).unwrap();
    assert_ok(&run(&mut r.cmd(&[
        "team/a.db",
        "./copy/a.db",
        "--pullKey",
        &key,
    ])));
    let script = r.path("copy/a.db-sqlrsync");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("\ncommand -v sqlrsync "), "{text}");
    // A second version to pull.
    change_rows(&r.path("a.db"), 0.2);
    assert_ok(&run(&mut r.cmd(&["a.db"])));

    // As cron runs it: an empty environment (HOME aside, which cron sets
    // and which keeps this test out of the real home), so bash's own
    // default PATH, without our binary.
    let bare = |args: &[&str]| {
        let mut c = Command::new("env");
        c.arg("-i")
            .arg(format!("HOME={}", r.env.home().display()))
            .arg("/bin/bash")
            .args(args)
            .current_dir("/");
        c
    };
    let found = run(&mut bare(&["-c", "command -v sqlrsync"]));
    assert!(
        !found.status.success(),
        "a sqlrsync on bash's default PATH ({}): this test cannot tell",
        stdout(&found)
    );
    let o = run(&mut bare(&[script.to_str().unwrap()]));
    assert_ok(&o);
    assert_eq!(
        content_digest(&r.path("copy/a.db")),
        content_digest(&r.path("a.db"))
    );
    assert_integrity(&r.path("copy/a.db"));
}
