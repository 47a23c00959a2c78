//! The server against the public sqlrsync.com client as it behaves on the
//! wire (support/strict.rs): frames of at most 4101 bytes, any frame
//! starting with 0x42 taken for ORIGIN_END, CONFIG and KEYREQUEST right
//! after the first stream frame even in the middle of a message, frames
//! still queued dropped when the server closes first; and its subscriber
//! across a graceful restart. Then our own client through a frame recorder
//! (support/wsrecord.rs): against a server that does not announce large
//! frames it sends none and receives none, and against the default server
//! the large frames are offered, answered and used.

use std::time::Duration;

use crate::support::driver::rt;
use crate::support::remote::dash_pull_key;
use crate::support::strict::{self, GO_BUFFER, StrictOutcome, Subscriber};
use crate::support::wsrecord::{ConnRecord, Dir, WsRecorder};
use crate::support::*;

/// Rows of about 1 KB of random bytes: a database of `rows` KB whose
/// pages all differ.
fn make_big(path: &std::path::Path, rows: u32) {
    make_db(
        path,
        DbSpec {
            rows,
            row_bytes: 1000,
            ..Default::default()
        },
    );
}

fn page_count(path: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
}

/// Pushes the changes of `db` (already pushed once) with our client and
/// its stored push key.
fn push_again(fx: &Fixture, db: &std::path::Path) {
    assert_ok(&run(fx.env.sqlrsync().arg(db)));
}

/// The `--replicaID=` value of a -sqlrsync file.
fn dash_replica_id(db: &std::path::Path) -> String {
    let text = std::fs::read_to_string(format!("{}-sqlrsync", db.display())).unwrap();
    let at = text.find("--replicaID=").expect("a replicaID") + "--replicaID=".len();
    text[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect()
}

#[track_caller]
fn assert_same(fx: &Fixture, got: &std::path::Path, want: &str, o: &StrictOutcome) {
    assert_eq!(
        content_digest(got),
        want,
        "content of {} differs; outcome: {o:#?}\n(server log: {})",
        got.display(),
        fx.server().log_path.display()
    );
}

#[test]
fn strict_pull_into_a_new_file() {
    let fx = Fixture::start();
    let a = fx.path("a.db");
    make_big(&a, 13_000);
    assert!(page_count(&a) >= 3000, "{} pages", page_count(&a));
    fx.first_push("a.db", "team/a.db");
    // The admin key: only its KEYREQUEST mints a pull key, which shows
    // that the server heard it.
    let out = fx.path("pulled.db");
    let o = rt().block_on(strict::pull(
        &fx.ws_url(),
        "team/a.db",
        &out,
        Some(&fx.admin),
        "",
        true,
    ));
    o.assert_ok("pull", &fx.server().log_path);
    assert_same(&fx, &out, &content_digest(&a), &o);
    // Every page came in a frame the Go client's buffer holds.
    assert!(o.largest_frame_in <= GO_BUFFER, "{o:#?}");
    assert!(o.frames_in as i64 >= page_count(&a), "{o:#?}");
    assert_eq!(
        o.config("committedVersionID").as_deref(),
        Some("1"),
        "{o:#?}"
    );
    // The KEYREQUEST sent right after the first stream frame was heard.
    assert!(o.config("newPullKey").is_some(), "{o:#?}");
}

#[test]
fn strict_pull_over_an_older_copy() {
    let fx = Fixture::start();
    let a = fx.path("a.db");
    make_big(&a, 21_000);
    fx.first_push("a.db", "team/a.db");
    let old = fx.path("old.db");
    std::fs::copy(&a, &old).unwrap();
    assert!(change_rows(&a, 0.05) > 0);
    push_again(&fx, &a);
    // The replica side hashes the pages of the old copy (a long stream of
    // fine hashes once the origin asks for details, sent in reads that cut
    // messages anywhere), and its first frame, followed by CONFIG and
    // KEYREQUEST, ends in the middle of a hash.
    let o = rt().block_on(strict::session(strict::Spec {
        ws_url: &fx.ws_url(),
        remote_path: "team/a.db",
        db: &old,
        // The admin key, whose KEYREQUEST mints a pull key (below).
        key: Some(&fx.admin),
        keyrequest: true,
        replica_id: Some(&dash_replica_id(&a)),
        role: strict::Role::Pull {
            version: String::new(),
        },
        cut_first: Some(10),
    }));
    assert!(o.first_frame_mid_message, "{o:#?}");
    o.assert_ok("pull over an older copy", &fx.server().log_path);
    assert_same(&fx, &old, &content_digest(&a), &o);
    assert!(o.frames_out >= 20, "a short hash stream: {o:#?}");
    assert_eq!(
        o.config("committedVersionID").as_deref(),
        Some("2"),
        "{o:#?}"
    );
    assert!(o.config("newPullKey").is_some(), "{o:#?}");
}

#[test]
fn strict_pull_of_older_versions() {
    let fx = Fixture::start();
    let a = fx.path("a.db");
    make_big(&a, 4000);
    fx.first_push("a.db", "team/a.db");
    let v1 = content_digest(&a);
    change_rows(&a, 0.1);
    push_again(&fx, &a);
    let v2 = content_digest(&a);
    change_rows(&a, 0.1);
    push_again(&fx, &a);
    let v3 = content_digest(&a);
    let key = dash_pull_key(&a);
    let rt = rt();
    // New files for @1 and @latest-1, then @2 over the copy of @1 and the
    // latest over that.
    for (file, version, want, number) in [
        ("p1.db", "1", &v1, "1"),
        ("pm.db", "-1", &v2, "2"),
        ("p1.db", "2", &v2, "2"),
        ("p1.db", "", &v3, "3"),
    ] {
        let out = fx.path(file);
        let o = rt.block_on(strict::pull(
            &fx.ws_url(),
            "team/a.db",
            &out,
            Some(&key),
            version,
            false,
        ));
        o.assert_ok(&format!("pull of {version:?}"), &fx.server().log_path);
        assert_same(&fx, &out, want, &o);
        assert_eq!(
            o.config("committedVersionID").as_deref(),
            Some(number),
            "{o:#?}"
        );
    }
}

#[test]
fn strict_push_of_a_large_database_over_an_existing_replica() {
    let fx = Fixture::start();
    let a = fx.path("a.db");
    make_big(&a, 21_000);
    fx.first_push("a.db", "team/a.db");
    assert!(change_rows(&a, 0.25) > 1000);
    let want = content_digest(&a);
    // The server's replica side answers with a hash of every stored page:
    // a long stream back to the pusher, which must come in frames the Go
    // client's buffer holds.
    let o = rt().block_on(strict::push(
        &fx.ws_url(),
        "team/a.db",
        &a,
        Some(&fx.admin),
        false,
    ));
    o.assert_ok("push", &fx.server().log_path);
    assert!(o.largest_frame_in <= GO_BUFFER, "{o:#?}");
    assert!(o.frames_in >= 25, "a short hash stream: {o:#?}");
    assert!(o.largest_frame_out <= GO_BUFFER, "{o:#?}");
    assert_eq!(
        o.config("committedVersionID").as_deref(),
        Some("2"),
        "{o:#?}"
    );
    // What was stored is what was pushed: pulled back by our client.
    let key = dash_pull_key(&a);
    assert_ok(&run(&mut fx.cmd(&[
        "team/a.db",
        "back.db",
        "--pullKey",
        &key,
    ])));
    assert_same(&fx, &fx.path("back.db"), &want, &o);
    assert_integrity(&fx.path("back.db"));
}

#[test]
fn strict_subscriber_across_a_graceful_restart() {
    let mut fx = Fixture::start();
    let a = fx.make("a.db", 800);
    fx.first_push("a.db", "team/a.db");
    let key = dash_pull_key(&a);
    let rt = rt();
    let sub = Subscriber::start(
        rt.handle(),
        &fx.ws_url(),
        "team/a.db",
        Some(&key),
        &dash_replica_id(&a),
        Duration::from_secs(30),
    );
    let wait = Duration::from_secs(20);
    // Problems that do not stop the test; all are reported at the end (or
    // with a later hard failure).
    let mut problems: Vec<String> = Vec::new();
    let log = fx.server().log_path.clone();
    let hard = |what: &str, s: &strict::SubState, problems: &[String]| -> ! {
        panic!(
            "{what}\nsubscriber: {s:#?}\nother problems: {problems:#?}\n(server log: {})",
            log.display()
        )
    };

    let (ok, s) = sub.wait_for(wait, |s| {
        s.messages.iter().any(|m| m["type"] == "SUBSCRIBED")
    });
    if !ok {
        hard("no SUBSCRIBED", &s, &problems);
    }
    // A plain PING gets a JSON answer of type PONG (the Go client parses
    // every text frame as JSON).
    match sub.ping(Duration::from_secs(10)) {
        None => problems.push("no answer to PING".into()),
        Some(t) => match serde_json::from_str::<serde_json::Value>(&t) {
            Ok(v) if v["type"] == "PONG" => {}
            Ok(v) => problems.push(format!("PING answered with {v}, not a PONG")),
            Err(e) => problems.push(format!("PING answered with non-JSON {t:?} ({e})")),
        },
    }

    change_rows(&a, 0.05);
    push_again(&fx, &a);
    let (ok, s) = sub.wait_version("LATEST_VERSION", "2", wait);
    if !ok {
        hard("no LATEST_VERSION 2", &s, &problems);
    }

    // A graceful stop closes the subscriber with 1012 (service restart):
    // not final, so the Go client reconnects.
    let addr = fx.stop_server();
    let (ok, s) = sub.wait_for(wait, |s| !s.close_codes.is_empty());
    if !ok {
        hard("the subscriber never saw its connection end", &s, &problems);
    }
    if s.close_codes[0] != Some(1012) {
        problems.push(format!(
            "closed at shutdown with {:?}, not 1012",
            s.close_codes[0]
        ));
    }
    fx.restart_server_at(&addr);
    let (ok, s) = sub.wait_for(wait, |s| {
        s.connections >= 2
            && s.messages
                .iter()
                .filter(|m| m["type"] == "SUBSCRIBED")
                .count()
                >= 2
    });
    if !ok {
        hard(
            "the subscriber did not reconnect and subscribe again after the restart",
            &s,
            &problems,
        );
    }

    change_rows(&a, 0.05);
    push_again(&fx, &a);
    let (ok, s) = sub.wait_version("LATEST_VERSION", "3", wait);
    if !ok {
        hard("no LATEST_VERSION 3 after the restart", &s, &problems);
    }
    assert!(!s.stopped, "{s:#?}");
    assert!(
        problems.is_empty(),
        "{problems:#?}\nsubscriber: {s:#?}\n(server log: {})",
        log.display()
    );
}

/// Pushes a several-MB database and pulls it back with our client through
/// a recorder in front of `fx`'s server; returns the (push, pull)
/// connections.
fn push_and_pull_recorded(fx: &Fixture, rows: u32) -> (ConnRecord, ConnRecord) {
    let rec = WsRecorder::start(&fx.server().addr);
    let a = fx.path("a.db");
    make_big(&a, rows);
    let url = rec.ws_url();
    assert_ok(&run(&mut fx.admin_cmd_to(&url, &["a.db", "team/a.db"])));
    let key = dash_pull_key(&a);
    assert_ok(&run(fx.env.sqlrsync().args([
        "team/a.db",
        "b.db",
        "--pullKey",
        &key,
        "--server",
        &url,
    ])));
    assert_eq!(content_digest(&fx.path("b.db")), content_digest(&a));
    let conns = rec.connections(Duration::from_secs(10));
    let find = |p: &str| {
        conns
            .iter()
            .find(|c| c.path().starts_with(p))
            .unwrap_or_else(|| panic!("no {p} connection among {conns:#?}"))
            .clone()
    };
    let (push, pull) = (find("/sapi/push/"), find("/sapi/pull/"));
    for c in [&push, &pull] {
        // Whole messages in single frames, masked from the client only:
        // the sizes below are the sizes a peer's buffer must hold.
        for f in c.frames.iter().filter(|f| f.opcode < 8) {
            assert!(f.fin, "a fragmented message {f:?}: {}", c.summary());
            assert_eq!(f.masked, f.dir == Dir::Up, "{f:?}: {}", c.summary());
        }
    }
    // The recorder saw the pages go by (so its frame sizes mean something).
    let bytes = |c: &ConnRecord, d| c.binary(d).map(|f| f.len).sum::<u64>();
    let db_bytes = std::fs::metadata(&a).unwrap().len();
    assert!(bytes(&push, Dir::Up) >= db_bytes, "{}", push.summary());
    assert!(bytes(&pull, Dir::Down) >= db_bytes, "{}", pull.summary());
    (push, pull)
}

const MAX_FRAME_HEADER: &str = "X-Sqlrsync-Max-Frame";

/// A server->client binary frame starting with 0x42 (what the Go client
/// takes for ORIGIN_END) is a lone ORIGIN_END, and nothing but a lone
/// NEWREPLICAVERSION follows it.
#[track_caller]
fn assert_end_alone(c: &ConnRecord) {
    let down: Vec<_> = c.binary(Dir::Down).collect();
    if let Some(i) = down.iter().position(|f| f.first_byte() == Some(0x42)) {
        assert_eq!(down[i].len, 1, "{:?}: {}", down[i], c.summary());
        for f in &down[i + 1..] {
            assert!(
                f.len == 1 && f.first_byte() == Some(0x52),
                "{f:?} after the frame taken for ORIGIN_END: {}",
                c.summary()
            );
        }
    }
}

#[test]
fn our_client_against_a_server_that_does_not_announce_large_frames() {
    let fx = Fixture::with("team", &["--compat-frames"]);
    let (push, pull) = push_and_pull_recorded(&fx, 6000);
    assert!(
        pull.binary(Dir::Down).any(|f| f.first_byte() == Some(0x42)),
        "no ORIGIN_END frame: {}",
        pull.summary()
    );
    for c in [&push, &pull] {
        assert_eq!(c.status(), Some(101), "{}", c.summary());
        for d in [Dir::Up, Dir::Down] {
            assert!(
                c.largest_binary(d) <= GO_BUFFER as u64,
                "a frame over {GO_BUFFER} bytes {d:?}: {}\n(server log: {})",
                c.summary(),
                fx.server().log_path.display()
            );
        }
        assert_end_alone(c);
        assert!(
            c.request_header(MAX_FRAME_HEADER).is_some(),
            "our client offers large frames ({MAX_FRAME_HEADER}): {}",
            c.summary()
        );
        assert!(
            c.response_header(MAX_FRAME_HEADER).is_none(),
            "a --compat-frames server accepts none ({MAX_FRAME_HEADER}): {}",
            c.summary()
        );
    }
}

#[test]
fn our_client_and_the_default_server_use_large_frames() {
    let fx = Fixture::start();
    let (push, pull) = push_and_pull_recorded(&fx, 6000);
    for c in [&push, &pull] {
        assert!(
            c.request_header(MAX_FRAME_HEADER).is_some(),
            "our client offers large frames ({MAX_FRAME_HEADER}): {}",
            c.summary()
        );
        assert!(
            c.response_header(MAX_FRAME_HEADER).is_some(),
            "the server accepts large frames ({MAX_FRAME_HEADER}): {}\n(server log: {})",
            c.summary(),
            fx.server().log_path.display()
        );
    }
    assert!(
        push.largest_binary(Dir::Up) > GO_BUFFER as u64,
        "a big push with large frames negotiated sent none: {}",
        push.summary()
    );
}

#[test]
fn strict_push_creates_a_replica() {
    let fx = Fixture::start();
    let a = fx.path("a.db");
    make_big(&a, 4000);
    let o = rt().block_on(strict::push(
        &fx.ws_url(),
        "team/new.db",
        &a,
        Some(&fx.admin),
        true,
    ));
    o.assert_ok("first push", &fx.server().log_path);
    assert_eq!(
        o.config("committedVersionID").as_deref(),
        Some("1"),
        "{o:#?}"
    );
    let key = o.config("newPullKey").expect("KEYREQUEST answered");
    assert!(o.config("newPushKey").is_some(), "{o:#?}");
    assert_ok(&run(&mut fx.cmd(&[
        "team/new.db",
        "back.db",
        "--pullKey",
        &key,
    ])));
    assert_same(&fx, &fx.path("back.db"), &content_digest(&a), &o);
}

/// The strict peer itself, against a fake origin that frames as the Go
/// client needs (whole messages, at most 4101 bytes, ORIGIN_END alone,
/// waits for the client's close): it pulls into a new file and over an
/// older copy (a long hash stream back) and says ok. Against the same
/// origin packing its messages into frames of up to 64 KiB, it says not
/// ok, for the frames over 4101 bytes.
#[test]
fn strict_peer_against_fake_origins() {
    use crate::support::fake::Fake;
    let env = TestEnv::new();
    let a = env.path("a.db");
    make_big(&a, 3000);
    let rt = rt();
    for (max, file, change) in [
        (GO_BUFFER, "out.db", false),
        (GO_BUFFER, "out.db", true),
        (65536, "big-frames.db", false),
    ] {
        if change {
            change_rows(&a, 0.1);
        }
        let out = env.path(file);
        let fake = Fake::start(fake_origin::scenario(a.clone(), max));
        // Over the older copy, the first frame is cut inside a hash.
        let o = rt.block_on(strict::session(strict::Spec {
            ws_url: &fake.url,
            remote_path: "team/x.db",
            db: &out,
            key: None,
            keyrequest: true,
            replica_id: None,
            role: strict::Role::Pull {
                version: String::new(),
            },
            cut_first: change.then_some(10),
        }));
        assert_eq!(o.first_frame_mid_message, change, "{o:#?}");
        if max == GO_BUFFER {
            assert!(o.ok, "{o:#?}");
            assert!(o.largest_frame_in <= GO_BUFFER, "{o:#?}");
            assert_eq!(content_digest(&out), content_digest(&a));
            assert!(!o.server_closed_first, "{o:#?}");
            assert!(o.frames_out >= if change { 5 } else { 2 }, "{o:#?}");
        } else {
            assert!(!o.ok, "{o:#?}");
            assert!(o.frames_over_limit > 0, "{o:#?}");
        }
        // The fake served its one connection to its end.
        fake.sent();
    }
}

/// A fake `/sapi/pull/` server: the real helper as ORIGIN, its stream cut
/// into frames at message boundaries (at most `max` bytes, ORIGIN_END
/// alone).
mod fake_origin {
    use std::path::PathBuf;

    use futures_util::{SinkExt, StreamExt};
    use sqlrsync::helper::HelperCommand;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    use crate::support::fake::{self, Scenario};

    /// Length of the origin message at the start of `b`, once it is whole.
    fn message_len(b: &[u8], page: Option<usize>) -> Option<usize> {
        let u32at = |i: usize| {
            b.get(i..i + 4)
                .map(|s| u32::from_be_bytes(s.try_into().unwrap()) as usize)
        };
        let n = match *b.first()? {
            0x41 => 7,
            0x42 | 0x48 => 1,
            0x45 => 5,
            0x47 => 9,
            0x43 | 0x46 => 5 + u32at(1)?,
            0x44 => 5 + page.expect("ORIGIN_BEGIN first"),
            t => panic!("not an origin message: {t:#04x}"),
        };
        (b.len() >= n).then_some(n)
    }

    /// Takes the whole messages off `pending`, packed into frames of at
    /// most `max` bytes.
    fn frames(pending: &mut Vec<u8>, page: &mut Option<usize>, max: usize) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut at = 0;
        while let Some(n) = message_len(&pending[at..], *page) {
            let m = &pending[at..at + n];
            if m[0] == 0x41 {
                *page = Some(1 << m[2]);
            }
            if (m[0] == 0x42 || cur.len() + n > max) && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.extend_from_slice(m);
            if m[0] == 0x42 {
                out.push(std::mem::take(&mut cur));
            }
            at += n;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        pending.drain(..at);
        out
    }

    pub fn scenario(db: PathBuf, max: usize) -> Scenario {
        fake::scenario(move |tcp| async move {
            let mut ws = fake::upgrade(tcp).await;
            let cfg = r#"CONFIG={"committedVersionID":"1"}"#;
            let _ = ws.send(Message::Text(cfg.into())).await;
            let mut helper = HelperCommand::origin(&db, "team/x.db").spawn().unwrap();
            let mut stdin = helper.stdin.take();
            let mut stdout = helper.stdout.take().unwrap();
            let (mut pending, mut page) = (Vec::new(), None);
            let mut buf = vec![0u8; 65536];
            let (mut open, mut sent) = (true, 0u64);
            loop {
                tokio::select! {
                    n = stdout.read(&mut buf), if open => {
                        let n = n.unwrap_or(0);
                        open = n > 0;
                        sent += n as u64;
                        pending.extend_from_slice(&buf[..n]);
                        for f in frames(&mut pending, &mut page, max) {
                            let _ = ws.send(Message::Binary(f.into())).await;
                        }
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Binary(b))) => {
                            // CONFIG and KEYREQUEST come as one-byte frames.
                            if b.len() == 1 && (b[0] == 0x51 || b[0] == 0x53) {
                                continue;
                            }
                            if let Some(s) = stdin.as_mut() {
                                let _ = s.write_all(&b).await;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            drop(stdin);
            let _ = helper.exit(std::time::Duration::from_secs(1)).await;
            sent
        })
    }
}
