//! The "nothing to push" check (src/client/unchanged.rs): a push of a
//! database unchanged since its last push ends after one CONFIG exchange,
//! and only when the server's latest version really holds the same content.

use crate::support::remote::*;
use crate::support::*;

#[test]
fn an_unchanged_database_is_not_pushed_again_but_a_changed_replica_is() {
    let r = Fixture::start();
    let a = r.make("a.db", 2000);
    let j = r.first_push("a.db", "team/a.db");
    assert_eq!(j["version"], "1");
    assert_eq!(j["unchanged"], false, "{j}");

    // Nothing changed: no stream at all, the latest version named.
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["unchanged"], true, "{j}");
    assert_eq!(j["version"], "1", "{j}");
    assert_eq!(j["pagesSent"], 0, "{j}");
    assert_eq!(j["streamBytes"], 0, "{j}");
    // The human summary says so too.
    let o = run(r.env.sqlrsync().arg(&a));
    assert_ok(&o);
    assert!(stderr(&o).contains("version 1 unchanged"), "{}", stderr(&o));

    // Another machine pushes different content to the same replica (with
    // --force: it never pulled it). Our record still matches our file, but
    // the server's latest no longer matches our content: our push is a
    // conflict now, and with --force it must run and win.
    let other = TestEnv::new();
    let b = other.path("b.db");
    make_db(
        &b,
        DbSpec {
            rows: 500,
            ..DbSpec::default()
        },
    );
    let o = run(other
        .sqlrsync()
        .arg(&b)
        .arg("team/a.db")
        .arg("--json")
        .arg("--force")
        .arg("--server")
        .arg(r.server().ws_url())
        .env("SQLRSYNC_ADMIN_KEY", &r.admin));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2");

    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_one_line_error(&o, "is at version 2 on the server");
    let o = run(r.env.sqlrsync().arg(&a).arg("--json").arg("--force"));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["unchanged"], false, "{j}");
    assert_eq!(j["version"], "3", "{j}");
    assert!(j["pagesSent"].as_u64().unwrap() > 0, "{j}");
    let key = dash_pull_key(&a);
    let o = run(&mut r.cmd(&["team/a.db", "back.db", "--pullKey", &key]));
    assert_ok(&o);
    assert_eq!(content_digest(&r.path("back.db")), content_digest(&a));

    // A real change is pushed as usual, and the next push is a no-op again.
    change_rows(&a, 0.05);
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(
        (j["unchanged"].clone(), j["version"].clone()),
        (false.into(), "4".into())
    );
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    assert_eq!(json(&o)["unchanged"], true);
    assert_eq!(json(&o)["version"], "4");
}
