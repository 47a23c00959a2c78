//! Hostile clients against the real server process: raw websocket sessions
//! with garbage, truncated and endless streams, absurd page sizes and page
//! numbers, oversized frames, control and close frames at odd moments,
//! slow readers, a thousand idle connections, and path and key abuse over
//! HTTP and websocket.
//!
//! Every case asserts that the server answers (ABORT, an HTTP status) or
//! closes, never panics (its stderr is kept and searched), stores nothing
//! (no version, no staging file, no key), and meanwhile serves real pushes
//! and pulls of other clients (a background thread runs them during the
//! abuse and every one of them must succeed).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::driver::*;
use crate::support::frames::*;
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use sqlrsync::wire::{ClientControl, Direction, ServerText, StreamParser};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---------------------------------------------------------------------------
// The fixture's server (namespace `acme`), its log searched for panics.

struct Server {
    f: Fixture,
    addr: String,
    data: PathBuf,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let f = Fixture::with_env("acme", extra, &[("SQLRSYNC_LOG", "info")]);
        Server {
            addr: f.server().addr.clone(),
            data: f.data.clone(),
            f,
        }
    }

    fn ws(&self) -> String {
        self.f.ws_url()
    }

    fn namespace(&self, env: &TestEnv, name: &str) -> String {
        self.f.server().create_namespace(env, name)
    }

    fn log(&self) -> String {
        self.f.server().log()
    }

    /// Alive, never panicked, no staging file left.
    #[track_caller]
    fn assert_healthy(&mut self) {
        assert!(
            self.f.server_mut().child.try_wait().unwrap().is_none(),
            "the server exited:\n{}",
            self.log()
        );
        let log = self.log();
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
        let (spares, staging): (Vec<_>, Vec<_>) = files(&self.data.join("staging"))
            .into_iter()
            .partition(|p| crate::support::faults::is_spare(p));
        assert!(staging.is_empty(), "staging files left: {staging:?}");
        // At most one spare copy per replica.
        let replicas = files(&self.data.join("replicas")).len();
        assert!(
            spares.len() <= replicas,
            "{spares:?} for {replicas} replicas"
        );
    }

    /// Open file descriptors of the server process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.f.server().child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Replicas of `ns`, as `namespace list` counts them.
    fn replicas(&self, env: &TestEnv, ns: &str) -> usize {
        let o = run(env
            .command(SERVER)
            .args(["namespace", "list", "--data-dir"])
            .arg(&self.data));
        assert_ok(&o);
        stdout(&o)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{ns}\t")))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("namespace listed")
    }

    fn keys(&self, env: &TestEnv, ns: &str) -> usize {
        let o = run(env
            .command(SERVER)
            .args(["keys", "list", ns, "--data-dir"])
            .arg(&self.data));
        assert_ok(&o);
        stdout(&o).lines().count() - 1
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Files under the replicas folder: version files of every replica.
fn version_files(data: &Path) -> Vec<PathBuf> {
    files(&data.join("replicas"))
        .into_iter()
        .flat_map(|d| files(&d))
        .collect()
}

fn small_db(env: &TestEnv, name: &str, rows: u32) -> PathBuf {
    let p = env.path(name);
    make_db(
        &p,
        DbSpec {
            rows,
            ..Default::default()
        },
    );
    p
}

/// Asserts that `path` has no version: a pull finds nothing to pull.
#[track_caller]
fn assert_no_version(rt: &tokio::runtime::Runtime, server: &Server, key: &str, path: &str) {
    let o = rt.block_on(pull(
        &server.ws(),
        path,
        &std::env::temp_dir().join("never-written.db"),
        &with_key(key),
    ));
    assert_eq!(o.http_status, Some(404), "{path} has a version: {o:#?}");
}

// ---------------------------------------------------------------------------
// Real traffic of other clients, running while a test abuses the server.

struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Background {
    /// Push then pull `db` to `path` in a loop until stopped; every session
    /// must succeed and every pull must equal what was pushed.
    /// Returns once the first push landed (so `path` has a version).
    fn start(env: &TestEnv, ws: String, key: String, path: &'static str) -> Background {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let db = small_db(env, &format!("bg{n}.db"), 300);
        let out = env.path(&format!("bg{n}-pulled.db"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = rt();
            let mut rounds = 0;
            while rounds == 0 || !flag.load(Ordering::SeqCst) {
                change_rows(&db, 0.05);
                let o = rt.block_on(push(&ws, path, &db, &with_key(&key)));
                assert!(o.ok(), "background push failed during the abuse: {o:#?}");
                let _ = ready_tx.send(());
                let _ = std::fs::remove_file(&out);
                let o = rt.block_on(pull(&ws, path, &out, &with_key(&key)));
                assert!(o.ok(), "background pull failed during the abuse: {o:#?}");
                assert_eq!(content_digest(&out), content_digest(&db));
                rounds += 1;
            }
            rounds
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(60));
        Background {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the rounds done (panics if one failed).
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().unwrap().join() {
            Ok(n) => n,
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, key: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("Authorization", k.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// Sends frames from `next` as fast as the server takes them, while reading
/// what it says, until the server ends the session or `max_bytes` went out.
/// Returns (bytes sent, ABORT reason, close code).
async fn flood(
    ws: Ws,
    max_bytes: u64,
    mut next: impl FnMut(u64) -> Message,
) -> (u64, Option<String>, Option<u16>) {
    let (mut tx, mut rx) = ws.split();
    let mut sent = 0u64;
    let mut abort = None;
    let mut close = None;
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("flood: the server neither ended nor refused after {sent} bytes"),
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(ServerText::Abort(a)) = ServerText::parse(t.as_str()) {
                        abort = Some(a);
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    close = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
            r = async { let m = next(sent); let n = m.len() as u64; tx.send(m).await.map(|_| n) }, if sending => match r {
                Ok(n) => {
                    sent += n;
                    if sent >= max_bytes { sending = false; }
                }
                Err(_) => sending = false,
            },
        }
    }
    (sent, abort, close)
}

/// Pushes `db` with the real helper as ORIGIN, sending `after_end` frames
/// once ORIGIN_END went out, or a close frame (and nothing more) once
/// `close_after` stream bytes went out.
async fn scripted_push(
    ws_url: &str,
    path: &str,
    db: &Path,
    key: &str,
    pre: Vec<Message>,
    after_end: Vec<Message>,
    close_after: Option<u64>,
) -> Outcome {
    let url = format!("{ws_url}/sapi/push/{path}");
    let ws = connect(&url, Some(key)).await.expect("upgrade");
    let mut child = tokio::process::Command::new(sqlrsync::helper::path().unwrap())
        .arg("--origin")
        .arg(db)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let (mut tx, mut rx) = ws.split();
    for f in pre {
        tx.send(f).await.unwrap();
    }
    let mut out = Outcome::default();
    let mut parser = StreamParser::new(Direction::FromOrigin);
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdout_open = true;
    let mut after_end = Some(after_end);
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("scripted push timed out: {out:#?}"),
            n = stdout.read(&mut buf), if stdout_open => {
                let n = n.unwrap_or(0);
                if n == 0 { stdout_open = false; continue; }
                let mut chunk = &buf[..n];
                if let Some(limit) = close_after && sent + n as u64 >= limit {
                    chunk = &buf[..(limit - sent) as usize];
                    if !chunk.is_empty() {
                        let _ = tx.send(Message::Binary(chunk.to_vec().into())).await;
                    }
                    let _ = tx.send(Message::Close(None)).await;
                    stdout_open = false;
                    let _ = child.start_kill();
                    continue;
                }
                sent += chunk.len() as u64;
                let _ = parser.feed(chunk, |_| {});
                if tx.send(Message::Binary(chunk.to_vec().into())).await.is_err() { break; }
                if parser.ended() && let Some(frames) = after_end.take() {
                    for f in frames {
                        let _ = tx.send(f).await;
                    }
                }
            }
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(s) = stdin.as_mut() && s.write_all(&b).await.is_err() { stdin = None; }
                }
                Some(Ok(Message::Text(t))) => match ServerText::parse(t.as_str()) {
                    Ok(ServerText::Config(c)) => out.configs.push(c),
                    Ok(ServerText::Message(m)) => out.messages.push(m),
                    Ok(ServerText::Abort(a)) => out.abort = Some(a),
                    Err(_) => {}
                },
                Some(Ok(Message::Close(c))) => {
                    out.close_code = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
        }
    }
    drop(stdin);
    let _ = child.kill().await;
    out
}

// ---------------------------------------------------------------------------

#[test]
fn garbage_truncated_and_absurd_streams() {
    let mut server = Server::start(&["--idle-timeout", "2"]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");

    let push_path = "/sapi/push/acme/abuse.db";
    let refused = |frames: Vec<Message>, needle: &str, what: &str| {
        let o = rt.block_on(raw(&ws, push_path, &with_key(&acme), frames));
        let abort = o
            .abort
            .clone()
            .unwrap_or_else(|| panic!("{what}: no ABORT: {o:#?}"));
        assert!(abort.contains(needle), "{what}: {abort:?} lacks {needle:?}");
        assert_eq!(o.close_code, Some(1008), "{what}: {o:#?}");
    };

    // Page sizes: pow2 bytes giving 1, 2, 256, 2^17, 2^31 and beyond u32.
    for log2 in [0u8, 1, 8, 17, 31, 32, 63, 255] {
        refused(
            vec![bin(begin(log2, 1))],
            "not a valid SQLite page size",
            &format!("page size 2^{log2}"),
        );
    }
    // Page 0, a page beyond the announced count, a page before ORIGIN_BEGIN.
    let mut s = begin(9, 4);
    s.extend(page(0, 512, 1));
    refused(vec![bin(s)], "outside the announced", "page 0");
    let mut s = begin(9, 4);
    s.extend(page(5, 512, 1));
    refused(vec![bin(s)], "outside the announced", "page 5 of 4");
    refused(
        vec![bin(page(1, 512, 1))],
        "before ORIGIN_BEGIN",
        "page before begin",
    );
    // Garbage: every first byte that is neither a stream start nor a control
    // frame, with random bytes behind it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for first in (0u8..=255).step_by(7) {
        if matches!(first, 0x41 | 0x43 | 0x46 | 0x51..=0x54) {
            continue;
        }
        let mut g = vec![first];
        g.extend((0..rnd() % 3000).map(|_| rnd() as u8));
        let o = rt.block_on(raw(&ws, push_path, &with_key(&acme), vec![bin(g)]));
        assert!(o.abort.is_some(), "garbage 0x{first:02x}: {o:#?}");
        assert_eq!(o.close_code, Some(1008), "garbage 0x{first:02x}");
    }
    // A text frame where the binary stream is expected.
    refused(
        vec![Message::Text("ORIGIN_BEGIN please".into())],
        "text frame",
        "text on push",
    );
    // An ORIGIN_MSG claiming 4 GiB of text.
    refused(
        vec![bin(vec![0x46, 0xff, 0xff, 0xff, 0xff, b'x'])],
        "exceeds the limit",
        "huge text length",
    );
    // ORIGIN_BEGIN then ORIGIN_END: no transaction.
    let mut s = begin(12, 2);
    s.extend(end());
    refused(vec![bin(s)], "without a complete transaction", "begin+end");
    // Data after ORIGIN_END in the same frame.
    let mut s = begin(12, 2);
    s.extend(end());
    s.extend(end());
    refused(vec![bin(s)], "after the end", "data after end");

    // Truncated messages: the stream stops mid-message and the client goes
    // quiet (idle timeout: 2 s), or closes.
    for (what, bytes) in [
        ("half a begin", vec![0x41, 2]),
        ("begin and half a page", {
            let mut s = begin(12, 4);
            s.extend(&page(1, 4096, 7)[..1000]);
            s
        }),
        ("half a text length", vec![0x46, 0, 0]),
    ] {
        let started = Instant::now();
        let o = rt.block_on(raw(
            &ws,
            push_path,
            &with_key(&acme),
            vec![bin(bytes.clone())],
        ));
        assert!(!o.ok(), "{what}: {o:#?}");
        assert!(
            o.abort.as_deref().unwrap_or("").contains("no data"),
            "{what}: {o:#?}"
        );
        assert!(started.elapsed() < Duration::from_secs(15), "{what}");
        let o = rt.block_on(raw(
            &ws,
            push_path,
            &with_key(&acme),
            vec![bin(bytes), Message::Close(None)],
        ));
        assert!(!o.ok(), "{what} + close: {o:#?}");
    }

    // ORIGIN_TXN growing the database far beyond what was sent and announced.
    let real = small_db(env, "real512.db", 0);
    {
        let c = rusqlite::Connection::open(&real).unwrap();
        c.execute_batch("PRAGMA page_size=512; VACUUM;").unwrap();
    }
    let page1 = std::fs::read(&real).unwrap();
    let announced = (page1.len() / 512) as u32;
    let mut s = begin(9, announced);
    for (i, p) in page1.chunks(512).enumerate() {
        s.extend(page_of(i as u32 + 1, p));
    }
    s.extend(txn(4_000_000));
    s.extend(end());
    let started = Instant::now();
    let o = rt.block_on(raw(&ws, push_path, &with_key(&acme), vec![bin(s)]));
    assert!(!o.ok(), "a 2 GB ORIGIN_TXN was accepted: {o:#?}");
    assert!(
        o.abort.as_deref().unwrap_or("").contains("ORIGIN_TXN"),
        "{o:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A pull client's stream must be sqlite3_rsync's REPLICA side.
    let rounds = bg.finish();
    assert!(rounds >= 1);
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/bg.db",
        &with_key(&acme),
        vec![bin(begin(12, 1))],
    ));
    assert!(
        o.abort
            .as_deref()
            .unwrap_or("")
            .contains("not a sqlite3_rsync stream"),
        "{o:#?}"
    );
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/bg.db",
        &with_key(&acme),
        vec![Message::Text("hello".into())],
    ));
    assert!(
        o.abort.as_deref().unwrap_or("").contains("text frame"),
        "{o:#?}"
    );

    assert_no_version(&rt, &server, &acme, "acme/abuse.db");
    // Failed first pushes leave no (empty) replica behind.
    assert_eq!(
        server.replicas(env, "acme"),
        1,
        "only the background replica"
    );
    server.assert_healthy();
    server.f.kill_server();
    assert_ok(&run(server
        .f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&server.data)));
}

#[test]
fn endless_streams_are_cut_at_the_limits() {
    // 1 MiB databases at most.
    let mut server = Server::start(&["--max-db-size", "1048576", "--idle-timeout", "5"]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    let url = format!("{ws}/sapi/push/acme/endless.db");
    let connect_push = || rt.block_on(connect(&url, Some(&acme))).expect("upgrade");

    // Announcing more than the limit is refused at once.
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/endless.db",
        &with_key(&acme),
        vec![bin(begin(16, 1 << 20))],
    ));
    assert!(
        o.abort.as_deref().unwrap_or("").contains("at most"),
        "{o:#?}"
    );

    // Valid pages forever: page 1 again and again (64 pages announced).
    let ws1 = connect_push();
    let (sent, abort, close) = rt.block_on(flood(ws1, 64 << 20, |sent| {
        if sent == 0 {
            bin(begin(12, 64))
        } else {
            bin(page(1, 4096, 3))
        }
    }));
    assert!(sent < 8 << 20, "{sent} bytes taken before the cut");
    assert!(
        abort.as_deref().unwrap_or("").contains("more pages"),
        "{abort:?}"
    );
    assert_eq!(close, Some(1008));

    // Every page once, then more: the count cannot exceed the announcement.
    let ws1 = connect_push();
    let mut n = 0u32;
    let (sent, abort, _) = rt.block_on(flood(ws1, 64 << 20, move |sent| {
        if sent == 0 {
            return bin(begin(12, 200));
        }
        n = n % 200 + 1;
        bin(page(n, 4096, n as u8))
    }));
    assert!(sent < 8 << 20, "{sent}");
    assert!(
        abort.as_deref().unwrap_or("").contains("more pages"),
        "{abort:?}"
    );

    // Informational messages forever.
    let ws1 = connect_push();
    let (sent, abort, _) = rt.block_on(flood(ws1, 256 << 20, |sent| {
        if sent == 0 {
            bin(begin(12, 4))
        } else {
            bin(origin_msg(&[b'm'; 60_000]))
        }
    }));
    assert!(sent < 16 << 20, "{sent}");
    assert!(abort.is_some(), "messages forever were not cut");
    // ORIGIN_DETAIL / ORIGIN_READY forever.
    let ws1 = connect_push();
    let (sent, abort, _) = rt.block_on(flood(ws1, 256 << 20, |sent| {
        if sent == 0 {
            bin(begin(12, 4))
        } else {
            bin([0x47, 0, 0, 0, 1, 0, 0, 0, 4, 0x48].repeat(1000))
        }
    }));
    assert!(sent < 16 << 20, "{sent}");
    assert!(abort.is_some(), "details forever were not cut");
    // ORIGIN_BEGIN again and again (each restarts the replica's hashing).
    let ws1 = connect_push();
    let (sent, abort, _) = rt.block_on(flood(ws1, 64 << 20, |_| bin(begin(12, 200))));
    assert!(sent < 1 << 20, "{sent}");
    assert!(
        abort.as_deref().unwrap_or("").contains("ORIGIN_BEGIN"),
        "{abort:?}"
    );
    // Control frames forever.
    let ws1 = connect_push();
    let (sent, abort, _) = rt.block_on(flood(ws1, 64 << 20, |_| ctrl(ClientControl::Config)));
    assert!(sent < 1 << 20, "{sent}");
    assert!(
        abort.as_deref().unwrap_or("").contains("control frames"),
        "{abort:?}"
    );
    // A pull client sending hashes forever.
    let wsp = rt
        .block_on(connect(&format!("{ws}/sapi/pull/acme/bg.db"), Some(&acme)))
        .unwrap();
    let (sent, abort, _) = rt.block_on(flood(wsp, 256 << 20, |_| {
        let mut f = Vec::new();
        for _ in 0..1000 {
            f.extend(replica_hash(&[7u8; 20]));
        }
        bin(f)
    }));
    assert!(sent < 16 << 20, "{sent}");
    assert!(abort.is_some(), "hashes forever were not cut");

    // A real push over the limit is refused with a clear reason.
    let big = env.path("big.db");
    make_db(
        &big,
        DbSpec {
            rows: 8000,
            ..Default::default()
        },
    );
    let o = rt.block_on(push(&ws, "acme/big.db", &big, &with_key(&acme)));
    assert!(
        o.abort.as_deref().unwrap_or("").contains("at most 1.0 MiB"),
        "{o:#?}"
    );

    assert!(bg.finish() >= 1);
    assert_no_version(&rt, &server, &acme, "acme/endless.db");
    assert_no_version(&rt, &server, &acme, "acme/big.db");
    assert_eq!(
        server.replicas(env, "acme"),
        1,
        "only the background replica"
    );
    server.assert_healthy();
}

#[test]
fn oversized_frames_and_out_of_place_frames() {
    let mut server = Server::start(&["--max-frame", "65536"]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    let db = small_db(env, "a.db", 400);
    let keys_before = server.keys(env, "acme");

    // A frame over --max-frame: closed with 1009 (message too big).
    for endpoint in ["/sapi/push/acme/x.db", "/sapi/pull/acme/bg.db"] {
        let o = rt.block_on(raw(
            &ws,
            endpoint,
            &with_key(&acme),
            vec![bin(vec![0x41; 70_000])],
        ));
        assert!(!o.ok(), "{endpoint}: {o:#?}");
        assert_eq!(o.close_code, Some(1009), "{endpoint}: {o:#?}");
    }

    // Control frames in the middle of a message are stream bytes: here the
    // page-size byte of ORIGIN_BEGIN. (Right after the first stream frame
    // a lone CONFIG is one even there, as PROTOCOL.md section 3 says and
    // compat_strict checks; this one comes after the second.)
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/x.db",
        &with_key(&acme),
        vec![
            bin(vec![0x41]),
            bin(vec![2]),
            ctrl(ClientControl::Config),
            bin(vec![0, 0, 0, 1]),
        ],
    ));
    assert!(
        o.abort.as_deref().unwrap_or("").contains("page size"),
        "{o:#?}"
    );
    assert!(
        o.configs.is_empty(),
        "a CONFIG inside a message was answered"
    );
    // COMMITMESSAGE twice, and after the stream began.
    let msg = || ctrl(ClientControl::CommitMessage("hi".into()));
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/x.db",
        &with_key(&acme),
        vec![msg(), msg()],
    ));
    assert!(o.abort.as_deref().unwrap_or("").contains("twice"), "{o:#?}");
    let o = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/x.db",
        &with_key(&acme),
        vec![bin(begin(12, 1)), msg()],
    ));
    assert!(
        o.abort
            .as_deref()
            .unwrap_or("")
            .contains("before ORIGIN_BEGIN"),
        "{o:#?}"
    );
    // A real push with CONFIG/KEYREQUEST mid-stream (at a boundary: fine,
    // answered) and with control frames after ORIGIN_END (ignored).
    let o = rt.block_on(scripted_push(
        &ws,
        "acme/x.db",
        &db,
        &acme,
        vec![msg()],
        vec![
            ctrl(ClientControl::KeyRequest),
            ctrl(ClientControl::Config),
            msg(),
            bin(b"trailing garbage".to_vec()),
        ],
        None,
    ));
    o.assert_ok();
    assert_eq!(o.version(), 1);
    assert!(
        o.configs.iter().all(|c| c.new_pull_key.is_none()),
        "a KEYREQUEST after ORIGIN_END issued keys"
    );
    assert_eq!(server.keys(env, "acme"), keys_before, "keys were stored");
    let pulled = env.path("x-pulled.db");
    rt.block_on(pull(&ws, "acme/x.db", &pulled, &with_key(&acme)))
        .assert_ok();
    assert_eq!(content_digest(&pulled), content_digest(&db));

    // Pull connections: CONFIG twice is answered twice, KEYREQUEST twice
    // gives the same key (stored once the pull completes, so here never),
    // COMMITMESSAGE is refused, KEYREQUEST from an anonymous puller of a
    // private replica never gets that far (404).
    let configs = rt.block_on(async {
        let mut w = connect(&format!("{ws}/sapi/pull/acme/x.db"), Some(&acme))
            .await
            .unwrap();
        for c in [
            ClientControl::Config,
            ClientControl::Config,
            ClientControl::KeyRequest,
            ClientControl::KeyRequest,
        ] {
            w.send(ctrl(c)).await.unwrap();
        }
        let mut configs = Vec::new();
        let read = async {
            while let Some(Ok(m)) = w.next().await {
                if let Message::Text(t) = m
                    && let Ok(ServerText::Config(c)) = ServerText::parse(t.as_str())
                {
                    configs.push(c);
                    if configs.len() == 5 {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        let _ = w.close(None).await;
        configs
    });
    let o = Outcome {
        configs,
        ..Default::default()
    };
    // The server's CONFIG at the start, then one per control frame.
    assert_eq!(o.configs.len(), 5, "{o:#?}");
    let k1 = o.configs[3].new_pull_key.clone().expect("a pull key");
    assert_eq!(o.configs[4].new_pull_key.as_ref(), Some(&k1));
    assert_eq!(
        server.keys(env, "acme"),
        keys_before,
        "an unfinished pull stored its key"
    );
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/x.db",
        &with_key(&acme),
        vec![msg()],
    ));
    assert!(
        o.abort.as_deref().unwrap_or("").contains("for pushes"),
        "{o:#?}"
    );
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/x.db",
        &Opts::default(),
        vec![ctrl(ClientControl::KeyRequest)],
    ));
    assert_eq!(o.http_status, Some(404));

    assert!(bg.finish() >= 1);
    server.assert_healthy();
}

#[test]
fn close_frames_at_odd_moments() {
    let mut server = Server::start(&[]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    let db = small_db(env, "c.db", 1500);
    let keys_before = server.keys(env, "acme");

    // Raw: close right after the upgrade, after COMMITMESSAGE, after a
    // KEYREQUEST, mid-ORIGIN_BEGIN, after ORIGIN_BEGIN, mid-page.
    let cases: Vec<Vec<Message>> = vec![
        vec![],
        vec![ctrl(ClientControl::CommitMessage("m".into()))],
        vec![bin(begin(12, 3)), ctrl(ClientControl::KeyRequest)],
        vec![bin(vec![0x41, 2, 12])],
        vec![bin(begin(12, 3))],
        vec![bin(begin(12, 3)), bin(page(1, 4096, 1)[..2000].to_vec())],
    ];
    for mut frames in cases {
        frames.push(Message::Close(None));
        let o = rt.block_on(raw(&ws, "/sapi/push/acme/c.db", &with_key(&acme), frames));
        assert!(!o.ok(), "{o:#?}");
        assert_ne!(o.close_code, Some(1000));
    }
    // Real pushes closed by the client at many points of the stream.
    let size = std::fs::metadata(&db).unwrap().len();
    for cut in [1, 7, 8, 100, 4096, 4104, size / 2, size - 10, size] {
        let o = rt.block_on(scripted_push(
            &ws,
            "acme/c.db",
            &db,
            &acme,
            vec![],
            vec![],
            Some(cut),
        ));
        assert!(!o.ok(), "cut at {cut}: {o:#?}");
        assert!(
            o.configs
                .iter()
                .all(|c| c.committed_version_id.as_deref() != Some("1"))
        );
    }
    // Pulls closed right away and mid-way.
    for frames in [
        vec![Message::Close(None)],
        vec![bin(vec![0x61]), Message::Close(None)],
    ] {
        let o = rt.block_on(raw(&ws, "/sapi/pull/acme/bg.db", &with_key(&acme), frames));
        assert!(!o.ok());
    }

    assert_no_version(&rt, &server, &acme, "acme/c.db");
    assert_eq!(
        server.replicas(env, "acme"),
        1,
        "only the background replica"
    );
    assert_eq!(server.keys(env, "acme"), keys_before);
    assert!(bg.finish() >= 1);
    server.assert_healthy();
    // Nothing but the background replica's files.
    assert_eq!(
        version_files(&server.data).len(),
        1,
        "{:?}",
        version_files(&server.data)
    );
}

/// Raises this process's open-file limit to its hard limit (a thousand
/// sockets need more than the common soft limit of 1024).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn a_thousand_idle_connections() {
    let limit = raise_nofile();
    assert!(
        limit >= 2200,
        "the open-file limit {limit} is too low for this test"
    );
    let mut server = Server::start(&[
        "--max-connections",
        "40",
        "--max-subscribers",
        "20",
        "--idle-timeout",
        "2",
        "--handshake-timeout",
        "2",
    ]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let db = small_db(env, "seed.db", 300);
    rt.block_on(push(&ws, "acme/seed.db", &db, &with_key(&acme)))
        .assert_ok();
    let baseline = server.fds();

    // 1. 700 TCP connections that never send a byte, 200 that send half a
    // request: they hold no session, so pushes and pulls go on at once.
    let mut idle_tcp = Vec::new();
    for i in 0..900 {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        if i % 9 == 0 || i >= 700 {
            let _ = s.write_all(b"GET /sapi/pull/acme/seed.db HTTP/1.1\r\nHost: x\r\n");
        }
        idle_tcp.push(s);
    }
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    assert!(bg.finish() >= 1);
    // The server closes them after the handshake timeout although the
    // clients keep them open.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.fds() > baseline + 30 {
        assert!(
            Instant::now() < deadline,
            "the server still holds {} descriptors (baseline {baseline}) for idle TCP connections",
            server.fds()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut s in idle_tcp {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        // EOF or reset: the server hung up.
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    }

    // 2. 300 upgraded websockets (push, pull, subscribe) that then say
    // nothing and read nothing: at most this address's share of
    // --max-connections (a quarter: 10) pushes and pulls get in, at most
    // its share of --max-subscribers (5), the rest get 503, and the idle
    // timeout frees the slots.
    // Half the subscribers subscribe first and then ignore the server's
    // pings; the others never subscribe.
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..300 {
            let url = match i % 3 {
                0 => format!("{ws}/sapi/push/acme/idle{i}.db"),
                1 => format!("{ws}/sapi/pull/acme/seed.db"),
                _ => format!("{ws}/sapi/subscribe/acme/seed.db"),
            };
            match connect(&url, Some(&acme)).await {
                Ok(mut w) => {
                    if i % 6 == 2 {
                        let sub = r#"{"type":"SUBSCRIBE","data":{},"timestamp":""}"#;
                        w.send(Message::Text(sub.into())).await.unwrap();
                    }
                    held.push((i % 3 == 2, w))
                }
                Err(503) => refused += 1,
                Err(s) => panic!("{url}: HTTP {s}"),
            }
        }
        (held, refused)
    });
    let subscribers = held.iter().filter(|(sub, _)| *sub).count();
    let syncs = held.len() - subscribers;
    assert!(syncs <= 10, "{syncs} push and pull sessions admitted");
    assert!(subscribers <= 5, "{subscribers} subscribers admitted");
    assert_eq!(held.len() + refused, 300);
    // Others get in again once the idle sessions timed out.
    let started = Instant::now();
    loop {
        let o = rt.block_on(pull(
            &ws,
            "acme/seed.db",
            &env.path("p.db"),
            &with_key(&acme),
        ));
        if o.ok() {
            break;
        }
        assert_eq!(o.http_status, Some(503), "{o:#?}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "idle sessions were never cut"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(content_digest(&env.path("p.db")), content_digest(&db));
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    assert!(bg.finish() >= 1);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.fds() > baseline + 30 {
        assert!(
            Instant::now() < deadline,
            "{} descriptors left",
            server.fds()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in (0..300).step_by(3) {
        assert_no_version(&rt, &server, &acme, &format!("acme/idle{i}.db"));
    }
    assert_eq!(server.replicas(env, "acme"), 2, "idle pushes left replicas");
    server.assert_healthy();
}

#[test]
fn a_pull_client_that_never_reads_is_cut() {
    // Both stuck clients come from one address: let it hold every slot.
    let mut server = Server::start(&[
        "--max-connections",
        "2",
        "--address-share",
        "100",
        "--idle-timeout",
        "2",
    ]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    // Bigger than every buffer between the server and a client that stops
    // reading (socket buffers, the session queue, the helper's pipe).
    let db = env.path("big.db");
    make_db(
        &db,
        DbSpec {
            rows: 40_000,
            row_bytes: 300,
            ..Default::default()
        },
    );
    rt.block_on(push(&ws, "acme/big.db", &db, &with_key(&acme)))
        .assert_ok();
    // Two pull clients ask for every page (REPLICA_READY with no hashes)
    // and then read nothing, holding both session slots.
    let stuck: Vec<Ws> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..2 {
            let mut w = connect(&format!("{ws}/sapi/pull/acme/big.db"), Some(&acme))
                .await
                .unwrap();
            w.send(bin(replica_ready())).await.unwrap();
            v.push(w);
        }
        v
    });
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        let o = rt.block_on(pull(
            &ws,
            "acme/big.db",
            &env.path("p.db"),
            &with_key(&acme),
        ));
        if o.ok() {
            break;
        }
        assert_eq!(o.http_status, Some(503), "{o:#?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stalled pulls hold their slots forever"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(content_digest(&env.path("p.db")), content_digest(&db));
    drop(stuck);
    server.assert_healthy();
}

// ---------------------------------------------------------------------------
// Paths and keys.

/// A raw HTTP request: (status, body). Upgrade requests (those with
/// `Upgrade` in `headers`) are not asked to close; a 101 answer is
/// returned as soon as its head arrived.
fn http(addr: &str, request_line_path: &[u8], headers: &[(&str, &[u8])]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(request_line_path);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(addr.as_bytes());
    req.extend_from_slice(b"\r\n");
    if !headers.iter().any(|(k, _)| *k == "Upgrade") {
        req.extend_from_slice(b"Connection: close\r\n");
    }
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let _ = s.write_all(&req);
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break None,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    };
    let Some(head_end) = head_end else {
        return (0, String::from_utf8_lossy(&all).into_owned());
    };
    let head = String::from_utf8_lossy(&all[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        return (status, String::new());
    }
    let len: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let mut body = all[head_end + 4..].to_vec();
    while len.is_none_or(|l| body.len() < l) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Websocket upgrade headers for a raw request.
const UPGRADE: [(&str, &[u8]); 4] = [
    ("Upgrade", b"websocket"),
    ("Connection", b"Upgrade"),
    ("Sec-WebSocket-Version", b"13"),
    ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn path_abuse_is_refused_everywhere() {
    let mut server = Server::start(&[]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let db = small_db(env, "p.db", 200);
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
    let long = format!("acme/{}", "a/".repeat(5000));
    let long_part = format!("acme/{}.db", "b".repeat(10_000));
    let bad: Vec<&[u8]> = vec![
        b"acme/../pub.db",
        b"acme/./pub.db",
        b"acme/sub/../../pub.db",
        b"../acme/pub.db",
        b"acme/%2e%2e/pub.db",
        b"acme/%2E%2E%2Fpub.db",
        b"acme%2Fpub.db",
        b"acme/pub.db%00",
        b"acme/pub%00.db",
        b"acme/pub.db%2500",
        b"acme\\pub.db",
        b"acme/..\\pub.db",
        b"acme/%5c..%5cpub.db",
        b"acme//pub.db",
        b"acme/.pub.db",
        b"acme/p\xc3\xbcb.db",
        b"acme/%C3%BC.db",
        b"acme/pub.db\x00",
        b"acme/pub db",
        long.as_bytes(),
        long_part.as_bytes(),
    ];
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");
    let (good_status, _) = http(&server.addr, b"/acme/pub.db", &[]);
    assert_eq!(good_status, 200);
    for p in &bad {
        let shown = String::from_utf8_lossy(p);
        for prefix in ["/sapi/push/", "/sapi/pull/", "/sapi/subscribe/", "/"] {
            let mut target = prefix.as_bytes().to_vec();
            target.extend_from_slice(p);
            let auth: (&str, &[u8]) = ("Authorization", acme.as_bytes());
            let mut headers = vec![auth];
            if prefix != "/" {
                headers.extend(UPGRADE);
            }
            let (status, body) = http(&server.addr, &target, &headers);
            assert!(
                (400..500).contains(&status) && status != 401,
                "{prefix}{shown}: HTTP {status} {body}"
            );
            assert_ne!(status, 101, "{prefix}{shown} was upgraded");
        }
        // Version downloads of the same paths.
        let mut target = b"/".to_vec();
        target.extend_from_slice(p);
        target.extend_from_slice(b"@1");
        let (status, _) = http(&server.addr, &target, &[]);
        assert!((400..500).contains(&status), "{shown}@1: {status}");
    }
    for v in [
        "@0",
        "@-1",
        "@latest-0",
        "@v",
        "@1.0",
        "@99",
        "@latest-5",
        "@%31",
    ] {
        let (status, _) = http(&server.addr, format!("/acme/pub.db{v}").as_bytes(), &[]);
        assert!((400..500).contains(&status), "{v}: {status}");
    }
    // Nothing was created by any of it.
    let o = run(env
        .command(SERVER)
        .args(["namespace", "list", "--data-dir"])
        .arg(&server.data));
    assert!(bg.finish() >= 1);
    assert!(stdout(&o).contains("acme\t2 replicas"), "{}", stdout(&o));
    server.assert_healthy();
}

#[test]
fn key_abuse_is_refused_everywhere() {
    let mut server = Server::start(&[]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let other = server.namespace(env, "other");
    let rt = rt();
    let ws = server.ws();
    let db = small_db(env, "k.db", 200);
    let keyed = |k: &str| Opts {
        key_request: true,
        ..with_key(k)
    };
    let a = rt.block_on(push(&ws, "acme/a.db", &db, &keyed(&acme)));
    a.assert_ok();
    let (a_push, a_pull) = (
        a.config().new_push_key.unwrap(),
        a.config().new_pull_key.unwrap(),
    );
    rt.block_on(push(&ws, "acme/b.db", &db, &with_key(&acme)))
        .assert_ok();
    rt.block_on(push(&ws, "other/o.db", &db, &with_key(&other)))
        .assert_ok();
    // A revoked key.
    let o = run(env
        .command(SERVER)
        .args([
            "keys",
            "create",
            "acme",
            "--kind",
            "account-pull",
            "--data-dir",
        ])
        .arg(&server.data));
    let revoked = stdout(&o).lines().last().unwrap().trim().to_string();
    assert_ok(&run(env
        .command(SERVER)
        .args(["keys", "revoke", "acme", &revoked, "--data-dir"])
        .arg(&server.data)));
    let keys_before = server.keys(env, "acme");
    let bg = Background::start(env, ws.clone(), acme.clone(), "acme/bg.db");

    let flip = |k: &str| {
        let mut b = k.as_bytes().to_vec();
        b[10] = if b[10] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let long = "A".repeat(100_000);
    let bearer = format!("Bearer {a_push}");
    let basic = format!("Basic {a_push}");
    let spaced = format!("  {a_push}  ");
    let nul = format!("{a_push}\0");
    let two = format!("{a_push}, {acme}");
    // (Authorization bytes, what it is)
    let cases: Vec<(&[u8], &str)> = vec![
        (b"", "empty"),
        (b"   ", "blank"),
        (flip(&acme).into_bytes().leak(), "one character off"),
        (&acme.as_bytes()[..19], "a prefix"),
        (format!("{acme}x").into_bytes().leak(), "one character more"),
        (revoked.as_bytes(), "revoked"),
        (long.as_bytes(), "100 KB"),
        (basic.as_bytes(), "Basic scheme"),
        (nul.as_bytes(), "trailing NUL"),
        (two.as_bytes(), "two keys"),
        ("ключ-ключ-ключ-ключ-ключ".as_bytes(), "unicode"),
        (
            b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec",
            "bytes",
        ),
    ];
    for (auth, what) in &cases {
        // Push: never 101; unauthorised (401), or refused as malformed.
        for path in [
            "/sapi/push/acme/a.db",
            "/sapi/push/acme/new.db",
            "/sapi/push/",
        ] {
            let mut h: Vec<(&str, &[u8])> = vec![("Authorization", auth)];
            h.extend(UPGRADE);
            let (status, body) = http(&server.addr, path.as_bytes(), &h);
            assert!(
                matches!(status, 400 | 401 | 431),
                "{what} on {path}: HTTP {status} {body}"
            );
        }
        // Pull of a private replica: 401 for a bad key, 404 when anonymous.
        let mut h: Vec<(&str, &[u8])> = vec![("Authorization", auth)];
        h.extend(UPGRADE);
        let (status, body) = http(&server.addr, b"/sapi/pull/acme/a.db", &h);
        assert!(
            matches!(status, 400 | 401 | 404 | 431),
            "{what} pull: HTTP {status} {body}"
        );
    }
    // `Bearer KEY` is the key (some proxies add the word); other schemes not.
    let mut h: Vec<(&str, &[u8])> = vec![("Authorization", bearer.as_bytes())];
    h.extend(UPGRADE);
    assert_eq!(http(&server.addr, b"/sapi/pull/acme/a.db", &h).0, 101);
    let mut h: Vec<(&str, &[u8])> = vec![("Authorization", spaced.as_bytes())];
    h.extend(UPGRADE);
    assert_eq!(http(&server.addr, b"/sapi/pull/acme/a.db", &h).0, 101);

    // Keys of another namespace and of other replicas.
    let refused_push = |k: &str, path: &str| {
        let o = rt.block_on(push(&ws, path, &db, &with_key(k)));
        assert!(o.http_status.is_some(), "{path}: {o:#?}");
        o.http_status.unwrap()
    };
    assert_eq!(refused_push(&other, "acme/a.db"), 403);
    assert_eq!(refused_push(&other, "acme/z.db"), 403);
    assert_eq!(refused_push(&acme, "other/o.db"), 403);
    assert_eq!(refused_push(&a_push, "acme/b.db"), 403);
    assert_eq!(refused_push(&a_pull, "acme/a.db"), 403);
    assert_eq!(refused_push(&a_push, "other/o.db"), 403);
    let refused_pull = |k: &str, path: &str| {
        let o = rt.block_on(pull(&ws, path, &env.path("never.db"), &with_key(k)));
        assert!(o.http_status.is_some(), "{path}: {o:#?}");
        o.http_status.unwrap()
    };
    assert_eq!(refused_pull(&a_push, "acme/b.db"), 404);
    assert_eq!(refused_pull(&a_pull, "acme/b.db"), 404);
    assert_eq!(refused_pull(&other, "acme/a.db"), 404);
    assert_eq!(refused_pull(&acme, "other/o.db"), 404);
    assert_eq!(refused_pull(&revoked, "acme/a.db"), 401);
    assert!(!env.path("never.db").exists());
    // The web pages take no key at all: private replicas are 404 whatever
    // the header says.
    for p in [
        "/acme/a.db",
        "/acme/a.db@1",
        "/acme/a.db@latest",
        "/other/o.db@1",
    ] {
        let (status, _) = http(
            &server.addr,
            p.as_bytes(),
            &[("Authorization", acme.as_bytes())],
        );
        assert_eq!(status, 404, "{p}");
    }
    let (status, body) = http(&server.addr, b"/acme", &[]);
    assert_eq!(status, 200);
    assert!(!body.contains("a.db") && !body.contains("b.db"), "{body}");

    // Nothing was stored: same keys, same versions.
    assert_eq!(server.keys(env, "acme"), keys_before);
    let o = rt.block_on(pull(
        &ws,
        "acme/a.db",
        &env.path("a1.db"),
        &Opts {
            version: Some("2".into()),
            ..with_key(&acme)
        },
    ));
    assert_eq!(o.http_status, Some(404), "a second version appeared");
    assert!(bg.finish() >= 1);
    server.assert_healthy();
}

#[test]
fn a_failed_push_leaves_no_keys() {
    let mut server = Server::start(&[]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let db = small_db(env, "f.db", 1500);
    let before = server.keys(env, "acme");
    let size = std::fs::metadata(&db).unwrap().len();

    // The client asks for keys, gets them in CONFIG, then the push dies.
    let o = rt.block_on(scripted_push(
        &ws,
        "acme/f.db",
        &db,
        &acme,
        vec![],
        vec![],
        Some(size / 2),
    ));
    assert!(!o.ok());
    let o2 = rt.block_on(scripted_push(
        &ws,
        "acme/f.db",
        &db,
        &acme,
        vec![ctrl(ClientControl::KeyRequest)],
        vec![],
        Some(size / 2),
    ));
    assert!(!o2.ok());
    let o3 = rt.block_on(raw(
        &ws,
        "/sapi/push/acme/f.db",
        &with_key(&acme),
        vec![
            bin(begin(12, 3)),
            ctrl(ClientControl::KeyRequest),
            bin(b"garbage".to_vec()),
        ],
    ));
    assert!(o3.abort.is_some(), "{o3:#?}");
    let issued: Vec<String> = o2
        .configs
        .iter()
        .chain(&o3.configs)
        .flat_map(|c| [c.new_pull_key.clone(), c.new_push_key.clone()])
        .flatten()
        .collect();
    assert!(!issued.is_empty(), "the server issued no keys to test with");
    assert_eq!(
        server.keys(env, "acme"),
        before,
        "a failed push left keys behind"
    );
    for k in &issued {
        let o = rt.block_on(pull(&ws, "acme/f.db", &env.path("x.db"), &with_key(k)));
        assert_eq!(
            o.http_status,
            Some(401),
            "key from a failed push works: {o:#?}"
        );
    }
    // A pull that dies after its KEYREQUEST leaves no key either.
    rt.block_on(push(&ws, "acme/f.db", &db, &with_key(&acme)))
        .assert_ok();
    let before = server.keys(env, "acme");
    let o = rt.block_on(raw(
        &ws,
        "/sapi/pull/acme/f.db",
        &with_key(&acme),
        vec![
            ctrl(ClientControl::KeyRequest),
            bin(b"\x00garbage".to_vec()),
        ],
    ));
    assert!(o.abort.is_some());
    let k = o.config().new_pull_key.expect("a pull key was issued");
    assert_eq!(server.keys(env, "acme"), before, "a failed pull left a key");
    let r = rt.block_on(pull(&ws, "acme/f.db", &env.path("y.db"), &with_key(&k)));
    assert_eq!(r.http_status, Some(401));

    // A push that succeeds keeps the keys it was given, and they work.
    change_rows(&db, 0.1);
    let ok = rt.block_on(push(
        &ws,
        "acme/f.db",
        &db,
        &Opts {
            key_request: true,
            ..with_key(&acme)
        },
    ));
    ok.assert_ok();
    assert_eq!(server.keys(env, "acme"), before + 2);
    let pull_key = ok.config().new_pull_key.unwrap();
    rt.block_on(pull(
        &ws,
        "acme/f.db",
        &env.path("z.db"),
        &with_key(&pull_key),
    ))
    .assert_ok();
    // ... and so does a push that changed nothing.
    let same = rt.block_on(push(
        &ws,
        "acme/f.db",
        &db,
        &Opts {
            key_request: true,
            ..with_key(&acme)
        },
    ));
    same.assert_ok();
    assert_eq!(server.keys(env, "acme"), before + 4);
    server.assert_healthy();
}

#[test]
fn wrong_keys_from_one_address_are_slowed_and_logged_in_summary() {
    let server = Server::start(&[]);
    let env = &server.f.env;
    let acme = server.f.admin.clone();
    let rt = rt();
    let ws = server.ws();
    let db = small_db(env, "w.db", 100);
    rt.block_on(push(&ws, "acme/w.db", &db, &with_key(&acme)))
        .assert_ok();
    let addr = server.addr.clone();
    let wrong = "W".repeat(24);
    let path = "/sapi/pull/acme/w.db";

    // One after another: the first few at once, then each waits longer
    // (50 ms doubling up to 1 s after 3 wrong keys: 3.55 s for these 10).
    let t = Instant::now();
    for i in 0..10 {
        let (status, body) = http_upgrade(&addr, path, Some(&wrong));
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let slow = t.elapsed();
    assert!(
        slow >= Duration::from_millis(2500),
        "10 wrong keys answered in {slow:?}: not slowed down"
    );
    // Many at once from the same address gain nothing: the turns are
    // spaced, and past a 5 s queue the answer is 429 at once.
    let t = Instant::now();
    let burst: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| s.spawn(|| http_upgrade(&addr, path, Some(&wrong)).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let burst_time = t.elapsed();
    let checked = burst.iter().filter(|&&s| s == 401).count();
    assert!(burst.iter().all(|s| matches!(s, 401 | 429)), "{burst:?}");
    assert!(
        checked <= 8 && burst.contains(&429),
        "40 concurrent wrong keys, {checked} checked in {burst_time:?}: {burst:?}"
    );

    // The right key from the same address still works (after its turn),
    // and clears the record: a wrong key is answered at once again.
    let t = Instant::now();
    let (status, _) = http_upgrade(&addr, path, Some(&acme));
    assert_eq!(status, 101);
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
    let out = env.path("w-pulled.db");
    rt.block_on(pull(&ws, "acme/w.db", &out, &with_key(&acme)))
        .assert_ok();
    assert_eq!(content_digest(&out), content_digest(&db));
    let t = Instant::now();
    assert_eq!(http_upgrade(&addr, path, Some(&wrong)).0, 401);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a right key did not reset the delay: {:?}",
        t.elapsed()
    );

    // 51 wrong keys, a handful of log lines that count them.
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unknown or revoked key"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 5,
        "{} log lines for 51 wrong keys:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wrong_keys=") && l.contains("127.0.0.1")),
        "{}",
        lines.join("\n")
    );
}
