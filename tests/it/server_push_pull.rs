//! Push and pull against the real server with the real helper: versions,
//! `@N` / `@latest-N`, no-change pushes, dedup, commit messages, verify.

use crate::support::driver::*;
use crate::support::*;

fn opts(key: &str) -> Opts {
    Opts {
        key: Some(key.to_string()),
        ..Default::default()
    }
}

#[test]
fn versions_round_trip_and_dedup() {
    let mut f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let data = f.data.clone();
    let admin = f.admin.clone();
    let db = env.path("app.db");
    make_db(
        &db,
        DbSpec {
            rows: 3000,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();

    // First push creates the replica and issues keys.
    let o = rt.block_on(push(
        &ws,
        "acme/app.db",
        &db,
        &Opts {
            key_request: true,
            message: Some("first".into()),
            ..opts(&admin)
        },
    ));
    o.assert_ok();
    let cfg = o.config();
    assert_eq!(o.version(), 1);
    assert_eq!(cfg.replica_path.as_deref(), Some("acme/app.db"));
    assert_eq!(
        cfg.version_hash.as_deref(),
        Some(version_hash(&db).as_str())
    );
    let push_key = cfg
        .new_push_key
        .clone()
        .expect("admin push gets a push key");
    let pull_key = cfg
        .new_pull_key
        .clone()
        .expect("KEYREQUEST gets a pull key");
    let v1_digest = content_digest(&db);
    let v1_hash = version_hash(&db);

    // Second push with the replica push key.
    change_block(&db, 1000, 150);
    let o = rt.block_on(push(
        &ws,
        "acme/app.db",
        &db,
        &Opts {
            message: Some("second".into()),
            ..opts(&push_key)
        },
    ));
    o.assert_ok();
    assert_eq!(o.version(), 2);
    let v2_digest = content_digest(&db);
    let v2_hash = version_hash(&db);
    assert_ne!(v1_digest, v2_digest);

    // A push that changes nothing adds no version and says so.
    let o = rt.block_on(push(&ws, "acme/app.db", &db, &opts(&push_key)));
    o.assert_ok();
    assert_eq!(o.version(), 2);
    assert!(
        o.messages.iter().any(|m| m.contains("no changes")),
        "{o:#?}"
    );

    change_block(&db, 2000, 150);
    rt.block_on(push(&ws, "acme/app.db", &db, &opts(&push_key)))
        .assert_ok();
    let v3_digest = content_digest(&db);

    // Pulls of latest, @1, @latest-1 (header forms "", "1", "-1").
    for (version, digest, hash) in [
        (None, &v3_digest, None),
        (Some("1"), &v1_digest, Some(&v1_hash)),
        (Some("-1"), &v2_digest, Some(&v2_hash)),
        (Some("2"), &v2_digest, Some(&v2_hash)),
    ] {
        let out = env.path(&format!("pulled-{}.db", version.unwrap_or("latest")));
        let o = rt.block_on(pull(
            &ws,
            "acme/app.db",
            &out,
            &Opts {
                version: version.map(str::to_string),
                ..opts(&pull_key)
            },
        ));
        o.assert_ok();
        // NEWREPLICAVERSION comes exactly when the version served is not
        // the latest.
        assert_eq!(o.newer_version, version.is_some(), "pull of {version:?}");
        assert_eq!(&content_digest(&out), digest, "pull of {version:?}");
        assert_integrity(&out);
        assert_eq!(o.config().version_hash.unwrap(), version_hash(&out));
        if let Some(h) = hash {
            assert_eq!(&version_hash(&out), h);
        }
    }
    // A later pull into an existing replica moves it to another version.
    let out = env.path("pulled-latest.db");
    rt.block_on(pull(
        &ws,
        "acme/app.db",
        &out,
        &Opts {
            version: Some("1".into()),
            ..opts(&pull_key)
        },
    ))
    .assert_ok();
    assert_eq!(content_digest(&out), v1_digest);

    // Out-of-range versions are refused at the upgrade.
    let o = rt.block_on(pull(
        &ws,
        "acme/app.db",
        &env.path("x.db"),
        &Opts {
            version: Some("9".into()),
            ..opts(&pull_key)
        },
    ));
    assert_eq!(o.http_status, Some(404), "{o:#?}");
    assert!(!env.path("x.db").exists());

    // Dedup: three versions cost about one database plus the changed pages
    // (the spare copy a hot replica keeps in staging/ is the next push's
    // scratch file, not storage of versions: SERVER.md "Storage layout").
    let db_bytes = std::fs::metadata(&db).unwrap().len();
    let stored = dir_bytes(&data) - dir_bytes(&data.join("staging"));
    assert!(
        (stored as f64) < db_bytes as f64 * 1.35,
        "store holds {stored} bytes for a {db_bytes}-byte database with 3 versions"
    );

    // The web page lists the commit messages (replica is private: 404).
    let (status, _, _) = http_get(&server.addr, "/acme/app.db");
    assert_eq!(status, 404);

    f.kill_server();
    let o = run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data));
    assert_ok(&o);
    assert!(stdout(&o).contains("no damage"), "{}", stdout(&o));
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// Rewrites `n` consecutive rows from `first`: a change confined to a few pages.
pub fn change_block(path: &std::path::Path, first: i64, n: i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute(
        "UPDATE t SET v = randomblob(length(v)) WHERE id >= ?1 AND id < ?1 + ?2",
        [first, n],
    )
    .unwrap();
}

#[test]
fn wal_origin_and_page_size_change() {
    let mut f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let data = f.data.clone();
    let admin = f.admin.clone();
    let rt = rt();
    let ws = server.ws_url();
    // A WAL-mode origin: stored files stay in rollback mode, no -wal/-shm.
    let db = env.path("wal.db");
    make_db(
        &db,
        DbSpec {
            rows: 1500,
            wal: true,
            ..Default::default()
        },
    );
    rt.block_on(push(&ws, "acme/wal.db", &db, &opts(&admin)))
        .assert_ok();
    change_block(&db, 100, 50);
    let o = rt.block_on(push(&ws, "acme/wal.db", &db, &opts(&admin)));
    o.assert_ok();
    assert_eq!(o.version(), 2);
    assert_eq!(o.config().version_hash.unwrap(), version_hash(&db));
    // Pushing the same WAL database again changes nothing.
    let o = rt.block_on(push(&ws, "acme/wal.db", &db, &opts(&admin)));
    assert_eq!(o.version(), 2, "{o:#?}");
    let mut stray = Vec::new();
    for r in std::fs::read_dir(data.join("replicas")).unwrap() {
        for f in std::fs::read_dir(r.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let hdr = std::fs::read(&f).unwrap();
            assert_eq!(
                (hdr[18], hdr[19]),
                (1, 1),
                "{} is not in rollback mode",
                f.display()
            );
            if !f.to_string_lossy().ends_with(".db") {
                stray.push(f);
            }
        }
    }
    assert!(stray.is_empty(), "{stray:?}");
    for (v, name) in [("1", "w1.db"), ("", "w2.db")] {
        let out = env.path(name);
        rt.block_on(pull(
            &ws,
            "acme/wal.db",
            &out,
            &Opts {
                version: Some(v.into()),
                ..opts(&admin)
            },
        ))
        .assert_ok();
        assert_integrity(&out);
    }
    assert_eq!(content_digest(&env.path("w2.db")), content_digest(&db));

    // The same replica pushed with another page size: a full new version,
    // and the old one still rebuilds.
    let db2 = env.path("big-pages.db");
    make_db(
        &db2,
        DbSpec {
            rows: 700,
            page_size: 8192,
            ..Default::default()
        },
    );
    let o = rt.block_on(push(&ws, "acme/wal.db", &db2, &opts(&admin)));
    o.assert_ok();
    assert_eq!(o.version(), 3);
    let out = env.path("w-old.db");
    rt.block_on(pull(
        &ws,
        "acme/wal.db",
        &out,
        &Opts {
            version: Some("2".into()),
            ..opts(&admin)
        },
    ))
    .assert_ok();
    assert_eq!(content_digest(&out), content_digest(&db));
    let out = env.path("w-new.db");
    rt.block_on(pull(&ws, "acme/wal.db", &out, &opts(&admin)))
        .assert_ok();
    assert_eq!(content_digest(&out), content_digest(&db2));
    f.kill_server();
    assert_ok(&run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data)));
}
