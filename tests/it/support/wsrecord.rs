//! A loopback TCP proxy that records a websocket conversation without
//! touching it: the bytes go through unchanged, and on the side it reads
//! the HTTP heads (request and response, up to the `\r\n\r\n` that ends
//! each) and then the websocket frame headers in each direction (FIN,
//! opcode, 7/16/64-bit payload length, mask bit and key), so a test can
//! check which headers were sent and answered and how big every frame was.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One websocket frame as it crossed the proxy.
#[derive(Debug, Clone)]
pub struct FrameRec {
    pub dir: Dir,
    pub fin: bool,
    /// 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong.
    pub opcode: u8,
    pub masked: bool,
    /// Payload length from the header.
    pub len: u64,
    /// The first (up to 8) payload bytes, unmasked.
    pub head: Vec<u8>,
}

impl FrameRec {
    pub fn is_binary(&self) -> bool {
        self.opcode == 2
    }

    pub fn first_byte(&self) -> Option<u8> {
        self.head.first().copied()
    }

    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.head.len() >= 2)
            .then(|| u16::from_be_bytes([self.head[0], self.head[1]]))
    }
}

/// One proxied connection.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    /// The HTTP request head, through its final CRLF CRLF.
    pub request_head: String,
    /// The HTTP response head likewise.
    pub response_head: String,
    /// Every frame, in the order the proxy parsed them.
    pub frames: Vec<FrameRec>,
    /// Frame headers that made no sense (the parser stopped there).
    pub parse_errors: Vec<String>,
    /// Both directions ended.
    pub done: bool,
    /// Directions still open.
    open: u8,
}

impl ConnRecord {
    /// The value of request header `name` (case-insensitive).
    pub fn request_header(&self, name: &str) -> Option<String> {
        header(&self.request_head, name)
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        header(&self.response_head, name)
    }

    /// The request line's path (`/sapi/push/...`).
    pub fn path(&self) -> &str {
        self.request_head.split_whitespace().nth(1).unwrap_or("")
    }

    /// The response's status code.
    pub fn status(&self) -> Option<u16> {
        self.response_head.split_whitespace().nth(1)?.parse().ok()
    }

    /// Binary frames going `dir`.
    pub fn binary(&self, dir: Dir) -> impl Iterator<Item = &FrameRec> {
        self.frames
            .iter()
            .filter(move |f| f.dir == dir && f.is_binary())
    }

    /// The largest binary frame going `dir` (0 if none).
    pub fn largest_binary(&self, dir: Dir) -> u64 {
        self.binary(dir).map(|f| f.len).max().unwrap_or(0)
    }

    /// (count, largest) of binary frames each way, and the heads: a line
    /// for assertion messages.
    pub fn summary(&self) -> String {
        let n = |d| self.binary(d).count();
        let closes: Vec<(Dir, Option<u16>)> = self
            .frames
            .iter()
            .filter(|f| f.opcode == 8)
            .map(|f| (f.dir, f.close_code()))
            .collect();
        format!(
            "{} status {:?}: {} binary frames up (largest {}), {} down (largest {}); closes {closes:?}; parse errors {:?}\nrequest:\n{}response:\n{}",
            self.path(),
            self.status(),
            n(Dir::Up),
            self.largest_binary(Dir::Up),
            n(Dir::Down),
            self.largest_binary(Dir::Down),
            self.parse_errors,
            self.request_head,
            self.response_head
        )
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A running recorder; stops accepting when dropped.
pub struct WsRecorder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnRecord>>>>>,
}

impl WsRecorder {
    /// Proxies to `target` (`127.0.0.1:PORT`).
    pub fn start(target: &str) -> WsRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<Mutex<ConnRecord>>>>> = Arc::default();
        let (stop2, conns2, target) = (stop.clone(), conns.clone(), target.to_string());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let rec = Arc::new(Mutex::new(ConnRecord {
                            open: 2,
                            ..Default::default()
                        }));
                        conns2.lock().unwrap().push(rec.clone());
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let rec2 = rec.clone();
                        thread::spawn(move || pump(client, server, Dir::Up, rec));
                        thread::spawn(move || pump(s2, c2, Dir::Down, rec2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        WsRecorder { addr, stop, conns }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Every connection so far, waiting up to `limit` for all of them to
    /// have ended in both directions (a client that exited may leave the
    /// proxy a moment of forwarding).
    pub fn connections(&self, limit: Duration) -> Vec<ConnRecord> {
        let deadline = Instant::now() + limit;
        loop {
            let all: Vec<ConnRecord> = self
                .conns
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.lock().unwrap().clone())
                .collect();
            if all.iter().all(|c| c.done) || Instant::now() >= deadline {
                return all;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WsRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` unchanged, parsing what goes by.
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Dir, rec: Arc<Mutex<ConnRecord>>) {
    let mut parser = Parser::new(dir);
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        parser.feed(&buf[..n], &rec);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let mut r = rec.lock().unwrap();
    r.open -= 1;
    r.done = r.open == 0;
}

/// The frame-header parser of one direction.
struct Parser {
    dir: Dir,
    /// Still reading the HTTP head (these bytes so far).
    head: Option<Vec<u8>>,
    /// Bytes of the current frame header so far.
    hdr: Vec<u8>,
    /// The frame whose payload is going by, and how much of it is left.
    cur: Option<(FrameRec, Option<[u8; 4]>, u64, u64)>,
    /// Stopped (a refused upgrade, or a header that made no sense).
    dead: bool,
}

impl Parser {
    fn new(dir: Dir) -> Parser {
        Parser {
            dir,
            head: Some(Vec::new()),
            hdr: Vec::new(),
            cur: None,
            dead: false,
        }
    }

    fn feed(&mut self, data: &[u8], rec: &Mutex<ConnRecord>) {
        if self.dead {
            return;
        }
        let rest;
        let mut data = data;
        if let Some(head) = &mut self.head {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let text = String::from_utf8_lossy(&head[..end + 4]).into_owned();
            rest = head[end + 4..].to_vec();
            self.head = None;
            let mut r = rec.lock().unwrap();
            match self.dir {
                Dir::Up => r.request_head = text,
                Dir::Down => {
                    self.dead = !text.starts_with("HTTP/1.1 101");
                    r.response_head = text;
                }
            }
            drop(r);
            if self.dead {
                return;
            }
            data = &rest;
        }
        while !data.is_empty() && !self.dead {
            data = match self.cur.take() {
                Some(cur) => self.payload(cur, data, rec),
                None => self.header_bytes(data, rec),
            };
        }
    }

    /// Takes header bytes; once the header is whole, starts its frame.
    fn header_bytes<'a>(&mut self, data: &'a [u8], rec: &Mutex<ConnRecord>) -> &'a [u8] {
        let mut i = 0;
        while i < data.len() {
            self.hdr.push(data[i]);
            i += 1;
            let Some(need) = header_len(&self.hdr) else {
                continue;
            };
            if self.hdr.len() < need {
                continue;
            }
            let h = std::mem::take(&mut self.hdr);
            let (frame, mask, len) = parse_header(&h, self.dir);
            if !matches!(frame.opcode, 0 | 1 | 2 | 8 | 9 | 10) {
                rec.lock()
                    .unwrap()
                    .parse_errors
                    .push(format!("{:?}: unknown opcode {}", self.dir, frame.opcode));
                self.dead = true;
                return &[];
            }
            if len == 0 {
                rec.lock().unwrap().frames.push(frame);
            } else {
                self.cur = Some((frame, mask, len, 0));
            }
            break;
        }
        &data[i..]
    }

    /// Takes payload bytes of the current frame.
    fn payload<'a>(
        &mut self,
        (mut frame, mask, len, mut seen): (FrameRec, Option<[u8; 4]>, u64, u64),
        data: &'a [u8],
        rec: &Mutex<ConnRecord>,
    ) -> &'a [u8] {
        let take = ((len - seen) as usize).min(data.len());
        for (k, b) in data[..take].iter().enumerate() {
            if frame.head.len() >= 8 {
                break;
            }
            let pos = seen as usize + k;
            frame.head.push(mask.map_or(*b, |m| b ^ m[pos % 4]));
        }
        seen += take as u64;
        if seen == len {
            rec.lock().unwrap().frames.push(frame);
        } else {
            self.cur = Some((frame, mask, len, seen));
        }
        &data[take..]
    }
}

/// The whole header's length once its first two bytes are known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    Some(2 + ext + mask)
}

fn parse_header(h: &[u8], dir: Dir) -> (FrameRec, Option<[u8; 4]>, u64) {
    let masked = h[1] & 0x80 != 0;
    let (len, at) = match h[1] & 0x7f {
        126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
        127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
        n => (n as u64, 2),
    };
    let mask = masked.then(|| h[at..at + 4].try_into().unwrap());
    let frame = FrameRec {
        dir,
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0f,
        masked,
        len,
        head: Vec::new(),
    };
    (frame, mask, len)
}
