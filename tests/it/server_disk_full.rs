//! The server's disk fills up during a push.
//!
//! The server's data dir lives on a small tmpfs (root only: the test mounts
//! one and prints a loud SKIP line when it cannot). A database that grows
//! with every push is pushed with the real `sqlrsync` until the disk is
//! full. The push that hits ENOSPC must fail cleanly: one error line and a
//! non-zero exit on the client, no new version, every earlier version still
//! pullable and equal to what was pushed, nothing left behind that holds
//! space (staging and cache files, unreferenced pack tails), and the server
//! still serving: pulls work at once, and pushes work again once space is
//! freed. `sqlrsync-server verify` finds the store whole at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A tmpfs mounted for the test, unmounted on drop (also on panic).
struct TmpfsMount {
    /// Where it is mounted.
    dir: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. "20m") at `dir`; None (after a loud
    /// SKIP line) when not root or the mount is refused.
    fn mount(dir: &Path, size: &str) -> Option<TmpfsMount> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP server_disk_full: not root, cannot mount a small tmpfs");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(TmpfsMount {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIP server_disk_full: mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP server_disk_full: cannot run mount: {e}");
                None
            }
        }
    }

    /// Bytes in use on the file system, deleted-but-open files included.
    fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        (s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64
    }

    /// Bytes the files one can see take (in whole 4 KiB pages, as tmpfs
    /// counts them).
    fn visible(&self) -> u64 {
        let mut total = 0;
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.len().div_ceil(4096) * 4096;
                }
            }
        }
        total
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Adds about `bytes` of incompressible rows.
fn grow(db: &Path, bytes: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute(
        "WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<?1)
         INSERT INTO t(v, n) SELECT randomblob(1000), i FROM s",
        [(bytes / 1000) as i64],
    )
    .unwrap();
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every pack file is exactly as long as its last indexed page: no bytes of
/// a failed commit hold space.
fn assert_no_pack_tails(data: &Path) {
    let c = rusqlite::Connection::open_with_flags(
        data.join("meta.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for p in files_in(&data.join("packs")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let n: i64 = name
            .trim_start_matches("pack-")
            .trim_end_matches(".dat")
            .parse()
            .unwrap();
        let end: Option<i64> = c
            .query_row(
                "SELECT max(offset + stored_len) FROM blobs WHERE pack=?1",
                [n],
                |r| r.get(0),
            )
            .unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(
            len,
            end.unwrap_or(0) as u64,
            "{name} holds {} bytes that no page refers to",
            len as i64 - end.unwrap_or(0)
        );
    }
}

/// The push just made failed as it must on a full disk: one error line
/// that says so, no new version, and nothing of it left holding space.
#[track_caller]
fn assert_failed_cleanly(
    o: &std::process::Output,
    data: &Path,
    disk: &TmpfsMount,
    versions: usize,
) {
    assert_one_line_error(o, "no new version was created");
    let text = stderr(o).to_lowercase();
    assert!(
        text.contains("space") || text.contains("full"),
        "the error does not say the server's disk is full: {text}"
    );
    let staging = files_in(&data.join("staging"));
    assert!(staging.is_empty(), "staging leftovers: {staging:?}");
    assert!(files_in(&data.join("cache")).is_empty(), "cache leftovers");
    let replica_dirs = files_in(&data.join("replicas"));
    assert_eq!(replica_dirs.len(), 1);
    assert_eq!(
        files_in(&replica_dirs[0]),
        vec![replica_dirs[0].join(format!("v{versions}.db"))],
        "only the latest version's file may be there"
    );
    assert_no_pack_tails(data);
    // No deleted file is still held open (a helper that outlived its
    // session would keep its staging file's space). The helper may take
    // a moment to be reaped.
    let t = std::time::Instant::now();
    loop {
        let (used, visible) = (disk.used(), disk.visible());
        if used <= visible + 512 * 1024 {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{} bytes are held by files no one can see",
            used - visible
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn push_that_fills_the_disk_fails_cleanly_and_the_server_recovers() {
    let env = TestEnv::new();
    let Some(disk) = TmpfsMount::mount(&env.path("small-disk"), "20m") else {
        return;
    };
    let data = disk.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Ballast the admin can delete later to free space, in small pieces so
    // that freeing it step by step lets a retried push get further each
    // time (staging copy, then the helper's writes, then the commit).
    let ballast: Vec<PathBuf> = (0..12)
        .map(|i| {
            let p = disk.dir.join(format!("ballast-{i}"));
            std::fs::write(&p, vec![7u8; 512 * 1024]).unwrap();
            p
        })
        .collect();
    let server = TestServer::start(&env, &data);
    let admin = server.create_namespace(&env, "team");
    let ws = server.ws_url();
    let cmd = |args: &[&str]| {
        let mut c = env.sqlrsync();
        c.args(args).args(["--server", &ws]);
        c
    };

    let db = env.path("grow.db");
    make_db(
        &db,
        DbSpec {
            rows: 1000,
            row_bytes: 1000,
            ..DbSpec::default()
        },
    );
    // Push, growing by ~1.5 MB each time, until the server's disk is full.
    let mut pushed: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    loop {
        assert!(
            pushed.len() < 30,
            "30 pushes fitted on a 20 MB disk: the disk never filled"
        );
        if !pushed.is_empty() {
            grow(&db, 1_500_000);
        }
        let digest = content_digest(&db);
        let o = if pushed.is_empty() {
            run(cmd(&["grow.db", "team/grow.db"]).env("SQLRSYNC_ADMIN_KEY", &admin))
        } else {
            run(&mut cmd(&["grow.db"]))
        };
        if o.status.success() {
            pushed.push(digest);
            continue;
        }
        assert!(
            pushed.len() >= 2,
            "the disk filled too early: {}",
            stderr(&o)
        );
        assert_failed_cleanly(&o, &data, &disk, pushed.len());
        failures.push(stderr(&o).trim().to_string());
        break;
    }

    // The server keeps serving: every earlier version pulls back equal.
    let key = {
        let text = std::fs::read_to_string(env.path("grow.db-sqlrsync")).unwrap();
        let at = text.find("--pullKey=").unwrap() + "--pullKey=".len();
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
    };
    for (i, want) in pushed.iter().enumerate() {
        let v = i + 1;
        let out = format!("back-{v}.db");
        let o = run(&mut cmd(&[
            &format!("team/grow.db@{v}"),
            &out,
            "--pullKey",
            &key,
        ]));
        assert_ok(&o);
        assert_eq!(&content_digest(&env.path(&out)), want, "version {v}");
        std::fs::remove_file(env.path(&out)).unwrap();
    }
    assert!(
        files_in(&data.join("cache")).is_empty(),
        "cache files stay after pulls"
    );

    // Free space half a megabyte at a time and retry the same push: each
    // attempt gets further, every failure is clean, and one succeeds.
    let digest = content_digest(&db);
    let mut next_version = None;
    for piece in &ballast {
        std::fs::remove_file(piece).unwrap();
        let o = run(&mut cmd(&["grow.db", "--json"]));
        if o.status.success() {
            let j: serde_json::Value =
                serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
            next_version = j["version"].as_str().map(str::to_string);
            break;
        }
        assert_failed_cleanly(&o, &data, &disk, pushed.len());
        failures.push(stderr(&o).trim().to_string());
    }
    eprintln!(
        "failed pushes on the full disk:\n  {}",
        failures.join("\n  ")
    );
    assert_eq!(
        next_version.as_deref(),
        Some((pushed.len() + 1).to_string().as_str()),
        "pushing works again, as the next version, once space is freed"
    );
    let o = run(&mut cmd(&["team/grow.db", "latest.db", "--pullKey", &key]));
    assert_ok(&o);
    assert_eq!(content_digest(&env.path("latest.db")), digest);

    drop(server);
    let o = run(env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data));
    assert_ok(&o);
    assert!(stdout(&o).contains("no damage"), "{}", stdout(&o));
}

/// The page store itself on a full disk: an append that runs out of space
/// leaves no partial page behind (the pack is append-only, so a partial page
/// would shift every later page away from its recorded offset), and once
/// space is freed, later appends land where they are recorded.
#[test]
fn pack_append_on_a_full_disk_leaves_no_partial_page() {
    use sqlrsync::server::store::pages::{PackStore, PageStore, page_hash};
    let env = TestEnv::new();
    let Some(disk) = TmpfsMount::mount(&env.path("tiny-disk"), "256k") else {
        return;
    };
    let ballast = disk.dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 64 * 1024]).unwrap();
    let dir = disk.dir.join("packs");
    // Level 0: pages stored raw, so each takes exactly its size.
    let mut packs = PackStore::open(&dir, 0).unwrap();
    let page = |i: u32| -> Vec<u8> {
        // Distinct, incompressible-looking pages.
        let mut v = Vec::with_capacity(3000);
        let mut x = i.wrapping_mul(2654435761).wrapping_add(1);
        while v.len() < 3000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    };
    let mut stored = Vec::new();
    let mut i = 0;
    let err = loop {
        let data = page(i);
        match packs.append(&data) {
            Ok(loc) => stored.push((page_hash(&data), loc)),
            Err(e) => break e,
        }
        i += 1;
        assert!(i < 1000, "the disk never filled");
    };
    assert!(format!("{err:#}").contains("No space left"), "{err:#}");
    let pack_file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let expected_end = stored
        .last()
        .map_or(0, |(_, l)| l.offset + l.stored_len as u64);
    assert_eq!(
        std::fs::metadata(&pack_file).unwrap().len(),
        expected_end,
        "a partial page was left in the pack"
    );
    std::fs::remove_file(&ballast).unwrap();
    for j in 0..5 {
        let data = page(10_000 + j);
        stored.push((page_hash(&data), packs.append(&data).unwrap()));
    }
    packs.sync().unwrap();
    for (h, loc) in &stored {
        packs
            .read(h, loc)
            .expect("every page reads back at its offset");
    }
}
