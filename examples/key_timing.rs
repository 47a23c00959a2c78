//! Timing of key refusal, run by `scripts/bench-key-timing`: does a wrong
//! key that shares 19 leading characters with a real key take longer to
//! refuse than one that shares none? It must not, or an attacker could
//! guess a key character by character from response times.
//!
//! Starts the real (release) server on 127.0.0.1, creates a namespace (its
//! admin key K is the real key), then sends websocket upgrade requests to
//! `/sapi/pull/NS/x.db` on one kept-alive connection, alternating two wrong
//! keys of K's length and alphabet: one differing from K at character 1,
//! one equal to K for 19 characters. Each answer is a 401. Reports the
//! median (and quartiles) of the round-trip time of each, and the
//! difference of the medians.
//!
//! Usage: key_timing SERVER_BINARY [SAMPLES_PER_KEY]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &Path, data: &Path) -> Server {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        // Every sample is a wrong key from one address: without this the
        // server would slow them down to one a second (src/server/throttle.rs),
        // and the timing of the key check itself is what is measured.
        .args(["--max-key-delay", "0"])
        // Refusals are logged at warn; keep the log out of the timing.
        .env("SQLRSYNC_LOG", "error")
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
    Server { child, addr }
}

/// A kept-alive connection that sends one upgrade request per key.
struct Conn {
    addr: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            addr: addr.to_string(),
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Round-trip time of one refused upgrade; reconnects if the server
    /// closed the connection (the sample is then retried).
    fn refusal(&mut self, key: &str) -> Duration {
        let req = format!(
            "GET /sapi/pull/acme/x.db HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {key}\r\n\r\n",
            self.addr
        );
        loop {
            let t = Instant::now();
            if self.stream.write_all(req.as_bytes()).is_err() {
                *self = Conn::open(&self.addr);
                continue;
            }
            match self.read_response() {
                Some(status) => {
                    let elapsed = t.elapsed();
                    assert_eq!(status, 401, "a wrong key was not refused with 401");
                    return elapsed;
                }
                None => *self = Conn::open(&self.addr),
            }
        }
    }

    /// Reads one response (head and Content-Length body); its status.
    fn read_response(&mut self) -> Option<u16> {
        self.buf.clear();
        let mut chunk = [0u8; 2048];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        Some(status)
    }
}

/// (p25, median, p75) in nanoseconds.
fn quartiles(v: &mut [u128]) -> (u128, u128, u128) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// `key` with the characters from `from` on replaced by others of the
/// key alphabet (each one different from the original).
fn wrong_from(key: &str, from: usize) -> String {
    key.char_indices()
        .map(|(i, c)| {
            if i < from {
                c
            } else if c == 'x' {
                'y'
            } else {
                'x'
            }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .expect("usage: key_timing SERVER_BINARY [SAMPLES]");
    let samples: usize = args.next().map_or(20_000, |s| s.parse().unwrap());
    let bin = Path::new(&bin);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = Command::new(bin)
        .args(["namespace", "create", "acme", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success());
    let real = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let server = start(bin, &data);
    let far = wrong_from(&real, 0);
    let near = wrong_from(&real, 19);
    assert_eq!(far.len(), real.len());
    assert_eq!(&near[..19], &real[..19]);
    assert_ne!(near, real);

    let mut conn = Conn::open(&server.addr);
    // Warm up: connection, caches, the server's allocator.
    for _ in 0..2000 {
        conn.refusal(&far);
        conn.refusal(&near);
    }
    let (mut t_far, mut t_near) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..samples {
        // Alternate which goes first so drift hits both alike.
        if i % 2 == 0 {
            t_far.push(conn.refusal(&far).as_nanos());
            t_near.push(conn.refusal(&near).as_nanos());
        } else {
            t_near.push(conn.refusal(&near).as_nanos());
            t_far.push(conn.refusal(&far).as_nanos());
        }
    }
    let (f25, f50, f75) = quartiles(&mut t_far);
    let (n25, n50, n75) = quartiles(&mut t_near);
    println!(
        "key refusal timing: {samples} samples per key, {:.1} s, real key {} characters",
        started.elapsed().as_secs_f64(),
        real.len()
    );
    println!(
        "  wrong key sharing  0 leading characters: median {:>7.1} us (p25 {:.1}, p75 {:.1})",
        f50 as f64 / 1e3,
        f25 as f64 / 1e3,
        f75 as f64 / 1e3
    );
    println!(
        "  wrong key sharing 19 leading characters: median {:>7.1} us (p25 {:.1}, p75 {:.1})",
        n50 as f64 / 1e3,
        n25 as f64 / 1e3,
        n75 as f64 / 1e3
    );
    let diff = n50 as i128 - f50 as i128;
    let spread = (f75 - f25).max(1) as f64;
    println!(
        "  difference of medians (19 - 0): {:+.2} us ({:+.1}% of the 0-prefix median, {:.2}x its interquartile range)",
        diff as f64 / 1e3,
        diff as f64 * 100.0 / f50 as f64,
        diff.abs() as f64 / spread
    );
}
