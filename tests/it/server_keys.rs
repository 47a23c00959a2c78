//! Every key rule and visibility rule of PROTOCOL.md section 4, against the
//! real server: who may create, push and pull, and that refusals look alike.

use crate::support::driver::*;
use crate::support::*;

fn cli_key(env: &TestEnv, data: &std::path::Path, args: &[&str]) -> String {
    let o = run(env.command(SERVER).args(args).arg("--data-dir").arg(data));
    assert_ok(&o);
    stdout(&o).lines().last().unwrap().trim().to_string()
}

#[test]
fn key_rules() {
    let f = Fixture::with("acme", &[]);
    let (env, data, server) = (&f.env, &f.data, f.server());
    let acme = f.admin.clone();
    let other = server.create_namespace(env, "other");
    let db = env.path("a.db");
    make_db(
        &db,
        DbSpec {
            rows: 500,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
    let versions = |path: &str| -> usize {
        let (status, _, body) = http_get(&server.addr, &format!("/{path}"));
        if status != 200 {
            return 0;
        }
        String::from_utf8_lossy(&body)
            .matches("<tr><td class=\"num\">")
            .count()
    };

    // No key, an unknown key, a malformed key: 401, nothing created.
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &Opts::default()));
    assert_eq!(o.http_status, Some(401), "{o:#?}");
    let o = rt.block_on(push(
        &ws,
        "acme/a.db",
        &db,
        &with_key("AAAAAAAAAAAAAAAAAAAAAAAA"),
    ));
    assert_eq!(o.http_status, Some(401));
    assert!(
        o.http_body.contains("unknown or revoked key"),
        "{}",
        o.http_body
    );
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &with_key("not a key")));
    assert_eq!(o.http_status, Some(401));

    // Another namespace's admin key may not create here.
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &with_key(&other)));
    assert_eq!(o.http_status, Some(403), "{o:#?}");
    // A namespace that does not exist cannot be pushed to.
    let o = rt.block_on(push(&ws, "nobody/a.db", &db, &with_key(&acme)));
    assert_ne!(o.http_status, None);

    // The admin creates (private by default) and gets keys.
    let o = rt.block_on(push(
        &ws,
        "acme/a.db",
        &db,
        &Opts {
            key_request: true,
            ..with_key(&acme)
        },
    ));
    o.assert_ok();
    let push_key = o.config().new_push_key.unwrap();
    let pull_key = o.config().new_pull_key.unwrap();
    change_rows(&db, 0.1);

    // Pull key cannot push; another namespace's admin cannot push.
    for k in [&pull_key, &other] {
        let o = rt.block_on(push(&ws, "acme/a.db", &db, &with_key(k)));
        assert_eq!(o.http_status, Some(403), "{o:#?}");
    }
    // The replica's push key may push it but not create a sibling.
    rt.block_on(push(&ws, "acme/a.db", &db, &with_key(&push_key)))
        .assert_ok();
    let o = rt.block_on(push(&ws, "acme/b.db", &db, &with_key(&push_key)));
    assert_eq!(o.http_status, Some(403));

    // Private: anonymous, other namespace's admin, wrong replica key: the
    // same 404 as a path that does not exist.
    let missing = rt.block_on(pull(
        &ws,
        "acme/none.db",
        &env.path("p0.db"),
        &with_key(&acme),
    ));
    assert_eq!(missing.http_status, Some(404));
    for opts in [Opts::default(), with_key(&other)] {
        let o = rt.block_on(pull(&ws, "acme/a.db", &env.path("p1.db"), &opts));
        assert_eq!(o.http_status, Some(404), "{o:#?}");
        assert_eq!(o.http_body, missing.http_body);
    }
    assert!(!env.path("p1.db").exists());
    // Admin, account pull, replica pull, replica push keys may pull.
    let account_pull = cli_key(
        env,
        data,
        &["keys", "create", "acme", "--kind", "account-pull"],
    );
    for (i, k) in [&acme, &account_pull, &pull_key, &push_key]
        .into_iter()
        .enumerate()
    {
        let out = env.path(&format!("ok{i}.db"));
        rt.block_on(pull(&ws, "acme/a.db", &out, &with_key(k)))
            .assert_ok();
        assert_eq!(content_digest(&out), content_digest(&db));
    }

    // A replica pull key of another replica does not open this one.
    let o = rt.block_on(push(
        &ws,
        "acme/c.db",
        &db,
        &Opts {
            key_request: true,
            ..with_key(&acme)
        },
    ));
    o.assert_ok();
    let c_pull = o.config().new_pull_key.unwrap();
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("p2.db"),
        &with_key(&c_pull),
    ));
    assert_eq!(o.http_status, Some(404));

    // Revoked keys stop working at once, on a running server.
    let o = run(env
        .command(SERVER)
        .args(["keys", "revoke", "acme", &push_key, "--data-dir"])
        .arg(data));
    assert_ok(&o);
    change_rows(&db, 0.1);
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &with_key(&push_key)));
    assert_eq!(o.http_status, Some(401));
    let listed = run(env
        .command(SERVER)
        .args(["keys", "list", "acme", "--data-dir"])
        .arg(data));
    assert_ok(&listed);
    assert!(stdout(&listed).contains("revoked"));
    assert!(
        !stdout(&listed).contains(&push_key),
        "keys are never shown again"
    );
    // Keys are stored only as hashes.
    let meta = std::fs::read(data.join("meta.db")).unwrap();
    for k in [&acme, &pull_key, &push_key] {
        assert!(!meta.windows(k.len()).any(|w| w == k.as_bytes()));
    }

    // Versions: a.db has 2, nothing else got in.
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("p3.db"),
        &Opts {
            version: Some("3".into()),
            ..with_key(&acme)
        },
    ));
    assert_eq!(o.http_status, Some(404));
    assert_eq!(versions("acme/a.db"), 0, "private replica page must be 404");
}

#[test]
fn visibility_and_assigned_paths() {
    let f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let acme = f.admin.clone();
    let db = env.path("shop.db");
    make_db(
        &db,
        DbSpec {
            rows: 300,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();

    for (path, vis) in [
        ("acme/pub.db", Some("2")),
        ("acme/unl.db", Some("1")),
        ("acme/priv.db", None),
    ] {
        rt.block_on(push(
            &ws,
            path,
            &db,
            &Opts {
                visibility: vis,
                ..with_key(&acme)
            },
        ))
        .assert_ok();
    }
    // Anonymous pulls: public and unlisted yes, private no.
    for (path, ok) in [
        ("acme/pub.db", true),
        ("acme/unl.db", true),
        ("acme/priv.db", false),
    ] {
        let out = env.path(&format!("anon-{}", path.replace('/', "_")));
        let o = rt.block_on(pull(&ws, path, &out, &Opts::default()));
        assert_eq!(o.ok(), ok, "{path}: {o:#?}");
        if ok {
            assert_eq!(content_digest(&out), content_digest(&db));
            // Anonymous pullers get no keys even when they ask.
            assert!(o.config().new_pull_key.is_none());
        }
    }
    // Visibility is set by the first push only.
    change_rows(&db, 0.2);
    rt.block_on(push(
        &ws,
        "acme/priv.db",
        &db,
        &Opts {
            visibility: Some("2"),
            ..with_key(&acme)
        },
    ))
    .assert_ok();
    let o = rt.block_on(pull(
        &ws,
        "acme/priv.db",
        &env.path("x.db"),
        &Opts::default(),
    ));
    assert_eq!(o.http_status, Some(404));

    // Web: the namespace lists public replicas only.
    let (status, _, body) = http_get(&server.addr, "/acme");
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("acme/pub.db"));
    assert!(
        !body.contains("unl.db") && !body.contains("priv.db"),
        "{body}"
    );
    assert_eq!(http_get(&server.addr, "/acme/unl.db").0, 200);
    assert_eq!(http_get(&server.addr, "/acme/priv.db").0, 404);
    assert_eq!(http_get(&server.addr, "/acme/none.db").0, 404);
    assert_eq!(http_get(&server.addr, "/nobody").0, 404);

    // An empty push path: the server names it namespace/host/<absolute
    // path>, so two databases of one name never share a replica.
    let o = rt.block_on(push(
        &ws,
        "",
        &db,
        &Opts {
            hostname: Some("box.example".into()),
            abs_path: Some("/srv/data/shop.db".into()),
            key_request: true,
            ..with_key(&acme)
        },
    ));
    o.assert_ok();
    assert_eq!(
        o.config().replica_path.as_deref(),
        Some("acme/box.example/srv/data/shop.db")
    );
    let other = rt.block_on(push(
        &ws,
        "",
        &db,
        &Opts {
            hostname: Some("box.example".into()),
            abs_path: Some("/srv/other/shop.db".into()),
            ..with_key(&acme)
        },
    ));
    other.assert_ok();
    assert_eq!(
        other.version(),
        1,
        "a new replica, not version 2 of the first"
    );
    assert_eq!(
        other.config().replica_path.as_deref(),
        Some("acme/box.example/srv/other/shop.db")
    );
    // ... and only an admin key may do that.
    let push_key = o.config().new_push_key.unwrap();
    let o = rt.block_on(push(&ws, "", &db, &with_key(&push_key)));
    assert_eq!(o.http_status, Some(403));
}
