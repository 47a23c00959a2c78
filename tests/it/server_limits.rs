//! What one client may hold of the server: memory it makes the server
//! queue (pings it never reads the answers to), session slots (subscribers
//! against pushes and pulls, one address against the others), the memory
//! each subscriber costs, and web downloads that stall.
//!
//! Every client here is a real socket to the real server process on
//! loopback. Any 127.0.0.0/8 address reaches a server on 127.0.0.1, so a
//! test binds its sockets to 127.0.0.x to be many clients at once.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::driver::*;
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 127.0.0.`n` (`n` 2..=254) or 127.0.`n / 250 + 1`.`n % 250 + 2`.
fn loopback(n: u32) -> IpAddr {
    if n < 250 {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n as u8 + 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8 + 2))
    }
}

/// A TCP connection to `addr` from address `from`, with a small receive
/// buffer when `rcvbuf` is given (so a client that stops reading stalls
/// the server after a few kilobytes, not after megabytes of kernel
/// buffers).
async fn tcp_from(from: IpAddr, addr: &str, rcvbuf: Option<u32>) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.connect(addr.parse().unwrap()).await.unwrap()
}

/// A websocket to `path` from address `from` with small buffers of its
/// own (a thousand of them fit in the test process): Ok, or the refusal's
/// HTTP status and body.
async fn ws_from(
    from: IpAddr,
    addr: &str,
    path: &str,
    key: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("Authorization", k.parse().unwrap());
    }
    let tcp = tcp_from(from, addr, None).await;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            r.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("websocket to {path} from {from}: {e}"),
    }
}

const SUBSCRIBE: &str = r#"{"type":"SUBSCRIBE","data":{},"timestamp":""}"#;

/// Subscribes on `ws` and keeps reading in a task (so the websocket
/// library answers the server's pings), counting the LATEST_VERSION
/// notices; the task ends when the socket does.
async fn subscribed(
    mut ws: Ws,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    ws.send(Message::Text(SUBSCRIBE.into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("SUBSCRIBED") => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no SUBSCRIBED: {other:?}"),
        }
    }
    let notices = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = notices.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m
                && t.contains("LATEST_VERSION")
            {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (task, notices)
}

/// Raises this process's open-file limit to its hard limit.
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

/// A small public replica `acme/seed.db` on a fresh server.
fn seeded(serve_args: &[&str]) -> (Fixture, std::path::PathBuf) {
    let f = Fixture::with_env("acme", serve_args, &[("SQLRSYNC_LOG", "info")]);
    let db = f.make("seed.db", 300);
    let o = rt().block_on(push(
        &f.ws_url(),
        "acme/seed.db",
        &db,
        &Opts {
            visibility: Some("2"),
            ..with_key(&f.admin)
        },
    ));
    o.assert_ok();
    (f, db)
}

// ---------------------------------------------------------------------------
// Item: a peer that pings and never reads the pongs.

/// A websocket upgrade on a plain blocking socket: returns the socket once
/// the 101 arrived, for a test that writes raw frames.
fn raw_upgrade(addr: &str, path: &str, key: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Authorization: {key}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "no upgrade answer for {path}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    s
}

/// 125-byte pings (the largest a control frame may carry), masked as a
/// client must, with the mask 0 so the payload is sent as is.
fn pings(n: usize) -> Vec<u8> {
    let mut one = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    one.extend(std::iter::repeat_n(b'p', 125));
    one.repeat(n)
}

#[test]
fn pings_without_reading_neither_grow_memory_nor_keep_the_session() {
    // Keepalive pings every 2 s (push and pull) and 2.7 s (subscribe):
    // the server's own ping is what finds the write buffer full.
    let (f, _) = seeded(&["--idle-timeout", "8"]);
    let server = f.server();
    let pid = server.child.id();
    for path in [
        "/sapi/pull/acme/seed.db",
        "/sapi/subscribe/acme/seed.db",
        "/sapi/push/acme/seed.db",
    ] {
        let baseline = rss_kib(pid);
        let s = raw_upgrade(&server.addr, path, &f.admin);
        // Pings as fast as the server takes them, never reading; the
        // sender stops when the server drops the connection.
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sender = {
            let (mut s, sent) = (s.try_clone().unwrap(), sent.clone());
            std::thread::spawn(move || {
                let burst = pings(1000);
                loop {
                    if let Err(e) = s.write_all(&burst) {
                        return e;
                    }
                    sent.fetch_add(burst.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let started = Instant::now();
        let mut peak = baseline;
        while !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(rss_kib(pid));
            let mb = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
            let bad = if peak > baseline + 64 * 1024 {
                Some(format!("server RSS grew from {baseline} KiB to {peak} KiB"))
            } else if started.elapsed() > Duration::from_secs(60) {
                Some(format!(
                    "still open after 60 s (RSS {baseline} -> {peak} KiB)"
                ))
            } else {
                None
            };
            if let Some(why) = bad {
                let _ = s.shutdown(std::net::Shutdown::Both);
                let _ = sender.join();
                panic!("{path}: {why}, after {mb} MB of pings whose pongs were never read");
            }
        }
        let closed = sender.join().unwrap();
        eprintln!(
            "{path}: closed after {:.1} s and {} MB of pings ({closed}); RSS {baseline} -> peak {peak} KiB",
            started.elapsed().as_secs_f64(),
            sent.load(std::sync::atomic::Ordering::Relaxed) >> 20
        );
    }
    // The server is fine: a pull works, nothing panicked.
    let o = rt().block_on(pull(
        &f.ws_url(),
        "acme/seed.db",
        &f.path("after.db"),
        &with_key(&f.admin),
    ));
    o.assert_ok();
    assert!(!server.log().contains("panicked"));
}

// ---------------------------------------------------------------------------
// Items: session budgets (subscribers, syncs, one address's share).

#[test]
fn subscribers_never_take_the_sync_slots() {
    // A quarter of 8 for one address: 2, room for a push's session to
    // wind down while the next pull starts.
    let (f, db) = seeded(&["--max-connections", "8"]);
    let addr = f.server().addr.clone();
    let rt = rt();
    // Twelve subscribers from twelve addresses, more than the sync slots.
    let subs = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..12 {
            match ws_from(loopback(i), &addr, "/sapi/subscribe/acme/seed.db", None).await {
                Ok(ws) => v.push(subscribed(ws).await),
                Err((s, b)) => panic!("subscriber {i} refused: {s} {b}"),
            }
        }
        v
    });
    // Every push and pull still gets in, and every subscriber hears it.
    for round in 0..3 {
        change_rows(&db, 0.1);
        let o = rt.block_on(push(&f.ws_url(), "acme/seed.db", &db, &with_key(&f.admin)));
        assert!(o.ok(), "push {round} with 12 subscribers: {o:#?}");
        let out = f.path(&format!("pulled{round}.db"));
        let o = rt.block_on(pull(&f.ws_url(), "acme/seed.db", &out, &with_key(&f.admin)));
        assert!(o.ok(), "pull {round} with 12 subscribers: {o:#?}");
        assert_eq!(content_digest(&out), content_digest(&db));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (task, notices) in &subs {
        while notices.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "a subscriber missed a version");
            assert!(!task.is_finished(), "a subscriber was dropped");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Opens sessions at `path` from `from` until one is refused (or `up_to`
/// are held); returns those held and the refusal.
async fn hold_from(
    from: IpAddr,
    addr: &str,
    path: &str,
    key: Option<&str>,
    up_to: usize,
) -> (Vec<Ws>, Option<(u16, String)>) {
    let mut held = Vec::new();
    for _ in 0..up_to {
        match ws_from(from, addr, path, key).await {
            Ok(ws) => held.push(ws),
            Err(r) => return (held, Some(r)),
        }
    }
    (held, None)
}

#[test]
fn one_address_holds_at_most_its_share() {
    // Default share: a quarter of each budget per address.
    let (f, _) = seeded(&["--max-connections", "8"]);
    let addr = f.server().addr.clone();
    let rt = rt();
    let (held, refusal) = rt.block_on(hold_from(
        loopback(1),
        &addr,
        "/sapi/pull/acme/seed.db",
        Some(&f.admin),
        8,
    ));
    assert_eq!(
        held.len(),
        2,
        "one address held {} of 8 sync slots",
        held.len()
    );
    let (status, body) = refusal.expect("refused");
    assert_eq!(status, 503);
    assert!(body.contains("address"), "{body}");
    // Other addresses still get in: loopback 127.0.0.1 here.
    let o = rt.block_on(pull(
        &f.ws_url(),
        "acme/seed.db",
        &f.path("p.db"),
        &with_key(&f.admin),
    ));
    o.assert_ok();
    // The slots come back when the address lets go.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (again, _) = rt.block_on(hold_from(
            loopback(1),
            &addr,
            "/sapi/pull/acme/seed.db",
            Some(&f.admin),
            2,
        ));
        if again.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the address's slots never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(f);

    // Subscribers: their own budget, and the same share of it.
    let (f, _) = seeded(&[
        "--max-connections",
        "8",
        "--max-subscribers",
        "8",
        "--address-share",
        "50",
    ]);
    let addr = f.server().addr.clone();
    rt.block_on(async {
        let path = "/sapi/subscribe/acme/seed.db";
        let (a, refusal) = hold_from(loopback(2), &addr, path, None, 8).await;
        assert_eq!(
            a.len(),
            4,
            "one address held {} of 8 subscriber slots",
            a.len()
        );
        assert_eq!(refusal.expect("refused").0, 503);
        let (b, _) = hold_from(loopback(3), &addr, path, None, 4).await;
        assert_eq!(b.len(), 4);
        // The subscriber budget is full, the sync budget is not.
        assert_eq!(
            ws_from(loopback(4), &addr, path, None)
                .await
                .err()
                .map(|e| e.0),
            Some(503)
        );
        let (syncs, _) = hold_from(
            loopback(4),
            &addr,
            "/sapi/pull/acme/seed.db",
            Some(&f.admin),
            4,
        )
        .await;
        assert_eq!(syncs.len(), 4);
    });
}

/// Subscribers a test opens: `SQLRSYNC_SUBSCRIBERS` (scripts/bench-subscribers),
/// else 1000.
fn subscriber_count() -> u32 {
    std::env::var("SQLRSYNC_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn subscribers_are_cheap() {
    let n = subscriber_count();
    let limit = raise_nofile();
    assert!(
        limit >= 2 * n as u64 + 200,
        "the open-file limit {limit} is too low for {n} subscribers"
    );
    let (f, _) = seeded(&["--max-subscribers", &(n + 10).to_string()]);
    let addr = f.server().addr.clone();
    let pid = f.server().child.id();
    let rt = rt();
    // Warm up: one subscriber, so the first one's one-off allocations are
    // in the baseline.
    let warm = rt.block_on(async {
        let ws = ws_from(loopback(0), &addr, "/sapi/subscribe/acme/seed.db", None)
            .await
            .unwrap();
        subscribed(ws).await
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let subs = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..n {
            // 100 subscribers an address.
            let from = loopback(1 + i / 100);
            match ws_from(from, &addr, "/sapi/subscribe/acme/seed.db", None).await {
                Ok(ws) => v.push(subscribed(ws).await),
                Err((s, b)) => panic!("subscriber {i} refused: {s} {b}"),
            }
        }
        v
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "SUBSCRIBER FIGURES: subscribers={n} rss_before_MB={:.1} rss_after_MB={:.1} per_subscriber_KB={per:.1}",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    assert!(
        per < 48.0,
        "each subscriber costs {per:.1} KiB of server memory ({before} -> {after} KiB for {n})"
    );
    assert!(subs.iter().all(|(t, _)| !t.is_finished()));
    drop(subs);
    drop(warm);
}

// ---------------------------------------------------------------------------
// Item: web downloads that stall.

/// A GET of `path` from `from` with a tiny receive window, reading only
/// the response head: a browser whose user paused the download.
async fn stalled_download(from: IpAddr, addr: &str, path: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tcp_from(from, addr, Some(4096)).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "closed before the head of {path}");
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Reads what is left of a stalled download: (bytes, whether it ended by
/// EOF or reset within `within`).
async fn rest_of(mut s: tokio::net::TcpStream, within: Duration) -> (u64, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await
    .is_ok();
    (got, ended)
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length")
}

#[test]
fn stalled_downloads_are_cut_and_keep_no_rebuilt_copy() {
    let f = Fixture::with_env(
        "acme",
        &["--max-downloads", "4", "--download-timeout", "3"],
        &[("SQLRSYNC_LOG", "info")],
    );
    let addr = f.server().addr.clone();
    let pid = f.server().child.id();
    // 10 MB: far more than the socket buffers of a stalled reader.
    let db = f.path("big.db");
    make_db(
        &db,
        DbSpec {
            rows: 30_000,
            row_bytes: 300,
            ..Default::default()
        },
    );
    let rt = rt();
    let mut hashes = Vec::new();
    for v in 0..5 {
        if v > 0 {
            change_rows(&db, 0.05);
        }
        let o = rt.block_on(push(
            &f.ws_url(),
            "acme/big.db",
            &db,
            &Opts {
                visibility: Some("2"),
                ..with_key(&f.admin)
            },
        ));
        o.assert_ok();
        hashes.push(version_hash(&db));
    }
    let before = rss_kib(pid);
    // Four stalled downloads of four versions, from four addresses (one
    // address has a quarter of the budget).
    let stalled = rt.block_on(async {
        let mut v = Vec::new();
        for n in 1..=4u32 {
            v.push(stalled_download(loopback(n), &addr, &format!("/acme/big.db@{n}")).await);
        }
        v
    });
    for (_, head) in &stalled {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    std::thread::sleep(Duration::from_secs(1));
    // No rebuilt copy of a version is kept for them: they stream from the
    // store.
    let cached: Vec<_> = std::fs::read_dir(f.data.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        cached.is_empty(),
        "rebuilt copies kept for stalled readers: {cached:?}"
    );
    let during = rss_kib(pid);
    assert!(
        during < before + 32 * 1024,
        "four stalled downloads grew the server from {before} to {during} KiB"
    );
    // The download budget is taken: one more is refused, at once.
    let (status, _, _) = http_get(&addr, "/acme/big.db@5");
    assert_eq!(status, 503, "a fifth download while four stall");
    // The stalled ones are cut after the download timeout (3 s): never
    // whole, however long their clients wait before reading on.
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    let ends = rt.block_on(async {
        let mut v = Vec::new();
        for (s, head) in stalled {
            let len = content_length(&head);
            v.push((rest_of(s, Duration::from_secs(30)).await, len));
        }
        v
    });
    for ((got, ended), len) in ends {
        assert!(ended, "a stalled download was never cut");
        assert!(got < len, "a stalled download got all {len} bytes");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Downloads work again, whole and right.
    for (n, want) in hashes.iter().enumerate() {
        let (status, _, body) = http_get(&addr, &format!("/acme/big.db@{}", n + 1));
        assert_eq!(status, 200);
        let out = f.path(&format!("dl{n}.db"));
        std::fs::write(&out, body).unwrap();
        assert_eq!(&version_hash(&out), want, "@{}", n + 1);
        assert_integrity(&out);
    }
    assert!(f.server().log().contains("download"), "nothing logged");
}
