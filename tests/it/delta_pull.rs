//! Delta pulls (SERVER.md "Delta pulls") against the real server: a pull
//! over a database that is a known version gets only the changed pages and
//! ends equal to the latest, in WAL and rollback mode and when the origin
//! shrank; a subscriber follows versions by deltas; a server that lies in
//! its delta changes nothing (the client falls back to a full pull, or
//! fails with the database intact); a client that offers nothing gets a
//! normal stream; a damaged page cache never corrupts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rusqlite::Connection;
use sqlrsync::wire::delta::{DeltaBegin, DeltaFrame, page_frame};
use sqlrsync::wire::{ServerConfig, ServerText};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::fake::{Fake, Scenario, honest, scenario};
use crate::support::remote::*;
use crate::support::wsrecord::{Dir, WsRecorder};
use crate::support::*;

/// A replica `team/a.db` of `a.db` (`rows` rows) pulled once into `b.db`
/// with the admin key (a full pull: the file is new); returns (a, b).
fn pulled_once(r: &Fixture, rows: u32) -> (PathBuf, PathBuf) {
    let a = r.make("a.db", rows);
    r.first_push("a.db", "team/a.db");
    let o = run(&mut r.admin_cmd(&["team/a.db", "b.db", "--json"]));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["delta"], false, "a new file is pulled in full: {j}");
    (a, r.path("b.db"))
}

/// Pushes `a` again (it has a -sqlrsync file and a stored push key).
fn push_again(r: &Fixture, a: &Path) {
    assert_ok(&run(r.env.sqlrsync().arg(a)));
}

/// Pulls `team/a.db` into b.db with the key of b's -sqlrsync file.
fn pull_b(r: &Fixture, extra: &[&str]) -> std::process::Output {
    let mut c = r.cmd(&["team/a.db", "b.db", "--json"]);
    c.args(extra);
    run(&mut c)
}

fn journal_mode(p: &Path) -> String {
    let c = Connection::open(p).unwrap();
    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

fn page_count(p: &Path) -> u64 {
    let c = Connection::open(p).unwrap();
    c.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

/// Asserts a pull's JSON says a delta of a few pages made `version`, and
/// that `b` equals `a` (rows and version hash) and is sound.
#[track_caller]
fn assert_delta_made(o: &std::process::Output, version: &str, a: &Path, b: &Path) {
    assert_ok(o);
    let j = json(o);
    assert_eq!(j["delta"], true, "{j}\n{}", stderr(o));
    assert_eq!(j["version"], version, "{j}");
    assert_eq!(j["verified"], true, "{j}");
    let (sent, count) = (
        j["pagesSent"].as_u64().unwrap(),
        j["pageCount"].as_u64().unwrap(),
    );
    assert!(sent < count / 2, "a delta of {sent} of {count} pages: {j}");
    assert_eq!(content_digest(b), content_digest(a));
    assert_eq!(version_hash(b), version_hash(a));
    assert_integrity(b);
}

#[test]
fn second_pull_is_a_delta_and_equals_the_origin() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 3000);
    for v in ["2", "3"] {
        change_rows(&a, 0.01);
        push_again(&r, &a);
        let o = pull_b(&r, &[]);
        assert_delta_made(&o, v, &a, &b);
        assert_eq!(journal_mode(&b), "delete");
    }
    // An unchanged pull of the latest again: the server has nothing newer
    // than what b holds, so no delta (N < latest fails) and no change.
    let o = pull_b(&r, &[]);
    assert_ok(&o);
    assert_eq!(json(&o)["delta"], false);
    assert_eq!(content_digest(&b), content_digest(&a));
    assert!(
        r.server().log().contains("delta=true"),
        "the server logs delta pulls"
    );
}

#[test]
fn a_wal_replica_gets_a_delta_and_stays_in_wal() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 3000);
    {
        let c = Connection::open(&b).unwrap();
        let m: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(m, "wal");
    }
    change_rows(&a, 0.01);
    push_again(&r, &a);
    let o = pull_b(&r, &[]);
    assert_delta_made(&o, "2", &a, &b);
    assert_eq!(journal_mode(&b), "wal", "a WAL replica is kept in WAL");
    // And again, from the WAL replica's page cache entry.
    change_rows(&a, 0.01);
    push_again(&r, &a);
    assert_delta_made(&pull_b(&r, &[]), "3", &a, &b);
}

#[test]
fn a_shrunk_origin_truncates_the_replica() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 4000);
    let before = page_count(&b);
    {
        let c = Connection::open(&a).unwrap();
        c.execute_batch("DELETE FROM t WHERE id > 3000; VACUUM;")
            .unwrap();
    }
    assert!(page_count(&a) < before, "the origin shrank");
    push_again(&r, &a);
    let o = pull_b(&r, &[]);
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["delta"], true, "{j}");
    assert_eq!(j["pageCount"].as_u64().unwrap(), page_count(&a), "{j}");
    assert_eq!(page_count(&b), page_count(&a), "the replica was truncated");
    assert_eq!(std::fs::metadata(&b).unwrap().len(), page_count(&a) * 4096);
    assert_eq!(content_digest(&b), content_digest(&a));
    assert_eq!(version_hash(&b), version_hash(&a));
    assert_integrity(&b);
}

#[test]
fn a_grown_origin_extends_the_replica_by_a_delta() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 2000);
    for v in ["2", "3"] {
        // New pages past the replica's end: before the commit,
        // sqlite_dbpage does not list them, and the check must still pass.
        let before = page_count(&a);
        {
            let c = Connection::open(&a).unwrap();
            c.execute_batch("INSERT INTO t(v, n) SELECT randomblob(200), n FROM t LIMIT 500")
                .unwrap();
        }
        assert!(page_count(&a) > before, "the origin grew");
        push_again(&r, &a);
        let o = pull_b(&r, &[]);
        assert_delta_made(&o, v, &a, &b);
        assert_eq!(page_count(&b), page_count(&a));
        assert_integrity(&b);
    }
}

#[test]
fn a_subscriber_follows_versions_by_deltas() {
    let r = Fixture::start();
    let a = r.make("a.db", 2000);
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
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = JsonLines::of(&mut child);
    let next = |what: &str| lines.next(what);
    let j = next("version 1");
    assert_eq!(
        (j["version"].as_str(), j["delta"].as_bool()),
        (Some("1"), Some(false)),
        "{j}"
    );
    for v in ["2", "3", "4"] {
        change_rows(&a, 0.02);
        push_again(&r, &a);
        let j = next(v);
        assert_eq!(j["version"], v, "{j}");
        assert_eq!(j["delta"], true, "{j}");
        assert_eq!(j["verified"], true, "{j}");
    }
    sigkill(&mut child);
    let _ = child.wait();
    let sub = r.path("sub.db");
    assert_eq!(content_digest(&sub), content_digest(&a));
    assert_eq!(version_hash(&sub), version_hash(&a));
    assert_integrity(&sub);
}

/// How the lying fake lies.
#[derive(Clone, Copy)]
enum Lie {
    /// Page 2 of the result is garbage.
    WrongPage,
    /// DELTA_END (and CONFIG) name a version no page set makes.
    WrongEnd,
    /// ABORT halfway through the pages.
    AbortHalfway,
}

/// A fake that answers the delta offer with every page of `db` (as a
/// delta from the version offered) and lies as `lie` says.
// The handshake callback's error type is tungstenite's own.
#[allow(clippy::result_large_err)]
fn lying_delta(db: PathBuf, lie: Lie) -> Scenario {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    scenario(move |tcp| async move {
        let have = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = have.clone();
        let answer = move |req: &Request, mut resp: Response| {
            let h = req
                .headers()
                .get("x-sqlrsync-delta-have")
                .map(|v| v.to_str().unwrap().to_string());
            *seen.lock().unwrap() = h;
            resp.headers_mut()
                .insert("x-sqlrsync-delta", "1".parse().unwrap());
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, answer)
            .await
            .unwrap();
        let have = have
            .lock()
            .unwrap()
            .clone()
            .expect("the client offers a delta");
        let (n, x) = have.split_once(':').unwrap();
        let bytes = std::fs::read(&db).unwrap();
        let pages: Vec<&[u8]> = bytes.chunks(4096).collect();
        let begin = DeltaFrame::Begin(DeltaBegin {
            base_version: n.parse().unwrap(),
            base_xxh3: hex::decode(x).unwrap().try_into().unwrap(),
            page_size: 4096,
            page_count: pages.len() as u32,
        });
        let _ = ws.send(Message::Binary(begin.encode().into())).await;
        for (i, p) in pages.iter().enumerate() {
            if i == pages.len() / 2 && matches!(lie, Lie::AbortHalfway) {
                let _ = ws.send(Message::Text("ABORT=disk on fire".into())).await;
                // Read on until the client closes: a socket dropped with
                // unread input is reset, which may destroy the ABORT.
                drain(&mut ws).await;
                return 1;
            }
            let mut p = p.to_vec();
            if i == 1 && matches!(lie, Lie::WrongPage) {
                p.iter_mut().for_each(|b| *b = 0x5a);
            }
            let _ = ws
                .send(Message::Binary(page_frame(i as u32 + 1, &p).into()))
                .await;
        }
        let truth = sqlrsync::sqlite::pages::snapshot(&db, &[], 0, 0)
            .unwrap()
            .version_xxh3();
        let end = match lie {
            Lie::WrongEnd => "ab".repeat(16),
            _ => truth,
        };
        let frame = DeltaFrame::End {
            version_xxh3: hex::decode(&end).unwrap().try_into().unwrap(),
        };
        let _ = ws.send(Message::Binary(frame.encode().into())).await;
        let cfg = ServerConfig {
            committed_version_id: Some("2".into()),
            version_hash: Some(version_hash(&db)),
            version_xxh3: Some(end),
            ..Default::default()
        };
        // One CONFIG after the delta, one for the client's KEYREQUEST.
        for _ in 0..2 {
            let text = ServerText::Config(cfg.clone()).encode();
            let _ = ws.send(Message::Text(text.into())).await;
        }
        drain(&mut ws).await;
        1
    })
}

/// Reads what the client sends until its close (at most 10 s), then closes.
async fn drain(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    let _ = ws.close(None).await;
}

/// b.db at version 1 of the real server, a.db changed (version 2, not
/// pushed) and a copy of it as the fakes' version 2.
fn lie_setup(r: &Fixture) -> (PathBuf, PathBuf, String) {
    let (a, b) = pulled_once(r, 2000);
    let v1 = content_digest(&b);
    change_rows(&a, 0.02);
    let v2 = r.path("v2.db");
    std::fs::copy(&a, &v2).unwrap();
    (v2, b, v1)
}

#[test]
fn a_lying_server_changes_nothing_and_the_full_pull_follows() {
    let r = Fixture::start();
    let (v2, b, v1) = lie_setup(&r);
    let cfg = ServerConfig {
        committed_version_id: Some("2".into()),
        version_hash: Some(version_hash(&v2)),
        ..Default::default()
    };
    let fake = Fake::start_many(vec![
        lying_delta(v2.clone(), Lie::WrongPage),
        honest("--origin", v2.clone(), cfg),
    ]);
    // -v says why the delta was not used (--json would not).
    let o = run(r
        .env
        .sqlrsync()
        .args(["team/a.db", "b.db", "-v", "--server", &fake.url]));
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("the delta pull was not used") && err.contains("did not make the version"),
        "{err}"
    );
    assert!(
        err.contains("version 2, ") && err.contains(", verified"),
        "{err}"
    );
    assert!(!err.contains("as a delta"), "{err}");
    assert_ne!(content_digest(&b), v1);
    assert_eq!(content_digest(&b), content_digest(&v2));
    assert_eq!(version_hash(&b), version_hash(&v2));
    assert_integrity(&b);
    assert!(fake.sent() > 0);
}

#[test]
fn a_lying_server_alone_fails_the_pull_with_the_database_intact() {
    let r = Fixture::start();
    let (v2, b, v1) = lie_setup(&r);
    let hash_before = version_hash(&b);
    // No second scenario: the full pull that follows finds nobody.
    let fake = Fake::start(lying_delta(v2.clone(), Lie::WrongEnd));
    let o = run(r
        .env
        .sqlrsync()
        .args(["team/a.db", "b.db", "--server", &fake.url]));
    assert_one_line_error(&o, "cannot reach the server");
    assert_eq!(content_digest(&b), v1, "the delta was rolled back");
    assert_eq!(version_hash(&b), hash_before);
    assert_integrity(&b);
    let _ = fake.sent();
    // The cache entry the lie was built on is gone: the next pull from the
    // real server is a full one, and right.
    let o = pull_b(&r, &[]);
    assert_ok(&o);
    assert_eq!(json(&o)["delta"], false);
    assert_eq!(
        content_digest(&b),
        v1,
        "the real server still has version 1"
    );
}

#[test]
fn a_client_that_offers_nothing_gets_a_normal_stream() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 2000);
    let addr = r.ws_url().trim_start_matches("ws://").to_string();
    let rec = WsRecorder::start(&addr);
    change_rows(&a, 0.01);
    push_again(&r, &a);
    // With compatible frames the client offers nothing.
    let o = run(r
        .admin_cmd_to(&rec.ws_url(), &["team/a.db", "b.db", "--json"])
        .env("SQLRSYNC_COMPAT_FRAMES", "1"));
    assert_ok(&o);
    assert_eq!(json(&o)["delta"], false);
    assert_eq!(content_digest(&b), content_digest(&a));
    // The next pull offers, and the answer is a delta.
    change_rows(&a, 0.01);
    push_again(&r, &a);
    // (With the admin key, so the client also asks for a key: the server
    // answers that KEYREQUEST in a CONFIG of its own.)
    let o = run(&mut r.admin_cmd_to(&rec.ws_url(), &["team/a.db", "b.db", "--json"]));
    assert_delta_made(&o, "3", &a, &b);
    let conns = rec.connections(Duration::from_secs(10));
    assert_eq!(conns.len(), 2, "{conns:#?}");
    let (plain, delta) = (&conns[0], &conns[1]);
    assert_eq!(plain.request_header("x-sqlrsync-delta"), None);
    assert_eq!(plain.request_header("x-sqlrsync-delta-have"), None);
    assert_eq!(
        plain.response_header("x-sqlrsync-delta"),
        None,
        "{}",
        plain.summary()
    );
    assert_eq!(
        plain.binary(Dir::Down).next().and_then(|f| f.first_byte()),
        Some(0x41)
    );
    assert!(
        delta
            .request_header("x-sqlrsync-delta-have")
            .unwrap()
            .starts_with("2:")
    );
    assert_eq!(
        delta.response_header("x-sqlrsync-delta").as_deref(),
        Some("1")
    );
    assert_eq!(
        delta.binary(Dir::Down).next().and_then(|f| f.first_byte()),
        Some(0x56)
    );
}

/// Opens a raw pull with `extra` headers; returns the answer's delta
/// header and the first byte of the first binary frame.
async fn raw_pull(url: &str, key: &str, extra: &[(&str, &str)]) -> (Option<String>, Option<u8>) {
    let mut req = format!("{url}/sapi/pull/team/a.db")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", key.parse().unwrap());
    for (k, v) in extra {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes());
        req.headers_mut().insert(name.unwrap(), v.parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let answer = resp
        .headers()
        .get("x-sqlrsync-delta")
        .map(|v| v.to_str().unwrap().to_string());
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                return b.first().copied();
            }
        }
        None
    })
    .await
    .unwrap_or(None);
    let _ = ws.close(None).await;
    (answer, first)
}

#[test]
fn the_server_answers_only_a_well_formed_offer_it_can_serve() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 1000);
    let v1 = sqlrsync::sqlite::pages::snapshot(&b, &[], 0, 0)
        .unwrap()
        .version_xxh3();
    change_rows(&a, 0.05);
    push_again(&r, &a);
    let have = format!("1:{v1}");
    let wrong = format!("1:{}", "0".repeat(32));
    let rt = crate::support::driver::rt();
    let url = r.ws_url();
    // (request headers, the answer's delta header, first binary byte)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, u8);
    let cases: Vec<Case> = vec![
        (
            vec![("x-sqlrsync-delta", "1"), ("x-sqlrsync-delta-have", &have)],
            Some("1"),
            0x56,
        ),
        (vec![("x-sqlrsync-delta-have", &have)], None, 0x41),
        (vec![("x-sqlrsync-delta", "1")], None, 0x41),
        (
            vec![
                ("x-sqlrsync-delta", "1"),
                ("x-sqlrsync-delta-have", "garbage"),
            ],
            None,
            0x41,
        ),
        (
            vec![("x-sqlrsync-delta", "1"), ("x-sqlrsync-delta-have", &wrong)],
            None,
            0x41,
        ),
        (
            vec![("x-sqlrsync-delta", "2"), ("x-sqlrsync-delta-have", &have)],
            None,
            0x41,
        ),
        (
            vec![("x-sqlrsync-delta", "1"), ("x-sqlrsync-delta-have", "7:00")],
            None,
            0x41,
        ),
    ];
    for (headers, answer, first) in cases {
        let got = rt.block_on(raw_pull(&url, &r.admin, &headers));
        assert_eq!(
            got,
            (answer.map(str::to_string), Some(first)),
            "{headers:?}"
        );
    }
    // An older version asked for is served whole, whatever the offer.
    let h = [
        ("x-sqlrsync-delta", "1"),
        ("x-sqlrsync-delta-have", have.as_str()),
        ("x-replicaversion", "1"),
    ];
    assert_eq!(
        rt.block_on(raw_pull(&url, &r.admin, &h)),
        (None, Some(0x41))
    );
}

/// The page cache file of b.db for `team/a.db`.
fn cache_file(r: &Fixture, b: &Path) -> PathBuf {
    use sha2::Digest;
    let local = std::fs::canonicalize(b).unwrap();
    let mut h = sha2::Sha256::new();
    for part in ["team/a.db".as_bytes(), local.as_os_str().as_encoded_bytes()] {
        h.update(part);
        h.update([0u8]);
    }
    let name = format!("{}.pages", hex::encode(&h.finalize()[..16]));
    r.env.home().join(".cache/sqlrsync/pages").join(name)
}

/// Where an entry's digests start: magic, id length and id, version,
/// versionXxh3, page size, page count.
fn digests_at(entry: &[u8]) -> usize {
    10 + u16::from_be_bytes([entry[8], entry[9]]) as usize + 8 + 16 + 4 + 4
}

/// Garbage in place of the entry.
fn garbage(_: &[u8], _: &Path) -> Vec<u8> {
    b"SQLRPG1\nnot a cache entry".to_vec()
}

/// The entry with three made-up digests in place of its own.
fn other_page_count(entry: &[u8], _: &Path) -> Vec<u8> {
    let head = digests_at(entry);
    let mut v = entry[..head].to_vec();
    v[head - 4..head].copy_from_slice(&3u32.to_be_bytes());
    v.extend_from_slice(&[7u8; 48]);
    v
}

/// The entry claiming the versionXxh3 of `a` (another version).
fn other_xxh3(entry: &[u8], a: &Path) -> Vec<u8> {
    let x = sqlrsync::sqlite::pages::snapshot(a, &[], 0, 0)
        .unwrap()
        .version_xxh3();
    let mut v = entry.to_vec();
    let at = digests_at(entry) - 24;
    v[at..at + 16].copy_from_slice(&hex::decode(x).unwrap());
    v
}

#[test]
fn a_damaged_or_stale_page_cache_never_corrupts() {
    let r = Fixture::start();
    let (a, b) = pulled_once(&r, 2000);
    let file = cache_file(&r, &b);
    type Damage = fn(&[u8], &Path) -> Vec<u8>;
    let damages: [(&str, Damage, bool); 3] = [
        ("garbage", garbage, false),
        ("the digests of another page count", other_page_count, true),
        ("another version's versionXxh3", other_xxh3, false),
    ];
    for (i, (what, damage, refused)) in damages.into_iter().enumerate() {
        let entry = std::fs::read(&file).expect("each verified pull keeps an entry");
        change_rows(&a, 0.01);
        push_again(&r, &a);
        let damaged = damage(&entry, &a);
        std::fs::write(&file, &damaged).unwrap();
        // -v (no --json): the summary line and the note of a refused delta.
        let o = run(&mut r.cmd(&["team/a.db", "b.db", "-v"]));
        assert_ok(&o);
        let err = stderr(&o);
        let summary = format!("version {}, ", i + 2);
        assert!(
            err.contains(&summary) && err.contains(", verified"),
            "{what}: {err}"
        );
        assert!(!err.contains("as a delta"), "{what}: {err}");
        assert_eq!(
            err.contains("the delta pull was not used"),
            refused,
            "{what}: {err}"
        );
        assert_eq!(content_digest(&b), content_digest(&a), "{what}");
        assert_eq!(version_hash(&b), version_hash(&a), "{what}");
        assert_integrity(&b);
        let now = std::fs::read(&file).unwrap();
        assert_ne!(now, damaged, "{what}: the entry was replaced");
    }
    // And the entry the last pull left makes the next pull a delta again.
    change_rows(&a, 0.01);
    push_again(&r, &a);
    assert_delta_made(&pull_b(&r, &[]), "5", &a, &b);
}

#[test]
fn an_abort_mid_delta_fails_like_any_pull_and_changes_nothing() {
    let r = Fixture::start();
    let (v2, b, v1) = lie_setup(&r);
    let fake = Fake::start(lying_delta(v2, Lie::AbortHalfway));
    let o = run(r
        .env
        .sqlrsync()
        .args(["team/a.db", "b.db", "--server", &fake.url]));
    // No full pull after it: the server said no.
    assert_one_line_error(&o, "the server aborted: disk on fire");
    assert!(stderr(&o).contains("the local database is unchanged"));
    assert_eq!(content_digest(&b), v1);
    assert_integrity(&b);
    assert_eq!(fake.sent(), 1, "the fake served exactly one connection");
}
