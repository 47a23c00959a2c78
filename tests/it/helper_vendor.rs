//! scripts/vendor-sqlite's local fallbacks, run for real on a copy of the
//! script in a temp "checkout": SQLRSYNC_SQLITE_SRC naming a source tree or
//! an archive, the pinned hash check, the loud warning for another release,
//! strict mode refusing it, and the advice when nothing is reachable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

const PINNED_VERSION: &str = "3.53.4";

/// The pinned tool/sqlite3_rsync.c that the build itself used.
fn pinned_tool() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/sqlite3_rsync.c"))
        .expect("vendor/sqlite3_rsync.c exists after a build")
}

/// A checkout holding only scripts/vendor-sqlite; returns its root.
fn checkout(env: &TestEnv) -> PathBuf {
    let root = env.path("checkout");
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vendor-sqlite"),
        root.join("scripts/vendor-sqlite"),
    )
    .unwrap();
    root
}

/// `sqlite-src/` with tool/sqlite3_rsync.c and VERSION, under `parent`.
fn source_tree(parent: &Path, tool: &[u8], version: &str) -> PathBuf {
    let tree = parent.join("sqlite-src");
    std::fs::create_dir_all(tree.join("tool")).unwrap();
    std::fs::write(tree.join("tool/sqlite3_rsync.c"), tool).unwrap();
    std::fs::write(tree.join("VERSION"), format!("{version}\n")).unwrap();
    tree
}

fn vendor(env: &TestEnv, root: &Path, src: &Path, strict: bool) -> Output {
    let mut cmd = env.command("bash");
    cmd.arg(root.join("scripts/vendor-sqlite"))
        .arg("--force")
        .env("SQLRSYNC_SQLITE_SRC", src)
        .env_remove("SQLRSYNC_STRICT_VENDOR");
    if strict {
        cmd.env("SQLRSYNC_STRICT_VENDOR", "1");
    }
    run(&mut cmd)
}

fn source_file(root: &Path) -> String {
    std::fs::read_to_string(root.join("vendor/SOURCE")).unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn a_local_source_tree_with_an_amalgamation() {
    let env = TestEnv::new();
    let root = checkout(&env);
    let tree = source_tree(&env.path("src"), &pinned_tool(), PINNED_VERSION);
    std::fs::write(tree.join("sqlite3.c"), "/* amalgamation */\n").unwrap();
    std::fs::write(tree.join("sqlite3.h"), "/* header */\n").unwrap();
    let o = vendor(&env, &root, &tree, true);
    assert_ok(&o);
    assert!(std::fs::read(root.join("vendor/sqlite3_rsync.c")).unwrap() == pinned_tool());
    assert!(root.join("vendor/sqlite3.c").exists());
    let source = source_file(&root);
    assert!(
        source.contains(&format!("version={PINNED_VERSION}")),
        "{source}"
    );
    assert!(source.contains("pinned=yes"), "{source}");
    assert!(source.contains("origin=local tree"), "{source}");
    // Without --force a filled vendor/ is left alone.
    let o = run(env.command("bash").arg(root.join("scripts/vendor-sqlite")));
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
}

#[test]
fn an_archive_laid_out_as_sqlite_src() {
    let env = TestEnv::new();
    let root = checkout(&env);
    source_tree(&env.path("pack"), &pinned_tool(), PINNED_VERSION);
    let archive = env.path("sqlite-src-3530400.tar.gz");
    let o = run(env
        .command("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(env.path("pack"))
        .arg("sqlite-src"));
    assert_ok(&o);
    let o = vendor(&env, &root, &archive, true);
    assert_ok(&o);
    assert!(std::fs::read(root.join("vendor/sqlite3_rsync.c")).unwrap() == pinned_tool());
    let source = source_file(&root);
    assert!(source.contains("pinned=yes"), "{source}");
    assert!(
        source.contains("archive sqlite-src-3530400.tar.gz"),
        "{source}"
    );
    assert!(source.contains("amalgamation=none"), "{source}");
    // build.rs compares this line with SQLRSYNC_SQLITE_SRC to skip a fetch.
    assert!(
        source.contains(&format!("\nsrc={}\n", archive.display())),
        "{source}"
    );
    // Leaves no staging directory behind.
    let mut entries: Vec<String> = std::fs::read_dir(root.join("vendor"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["SOURCE", "sqlite3_rsync.c"]);
}

#[test]
fn another_release_is_taken_loudly_or_refused_in_strict_mode() {
    let env = TestEnv::new();
    let mut newer = pinned_tool();
    newer.extend_from_slice(b"\n/* a later release */\n");
    let hash = sha256_hex(&newer);
    let tree = source_tree(&env.path("src"), &newer, "3.99.0");

    let strict_root = checkout(&env);
    let o = vendor(&env, &strict_root, &tree, true);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("SQLRSYNC_STRICT_VENDOR=1 refuses"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("3.99.0") && stderr(&o).contains(&hash));
    assert!(!strict_root.join("vendor/sqlite3_rsync.c").exists());

    std::fs::remove_dir_all(&strict_root).unwrap();
    let root = checkout(&env);
    let o = vendor(&env, &root, &tree, false);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(err.contains("WARNING"), "{err}");
    assert!(err.contains("3.99.0") && err.contains(&hash), "{err}");
    assert!(std::fs::read(root.join("vendor/sqlite3_rsync.c")).unwrap() == newer);
    assert!(source_file(&root).contains("pinned=no"));
}

#[test]
fn the_pinned_release_with_another_hash_is_always_refused() {
    let env = TestEnv::new();
    let root = checkout(&env);
    let mut tampered = pinned_tool();
    tampered.extend_from_slice(b"/* tampered */\n");
    let tree = source_tree(&env.path("src"), &tampered, PINNED_VERSION);
    let o = vendor(&env, &root, &tree, false);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refusing"), "{}", stderr(&o));
    assert!(!root.join("vendor/sqlite3_rsync.c").exists());
}

#[test]
fn an_archive_without_the_tool_is_an_error() {
    let env = TestEnv::new();
    let root = checkout(&env);
    std::fs::create_dir_all(env.path("pack/sqlite-src")).unwrap();
    std::fs::write(env.path("pack/sqlite-src/VERSION"), "3.46.0\n").unwrap();
    let archive = env.path("old.tar.gz");
    assert_ok(&run(env
        .command("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(env.path("pack"))
        .arg("sqlite-src")));
    let o = vendor(&env, &root, &archive, false);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no tool/sqlite3_rsync.c"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn nothing_reachable_says_what_to_do() {
    let env = TestEnv::new();
    let root = checkout(&env);
    // A PATH with the few tools the script needs before it looks for a
    // registry, and no apt-get.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["dirname", "mktemp", "rm", "cat", "sed"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let o = run(Command::new(bash)
        .arg(root.join("scripts/vendor-sqlite"))
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", env.home()));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("cannot obtain"), "{err}");
    assert!(err.contains("SQLRSYNC_SQLITE_SRC="), "{err}");
}
