//! Sessions under load and faults: concurrent pushes to one replica, 20
//! concurrent pulls, subscribe notifications, a client cut mid-push, kill -9
//! of the server during a push, graceful SIGTERM.

use std::time::{Duration, Instant};

use crate::support::driver::*;
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn concurrent_pushes_and_pulls() {
    let f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let acme = f.admin.clone();
    let rt = rt();
    let ws = server.ws_url();

    // Four different databases pushed to one replica at once: all land, in
    // some order, each as its own version.
    let dbs: Vec<_> = (0..4)
        .map(|i| {
            let p = env.path(&format!("c{i}.db"));
            make_db(
                &p,
                DbSpec {
                    rows: 800 + i * 50,
                    ..Default::default()
                },
            );
            p
        })
        .collect();
    let outcomes = rt.block_on(async {
        let tasks: Vec<_> = dbs
            .iter()
            .map(|p| {
                let (ws, p, key) = (ws.clone(), p.clone(), acme.clone());
                tokio::spawn(async move { push(&ws, "acme/c.db", &p, &with_key(&key)).await })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    let mut numbers: Vec<u64> = outcomes
        .iter()
        .map(|o| {
            o.assert_ok();
            o.version()
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4], "no push lost");
    for (o, db) in outcomes.iter().zip(&dbs) {
        let out = env.path(&format!("c-pulled-{}.db", o.version()));
        rt.block_on(pull(
            &ws,
            "acme/c.db",
            &out,
            &Opts {
                version: Some(o.version().to_string()),
                ..with_key(&acme)
            },
        ))
        .assert_ok();
        assert_eq!(content_digest(&out), content_digest(db));
    }

    // Twenty concurrent pulls of the latest version.
    let latest_db = &dbs[outcomes.iter().position(|o| o.version() == 4).unwrap()];
    let want = content_digest(latest_db);
    let outs: Vec<_> = (0..20).map(|i| env.path(&format!("many{i}.db"))).collect();
    let results = rt.block_on(async {
        let tasks: Vec<_> = outs
            .iter()
            .map(|p| {
                let (ws, p, key) = (ws.clone(), p.clone(), acme.clone());
                tokio::spawn(async move { pull(&ws, "acme/c.db", &p, &with_key(&key)).await })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    for (o, p) in results.iter().zip(&outs) {
        o.assert_ok();
        assert_eq!(o.version(), 4);
        assert_eq!(content_digest(p), want);
    }
}

#[test]
fn subscribers_hear_each_commit() {
    let f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let acme = f.admin.clone();
    let db = env.path("s.db");
    make_db(
        &db,
        DbSpec {
            rows: 400,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
    rt.block_on(push(&ws, "acme/s.db", &db, &with_key(&acme)))
        .assert_ok();

    rt.block_on(async {
        let mut req = format!("{ws}/sapi/subscribe/acme/s.db")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", acme.parse().unwrap());
        let (mut sock, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        // Anonymous subscription to a private replica: 404.
        let anon = tokio_tungstenite::connect_async(format!("{ws}/sapi/subscribe/acme/s.db")).await;
        assert!(
            matches!(anon, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404)
        );

        sock.send(Message::Text(
            r#"{"type":"SUBSCRIBE","data":{"replicaID":"x"},"timestamp":"2026-01-01T00:00:00Z"}"#
                .into(),
        ))
        .await
        .unwrap();
        async fn next_text(
            s: &mut tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        ) -> String {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(20), s.next())
                    .await
                    .expect("a frame in time")
                    .expect("socket open")
                    .unwrap();
                if let Message::Text(t) = m {
                    return t.to_string();
                }
            }
        }
        let sub: serde_json::Value = serde_json::from_str(&next_text(&mut sock).await).unwrap();
        assert_eq!(sub["type"], "SUBSCRIBED");
        assert_eq!(sub["data"]["version"], "1");
        sock.send(Message::Text("PING".into())).await.unwrap();
        let pong: serde_json::Value = serde_json::from_str(&next_text(&mut sock).await).unwrap();
        assert_eq!(
            pong["type"], "PONG",
            "a JSON PONG, as existing clients parse every frame"
        );
        for expect in ["2", "3"] {
            change_rows(&db, 0.1);
            push(&ws, "acme/s.db", &db, &with_key(&acme))
                .await
                .assert_ok();
            let m: serde_json::Value = serde_json::from_str(&next_text(&mut sock).await).unwrap();
            assert_eq!(m["type"], "LATEST_VERSION", "{m}");
            assert_eq!(m["data"]["version"], expect);
            assert!(m["timestamp"].as_str().unwrap().contains('T'));
        }
        sock.send(Message::Text("{\"type\":\"BOGUS\"}".into()))
            .await
            .unwrap();
        let e: serde_json::Value = serde_json::from_str(&next_text(&mut sock).await).unwrap();
        assert_eq!(e["type"], "ERROR");
        sock.send(Message::Text(r#"{"type":"UNSUBSCRIBE","data":{}}"#.into()))
            .await
            .unwrap();
    });
}

#[test]
fn a_cut_push_stores_nothing() {
    let f = Fixture::with("acme", &[]);
    let (env, data, server) = (&f.env, &f.data, f.server());
    let acme = f.admin.clone();
    let db = env.path("cut.db");
    make_db(
        &db,
        DbSpec {
            rows: 1000,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
    rt.block_on(push(&ws, "acme/cut.db", &db, &with_key(&acme)))
        .assert_ok();
    let v1 = content_digest(&db);
    make_db(
        &env.path("unused.db"),
        DbSpec {
            rows: 1,
            ..Default::default()
        },
    );
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("INSERT INTO t(v, n) SELECT randomblob(2000), 1 FROM t", [])
            .unwrap();
    }
    let o = rt.block_on(push(
        &ws,
        "acme/cut.db",
        &db,
        &Opts {
            cut_after: Some(300_000),
            ..with_key(&acme)
        },
    ));
    assert!(!o.ok());
    // The server notices, stores nothing and cleans its staging copy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_in(&data.join("staging")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "staging not cleaned: {:?}",
            files_in(&data.join("staging"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.path("after-cut.db");
    let o = rt.block_on(pull(&ws, "acme/cut.db", &out, &with_key(&acme)));
    o.assert_ok();
    assert_eq!(o.version(), 1);
    assert_eq!(content_digest(&out), v1);
}

#[test]
fn kill_9_during_a_push_keeps_the_latest_whole() {
    let mut f = Fixture::with("acme", &[]);
    let data = f.data.clone();
    let acme = f.admin.clone();
    let db = f.path("k.db");
    make_db(
        &db,
        DbSpec {
            rows: 1000,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = f.ws_url();
    rt.block_on(push(&ws, "acme/k.db", &db, &with_key(&acme)))
        .assert_ok();
    let v1 = content_digest(&db);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        for _ in 0..3 {
            c.execute("INSERT INTO t(v, n) SELECT randomblob(3000), 1 FROM t", [])
                .unwrap();
        }
    }
    // Push in the background; SIGKILL the server once the staging copy is
    // being written.
    let ws2 = ws.clone();
    let db2 = db.clone();
    let key = acme.clone();
    let pusher =
        std::thread::spawn(move || rt.block_on(push(&ws2, "acme/k.db", &db2, &with_key(&key))));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let growing = files_in(&data.join("staging")).iter().any(|f| {
            std::fs::metadata(f)
                .map(|m| m.len() > 200_000)
                .unwrap_or(false)
        });
        if growing {
            break;
        }
        assert!(Instant::now() < deadline, "push never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    f.kill_server();
    let o = pusher.join().unwrap();
    assert!(!o.ok(), "push must not succeed: {o:#?}");

    // Restart: the latest version is still v1, whole; leftovers are gone.
    f.restart_server();
    let server = f.server();
    assert!(files_in(&data.join("staging")).is_empty());
    let rt = self::rt();
    let out = f.path("after-kill.db");
    let o = rt.block_on(pull(&server.ws_url(), "acme/k.db", &out, &with_key(&acme)));
    o.assert_ok();
    assert_eq!(o.version(), 1);
    assert_eq!(content_digest(&out), v1);
    assert_integrity(&out);
    // And the next push works.
    rt.block_on(push(&server.ws_url(), "acme/k.db", &db, &with_key(&acme)))
        .assert_ok();
    f.kill_server();
    let v = run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data));
    assert_ok(&v);
}

#[test]
fn sigterm_stops_gracefully() {
    let env = TestEnv::new();
    let data = env.path("data");
    let mut server = TestServer::start(&env, &data);
    let started = Instant::now();
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
