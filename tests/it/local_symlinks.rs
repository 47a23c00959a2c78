//! Databases given as symbolic links, for LOCAL, PUSH and PULL.
//!
//! The behaviour (README "Symbolic links"): a link is followed to the file it
//! names, which a sync reads or writes; a dangling link names the file a
//! sync creates; SQLite keeps `-journal`/`-wal` next to the real file, and so
//! sqlrsync keeps its `-sqlrsync` file there and keys local-secrets.toml by
//! the real path, so that every link to one database finds the same files.
//! A loop, or a link into a directory that does not exist, is one error line
//! and nothing is created.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::support::remote::*;
use crate::support::*;

/// `real/` holds the databases, `links/` the links to them.
fn dirs(env: &TestEnv) -> (PathBuf, PathBuf) {
    let real = env.path("real");
    let links = env.path("links");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(&links).unwrap();
    (real, links)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn local_follows_links_and_keeps_the_wal_by_the_real_file() {
    let env = TestEnv::new();
    let (real, links) = dirs(&env);
    make_db(&real.join("a.db"), DbSpec::default());
    make_db(
        &real.join("b.db"),
        DbSpec {
            rows: 10,
            wal: true,
            ..DbSpec::default()
        },
    );
    symlink("../real/a.db", links.join("a.db")).unwrap();
    symlink(real.join("b.db"), links.join("b.db")).unwrap();
    // A reader holds the replica open by its real path, so the WAL the sync
    // writes stays on disk to be found.
    let reader = rusqlite::Connection::open(real.join("b.db")).unwrap();
    reader
        .query_row("SELECT count(*) FROM t", [], |_| Ok(()))
        .unwrap();
    let o = run(env.sqlrsync().args(["./links/a.db", "./links/b.db"]));
    assert_ok(&o);
    assert!(is_link(&links.join("a.db")) && is_link(&links.join("b.db")));
    assert_eq!(
        names_in(&links),
        vec!["a.db", "b.db"],
        "nothing may appear next to the links"
    );
    assert!(
        real.join("b.db-wal").exists(),
        "the WAL is by the real file"
    );
    let n: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2000, "a reader of the real file sees the sync");
    drop(reader);
    assert_eq!(
        content_digest(&real.join("b.db")),
        content_digest(&real.join("a.db"))
    );

    // The same file under two names is refused.
    let o = run(env.sqlrsync().args(["./real/a.db", "./links/a.db"]));
    assert_one_line_error(&o, "are the same file");
}

#[test]
fn local_dangling_links_and_loops() {
    let env = TestEnv::new();
    let (real, links) = dirs(&env);
    make_db(&real.join("a.db"), DbSpec::default());
    // A dangling link names the file the sync creates.
    symlink("../real/new.db", links.join("new.db")).unwrap();
    let o = run(env.sqlrsync().args(["./real/a.db", "./links/new.db"]));
    assert_ok(&o);
    assert!(is_link(&links.join("new.db")));
    assert_eq!(
        content_digest(&real.join("new.db")),
        content_digest(&real.join("a.db"))
    );

    // A link into a directory that does not exist: one line, nothing made.
    symlink("../nowhere/x.db", links.join("lost.db")).unwrap();
    let before = (names_in(&real), names_in(&links));
    let o = run(env.sqlrsync().args(["./real/a.db", "./links/lost.db"]));
    assert_one_line_error(&o, "is a symbolic link to");
    assert_one_line_error(&o, "does not exist");
    assert!(!env.path("nowhere").exists());

    // Loops and a dangling ORIGIN.
    symlink("loop2.db", links.join("loop1.db")).unwrap();
    symlink("loop1.db", links.join("loop2.db")).unwrap();
    let o = run(env.sqlrsync().args(["./real/a.db", "./links/loop1.db"]));
    assert_one_line_error(&o, "Too many levels of symbolic links");
    let o = run(env.sqlrsync().args(["./links/loop1.db", "./real/c.db"]));
    assert_one_line_error(&o, "Too many levels of symbolic links");
    let o = run(env.sqlrsync().args(["./links/lost.db", "./real/c.db"]));
    assert_one_line_error(&o, "ORIGIN");
    assert_one_line_error(&o, "does not exist");
    let mut links_after = before.1.clone();
    links_after.extend(["loop1.db".to_string(), "loop2.db".to_string()]);
    links_after.sort();
    assert_eq!((names_in(&real), names_in(&links)), (before.0, links_after));
}

#[test]
fn push_and_pull_through_links_keep_their_files_by_the_real_file() {
    let r = Fixture::start();
    let (real, links) = dirs(&r.env);
    make_db(&real.join("app.db"), DbSpec::default());
    symlink("../real/app.db", links.join("app.db")).unwrap();

    // First push through the link.
    let o = run(&mut r.admin_cmd(&["./links/app.db", "team/app.db"]));
    assert_ok(&o);
    assert!(
        real.join("app.db-sqlrsync").exists(),
        "-sqlrsync by the real file"
    );
    assert_eq!(names_in(&links), vec!["app.db"]);
    let secrets =
        std::fs::read_to_string(r.env.home().join(".config/sqlrsync/local-secrets.toml")).unwrap();
    let real_path = std::fs::canonicalize(real.join("app.db")).unwrap();
    assert!(
        secrets.contains(&format!("path = \"{}\"", real_path.display())),
        "secrets are keyed by the real path: {secrets}"
    );
    // A later push by the real name and by another link finds that entry
    // (no key given).
    change_rows(&real.join("app.db"), 0.05);
    assert_ok(&run(&mut r.cmd(&["./real/app.db"])));
    symlink(&real_path, r.env.path("other-link.db")).unwrap();
    change_rows(&real.join("app.db"), 0.05);
    let o = run(&mut r.cmd(&["./other-link.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "3");
    assert!(!r.env.path("other-link.db-sqlrsync").exists());

    // Pull through a link to an existing copy, and through a dangling link.
    let key = dash_pull_key(&real.join("app.db"));
    make_db(
        &real.join("copy.db"),
        DbSpec {
            rows: 5,
            ..DbSpec::default()
        },
    );
    symlink("../real/copy.db", links.join("copy.db")).unwrap();
    symlink("../real/fresh.db", links.join("fresh.db")).unwrap();
    for name in ["copy.db", "fresh.db"] {
        let link = format!("./links/{name}");
        // --force: copy.db was made here, never pulled (client::guard).
        let o = run(&mut r.cmd(&["team/app.db", &link, "--pullKey", &key, "--force"]));
        assert_ok(&o);
        assert!(is_link(&links.join(name)), "{name} is still a link");
        assert_eq!(
            content_digest(&real.join(name)),
            content_digest(&real.join("app.db"))
        );
        assert!(real.join(format!("{name}-sqlrsync")).exists());
    }
    assert_eq!(names_in(&links), vec!["app.db", "copy.db", "fresh.db"]);
    // The -sqlrsync file by the real file names it, so running it pulls
    // into the real file.
    let text = std::fs::read_to_string(real.join("copy.db-sqlrsync")).unwrap();
    assert!(text.contains(" copy.db "), "{text}");

    // A loop is one line and nothing is written.
    symlink("l2.db", links.join("l1.db")).unwrap();
    symlink("l1.db", links.join("l2.db")).unwrap();
    let o = run(&mut r.cmd(&["team/app.db", "./links/l1.db", "--pullKey", &key]));
    assert_one_line_error(&o, "Too many levels of symbolic links");
    let o = run(&mut r.admin_cmd(&["./links/l1.db", "team/l.db"]));
    assert_one_line_error(&o, "Too many levels of symbolic links");
    assert_eq!(
        names_in(&links),
        vec!["app.db", "copy.db", "fresh.db", "l1.db", "l2.db"]
    );
}
