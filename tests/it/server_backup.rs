//! `sqlrsync-server backup` of a live server and `restore`: a backup taken
//! while pushes keep committing (and retiring the files it holds) restores
//! into a data dir that verifies and serves every version it holds, equal
//! to what was pushed; the refusals (a non-empty restore target, a DEST
//! that is a link or inside the data dir) and a damaged backup, which
//! restore removes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

/// The versions `versions NS/PATH` lists in `data`, newest first.
fn version_numbers(env: &TestEnv, data: &Path, path: &str) -> Vec<u64> {
    let o = run(env
        .command(SERVER)
        .args(["versions", path, "--data-dir"])
        .arg(data));
    assert_ok(&o);
    stdout(&o)
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect()
}

fn server_cmd(env: &TestEnv, args: &[&str]) -> Output {
    run(env.command(SERVER).args(args))
}

/// Long: one story. Two replicas, a thread pushing new versions of both in
/// a loop, two backups meanwhile (the first holds its files open for a
/// while, so commits retire them under it), then the first restored,
/// verified, served, and every version it holds pulled and compared with
/// what was pushed as that version.
#[test]
fn a_backup_taken_during_pushes_restores_every_version_it_holds() {
    let r = Fixture::start();
    let dbs = [r.make("a.db", 1500), r.make("b.db", 800)];
    let remotes = ["team/a.db", "team/b.db"];
    // (remote, version) -> content digest of what was pushed as it.
    let pushed: Mutex<HashMap<(String, u64), String>> = Mutex::default();
    for (db, remote) in dbs.iter().zip(remotes) {
        let v = r.first_push(db.file_name().unwrap().to_str().unwrap(), remote);
        assert_eq!(v["version"], "1");
        lock(&pushed).insert((remote.into(), 1), content_digest(db));
    }
    let stop = AtomicBool::new(false);
    let pushes = std::sync::atomic::AtomicU64::new(0);
    let data = r.data.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (db, remote) = (&dbs[i % 2], remotes[i % 2]);
                change_rows(db, 0.05);
                let o = run(r.env.sqlrsync().arg(db).arg("--json"));
                assert_ok(&o);
                let v: u64 = json(&o)["version"].as_str().unwrap().parse().unwrap();
                lock(&pushed).insert((remote.into(), v), content_digest(db));
                pushes.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        });
        while pushes.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Held open 1.5 s after its snapshot: pushes commit meanwhile.
        let before = pushes.load(Ordering::SeqCst);
        let o = run(r
            .env
            .command(SERVER)
            .args(["backup", "--data-dir"])
            .arg(&data)
            .arg(r.path("bk1"))
            .env("SQLRSYNC_BACKUP_HOLD_MS", "1500"));
        assert_ok(&o);
        let said = stdout(&o);
        assert!(said.starts_with("backed up 2 replicas, "), "{said}");
        let during = pushes.load(Ordering::SeqCst);
        assert!(
            during > before,
            "no push committed while the backup held its files"
        );
        let o = run(r
            .env
            .command(SERVER)
            .args(["backup", "--data-dir"])
            .arg(&data)
            .arg(r.path("bk2")));
        assert_ok(&o);
        while pushes.load(Ordering::SeqCst) < during + 1 {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        pushes.load(Ordering::SeqCst) >= 4,
        "the pushes did not overlap the backups"
    );
    let restored = r.path("restored");
    let o = server_cmd(
        &r.env,
        &[
            "restore",
            r.path("bk1").to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("no damage"), "{}", stdout(&o));
    assert_ok(&server_cmd(
        &r.env,
        &["verify", "--data-dir", restored.to_str().unwrap()],
    ));
    let server = TestServer::start(&r.env, &restored);
    let url = server.ws_url();
    let mut pulled = 0;
    for remote in remotes {
        let numbers = version_numbers(&r.env, &restored, remote);
        assert_eq!(
            numbers,
            (1..=numbers[0]).rev().collect::<Vec<_>>(),
            "{remote}: every version up to the latest"
        );
        for n in numbers {
            let out = r.path(&format!("pulled-{}-{n}.db", pulled));
            let o = run(&mut r.admin_cmd_to(
                &url,
                &[&format!("{remote}@{n}"), out.to_str().unwrap(), "--json"],
            ));
            assert_ok(&o);
            let want = lock(&pushed)
                .get(&(remote.to_string(), n))
                .cloned()
                .unwrap_or_else(|| panic!("{remote} v{n} was never pushed"));
            assert_eq!(content_digest(&out), want, "{remote} v{n}");
            pulled += 1;
        }
    }
    assert!(pulled >= 4, "{pulled} versions");
    // The second backup restores and verifies too.
    let o = server_cmd(
        &r.env,
        &[
            "restore",
            r.path("bk2").to_str().unwrap(),
            "--data-dir",
            r.path("restored2").to_str().unwrap(),
        ],
    );
    assert_ok(&o);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What backup and restore refuse, and a damaged backup that restore
/// checks and removes.
#[test]
fn refusals_and_a_damaged_backup() {
    let r = Fixture::start();
    r.make("a.db", 300);
    r.first_push("a.db", "team/a.db");
    let data = r.data.to_str().unwrap().to_string();
    let bk = r.path("bk");
    assert_ok(&server_cmd(
        &r.env,
        &["backup", "--data-dir", &data, bk.to_str().unwrap()],
    ));
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&bk), 0o700);

    // A DEST that is a link (even to nothing) is refused, never followed.
    let link = r.path("link");
    let aim = r.path("aim");
    std::os::unix::fs::symlink(&aim, &link).unwrap();
    let o = server_cmd(
        &r.env,
        &["backup", "--data-dir", &data, link.to_str().unwrap()],
    );
    assert_one_line_error(&o, "already exists");
    assert!(!aim.exists(), "followed the link");
    let o = server_cmd(
        &r.env,
        &["backup", "--data-dir", &data, bk.to_str().unwrap()],
    );
    assert_one_line_error(&o, "already exists");
    let inside = r.data.join("packs").join("bk");
    let o = server_cmd(
        &r.env,
        &["backup", "--data-dir", &data, inside.to_str().unwrap()],
    );
    assert_one_line_error(&o, "is inside the data dir");
    assert!(!inside.exists());
    let leftovers: Vec<_> = std::fs::read_dir(r.env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A target that is not empty is refused and left alone.
    let full = r.path("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine.txt"), "keep").unwrap();
    let o = server_cmd(
        &r.env,
        &[
            "restore",
            bk.to_str().unwrap(),
            "--data-dir",
            full.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "is not empty");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(full.join("mine.txt")).unwrap(),
        "keep"
    );
    let o = server_cmd(
        &r.env,
        &[
            "restore",
            r.path("a.db").to_str().unwrap(),
            "--data-dir",
            r.path("x").to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "is not a sqlrsync-server backup");

    // One flipped byte in the backup's latest file: restore checks, says
    // so and keeps nothing.
    let replica = std::fs::read_dir(bk.join("replicas"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let latest = replica.join("v1.db");
    let mut bytes = std::fs::read(&latest).unwrap();
    bytes[5000] ^= 0x55;
    std::fs::write(&latest, bytes).unwrap();
    let target = r.path("restored");
    let o = server_cmd(
        &r.env,
        &[
            "restore",
            bk.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("failed its check"), "{err}");
    assert!(
        stdout(&o).contains("DAMAGE: team/a.db v1"),
        "{}",
        stdout(&o)
    );
    assert!(!target.exists(), "the failed copy was kept");

    // A latest file missing from the data dir is damage, not a race: said
    // at once, and nothing written.
    let live = r.data.join("replicas").join(replica.file_name().unwrap());
    std::fs::remove_file(live.join("v1.db")).unwrap();
    let dest = r.path("bk-of-damage");
    let o = server_cmd(
        &r.env,
        &["backup", "--data-dir", &data, dest.to_str().unwrap()],
    );
    assert_one_line_error(&o, "v1 of team/a.db is missing, in two snapshots in a row");
    assert!(
        stderr(&o).contains("sqlrsync-server verify"),
        "{}",
        stderr(&o)
    );
    assert!(!dest.exists());
    let leftovers = std::fs::read_dir(r.env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);
}
