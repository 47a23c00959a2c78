//! An older version rebuilt for a pull is checked before anyone reads it:
//! with a page of the latest file or of the page store damaged, the pull
//! of the older version is refused by the server (the client never gets a
//! page of it), and once the damage is undone it is served again.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::remote::*;
use crate::support::*;

/// Flips one bit of the byte at `at` of `path` (twice undoes it).
fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

/// The 4096-byte pages of a file.
fn pages(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .chunks(4096)
        .map(<[u8]>::to_vec)
        .collect()
}

/// The latest version's file of the fixture's one replica.
fn latest_file(data: &Path) -> PathBuf {
    files_under(&data.join("replicas"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .max()
        .expect("a latest file")
}

#[test]
fn a_damaged_latest_file_or_stored_page_refuses_an_older_version() {
    let r = Fixture::start();
    r.make("a.db", 2000);
    r.first_push("a.db", "team/a.db");
    // Version 2 changes a few rows: version 1 is mostly the latest file's
    // pages, the others from the page store, which holds only those.
    change_rows(&r.path("a.db"), 0.002);
    assert_ok(&run(&mut r.cmd(&["a.db"])));
    let key = dash_pull_key(&r.path("a.db"));
    let pull_v1 = |out: &str| run(&mut r.cmd(&["team/a.db@1", out, "--pullKey", &key]));
    assert_ok(&pull_v1("v1.db"));
    let v1 = pages(&r.path("v1.db"));
    let latest = latest_file(&r.data);
    // The index (from 0) of a page past page 1 that both have.
    let shared = pages(&latest)
        .iter()
        .zip(&v1)
        .enumerate()
        .skip(1)
        .find(|(_, (a, b))| a == b)
        .map(|(i, _)| i as u64)
        .expect("a page version 1 shares with the latest");
    let log_lines = |needle: &str| r.server().log().matches(needle).count();

    // A page of the latest file that version 1 takes from it.
    let at = shared * 4096 + 2000;
    flip(&latest, at);
    let before = log_lines("rebuilt with the wrong hash");
    assert_one_line_error(&pull_v1("bad1.db"), "could not read version 1");
    assert!(!r.path("bad1.db").exists());
    assert!(
        log_lines("rebuilt with the wrong hash") > before,
        "{}",
        r.server().log()
    );
    flip(&latest, at);
    assert_ok(&pull_v1("good1.db"));

    // A stored page (every one is a page of version 1).
    let packs = files_under(&r.data.join("packs"));
    let pack = packs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a pack with pages");
    let middle = std::fs::metadata(pack).unwrap().len() / 2;
    flip(pack, middle);
    assert_one_line_error(&pull_v1("bad2.db"), "could not read version 1");
    assert!(!r.path("bad2.db").exists());
    let log = r.server().log();
    assert!(
        log.contains("fails its checksum") || log.contains("decompressing a page"),
        "{log}"
    );
    flip(pack, middle);
    assert_ok(&pull_v1("good2.db"));
    assert_eq!(pages(&r.path("good2.db")).len(), v1.len());
}
