//! SUBSCRIBE against the real server: the subscriber pulls, then sees two
//! new versions and pulls each; Ctrl-C ends it cleanly.

use std::process::Stdio;
use std::time::Duration;

use crate::support::remote::*;
use crate::support::*;

#[test]
fn subscriber_follows_two_new_versions_and_stops_on_ctrl_c() {
    let r = Fixture::start();
    let a = r.make("a.db", 800);
    r.first_push("a.db", "team/a.db");
    let key = dash_pull_key(&a);
    let mut child = r
        .cmd(&[
            "team/a.db",
            "sub.db",
            "--subscribe",
            "--json",
            "--pullKey",
            &key,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = JsonLines::of(&mut child);
    let next = |what: &str| lines.next(what);
    let j = next("version 1");
    assert_eq!(j["version"], "1", "{j}");
    assert_eq!(j["verified"], true);
    for v in ["2", "3"] {
        change_rows(&a, 0.02);
        assert_ok(&run(&mut r.cmd(&["a.db"])));
        let j = next(v);
        assert_eq!(j["version"], v, "{j}");
        assert_eq!(j["verified"], true);
        assert_eq!(
            content_digest(&r.path("sub.db")),
            content_digest(&a),
            "after version {v}"
        );
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "subscriber ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_integrity(&r.path("sub.db"));
}
