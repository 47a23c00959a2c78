//! The memory figure of issue 13 (item 7), run by
//! `scripts/bench-client-text`: the peak RSS of the `sqlrsync` client
//! pulling from a server that sends COUNT `MESSAGE=` frames of MIB MiB
//! each (the issue: 200 of 3.9 MiB took the client to 1.58 GB).
//!
//! The server is the tests' fake (tests/it/support/fake.rs,
//! `message_flood`) on 127.0.0.1; the client is the binary given, so the
//! same flood can be measured against another build (main's). Its peak
//! RSS is `ru_maxrss` from `wait4` (the client and the helper it waited
//! for, whichever was larger), its stderr is counted and dropped.
//!
//! With `--json` the flood comes before an honest pull of a small
//! database (the fake runs the real helper) and the client runs with
//! `--json`: a client that keeps every message for its report holds them
//! twice.
//!
//! Usage: client_text_flood CLIENT_BINARY [COUNT] [MIB] [--json]   (200, 3.9)

// The bench uses the tests' fake server.
#[path = "../tests/it/support/fake.rs"]
#[allow(dead_code)]
mod fake;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

// The client is waited for with wait4 (for its rusage), not Child::wait.
#[allow(clippy::zombie_processes)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(client) = args.get(1) else {
        eprintln!("usage: client_text_flood CLIENT_BINARY [COUNT] [MIB]");
        std::process::exit(2);
    };
    let count: usize = args.get(2).map_or(200, |a| a.parse().expect("COUNT"));
    let mib: f64 = args.get(3).map_or(3.9, |a| a.parse().expect("MIB"));
    let size = (mib * (1 << 20) as f64) as usize;
    let json = args.iter().any(|a| a == "--json");

    let work = tempfile::Builder::new()
        .prefix("sqlrsync-bench-text-")
        .tempdir()
        .unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    std::fs::create_dir_all(home.join(".cache")).unwrap();

    let scenario = if json {
        let origin = work.path().join("their.db");
        let c = rusqlite::Connection::open(&origin).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100000));")
            .unwrap();
        drop(c);
        let text = format!("MESSAGE={}", "m".repeat(size.saturating_sub(8)));
        let one = tokio_tungstenite::tungstenite::Message::Text(text.into());
        let cfg = sqlrsync::wire::ServerConfig {
            replica_path: Some("team/x.db".into()),
            committed_version_id: Some("1".into()),
            ..Default::default()
        };
        fake::honest_with("--origin", origin, cfg, vec![one; count], |_| {})
    } else {
        fake::message_flood(count, size)
    };
    let server = fake::Fake::start(scenario);
    let started = Instant::now();
    let mut cmd = Command::new(client);
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd
        .args([
            "team/x.db",
            "local.db",
            "--pullKey",
            "AAAAbbbbCCCCddddEEEE1234",
        ])
        .args(["--server", &server.url, "--timeout", "30"])
        .current_dir(work.path())
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("SQLRSYNC_AUTH_TOKEN")
        .env_remove("SQLRSYNC_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the client starts");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        // Count it all; keep the head of the last line.
        let (mut total, mut last, mut line) = (0u64, Vec::new(), Vec::new());
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            for &b in &buf[..n] {
                if b == b'\n' {
                    if !line.is_empty() {
                        last = std::mem::take(&mut line);
                    }
                } else if line.len() < 300 {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            last = line;
        }
        (total, String::from_utf8_lossy(&last).into_owned())
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let seconds = started.elapsed().as_secs_f64();
    let (stderr_bytes, last) = reader.join().unwrap();
    let got_out = server.sent();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status).to_string()
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    };
    println!("client:           {client}");
    let then = if json {
        ", then a pull, with --json"
    } else {
        ", then ABORT"
    };
    println!("flood:            {count} MESSAGEs of {mib} MiB{then}");
    println!(
        "client peak RSS:  {:.1} MiB",
        usage.ru_maxrss as f64 / 1024.0
    );
    if !json {
        println!(
            "text taken:       {:.1} MiB",
            got_out as f64 / (1 << 20) as f64
        );
    }
    println!("stderr:           {:.1} KiB", stderr_bytes as f64 / 1024.0);
    println!("exit:             {code} after {seconds:.1}s");
    println!("last stderr line: {last}");
}
