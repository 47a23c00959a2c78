//! `serve --config FILE` (src/server/config.rs) and the server's log
//! format: a TOML file of serve flags, overridden by flags; an unknown
//! setting refused; plain log lines when stderr is not a terminal, JSON
//! lines on request.

use crate::support::*;

/// A database of about 2 MB.
fn two_mb(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let p = env.path(name);
    make_db(
        &p,
        DbSpec {
            rows: 500,
            row_bytes: 4000,
            ..DbSpec::default()
        },
    );
    p
}

#[test]
fn settings_come_from_the_file_and_flags_override_them() {
    let env = TestEnv::new();
    let data = env.path("data");
    let config = env.path("server.toml");
    std::fs::write(&config, "max-db-size = '1MiB'\ncompat-frames = true\n").unwrap();
    let cfg = config.to_str().unwrap();
    let db = two_mb(&env, "big.db");

    // From the file: databases of at most 1 MiB, compatible frames only.
    let server = TestServer::start_with(&env, &data, &["--config", cfg]);
    let admin = server.create_namespace(&env, "team");
    let push = |server: &TestServer, remote: &str| {
        run(env
            .sqlrsync()
            .arg(&db)
            .arg(remote)
            .args(["--json", "--server", &server.ws_url()])
            .env("SQLRSYNC_ADMIN_KEY", &admin))
    };
    let o = push(&server, "team/big.db");
    assert!(!o.status.success(), "a 2 MB push passed a 1 MiB limit");
    assert_one_line_error(&o, "at most");
    let small = env.path("small.db");
    make_db(&small, DbSpec::default());
    let o = run(env
        .sqlrsync()
        .arg(&small)
        .arg("team/small.db")
        .args(["--json", "--server", &server.ws_url()])
        .env("SQLRSYNC_ADMIN_KEY", &admin));
    assert_ok(&o);
    assert!(
        json(&o)["largestFrameReceived"].as_u64().unwrap() <= 4101,
        "the file's compat-frames = true was not applied: {}",
        stdout(&o)
    );
    drop(server);

    // A flag beats the file.
    let server = TestServer::start_with(&env, &data, &["--config", cfg, "--max-db-size", "64MiB"]);
    assert_ok(&push(&server, "team/big.db"));
}

#[test]
fn an_unknown_setting_is_one_line_and_no_server() {
    let env = TestEnv::new();
    let config = env.path("server.toml");
    std::fs::write(&config, "max-conections = 10\n").unwrap();
    let o = run(env
        .command(SERVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(env.path("data")));
    assert!(!o.status.success());
    assert_one_line_error(&o, "unknown setting \"max-conections\"");
    assert!(!env.path("data").exists(), "a data dir was created");
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let env = TestEnv::new();
    let server = TestServer::start_cmd(&env, &env.path("plain"), &[], |c| {
        c.env_remove("NO_COLOR");
    });
    let admin = server.create_namespace(&env, "team");
    let db = env.path("a.db");
    make_db(&db, DbSpec::default());
    let push = |server: &TestServer| {
        assert_ok(&run(env
            .sqlrsync()
            .arg(&db)
            .arg("team/a.db")
            .args(["--server", &server.ws_url(), "--force"])
            .env("SQLRSYNC_ADMIN_KEY", &admin)));
    };
    push(&server);
    let log = server.log();
    assert!(log.contains("push committed"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );
    drop(server);

    let server = TestServer::start_cmd(&env, &env.path("plain"), &["--log-format", "json"], |_| {});
    push(&server);
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.starts_with('{'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "no JSON lines: {log}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"path\":\"team/a.db\"")),
        "{log}"
    );
}

#[test]
fn pages_behind_a_tls_proxy_show_wss_pull_commands() {
    use crate::support::driver::{http_get, http_get_with};
    let env = TestEnv::new();
    let server = TestServer::start(&env, &env.path("data"));
    let admin = server.create_namespace(&env, "team");
    let db = env.path("a.db");
    make_db(&db, DbSpec::default());
    assert_ok(&run(env
        .sqlrsync()
        .arg(&db)
        .arg("team/a.db")
        .args(["--public", "--server", &server.ws_url()])
        .env("SQLRSYNC_ADMIN_KEY", &admin)));
    let page = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let (status, _, body) = http_get(&server.addr, "/team/a.db");
    assert_eq!(status, 200);
    assert!(page(body).contains("--server ws://"));
    let (status, _, body) =
        http_get_with(&server.addr, "/team/a.db", "X-Forwarded-Proto: https\r\n");
    assert_eq!(status, 200);
    let body = page(body);
    assert!(body.contains("--server wss://"), "{body}");
}
