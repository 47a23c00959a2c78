//! Path rules that trap people: which form an argument takes, said by
//! `--dry` in every mode; a replica-looking argument that names a local
//! file refused before anything is sent or written; and `--help` examples
//! that do what their comments say.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::*;

/// A loopback port that is listening but never answered: a client that
/// tried to connect would show up in its backlog.
struct Tripwire {
    listener: TcpListener,
}

impl Tripwire {
    fn new() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Tripwire { listener }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.listener.local_addr().unwrap())
    }

    #[track_caller]
    fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("a connection was made, from {peer}"),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn small_db(env: &TestEnv, name: &str) {
    let p = env.path(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    make_db(
        &p,
        DbSpec {
            rows: 50,
            ..DbSpec::default()
        },
    );
}

fn config_dir(env: &TestEnv) -> std::path::PathBuf {
    env.home().join(".config/sqlrsync")
}

/// Every file under HOME (config, state, cache): none after a refusal.
fn home_files(env: &TestEnv) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![env.home()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The refusal of a replica-looking argument that names a local file: one
/// line, exit 2 (a usage error), no connection, nothing written.
#[track_caller]
fn assert_lookalike_refused(env: &TestEnv, wire: &Tripwire, o: &Output, arg: &str) {
    assert_one_line_error(
        o,
        &format!(
            "{arg} is read as a replica on the server (a relative path with '/'), \
             but a local file {arg} exists: did you mean ./{arg}?"
        ),
    );
    assert!(stderr(o).starts_with("sqlrsync: error: "), "{}", stderr(o));
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    assert!(stdout(o).is_empty(), "{}", stdout(o));
    wire.assert_untouched();
    assert!(!config_dir(env).exists(), "the refusal wrote client files");
    assert_eq!(home_files(env), Vec::<std::path::PathBuf>::new());
}

#[test]
fn help_shows_no_push_as_a_local_snapshot() {
    let env = TestEnv::new();
    let wire = Tripwire::new();
    let help = stdout(&run(env.sqlrsync().arg("--help")));
    let examples: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .filter(|l| l.trim_start().starts_with("sqlrsync "))
        .collect();
    let local: Vec<Vec<&str>> = examples
        .iter()
        .filter(|l| l.contains("# local"))
        .map(|l| {
            l.split('#')
                .next()
                .unwrap()
                .split_whitespace()
                .skip(1)
                .collect()
        })
        .collect();
    assert!(!local.is_empty(), "no local example in:\n{help}");
    for args in local {
        let env = TestEnv::new();
        small_db(&env, args[0]);
        std::fs::create_dir_all(env.path(args[1]).parent().unwrap()).unwrap();
        // What --dry says it is ...
        let o = run(env
            .sqlrsync()
            .args(&args)
            .args(["--dry", "--json", "--server", &wire.url()]));
        assert_ok(&o);
        assert_eq!(json(&o)["mode"], "LOCAL", "{args:?} is not LOCAL");
        // ... and what it does: a snapshot next to the original, no server.
        let o = run(env.sqlrsync().args(&args).args(["--server", &wire.url()]));
        assert_ok(&o);
        let replica = env.path(args[1]);
        assert!(replica.exists(), "{args:?} made no {}", replica.display());
        assert_eq!(content_digest(&replica), content_digest(&env.path(args[0])));
        assert!(!config_dir(&env).exists(), "{args:?} wrote client files");
    }
    wire.assert_untouched();
}

#[test]
fn remote_lookalike_origin_is_refused_before_connecting() {
    let env = TestEnv::new();
    let wire = Tripwire::new();
    small_db(&env, "data/app.db");
    let before = file_sha256(&env.path("data/app.db"));
    for extra in [&[][..], &["--dry"], &["--dry", "--json"]] {
        let o = run(env
            .sqlrsync()
            .args(["data/app.db", "copy.db", "--server", &wire.url()])
            .args(extra));
        assert_lookalike_refused(&env, &wire, &o, "data/app.db");
        assert!(
            stderr(&o).contains("write data/app.db@latest"),
            "{}",
            stderr(&o)
        );
        assert!(!env.path("copy.db").exists());
    }
    // Alone it would have pulled into ./app.db.
    let o = run(env
        .sqlrsync()
        .args(["data/app.db", "--server", &wire.url()]));
    assert_lookalike_refused(&env, &wire, &o, "data/app.db");
    assert!(!env.path("app.db").exists());
    assert_eq!(file_sha256(&env.path("data/app.db")), before);
}

#[test]
fn remote_lookalike_replica_is_refused_before_connecting() {
    let env = TestEnv::new();
    let wire = Tripwire::new();
    small_db(&env, "app.db");
    small_db(&env, "backup/app.db");
    let before = file_sha256(&env.path("backup/app.db"));
    // Even with a key at hand, so a push would really have gone out.
    for extra in [&[][..], &["--dry"]] {
        let o = run(env
            .sqlrsync()
            .args(["app.db", "backup/app.db", "--server", &wire.url()])
            .args(extra)
            .env("SQLRSYNC_ADMIN_KEY", "A".repeat(22)));
        assert_lookalike_refused(&env, &wire, &o, "backup/app.db");
        assert!(stderr(&o).contains("another directory"), "{}", stderr(&o));
    }
    assert_eq!(file_sha256(&env.path("backup/app.db")), before);
    assert!(!env.path("app.db-sqlrsync").exists());
}

#[test]
fn spellings_that_still_mean_the_server() {
    let env = TestEnv::new();
    let wire = Tripwire::new();
    small_db(&env, "data/app.db");
    let cases: &[(&[&str], &str)] = &[
        // An explicit version: no local file has one.
        (&["data/app.db@latest", "copy.db"], "PULL"),
        // The other side is that very file: only the server makes sense.
        (&["./data/app.db", "data/app.db"], "PUSH"),
        (&["data/app.db", "./data/app.db"], "PULL"),
    ];
    for (args, mode) in cases {
        let o = run(env
            .sqlrsync()
            .args(*args)
            .args(["--dry", "--json", "--server", &wire.url()]));
        assert_ok(&o);
        let v = json(&o);
        assert_eq!(v["mode"], *mode, "{args:?}");
        assert_eq!(v["form"], "REMOTE", "{args:?}");
    }
    wire.assert_untouched();
    assert!(!env.path("copy.db").exists());
}

#[test]
fn dry_says_ssh_form_and_why() {
    let env = TestEnv::new();
    small_db(&env, "app.db");
    // An ssh that leaves a mark if it is ever run.
    let ssh = env.path("fake-ssh");
    std::fs::write(
        &ssh,
        format!("#!/bin/sh\ntouch '{}'\n", env.path("ran").display()),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = ["app.db", "snap:2024-01-01.db", "--dry", "--ssh"];
    let o = run(env.sqlrsync().args(args).arg(&ssh));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("mode:       SSH"), "{out}");
    assert!(
        out.contains(
            "form:       SSH (ORIGIN \"app.db\" has no '/': a local path; \
             REPLICA \"snap:2024-01-01.db\" has ':' before any '/': [USER@]HOST:PATH, \
             as sqlite3_rsync reads it; write ./snap:2024-01-01.db for a local file)"
        ),
        "{out}"
    );
    assert!(out.contains("host snap, path 2024-01-01.db"), "{out}");
    let o = run(env.sqlrsync().args(args).arg(&ssh).arg("--json"));
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["mode"], "SSH");
    assert_eq!(v["form"], "SSH");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("has ':' before any '/'"),
        "{v}"
    );
    assert_eq!(v["host"], "snap");
    assert!(!env.path("ran").exists(), "--dry ran ssh");
    assert!(!env.path("snap:2024-01-01.db").exists());

    // The spelling the hint gives is a LOCAL file, and syncs as one.
    let o = run(env
        .sqlrsync()
        .args(["app.db", "./snap:2024-01-01.db", "--dry", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["form"], "LOCAL");
    assert_ok(&run(env
        .sqlrsync()
        .args(["app.db", "./snap:2024-01-01.db"])));
    assert_eq!(
        content_digest(&env.path("snap:2024-01-01.db")),
        content_digest(&env.path("app.db"))
    );
    assert!(!env.path("ran").exists());
}

#[test]
fn dry_says_local_form_and_why() {
    let env = TestEnv::new();
    small_db(&env, "app.db");
    std::fs::create_dir(env.path("backup")).unwrap();
    let o = run(env.sqlrsync().args(["app.db", "./backup/app.db", "--dry"]));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(
            "form:      LOCAL (ORIGIN \"app.db\" has no '/': a local path; \
             REPLICA \"./backup/app.db\" starts with ./: a local path)"
        ),
        "{out}"
    );
    let o = run(env
        .sqlrsync()
        .args(["app.db", "copy.db", "--dry", "--json"]));
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["form"], "LOCAL");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("\"copy.db\" has no '/'"),
        "{v}"
    );
    assert!(!env.path("backup/app.db").exists());
    assert!(!env.path("copy.db").exists());
}

#[test]
fn dry_says_remote_form_and_why() {
    let env = TestEnv::new();
    let wire = Tripwire::new();
    small_db(&env, "app.db");
    let o = run(env
        .sqlrsync()
        .args(["app.db", "backup/app.db", "--dry", "--server", &wire.url()]));
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("mode:       PUSH"), "{out}");
    assert!(
        out.contains(
            "form:       REMOTE (ORIGIN \"app.db\" has no '/': a local path; \
             REPLICA \"backup/app.db\" has '/' and does not start with / ./ ../ ~/: \
             a replica on the server; write ./backup/app.db for a local file)"
        ),
        "{out}"
    );
    let o = run(env.sqlrsync().args([
        "myteam/app.db@2",
        "copy.db",
        "--dry",
        "--json",
        "--server",
        &wire.url(),
    ]));
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["mode"], "PULL");
    assert_eq!(v["form"], "REMOTE");
    let why = v["why"].as_str().unwrap();
    assert!(
        why.starts_with("ORIGIN \"myteam/app.db@2\" has '/' and does not start with"),
        "{why}"
    );
    assert!(why.contains("a replica on the server"), "{why}");
    wire.assert_untouched();
    assert!(!config_dir(&env).exists(), "--dry wrote client files");
}
