//! What one client may hold of the server: memory it makes the server
//! queue (pings it never reads the answers to), session slots (subscribers
//! against pushes and pulls, one address against the others), the memory
//! each subscriber costs, and web downloads that stall.
//!
//! Every client here is a real socket to the real server process on
//! loopback. Any 127.0.0.0/8 address reaches a server on 127.0.0.1, so a
//! test binds its sockets to 127.0.0.x to be many clients at once.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::driver::*;
use crate::support::*;

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
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
