//! Hostile input: bad paths, streams that are not sqlite3_rsync, bad or
//! out-of-order control frames, oversized frames. Each is refused with a
//! clear HTTP status or ABORT, stores nothing, and the server keeps serving.

use crate::support::driver::*;
use crate::support::frames::*;
use crate::support::*;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn bad_paths_are_400() {
    let f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let acme = f.admin.clone();
    let rt = rt();
    let ws = server.ws_url();
    let long = format!("acme/{}.db", "a".repeat(300));
    for path in [
        "acme/../etc.db",
        "acme//x.db",
        "acme%2Fx.db",
        "acme/x%00.db",
        ".acme/x.db",
        "acme/.hidden.db",
        "acme",
        long.as_str(),
    ] {
        for endpoint in ["/sapi/push/", "/sapi/pull/", "/sapi/subscribe/"] {
            let o = rt.block_on(raw(
                &ws,
                &format!("{endpoint}{path}"),
                &with_key(&acme),
                vec![],
            ));
            assert_eq!(o.http_status, Some(400), "{endpoint}{path}: {o:#?}");
            assert!(o.http_body.contains("invalid path"), "{}", o.http_body);
        }
    }
    // Nothing was created.
    let o = run(env
        .command(SERVER)
        .args(["namespace", "list", "--data-dir"])
        .arg(&f.data));
    assert!(stdout(&o).contains("acme\t0 replicas"), "{}", stdout(&o));
}

#[test]
fn bad_streams_abort_and_store_nothing() {
    let mut f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let data = f.data.clone();
    let acme = f.admin.clone();
    let rt = rt();
    let ws = server.ws_url();
    let begin1 = begin(12, 1);
    let cases: Vec<(&str, Vec<Message>, &str)> = vec![
        (
            "text",
            vec![Message::Binary(
                b"hello, this is not sqlite3_rsync".to_vec().into(),
            )],
            "not a sqlite3_rsync stream",
        ),
        (
            "replica bytes",
            vec![Message::Binary(vec![0x64; 21].into())],
            "not a sqlite3_rsync stream",
        ),
        (
            "bad page size",
            vec![bin(begin(30, 1))],
            "not a sqlite3_rsync stream",
        ),
        (
            "bad control",
            vec![Message::Binary(vec![0x51, 0].into())],
            "bad control frame",
        ),
        (
            "server-only control",
            vec![Message::Binary(vec![0x52].into())],
            "bad control frame",
        ),
        (
            "long message",
            vec![Message::Binary(
                {
                    let mut f = vec![0x54, 0x13, 0x88];
                    f.extend(std::iter::repeat_n(b'x', 5000));
                    f
                }
                .into(),
            )],
            "commit message",
        ),
        (
            "message after begin",
            vec![
                bin(begin1.clone()),
                Message::Binary(vec![0x54, 0, 2, b'h', b'i'].into()),
            ],
            "COMMITMESSAGE must come before ORIGIN_BEGIN",
        ),
        (
            "page out of range",
            vec![bin(begin1.clone()), bin(page(9, 4096, 0))],
            "outside the announced",
        ),
    ];
    for (name, frames, needle) in cases {
        let o = rt.block_on(raw(&ws, "/sapi/push/acme/bad.db", &with_key(&acme), frames));
        let abort = o
            .abort
            .clone()
            .unwrap_or_else(|| panic!("{name}: no ABORT: {o:#?}"));
        assert!(abort.contains(needle), "{name}: {abort}");
        assert_eq!(o.close_code, Some(1008), "{name}");
    }
    // Oversized frames are refused by the websocket layer.
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/bad.db",
        &with_key(&acme),
        vec![Message::Binary(vec![0x41; 3 << 20].into())],
    ));
    assert_ne!(o.close_code, Some(1000), "{o:#?}");
    // A stream cut right after ORIGIN_BEGIN.
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/bad.db",
        &with_key(&acme),
        vec![bin(begin1), Message::Close(None)],
    ));
    assert!(!o.ok());

    // Nothing stored, and the server still serves good pushes and pulls.
    let o = rt.block_on(pull(
        &ws,
        "acme/bad.db",
        &env.path("p.db"),
        &with_key(&acme),
    ));
    assert_eq!(o.http_status, Some(404));
    // Not even an empty replica: failed first pushes remove it again.
    assert!(o.http_body.contains("no such replica"), "{}", o.http_body);
    let db = env.path("good.db");
    make_db(
        &db,
        DbSpec {
            rows: 200,
            ..Default::default()
        },
    );
    rt.block_on(push(&ws, "acme/bad.db", &db, &with_key(&acme)))
        .assert_ok();
    let out = env.path("good-pulled.db");
    rt.block_on(pull(&ws, "acme/bad.db", &out, &with_key(&acme)))
        .assert_ok();
    assert_eq!(content_digest(&out), content_digest(&db));
    // A pull's stream from the client must be sqlite3_rsync too.
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/bad.db",
        &with_key(&acme),
        vec![Message::Binary(b"\x00garbage".to_vec().into())],
    ));
    assert!(
        o.abort
            .as_deref()
            .unwrap_or("")
            .contains("not a sqlite3_rsync stream"),
        "{o:#?}"
    );
    f.kill_server();
    assert_ok(&run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data)));
}

#[test]
fn cli_errors_are_one_line() {
    let env = TestEnv::new();
    let data = env.path("data");
    let o = run(env
        .command(SERVER)
        .args(["namespace", "create", "bad/name", "--data-dir"])
        .arg(&data));
    assert_one_line_error(&o, "namespace");
    let o = run(env
        .command(SERVER)
        .args(["namespace", "create", "ok", "--data-dir"])
        .arg(&data));
    assert_ok(&o);
    let o = run(env
        .command(SERVER)
        .args(["namespace", "create", "ok", "--data-dir"])
        .arg(&data));
    assert_one_line_error(&o, "already exists");
    let o = run(env
        .command(SERVER)
        .args([
            "keys",
            "create",
            "ok",
            "--kind",
            "replica-pull",
            "--data-dir",
        ])
        .arg(&data));
    assert_one_line_error(&o, "--replica");
    let o = run(env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(env.path("nowhere")));
    assert_one_line_error(&o, "no sqlrsync-server store");
    let o = run(env.command(SERVER).arg("--help"));
    assert_ok(&o);
    for word in ["serve", "namespace", "keys", "verify"] {
        assert!(stdout(&o).contains(word));
    }
}

#[test]
fn verify_reports_damage() {
    let mut f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let data = f.data.clone();
    let acme = f.admin.clone();
    let db = env.path("d.db");
    make_db(
        &db,
        DbSpec {
            rows: 600,
            ..Default::default()
        },
    );
    let rt = rt();
    rt.block_on(push(&server.ws_url(), "acme/d.db", &db, &with_key(&acme)))
        .assert_ok();
    change_rows(&db, 0.1);
    rt.block_on(push(&server.ws_url(), "acme/d.db", &db, &with_key(&acme)))
        .assert_ok();
    f.kill_server();
    assert_ok(&run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data)));
    // Flip one byte in a stored page.
    let pack = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    assert!(!bytes.is_empty());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();
    let o = run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data));
    assert!(!o.status.success());
    assert!(stdout(&o).contains("DAMAGE"), "{}", stdout(&o));
}
