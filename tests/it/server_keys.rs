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
    // A namespace that does not exist looks like one with nothing public.
    let (status, _, body) = http_get(&server.addr, "/nobody");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("No public replicas."));

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

/// `keys list` of `ns`, one row of columns per key (the header dropped).
fn listing(env: &TestEnv, data: &std::path::Path, ns: &str) -> Vec<Vec<String>> {
    let o = run(env
        .command(SERVER)
        .args(["keys", "list", ns, "--data-dir"])
        .arg(data));
    assert_ok(&o);
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "ID\tKIND\tREPLICA\tCREATED\tLAST USED\tMINTED BY\tLABEL\tSTATUS"
    );
    lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// The listed row of key `id`.
fn row(rows: &[Vec<String>], id: &str) -> Vec<String> {
    rows.iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("key {id} not listed: {rows:?}"))
        .clone()
}

/// Waits until `keys list` shows a last use for key `id`; returns it.
fn wait_used(env: &TestEnv, data: &std::path::Path, id: &str) -> String {
    let t = std::time::Instant::now();
    loop {
        let r = row(&listing(env, data, "acme"), id);
        if r[4] != "never" {
            return r[4].clone();
        }
        assert!(
            t.elapsed().as_secs() < 10,
            "key {id}'s use was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The one row added between two listings.
fn new_row(before: &[Vec<String>], after: &[Vec<String>]) -> Vec<String> {
    let added: Vec<_> = after
        .iter()
        .filter(|r| !before.iter().any(|b| b[0] == r[0]))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    added[0].clone()
}

#[test]
fn only_admin_pulls_mint_and_minted_keys_go_with_their_minter() {
    let f = Fixture::with("acme", &[]);
    let (env, data, server) = (&f.env, &f.data, f.server());
    let acme = f.admin.clone();
    let other = server.create_namespace(env, "other");
    let db = env.path("a.db");
    make_db(
        &db,
        DbSpec {
            rows: 300,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
    let keyed = |k: &str| Opts {
        key_request: true,
        ..with_key(k)
    };
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &keyed(&acme)));
    o.assert_ok();
    let (push_key, push_pull_key) = (
        o.config().new_push_key.unwrap(),
        o.config().new_pull_key.unwrap(),
    );
    rt.block_on(push(
        &ws,
        "acme/pub.db",
        &db,
        &Opts {
            visibility: Some("2"),
            ..with_key(&acme)
        },
    ))
    .assert_ok();
    let account_pull = cli_key(
        env,
        data,
        &[
            "keys",
            "create",
            "acme",
            "--kind",
            "account-pull",
            "--label",
            "ci box #3",
        ],
    );
    let start = listing(env, data, "acme");

    // Keys that are not the namespace's admin key pull, and get no key:
    // an account pull key, the replica's own pull and push keys, and
    // another namespace's admin key on a public replica.
    let mut n = 0;
    for (k, path) in [
        (&account_pull, "acme/a.db"),
        (&push_pull_key, "acme/a.db"),
        (&push_key, "acme/a.db"),
        (&other, "acme/pub.db"),
        (&account_pull, "acme/pub.db"),
    ] {
        n += 1;
        let out = env.path(&format!("plain{n}.db"));
        let o = rt.block_on(pull(&ws, path, &out, &keyed(k)));
        o.assert_ok();
        assert_eq!(
            o.config().new_pull_key,
            None,
            "{path}: a key was minted: {o:#?}"
        );
        assert_eq!(content_digest(&out), content_digest(&db));
    }
    let after_plain = listing(env, data, "acme");
    assert_eq!(
        after_plain.len(),
        start.len(),
        "keys were stored: {after_plain:?}"
    );
    assert!(
        listing(env, data, "other").len() == 1,
        "a key was stored for the other namespace"
    );

    // The admin key's pulls mint, and each replaces the one before.
    let mut minted = Vec::new();
    for i in 0..3 {
        let o = rt.block_on(pull(
            &ws,
            "acme/a.db",
            &env.path(&format!("adm{i}.db")),
            &keyed(&acme),
        ));
        o.assert_ok();
        minted.push(
            o.config()
                .new_pull_key
                .expect("the admin key's pull mints a key"),
        );
    }
    assert!(minted[0] != minted[1] && minted[1] != minted[2]);
    for (i, k) in minted.iter().enumerate() {
        let o = rt.block_on(pull(
            &ws,
            "acme/a.db",
            &env.path(&format!("m{i}.db")),
            &with_key(k),
        ));
        if i == 2 {
            o.assert_ok();
        } else {
            assert_eq!(
                o.http_status,
                Some(401),
                "replaced key {i} still works: {o:#?}"
            );
        }
    }
    let rows = listing(env, data, "acme");
    let admin_id = rows.iter().find(|r| r[1] == "admin").unwrap()[0].clone();
    let minted_on_pull: Vec<_> = rows
        .iter()
        .filter(|r| r[5] == format!("key {admin_id} on a pull"))
        .collect();
    assert_eq!(minted_on_pull.len(), 3, "{rows:?}");
    assert_eq!(
        minted_on_pull.iter().filter(|r| r[7] == "active").count(),
        1,
        "minted pull keys piled up: {rows:?}"
    );
    // Copies elsewhere (another local path) keep their own key; a new key
    // for the same copy replaces only that copy's.
    let at = |path: &str| Opts {
        abs_path: Some(path.into()),
        ..keyed(&acme)
    };
    let mut copies = Vec::new();
    for (i, path) in ["/srv/one.db", "/srv/two.db", "/srv/one.db"]
        .into_iter()
        .enumerate()
    {
        let o = rt.block_on(pull(
            &ws,
            "acme/a.db",
            &env.path(&format!("copy{i}.db")),
            &at(path),
        ));
        o.assert_ok();
        copies.push(o.config().new_pull_key.unwrap());
    }
    for (i, live) in [(0, false), (1, true), (2, true)] {
        let o = rt.block_on(pull(
            &ws,
            "acme/a.db",
            &env.path(&format!("c{i}.db")),
            &with_key(&copies[i]),
        ));
        assert_eq!(o.ok(), live, "copy key {i}: {o:#?}");
    }
    rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("still.db"),
        &with_key(&minted[2]),
    ))
    .assert_ok();
    // A copy whose key is in use keeps it when a new one is minted for it
    // (the client may never have got the new one: a pull cut at its very
    // end), until the new key is used.
    let before = listing(env, data, "acme");
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("t0.db"),
        &at("/srv/three.db"),
    ));
    o.assert_ok();
    let t0 = o.config().new_pull_key.unwrap();
    let t0_id = new_row(&before, &listing(env, data, "acme"))[0].clone();
    rt.block_on(pull(&ws, "acme/a.db", &env.path("t0b.db"), &with_key(&t0)))
        .assert_ok();
    wait_used(env, data, &t0_id);
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("t1.db"),
        &at("/srv/three.db"),
    ));
    o.assert_ok();
    let t1 = o.config().new_pull_key.unwrap();
    rt.block_on(pull(&ws, "acme/a.db", &env.path("t0c.db"), &with_key(&t0)))
        .assert_ok();
    rt.block_on(pull(&ws, "acme/a.db", &env.path("t1b.db"), &with_key(&t1)))
        .assert_ok();
    let t = std::time::Instant::now();
    while rt
        .block_on(pull(&ws, "acme/a.db", &env.path("t0d.db"), &with_key(&t0)))
        .ok()
    {
        assert!(t.elapsed().as_secs() < 10, "the superseded key still works");
        let _ = std::fs::remove_file(env.path("t0d.db"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rows = listing(env, data, "acme");
    // What minted what, the label, and the last use.
    let on_push: Vec<_> = rows
        .iter()
        .filter(|r| r[5] == format!("key {admin_id} on a push"))
        .map(|r| r[1].as_str())
        .collect();
    assert_eq!(on_push, ["replica-pull", "replica-push"], "{rows:?}");
    let labelled = rows.iter().find(|r| r[1] == "account-pull").unwrap();
    assert_eq!(
        (labelled[5].as_str(), labelled[6].as_str()),
        ("-", "ci box #3")
    );
    // Uses are recorded off the request's path: wait for the write.
    let used = wait_used(env, data, &labelled[0]);
    assert!(
        used > labelled[3],
        "last use {used} before creation {}",
        labelled[3]
    );
    // ...at most once a minute: another use now changes nothing.
    rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("again.db"),
        &with_key(&account_pull),
    ))
    .assert_ok();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(row(&listing(env, data, "acme"), &labelled[0])[4], used);
    let o = run(env
        .command(SERVER)
        .args([
            "keys",
            "create",
            "acme",
            "--kind",
            "account-pull",
            "--label",
            "a\tb",
            "--data-dir",
        ])
        .arg(data));
    assert_one_line_error(&o, "--label must be");

    // A second admin key: what it mints, and what its minted push key
    // mints in turn, goes when it is revoked; the first admin's keys stay.
    let before = listing(env, data, "acme");
    let admin2 = cli_key(env, data, &["keys", "create", "acme", "--kind", "admin"]);
    let admin2_id = new_row(&before, &listing(env, data, "acme"))[0].clone();
    change_rows(&db, 0.1);
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &keyed(&admin2)));
    o.assert_ok();
    let (p2, q2) = (
        o.config().new_push_key.unwrap(),
        o.config().new_pull_key.unwrap(),
    );
    change_rows(&db, 0.1);
    let o = rt.block_on(push(&ws, "acme/a.db", &db, &keyed(&p2)));
    o.assert_ok();
    assert_eq!(
        o.config().new_push_key,
        None,
        "a push key minted a push key"
    );
    let q3 = o.config().new_pull_key.unwrap();
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("adm2.db"),
        &keyed(&admin2),
    ));
    o.assert_ok();
    let r3 = o.config().new_pull_key.unwrap();
    let o = run(env
        .command(SERVER)
        .args(["keys", "revoke", "acme", &admin2_id, "--data-dir"])
        .arg(data));
    assert_ok(&o);
    assert!(
        stdout(&o).contains(&format!(
            "revoked key {admin2_id} and 4 keys minted from it"
        )),
        "{}",
        stdout(&o)
    );
    for k in [&admin2, &p2, &q2, &q3, &r3] {
        let o = rt.block_on(pull(&ws, "acme/a.db", &env.path("gone.db"), &with_key(k)));
        assert_eq!(
            o.http_status,
            Some(401),
            "a key minted under the revoked one works: {o:#?}"
        );
    }
    assert!(!env.path("gone.db").exists());
    for k in [&push_key, &push_pull_key, &minted[2], &account_pull] {
        let out = env.path("kept.db");
        let _ = std::fs::remove_file(&out);
        rt.block_on(pull(&ws, "acme/a.db", &out, &with_key(k)))
            .assert_ok();
    }
}

#[test]
fn push_refusals_do_not_tell_a_private_replica_from_an_absent_one() {
    let f = Fixture::with("acme", &[]);
    let (env, data, server) = (&f.env, &f.data, f.server());
    let acme = f.admin.clone();
    let other = server.create_namespace(env, "other");
    let db = env.path("a.db");
    make_db(
        &db,
        DbSpec {
            rows: 100,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
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
    let (a_push, a_pull) = (
        o.config().new_push_key.unwrap(),
        o.config().new_pull_key.unwrap(),
    );
    rt.block_on(push(&ws, "acme/secret.db", &db, &with_key(&acme)))
        .assert_ok();
    let account_pull = cli_key(
        env,
        data,
        &["keys", "create", "acme", "--kind", "account-pull"],
    );

    // Every real key that may not push there: the same answer for the
    // private replica as for a path where nothing is.
    for k in [&a_push, &a_pull, &account_pull, &other] {
        let private = http_upgrade(&server.addr, "/sapi/push/acme/secret.db", Some(k));
        let absent = http_upgrade(&server.addr, "/sapi/push/acme/absent.db", Some(k));
        assert_eq!(private.0, 403, "{private:?}");
        assert_eq!(
            private, absent,
            "a private replica told apart from an absent one"
        );
    }
    assert_eq!(
        http_get(&server.addr, "/acme/absent.db").0,
        404,
        "nothing was created"
    );

    // The same work on both paths: the medians of alternating refusals
    // differ by no more than the noise (a generous bound; it measures
    // that neither path does, say, an extra store write).
    let time = |path: &str| {
        let t = std::time::Instant::now();
        assert_eq!(http_upgrade(&server.addr, path, Some(&a_push)).0, 403);
        t.elapsed().as_micros()
    };
    let (secret, absent) = ("/sapi/push/acme/secret.db", "/sapi/push/acme/absent.db");
    let (mut t_private, mut t_absent) = (Vec::new(), Vec::new());
    for i in 0..300 {
        if i % 2 == 0 {
            t_private.push(time(secret));
            t_absent.push(time(absent));
        } else {
            t_absent.push(time(absent));
            t_private.push(time(secret));
        }
    }
    let median = |v: &mut Vec<u128>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (mp, ma) = (median(&mut t_private), median(&mut t_absent));
    assert!(
        mp.abs_diff(ma) <= 300.max(mp.max(ma) / 4),
        "medians {mp} us (private) and {ma} us (absent) differ beyond the noise"
    );

    // The namespace page: the same for a namespace that does not exist as
    // for one with no public replicas (here: only private ones).
    let (s1, _, b1) = http_get(&server.addr, "/acme");
    let (s2, _, b2) = http_get(&server.addr, "/nosuch");
    assert_eq!((s1, s2), (200, 200));
    let (b1, b2) = (String::from_utf8_lossy(&b1), String::from_utf8_lossy(&b2));
    assert_eq!(b1.replace("acme", "NS"), b2.replace("nosuch", "NS"));
}

/// `keys create --expires` and `keys rotate` (issue 15, item 7): an
/// expiring key works until its time and is refused after it, like a
/// revoked one; a rotated key gives way to its successor after the grace.
#[test]
fn expiring_and_rotated_keys() {
    let r = crate::support::Fixture::start();
    let keys = |args: &[&str]| {
        run(r
            .env
            .command(SERVER)
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(&r.data))
    };
    let last_line = |o: &std::process::Output| stdout(o).lines().last().unwrap().trim().to_string();
    let db = r.make("a.db", 50);
    let push_with = |key: &str| {
        run(r.env.sqlrsync().arg(&db).args([
            "team/a.db",
            "--force",
            "--server",
            &r.ws_url(),
            "--adminKey",
            key,
        ]))
    };

    // Expiring: works now, is listed as expiring, and is refused later.
    let o = keys(&["create", "team", "--kind", "admin", "--expires", "2s"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("expires"), "{}", stderr(&o));
    let short = last_line(&o);
    assert_ok(&push_with(&short));
    assert!(stdout(&keys(&["list", "team"])).contains("expires "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = push_with(&short);
        if !o.status.success() {
            assert_one_line_error(&o, "HTTP 401");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired key still works"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(stdout(&keys(&["list", "team"])).contains("revoked "));

    // Rotated with a grace: both work; with none: only the new one.
    let o = keys(&["create", "team", "--kind", "admin", "--label", "ci"]);
    let old = last_line(&o);
    let o = keys(&["rotate", "team", &old, "--grace", "1h"]);
    assert_ok(&o);
    let new = last_line(&o);
    assert_ne!(new, old);
    assert_ok(&push_with(&old));
    assert_ok(&push_with(&new));
    let listed = stdout(&keys(&["list", "team"]));
    assert!(listed.matches("\tci\t").count() >= 2, "{listed}");
    let o = keys(&["rotate", "team", &new, "--grace", "0"]);
    assert_ok(&o);
    let newest = last_line(&o);
    assert_one_line_error(&push_with(&new), "HTTP 401");
    assert_ok(&push_with(&newest));
    // A revoked key cannot be rotated back to life.
    let o = keys(&["rotate", "team", &new]);
    assert!(!o.status.success());
}
