//! Key rules against the real server: each key is refused where it must be,
//! the documented order holds (SQLRSYNC_AUTH_TOKEN first), and with no key
//! and no terminal a push fails at once with one line instead of waiting.

use crate::support::remote::*;
use crate::support::*;

#[test]
fn each_key_is_refused_where_it_must_be() {
    let r = Fixture::start();
    r.make("a.db", 400);
    r.make("b.db", 400);
    r.first_push("a.db", "team/a.db");
    let pull_key = dash_pull_key(&r.path("a.db"));
    let secrets =
        std::fs::read_to_string(r.env.home().join(".config/sqlrsync/local-secrets.toml")).unwrap();
    let at = secrets.find("pushKey = \"").unwrap() + "pushKey = \"".len();
    let push_key: String = secrets[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();

    // No key and no terminal: one line, at once, nothing sent.
    let o = run(&mut r.cmd(&["b.db", "team/b.db"]));
    assert_one_line_error(&o, "needs a key");

    // A wrong admin key: the server's refusal, status and body.
    let o = run(&mut r.cmd(&[
        "b.db",
        "team/b.db",
        "--adminKey",
        "AAAAAAAAAAAAAAAAAAAAAAAA",
    ]));
    assert_one_line_error(&o, "HTTP 401 Unauthorized:");

    // A Replica Pull key cannot push.
    let o = run(&mut r.cmd(&["a.db", "team/a.db", "--pushKey", &pull_key]));
    assert!(!o.status.success());
    assert_one_line_error(&o, "HTTP 40");

    // A Replica Push key of replica a cannot create or push replica b.
    let o = run(&mut r.cmd(&["b.db", "team/b.db", "--pushKey", &push_key]));
    assert_one_line_error(&o, "HTTP 40");

    // An admin key of another namespace cannot push into team/.
    let other = r.server().create_namespace(&r.env, "other");
    let o = run(&mut r.cmd(&["b.db", "team/b.db", "--adminKey", &other]));
    assert_one_line_error(&o, "HTTP 40");

    // A private replica cannot be pulled without a key, nor with a wrong one.
    let o = run(&mut r.cmd(&["team/a.db", "x.db"]));
    assert_one_line_error(&o, "HTTP 40");
    assert!(!r.path("x.db").exists(), "a refused pull left a file");
    let o = run(&mut r.cmd(&["team/a.db", "x.db", "--pullKey", "CCCCCCCCCCCCCCCCCCCCCCCC"]));
    assert_one_line_error(&o, "HTTP 40");
    assert!(!r.path("x.db").exists(), "a refused pull left a file");

    // Flags for the other direction are refused before connecting.
    let o = run(&mut r.cmd(&["team/a.db", "x.db", "--pushKey", &push_key]));
    assert_one_line_error(&o, "--pushKey is for pushes");
    let o = run(&mut r.cmd(&["a.db", "team/a.db", "--pullKey", &pull_key]));
    assert_one_line_error(&o, "--pullKey is for pulls");
    let o = run(&mut r.cmd(&["a.db", "--public"]));
    assert_one_line_error(&o, "only applies to the first push");
    let long = "m".repeat(4097);
    let o = run(&mut r.cmd(&["a.db", "-m", &long]));
    assert_one_line_error(&o, "at most 4096");
    let o = run(&mut r.cmd(&["team/a.db@latest+1", "x.db"]));
    assert_one_line_error(&o, "invalid version");

    // SQLRSYNC_AUTH_TOKEN wins over the stored push key.
    let o = run(r
        .cmd(&["a.db"])
        .env("SQLRSYNC_AUTH_TOKEN", "BBBBBBBBBBBBBBBBBBBBBBBB"));
    assert_one_line_error(&o, "HTTP 401");
    // ...and a right one works where nothing else would.
    let o = run(r
        .cmd(&["team/a.db", "y.db"])
        .env("SQLRSYNC_AUTH_TOKEN", &pull_key));
    assert_ok(&o);

    // The stored key and the -sqlrsync key work with nothing on the command
    // line (a pull into the origin itself needs --force: client::guard).
    assert_ok(&run(&mut r.cmd(&["a.db"])));
    let o = run(&mut r.cmd(&["team/a.db", "a.db"]));
    assert_one_line_error(&o, "is the origin of team/a.db");
    assert_ok(&run(&mut r.cmd(&["team/a.db", "a.db", "--force"])));

    // --unlisted on the first push: anyone with the path may pull, no key.
    let o = run(&mut r.admin_cmd(&["b.db", "team/b.db", "--unlisted"]));
    assert_ok(&o);
    let o = run(&mut r.cmd(&["team/b.db", "anon.db", "--json"]));
    assert_ok(&o);
    assert_eq!(
        content_digest(&r.path("anon.db")),
        content_digest(&r.path("b.db"))
    );
    // ...and a second push of it cannot change the visibility.
    let o = run(&mut r.cmd(&["b.db", "--public"]));
    assert_one_line_error(&o, "only applies to the first push");

    // No admin key anywhere under HOME after all this.
    assert!(files_containing(&r.env.home(), &r.admin).is_empty());
    assert!(files_containing(&r.env.home(), &other).is_empty());
}
