//! Figures of the server issue, run by `scripts/bench-server`:
//!
//! 1. dedup: data-dir bytes over database bytes after 12 versions of a
//!    ~30 MB database changing ~4% of its pages each;
//! 2. server RSS during 20 concurrent pulls of a ~100 MB database;
//! 3. latency from a version's commit to a subscriber's LATEST_VERSION.
//!
//! Runs the real (release) server on 127.0.0.1 with the real helper on
//! both sides, bridged by the same test-side driver the integration tests use.

// The bench uses a part of the tests' driver.
#[path = "../tests/it/support/driver.rs"]
#[allow(dead_code)]
mod driver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driver::{Opts, pull, push};
use futures_util::{SinkExt, StreamExt};
use rusqlite::Connection;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Server {
    child: Child,
    addr: String,
    data: PathBuf,
}

impl Server {
    fn start(bin: &Path, data: &Path) -> Server {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("SQLRSYNC_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let l = lines.next().expect("listening line").unwrap();
            if let Some(a) = l.split("listening on http://").nth(1) {
                break a.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            data: data.to_path_buf(),
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn namespace(&self, bin: &Path, name: &str) -> String {
        let o = Command::new(bin)
            .args(["namespace", "create", name, "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn make_db(path: &Path, rows: u32, row_bytes: u32) {
    let _ = std::fs::remove_file(path);
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA page_size=4096; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM n WHERE i < ?1)
         INSERT INTO t SELECT i, randomblob(?2) FROM n",
        [rows, row_bytes],
    )
    .unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn key(k: &str) -> Opts {
    Opts {
        key: Some(k.into()),
        ..Default::default()
    }
}

fn changed_pages(o: &driver::Outcome) -> u64 {
    o.messages
        .iter()
        .find_map(|m| {
            let rest = m.split("committed: ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(
        args.get(1)
            .expect("usage: server_bench SERVER_BIN [WORK_DIR]"),
    );
    let work = tempfile::Builder::new()
        .prefix("sqlrsync-bench-")
        .tempdir_in(
            args.get(2)
                .map(PathBuf::from)
                .unwrap_or(std::env::temp_dir()),
        )
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Dedup after 12 versions.
    let server = Server::start(&bin, &work.path().join("dedup"));
    let k = server.namespace(&bin, "bench");
    let db = work.path().join("thirty.db");
    let rows = 29_000u32;
    make_db(&db, rows, 1000);
    let db_bytes = std::fs::metadata(&db).unwrap().len();
    let pages = db_bytes / 4096;
    let o = rt.block_on(push(&server.ws(), "bench/thirty.db", &db, &key(&k)));
    o.assert_ok();
    let mut ideal_pages = pages;
    let block = rows * 4 / 100;
    for v in 2..=12u32 {
        let first = 1 + (v * 7919) % (rows - block);
        let c = Connection::open(&db).unwrap();
        c.execute(
            "UPDATE t SET v = randomblob(1000) WHERE id >= ?1 AND id < ?1 + ?2",
            [first, block],
        )
        .unwrap();
        drop(c);
        let o = rt.block_on(push(&server.ws(), "bench/thirty.db", &db, &key(&k)));
        o.assert_ok();
        ideal_pages += changed_pages(&o);
    }
    let data = server.data.clone();
    server.stop();
    let stored = dir_bytes(&data);
    let ratio = stored as f64 / db_bytes as f64;
    let ideal = ideal_pages as f64 / pages as f64;
    println!(
        "dedup: db {:.1} MB, 12 versions, avg {:.1}% pages changed per version",
        db_bytes as f64 / 1e6,
        (ideal - 1.0) / 11.0 * 100.0
    );
    println!(
        "dedup: data-dir {:.1} MB = {ratio:.3}x db bytes; ideal {ideal:.3}x; ratio/ideal {:.3} (target <= 1.05)",
        stored as f64 / 1e6,
        ratio / ideal
    );

    // 2. RSS during 20 concurrent pulls of ~100 MB.
    let server = Server::start(&bin, &work.path().join("rss"));
    let k = server.namespace(&bin, "bench");
    let big = work.path().join("hundred.db");
    make_db(&big, 97_000, 1000);
    let big_bytes = std::fs::metadata(&big).unwrap().len();
    rt.block_on(push(&server.ws(), "bench/hundred.db", &big, &key(&k)))
        .assert_ok();
    let pid = server.child.id();
    let idle_rss = rss_kb(pid, "VmRSS:");
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let s = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while s.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kb(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(10));
            }
            max
        })
    };
    let t0 = Instant::now();
    let outs: Vec<PathBuf> = (0..20)
        .map(|i| work.path().join(format!("pull{i}.db")))
        .collect();
    let results = rt.block_on(async {
        let tasks: Vec<_> = outs
            .iter()
            .map(|p| {
                let (ws, p, k) = (server.ws(), p.clone(), k.clone());
                tokio::spawn(async move { pull(&ws, "bench/hundred.db", &p, &key(&k)).await })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    let secs = t0.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    for r in &results {
        r.assert_ok();
    }
    for p in &outs {
        assert_eq!(std::fs::metadata(p).unwrap().len(), big_bytes);
        let _ = std::fs::remove_file(p);
    }
    println!(
        "rss: 20 concurrent pulls of a {:.1} MB db in {secs:.1} s; server RSS idle {:.1} MB, peak during pulls {:.1} MB (target < 100 MB)",
        big_bytes as f64 / 1e6,
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    server.stop();
    let _ = std::fs::remove_file(&big);

    // 3. Commit-to-subscriber latency.
    let server = Server::start(&bin, &work.path().join("latency"));
    let k = server.namespace(&bin, "bench");
    let small = work.path().join("small.db");
    make_db(&small, 2000, 200);
    rt.block_on(push(&server.ws(), "bench/small.db", &small, &key(&k)))
        .assert_ok();
    let mut lat_ms: Vec<f64> = rt.block_on(async {
        let mut req = format!("{}/sapi/subscribe/bench/small.db", server.ws())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", k.parse().unwrap());
        let (sock, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let (mut tx, mut rx) = sock.split();
        tx.send(Message::Text(r#"{"type":"SUBSCRIBE","data":{}}"#.into()))
            .await
            .unwrap();
        let listener = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = m {
                    let now = chrono::Utc::now();
                    let j: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if j["type"] == "LATEST_VERSION" {
                        let at = chrono::DateTime::parse_from_rfc3339(
                            j["data"]["committedAt"].as_str().unwrap(),
                        )
                        .unwrap();
                        v.push(
                            (now - at.with_timezone(&chrono::Utc))
                                .num_microseconds()
                                .unwrap() as f64
                                / 1000.0,
                        );
                        if v.len() == 100 {
                            break;
                        }
                    }
                }
            }
            v
        });
        for i in 0..100 {
            let c = Connection::open(&small).unwrap();
            c.execute(
                "UPDATE t SET v = randomblob(200) WHERE id = ?1",
                [1 + i * 17],
            )
            .unwrap();
            drop(c);
            push(&server.ws(), "bench/small.db", &small, &key(&k))
                .await
                .assert_ok();
        }
        tokio::time::timeout(Duration::from_secs(30), listener)
            .await
            .unwrap()
            .unwrap()
    });
    lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat_ms[((lat_ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "latency: {} commits, commit-to-subscriber p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 50 ms)",
        lat_ms.len(),
        pct(0.5),
        pct(0.99),
        lat_ms.last().unwrap()
    );
    server.stop();
}
