//! Retention, prune, compaction and replica deletion (issue 15, items 1-3
//! and 6): what a policy drops is gone, said so when asked for, and frees
//! its space; every kept version still pulls byte-for-byte what was pushed,
//! numbers are never reused, and `verify` is clean, also after a prune
//! killed at any moment.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::faults::{trials, wait_until};
use crate::support::*;

/// `sqlrsync-server ARGS --data-dir DATA`.
fn admin(r: &Fixture, args: &[&str]) -> Output {
    admin_at(&r.env, &r.data, args)
}

fn admin_at(env: &TestEnv, data: &Path, args: &[&str]) -> Output {
    run(env.command(SERVER).args(args).arg("--data-dir").arg(data))
}

/// Pushes `versions` versions of a database to `remote`, each changing a
/// third of its rows; returns each version's content digest, oldest first.
fn push_versions(
    r: &Fixture,
    local: &str,
    remote: &str,
    versions: usize,
    rows: u32,
) -> Vec<String> {
    let db = r.make(local, rows);
    r.first_push(local, remote);
    let mut digests = vec![content_digest(&db)];
    for i in 2..=versions {
        change_rows(&db, 0.34);
        let o = run(&mut r.admin_cmd(&[local, "-m", &format!("v{i}")]));
        assert_ok(&o);
        digests.push(content_digest(&db));
    }
    digests
}

/// Pulls `remote@n` into a new file; the output and the file.
fn pull_version(r: &Fixture, remote: &str, n: u64) -> (Output, PathBuf) {
    let out = r.path(&format!("pulled-{}-{n}.db", remote.replace('/', "_")));
    let _ = std::fs::remove_file(&out);
    let o = run(&mut r.admin_cmd(&[&format!("{remote}@{n}"), out.to_str().unwrap()]));
    (o, out)
}

fn assert_pulls(r: &Fixture, remote: &str, digests: &[String], numbers: impl Iterator<Item = u64>) {
    for n in numbers {
        let (o, out) = pull_version(r, remote, n);
        assert_ok(&o);
        assert_eq!(
            content_digest(&out),
            digests[n as usize - 1],
            "{remote}@{n}"
        );
    }
}

fn packs_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The versions listing's pruned numbers.
fn pruned_numbers(r: &Fixture, remote: &str) -> Vec<u64> {
    let o = admin(r, &["versions", remote]);
    assert_ok(&o);
    let mut n: Vec<u64> = stdout(&o)
        .lines()
        .filter(|l| l.contains("[pruned "))
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    n.sort_unstable();
    n
}

/// A policy set on a live server; `prune --dry-run` next to it says what
/// would go and changes nothing; `prune` (server stopped) drops it and
/// shrinks the packs; the kept versions pull as pushed, a pruned one is
/// refused as pruned, `verify` is clean and the next push takes the next
/// number.
#[test]
fn prune_drops_what_the_policy_says_and_keeps_the_rest_whole() {
    let mut r = Fixture::with("team", &["--prune-every", "off"]);
    let digests = push_versions(&r, "a.db", "team/a.db", 8, 3000);
    let o = admin(&r, &["retention", "set", "team/a.db", "--keep-last", "3"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("keep last=3"), "{}", stdout(&o));
    let o = admin(&r, &["retention", "set", "team/a.db"]);
    assert_one_line_error(&o, "at least one --keep-* rule");

    let o = admin(&r, &["prune", "--dry-run"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("team/a.db: would drop 5 versions (1-5) by policy last=3"),
        "{out}"
    );
    assert!(out.contains("would free "), "{out}");
    assert!(
        pruned_numbers(&r, "team/a.db").is_empty(),
        "a dry run changed something"
    );
    let o = admin(&r, &["prune"]);
    assert_one_line_error(&o, "applies the retention policies itself");

    let addr = r.stop_server();
    let before = packs_bytes(&r.data);
    let o = admin(&r, &["prune"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("team/a.db: dropped 5 versions (1-5)"), "{out}");
    assert!(out.contains("compacted "), "{out}");
    let after = packs_bytes(&r.data);
    assert!(after < before * 2 / 3, "packs {before} -> {after} bytes");
    assert_eq!(pruned_numbers(&r, "team/a.db"), vec![1, 2, 3, 4, 5]);
    r.verify_store();

    r.restart_server_at(&addr);
    assert_pulls(&r, "team/a.db", &digests, 6..=8);
    let (o, _) = pull_version(&r, "team/a.db", 3);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("version 3 was pruned"),
        "{}",
        stderr(&o)
    );
    // A pruned number stays taken.
    let mut digests = digests;
    let db = r.path("a.db");
    change_rows(&db, 0.1);
    assert_ok(&run(&mut r.admin_cmd(&["a.db", "--json"])));
    digests.push(content_digest(&db));
    let o = admin(&r, &["versions", "team/a.db"]);
    assert!(
        stdout(&o).lines().nth(1).unwrap().starts_with("9\t"),
        "{}",
        stdout(&o)
    );
    // The next prune drops the one that fell out of the last 3, the one
    // after it nothing.
    let addr = r.stop_server();
    let o = admin(&r, &["prune"]);
    assert!(
        stdout(&o).contains("dropped 1 version (6)"),
        "{}",
        stdout(&o)
    );
    let o = admin(&r, &["prune"]);
    assert!(stdout(&o).contains("no version to prune"), "{}", stdout(&o));
    r.verify_store();
    r.restart_server_at(&addr);
    assert_pulls(&r, "team/a.db", &digests, 7..=9);
}

/// A namespace's policy applied by the running server on its schedule,
/// and a replica's own policy winning over it.
#[test]
fn a_live_server_prunes_on_its_schedule() {
    let r = Fixture::with("team", &["--prune-every", "1s"]);
    let a = push_versions(&r, "a.db", "team/a.db", 5, 1000);
    let b = push_versions(&r, "b.db", "team/b.db", 4, 1000);
    assert_ok(&admin(
        &r,
        &["retention", "set", "team", "--keep-last", "2"],
    ));
    assert_ok(&admin(
        &r,
        &["retention", "set", "team/b.db", "--keep-within", "1h"],
    ));
    let o = admin(&r, &["retention", "show", "team"]);
    let out = stdout(&o);
    assert!(out.contains("team/a.db\tlast=2\t(namespace)"), "{out}");
    assert!(out.contains("team/b.db\twithin=1h\t(own)"), "{out}");
    wait_until(
        "the schedule prunes team/a.db",
        Duration::from_secs(30),
        || pruned_numbers(&r, "team/a.db") == vec![1, 2, 3],
    );
    assert_pulls(&r, "team/a.db", &a, 4..=5);
    assert!(
        pruned_numbers(&r, "team/b.db").is_empty(),
        "within 1h keeps all"
    );
    assert_pulls(&r, "team/b.db", &b, 1..=4);
    r.verify_store();
}

/// `replica delete` needs --yes, removes the replica and its keys at once
/// on a live server, leaves the others whole, and the next prune frees its
/// pages; a push to the same path starts a new replica at version 1.
#[test]
fn a_deleted_replica_is_gone_and_its_space_comes_back() {
    let mut r = Fixture::with("team", &["--prune-every", "off"]);
    push_versions(&r, "a.db", "team/a.db", 4, 2000);
    let b = push_versions(&r, "b.db", "team/b.db", 3, 500);
    let o = admin(&r, &["replica", "delete", "team/a.db"]);
    assert_one_line_error(&o, "run again with --yes");
    let (o, _) = pull_version(&r, "team/a.db", 1);
    assert_ok(&o);
    let o = admin(&r, &["replica", "delete", "team/a.db", "--yes"]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("deleted team/a.db (4 versions"),
        "{}",
        stdout(&o)
    );
    let (o, _) = pull_version(&r, "team/a.db", 1);
    assert!(!o.status.success(), "a deleted replica still pulls");
    assert_pulls(&r, "team/b.db", &b, 1..=3);

    let addr = r.stop_server();
    let before = packs_bytes(&r.data);
    assert_ok(&admin(&r, &["prune"]));
    assert!(
        packs_bytes(&r.data) < before / 2,
        "its pages were not freed"
    );
    r.verify_store();
    r.restart_server_at(&addr);
    assert_pulls(&r, "team/b.db", &b, 1..=3);
    let v = r.first_push("a.db", "team/a.db");
    assert_eq!(v["version"].to_string().trim_matches('"'), "1", "{v}");
}

/// `prune` killed at many moments (pruning, copying pages, between its
/// transaction and the file's deletion): the server starts on what is
/// left, `verify` is clean, and every version that is not marked pruned
/// pulls as pushed.
#[test]
fn a_prune_killed_at_any_moment_loses_no_kept_version() {
    let mut r = Fixture::with("team", &["--prune-every", "off"]);
    let digests = push_versions(&r, "a.db", "team/a.db", 10, 4000);
    assert_ok(&admin(
        &r,
        &["retention", "set", "team/a.db", "--keep-last", "4"],
    ));
    let addr = r.stop_server();
    let template = r.path("template-data");
    copy_dir(&r.data, &template);
    let delays = [0u64, 3, 8, 15, 25, 40, 60, 90, 130, 200];
    // In CI every other one, from the start, the middle and the end.
    let step = delays.len() / trials(4, delays.len());
    for &ms in delays.iter().step_by(step.max(1)) {
        std::fs::remove_dir_all(&r.data).unwrap();
        copy_dir(&template, &r.data);
        let mut child = r
            .env
            .command(SERVER)
            .args(["prune", "--data-dir"])
            .arg(&r.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        sigkill(&mut child);
        let _ = child.wait();
        r.restart_server_at(&addr);
        let pruned = pruned_numbers(&r, "team/a.db");
        assert!(
            pruned.is_empty() || pruned == vec![1, 2, 3, 4, 5, 6],
            "{pruned:?} after {ms} ms"
        );
        let kept = (1..=10u64).filter(|v| !pruned.contains(v));
        assert_pulls(&r, "team/a.db", &digests, kept);
        r.stop_server();
        r.verify_store();
        // What was left is finished by the next prune.
        assert_ok(&admin(&r, &["prune"]));
        r.verify_store();
        assert_eq!(pruned_numbers(&r, "team/a.db"), vec![1, 2, 3, 4, 5, 6]);
    }
}

/// A plain recursive copy (a data dir has files and folders only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "server.lock" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Pulls of older versions while the server prunes and compacts on its
/// schedule and pushes keep coming: each pull gets exactly the bytes its
/// version had, or is refused because that version was pruned meanwhile;
/// never an error of another kind, never other bytes.
#[test]
fn pulls_during_live_prunes_get_their_version_or_are_told_it_was_pruned() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let r = Fixture::with("team", &["--prune-every", "1s"]);
    let db = r.make("a.db", 2000);
    let first = r.first_push("a.db", "team/a.db");
    assert_eq!(first["version"].to_string().trim_matches('"'), "1");
    assert_ok(&admin(
        &r,
        &["retention", "set", "team/a.db", "--keep-last", "3"],
    ));
    let known: Mutex<HashMap<u64, String>> = Mutex::new(HashMap::from([(1, content_digest(&db))]));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut pulled, mut told_pruned) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..10 {
                change_rows(&db, 0.34);
                let o = run(&mut r.admin_cmd(&["a.db", "--json"]));
                assert_ok(&o);
                let v: u64 = json(&o)["version"]
                    .to_string()
                    .trim_matches('"')
                    .parse()
                    .unwrap();
                known.lock().unwrap().insert(v, content_digest(&db));
                std::thread::sleep(Duration::from_millis(300));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut i = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let (n, want) = {
                let k = known.lock().unwrap();
                let mut ns: Vec<u64> = k.keys().copied().collect();
                ns.sort_unstable();
                // Mostly the older ones, which prunes take away.
                let n = ns[(i as usize * 7) % ns.len()];
                (n, k[&n].clone())
            };
            let (o, out) = pull_version(&r, "team/a.db", n);
            if o.status.success() {
                assert_eq!(content_digest(&out), want, "team/a.db@{n}");
                pulled += 1;
            } else {
                assert!(stderr(&o).contains("was pruned"), "@{n}: {}", stderr(&o));
                told_pruned += 1;
            }
        }
    });
    assert!(pulled > 0, "no pull succeeded ({told_pruned} were pruned)");
    wait_until("the last prune", Duration::from_secs(30), || {
        pruned_numbers(&r, "team/a.db").len() == 8
    });
    r.verify_store();
}
