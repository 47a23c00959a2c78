//! Bad input to LOCAL mode, and `--dry`: one clear error line, a non-zero
//! exit, and every file left as it was (no byte changed, nothing created,
//! not even the helper in the cache: refusals come before it is needed).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Every file under `root` with its SHA-256 (directories as "dir", links as
/// their target), to prove a refusal changed nothing.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let value = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if meta.permissions().mode() & 0o444 == 0 {
                // Unreadable on purpose; the length still tells a change.
                format!("unreadable {}", meta.len())
            } else {
                file_sha256(&path)
            };
            out.insert(path, value);
        }
    }
    out
}

use std::os::unix::fs::PermissionsExt;

/// Runs `cmd`, expects one error line containing `needle`, and checks that
/// nothing under the env's directory changed.
#[track_caller]
fn refused(env: &TestEnv, cmd: &mut Command, needle: &str) {
    let before = snapshot(env.dir.path());
    let o = run(cmd);
    assert_one_line_error(&o, needle);
    assert!(
        stderr(&o).starts_with("sqlrsync: error: "),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty(), "stdout: {}", stdout(&o));
    assert_eq!(snapshot(env.dir.path()), before, "a refusal changed files");
}

fn good_db(env: &TestEnv, name: &str) -> PathBuf {
    let p = env.path(name);
    make_db(
        &p,
        DbSpec {
            rows: 300,
            ..DbSpec::default()
        },
    );
    p
}

#[test]
fn origin_missing() {
    let env = TestEnv::new();
    refused(
        &env,
        env.sqlrsync().args(["missing.db", "replica.db"]),
        "does not exist",
    );
}

#[test]
fn origin_is_a_directory() {
    let env = TestEnv::new();
    std::fs::create_dir(env.path("dir.db")).unwrap();
    refused(
        &env,
        env.sqlrsync().args(["dir.db", "replica.db"]),
        "not a regular file",
    );
}

#[test]
fn origin_empty() {
    let env = TestEnv::new();
    std::fs::write(env.path("empty.db"), b"").unwrap();
    refused(
        &env,
        env.sqlrsync().args(["empty.db", "replica.db"]),
        "empty",
    );
}

#[test]
fn origin_not_a_database() {
    let env = TestEnv::new();
    std::fs::write(env.path("notes.db"), "just some text\n".repeat(500)).unwrap();
    refused(
        &env,
        env.sqlrsync().args(["notes.db", "replica.db"]),
        "not an SQLite database",
    );
}

#[test]
fn origin_with_a_damaged_header() {
    let env = TestEnv::new();
    let origin = good_db(&env, "origin.db");
    let mut bytes = std::fs::read(&origin).unwrap();
    bytes[16] = 0x03; // page size 768: not a power of two
    bytes[17] = 0x00;
    std::fs::write(&origin, bytes).unwrap();
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "replica.db"]),
        "corrupt",
    );
}

#[test]
fn origin_truncated() {
    let env = TestEnv::new();
    let origin = good_db(&env, "origin.db");
    let len = std::fs::metadata(&origin).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&origin)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "replica.db"]),
        "truncated",
    );
}

#[test]
fn origin_with_a_damaged_schema_page() {
    let env = TestEnv::new();
    let origin = good_db(&env, "origin.db");
    let mut bytes = std::fs::read(&origin).unwrap();
    // Page 1's b-tree header right after the database header.
    bytes[100..140].fill(0xff);
    std::fs::write(&origin, bytes).unwrap();
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "replica.db"]),
        "ORIGIN",
    );
}

#[test]
fn origin_unreadable() {
    let env = TestEnv::new();
    let origin = good_db(&env, "origin.db");
    std::fs::set_permissions(&origin, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = env.sqlrsync();
    cmd.args(["origin.db", "replica.db"]);
    if unsafe { libc::geteuid() } == 0 {
        // Permission bits do not stop root; without the two capabilities that
        // override them, root is an ordinary owner of a mode 000 file.
        if !can_drop_dac_caps() {
            eprintln!(
                "SKIPPED origin_unreadable: running as root and cannot drop CAP_DAC_OVERRIDE"
            );
            return;
        }
        unsafe {
            cmd.pre_exec(|| {
                for cap in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    refused(&env, &mut cmd, "cannot read ORIGIN");
}

const CAP_DAC_OVERRIDE: libc::c_ulong = 1;
const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;

/// True when a child can drop the DAC capabilities from its bounding set
/// (needs CAP_SETPCAP) and no inheritable set would give them back.
fn can_drop_dac_caps() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let (Some(inh), Some(eff), Some(amb)) = (field("CapInh:"), field("CapEff:"), field("CapAmb:"))
    else {
        return false;
    };
    const CAP_SETPCAP: u64 = 8;
    let dac = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH);
    eff & (1 << CAP_SETPCAP) != 0 && (inh | amb) & dac == 0
}

#[test]
fn replica_exists_and_is_not_a_database() {
    let env = TestEnv::new();
    good_db(&env, "origin.db");
    std::fs::write(env.path("precious.txt"), "do not overwrite me\n").unwrap();
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "precious.txt"]),
        "not an SQLite database",
    );
}

#[test]
fn origin_and_replica_the_same_file() {
    let env = TestEnv::new();
    let origin = good_db(&env, "origin.db");
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "./origin.db"]),
        "same file",
    );
    std::os::unix::fs::symlink("origin.db", env.path("link.db")).unwrap();
    refused(
        &env,
        env.sqlrsync().args(["origin.db", "link.db"]),
        "same file",
    );
    refused(
        &env,
        env.sqlrsync().args(["link.db", "origin.db"]),
        "same file",
    );
    std::fs::hard_link(&origin, env.path("hard.db")).unwrap();
    refused(
        &env,
        env.sqlrsync().arg(&origin).arg(env.path("hard.db")),
        "same file",
    );
}

#[test]
fn replica_directory_missing() {
    let env = TestEnv::new();
    good_db(&env, "origin.db");
    refused(
        &env,
        env.sqlrsync()
            .args(["origin.db", "./no/such/dir/replica.db"]),
        "does not exist",
    );
    refused(
        &env,
        env.sqlrsync()
            .arg("origin.db")
            .arg(env.path("missing-dir/replica.db")),
        "does not exist",
    );
}

#[test]
fn replica_on_a_read_only_location() {
    let env = TestEnv::new();
    good_db(&env, "origin.db");
    // procfs takes no new files, not even from root.
    let target = format!("/proc/sqlrsync-test-{}.db", std::process::id());
    refused(
        &env,
        env.sqlrsync().arg("origin.db").arg(&target),
        "read-only",
    );
    assert!(!Path::new(&target).exists());
}

#[test]
fn dry_run_reports_and_touches_nothing() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(
        &origin,
        DbSpec {
            rows: 500,
            page_size: 8192,
            wal: true,
            ..DbSpec::default()
        },
    );
    // A WAL database at rest has no -wal/-shm; a dry run must not add them.
    assert!(!env.path("origin.db-wal").exists());
    let pages = std::fs::metadata(&origin).unwrap().len() / 8192;

    let before = snapshot(env.dir.path());
    let o = run(env.sqlrsync().args(["origin.db", "replica.db", "--dry"]));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("LOCAL"), "{out}");
    assert!(out.contains(&origin.display().to_string()), "{out}");
    assert!(
        out.contains(&env.path("replica.db").display().to_string()),
        "{out}"
    );
    assert!(out.contains("8192"), "{out}");
    assert!(out.contains(&format!("{pages} pages")), "{out}");
    assert!(out.contains("will be created"), "{out}");
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert_eq!(snapshot(env.dir.path()), before, "--dry changed files");

    // An existing replica: said so, still untouched; and as JSON.
    make_db(
        &env.path("replica.db"),
        DbSpec {
            rows: 10,
            page_size: 8192,
            ..DbSpec::default()
        },
    );
    let before = snapshot(env.dir.path());
    let o = run(env.sqlrsync().args(["origin.db", "replica.db", "--dry"]));
    assert_ok(&o);
    assert!(stdout(&o).contains("exists"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("will be created"));
    let o = run(env
        .sqlrsync()
        .args(["origin.db", "replica.db", "--dry", "--json"]));
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["mode"], "LOCAL");
    assert_eq!(v["pageSize"], 8192);
    assert_eq!(v["pageCount"], pages);
    assert_eq!(v["replicaCreated"], false);
    assert_eq!(v["origin"], origin.display().to_string());
    assert_eq!(snapshot(env.dir.path()), before, "--dry changed files");

    // Bad input is refused by --dry just the same.
    refused(
        &env,
        env.sqlrsync().args(["missing.db", "replica.db", "--dry"]),
        "does not exist",
    );
}
