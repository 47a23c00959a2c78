//! Verified pulls: a pulled copy that does not hash to the server's
//! versionHash is a loud failure; a damaged local replica is repaired by
//! the sync and verifies again. (Pages kept from the old replica are read
//! back and checked too: see sqlite::version's unit tests.)

use std::os::unix::fs::FileExt;

use crate::support::remote::*;
use crate::support::*;

/// The server's materialised latest file of the only replica.
fn stored_latest(r: &Fixture) -> std::path::PathBuf {
    let files = files_under(&r.data.join("replicas"));
    let mut dbs: Vec<_> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    dbs.sort();
    dbs.pop().expect("a stored version file")
}

/// Flips a byte in the middle of page `pgno` (4 KiB pages): inside row
/// data, so SQLite still reads the file, but the content is no longer the
/// version's.
fn damage(path: &std::path::Path, pgno: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = (pgno - 1) * 4096 + 3000;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

#[test]
fn a_copy_that_does_not_match_the_version_fails_loudly() {
    let r = Fixture::start();
    let a = r.make("a.db", 1500);
    r.first_push("a.db", "team/v.db");
    let key = dash_pull_key(&a);

    // A good pull first: verified.
    let o = run(&mut r.cmd(&["team/v.db", "good.db", "--pullKey", &key, "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["verified"], true);

    // The server's copy rots: a fresh pull receives the bad page.
    damage(&stored_latest(&r), 20);
    let o = run(&mut r.cmd(&["team/v.db", "fresh.db", "--pullKey", &key]));
    assert!(!o.status.success());
    assert_one_line_error(&o, "VERIFICATION FAILED");

    // The local replica rots instead (the server's copy restored): the
    // sync sees the page differ, sends it, and the copy verifies again.
    damage(&stored_latest(&r), 20);
    let good = r.path("good.db");
    let before = content_digest(&good);
    damage(&good, 30);
    assert_ne!(content_digest(&good), before);
    // A changed copy is not pulled over without --force (client::guard):
    // the client cannot tell rot from a change someone meant to keep.
    let o = run(&mut r.cmd(&["team/v.db", "good.db", "--pullKey", &key]));
    assert_one_line_error(&o, "has changed since it matched version 1");
    let o = run(&mut r.cmd(&[
        "team/v.db",
        "good.db",
        "--pullKey",
        &key,
        "--json",
        "--force",
    ]));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(
        (j["verified"].clone(), j["pagesSent"].clone()),
        (true.into(), 1.into()),
        "{j}"
    );
    assert_eq!(content_digest(&good), before);
}
