//! PUSH and PULL round trips against the real server on loopback: the first
//! push creates the replica, the -sqlrsync file and the stored push key; a
//! second push needs no key; pulls of @1, @latest and @latest-1 equal what
//! was pushed and are verified; the -sqlrsync file pulls when run as a
//! script; --dry changes nothing and connects nowhere.

use std::os::unix::fs::PermissionsExt;

use crate::support::remote::*;
use crate::support::*;

#[test]
fn first_push_second_push_and_pulls_of_every_version() {
    let r = Fixture::start();
    let a = r.make("a.db", 3000);
    let v1 = content_digest(&a);

    // First push: admin key from the environment, replica created.
    let j = r.first_push("a.db", "team/app/a.db");
    assert_eq!(j["mode"], "PUSH");
    assert_eq!(j["version"], "1");
    assert!(j["pagesSent"].as_u64().unwrap() > 10, "{j}");
    assert!(j["bytesOnWire"].as_u64().unwrap() >= j["streamBytes"].as_u64().unwrap());

    // It wrote the -sqlrsync file (0755) and stored the push key (0600).
    let dash = r.path("a.db-sqlrsync");
    let mode = std::fs::metadata(&dash).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let secrets = r.env.home().join(".config/sqlrsync/local-secrets.toml");
    let mode = std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&secrets).unwrap();
    assert!(text.contains("remotePath = \"team/app/a.db\""), "{text}");
    assert!(text.contains("pushKey = "), "{text}");
    let defaults =
        std::fs::read_to_string(r.env.home().join(".config/sqlrsync/defaults.toml")).unwrap();
    assert!(defaults.contains("wsID"), "{defaults}");

    // The admin key is written nowhere: not under HOME, not next to the db.
    assert_eq!(
        files_containing(&r.env.home(), &r.admin),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!std::fs::read_to_string(&dash).unwrap().contains(&r.admin));

    // Second push: no key, no remote, no server flag -- what cron runs.
    let changed = change_rows(&a, 0.01);
    assert!(changed > 0);
    let v2 = content_digest(&a);
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["version"], "2", "{j}");
    let pages = j["pagesSent"].as_u64().unwrap();
    assert!(
        pages > 0 && pages < j["pageCount"].as_u64().unwrap() / 2,
        "{j}"
    );

    // Pulls of each version equal what was pushed, and are verified.
    let key = dash_pull_key(&a);
    for (at, file, want) in [
        ("@1", "p1.db", &v1),
        ("@latest", "pl.db", &v2),
        ("@latest-1", "pm.db", &v1),
        ("", "pn.db", &v2),
    ] {
        let remote = format!("team/app/a.db{at}");
        let o = run(&mut r.cmd(&[&remote, file, "--json", "--pullKey", &key]));
        assert_ok(&o);
        let j = json(&o);
        assert_eq!(j["verified"], true, "{at}: {j}");
        assert_eq!(&content_digest(&r.path(file)), want, "{at}");
        assert_integrity(&r.path(file));
    }
    // An incremental pull moves only the changed pages.
    let o = run(&mut r.cmd(&["team/app/a.db", "p1.db", "--json", "--pullKey", &key]));
    assert_ok(&o);
    let j = json(&o);
    assert!(
        j["pagesSent"].as_u64().unwrap() < j["pageCount"].as_u64().unwrap() / 2,
        "{j}"
    );
    assert_eq!(content_digest(&r.path("p1.db")), v2);
}

#[test]
fn dash_file_run_as_a_script_pulls() {
    let r = Fixture::start();
    r.make("a.db", 500);
    r.first_push("a.db", "team/a.db");
    let want = content_digest(&r.path("a.db"));
    // Another directory gets a copy of the script only.
    let other = r.path("other");
    std::fs::create_dir(&other).unwrap();
    let script = other.join("a.db-sqlrsync");
    std::fs::copy(r.path("a.db-sqlrsync"), &script).unwrap();
    let bin_dir = std::path::Path::new(SQLRSYNC).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = run(r.env.command(&script).env("PATH", path).arg("--json"));
    assert_ok(&o);
    assert_eq!(json(&o)["verified"], true);
    assert_eq!(content_digest(&other.join("a.db")), want);
}

#[test]
fn dry_runs_change_nothing_and_connect_nowhere() {
    let r = Fixture::start();
    r.make("a.db", 300);
    // A listener that must see no connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let before = snapshot(r.env.dir.path());
    for args in [
        vec!["a.db", "team/a.db", "--dry"],
        vec!["a.db", "--dry", "--json", "--public"],
        vec!["team/a.db", "b.db", "--dry"],
        vec!["team/a.db@latest-2", "b.db", "--dry", "--subscribe"],
    ] {
        let o = run(r
            .env
            .sqlrsync()
            .args(&args)
            .args(["--server", &url, "--adminKey", &r.admin]));
        assert_ok(&o);
        let out = stdout(&o);
        assert!(
            out.contains("PUSH") || out.contains("PULL") || out.contains("SUBSCRIBE"),
            "{out}"
        );
        assert!(!out.contains(&r.admin), "the key must be masked: {out}");
    }
    let o = run(r
        .env
        .sqlrsync()
        .args(["a.db", "--dry", "--server", &url, "--adminKey", &r.admin]));
    assert!(
        stdout(&o).contains("--adminKey"),
        "the key's source is shown"
    );
    assert!(listener.accept().is_err(), "a dry run connected");
    assert_eq!(
        snapshot(r.env.dir.path()),
        before,
        "a dry run wrote something"
    );
}

/// wss:// through rustls: a server with a certificate from a private CA is
/// trusted only when the CA is (SSL_CERT_FILE), and refused in one line
/// otherwise. Needs the `openssl` command to make the certificates.
#[test]
fn wss_with_a_private_ca() {
    let env = TestEnv::new();
    let tls = env.path("tls");
    std::fs::create_dir(&tls).unwrap();
    let sh = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=sqlrsync-test-ca
openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext"#;
    let made = std::process::Command::new("bash")
        .arg("-c")
        .arg(sh)
        .current_dir(&tls)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED wss_with_a_private_ca: openssl could not make certificates");
        return;
    }
    let data = env.path("data");
    let cert = tls.join("leaf.pem");
    let key = tls.join("leaf.key");
    let f = Fixture::in_env(
        env,
        data,
        "team",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let (env, server) = (&f.env, f.server());
    let admin = f.admin.clone();
    make_db(
        &env.path("a.db"),
        DbSpec {
            rows: 300,
            ..DbSpec::default()
        },
    );
    let url = format!("wss://{}", server.addr);
    let o = run(env
        .sqlrsync()
        .args(["a.db", "team/a.db", "--server", &url, "--adminKey", &admin]));
    assert_one_line_error(&o, "TLS with");
    let o = run(env
        .sqlrsync()
        .args([
            "a.db",
            "team/a.db",
            "--server",
            &url,
            "--adminKey",
            &admin,
            "--json",
        ])
        .env("SSL_CERT_FILE", tls.join("ca.pem")));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "1");
    let o = run(env
        .sqlrsync()
        .args([
            "team/a.db",
            "b.db",
            "--server",
            &url,
            "--adminKey",
            &admin,
            "--json",
        ])
        .env("SSL_CERT_FILE", tls.join("ca.pem")));
    assert_ok(&o);
    assert_eq!(json(&o)["verified"], true);
    assert_eq!(
        content_digest(&env.path("b.db")),
        content_digest(&env.path("a.db"))
    );
    // --versions (one HTTPS GET, not a websocket) trusts the same roots.
    let versions = |ca: bool| {
        let mut c = env.sqlrsync();
        c.args(["--versions", "team/a.db", "--server", &url]).args([
            "--adminKey",
            &admin,
            "--json",
        ]);
        if ca {
            c.env("SSL_CERT_FILE", tls.join("ca.pem"));
        }
        run(&mut c)
    };
    let o = versions(true);
    assert_ok(&o);
    assert_eq!(json(&o)["versions"][0]["version"], 1);
    assert_one_line_error(&versions(false), "TLS with");
}

#[test]
fn dry_push_without_any_key_reports_it_and_writes_nothing() {
    let env = TestEnv::new();
    let db = env.path("a.db");
    make_db(
        &db,
        DbSpec {
            rows: 10,
            ..Default::default()
        },
    );
    let before = file_sha256(&db);
    let o =
        run(env
            .sqlrsync()
            .arg(&db)
            .arg("ns/a.db")
            .args(["--dry", "--server", "ws://127.0.0.1:9"]));
    assert_ok(&o);
    assert!(stdout(&o).contains("the push would fail"), "{}", stdout(&o));
    assert_eq!(file_sha256(&db), before);
    assert!(
        !env.home().join(".config/sqlrsync").exists(),
        "--dry wrote client files"
    );
    assert!(!env.path("a.db-sqlrsync").exists());
}
