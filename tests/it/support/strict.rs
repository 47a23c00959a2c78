//! A strict peer: the public sqlrsync.com client (Go, v0.0.5) as our
//! server sees it, so the tests can hold the server to what that client
//! depends on (PROTOCOL.md sections 3 and 5). It is written here from the
//! client's observable behaviour, on tokio-tungstenite directly and without
//! our own `sqlrsync::link`, so a mistake shared by our link and our server
//! cannot hide here; only the real helper (`HelperCommand`) and the wire
//! constants come from the library.
//!
//! What it does, as that client does:
//! - every server->client binary frame is read into a buffer of
//!   [`GO_BUFFER`] bytes: a larger one is an error ("received data larger
//!   than buffer") and the helper then sees EOF;
//! - any binary frame whose first byte is 0x42 is taken for ORIGIN_END:
//!   it is handed over and then the helper sees EOF; nothing after it is
//!   delivered ([`StrictOutcome::saw_end_early`] tells when stream frames
//!   still followed, i.e. the 0x42 was not the end);
//! - between the socket and the helper's stdin there is a queue (a bounded
//!   channel of [`GO_QUEUE`] frames, dropped when full); once the server
//!   closed (or the connection failed) the helper is handed nothing more
//!   from it: what was still queued is dropped and counted;
//! - what one read of the helper's stdout returns (at most [`GO_BUFFER`]
//!   bytes) is one binary frame, whatever message boundary it cuts; CONFIG
//!   `[0x51]` and, when asked, KEYREQUEST `[0x53]` go right after the first
//!   stream frame;
//! - no header announces larger frames;
//! - after its helper exited it sends Close(1000) and drops the connection
//!   at once (unless the server closed first).
//!
//! [`Subscriber`] is the same client's `/sapi/subscribe/` side.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use sqlrsync::helper::{HelperCommand, Stderr};
use sqlrsync::wire::{CTRL_CONFIG, CTRL_KEYREQUEST, CTRL_NEWREPLICAVERSION, ORIGIN_END};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The Go client's read buffer: one ORIGIN_PAGE of a 4 KiB page.
pub const GO_BUFFER: usize = 4101;
/// Frames the Go client queues between its socket and its helper.
pub const GO_QUEUE: usize = 8202;
/// The `X-ClientVersion` it sends.
pub const CLIENT_VERSION: &str = "0.0.5";
/// Longest a whole session may take before the helper is killed.
const SESSION_LIMIT: Duration = Duration::from_secs(120);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sink = SplitSink<Ws, Message>;

/// What a strict session came to.
#[derive(Debug, Default, Clone)]
pub struct StrictOutcome {
    /// Pull: the helper exited 0, nothing was oversized, dropped or ended
    /// early, no ABORT, and the database passes
    /// `PRAGMA integrity_check`. Push: the same, and the server closed with
    /// 1000.
    pub ok: bool,
    /// The first thing that went wrong, as the Go client would see it.
    pub error: Option<String>,
    /// HTTP status of a refused upgrade.
    pub http_status: Option<u16>,
    /// Binary frames received.
    pub frames_in: usize,
    pub largest_frame_in: usize,
    /// Binary frames larger than [`GO_BUFFER`].
    pub frames_over_limit: usize,
    /// A frame starting with 0x42 arrived (sync completed).
    pub saw_end: bool,
    /// A frame starting with 0x42 arrived before the real stream end: more
    /// stream frames (anything but a lone NEWREPLICAVERSION) followed it.
    pub saw_end_early: bool,
    /// Stream frames that arrived after the 0x42 frame (not delivered).
    pub frames_after_end: usize,
    /// A lone NEWREPLICAVERSION `[0x52]` arrived after the end.
    pub newer_version: bool,
    /// Frames handed to the helper.
    pub frames_delivered: usize,
    /// Binary frames sent (stream and control).
    pub frames_out: usize,
    pub largest_frame_out: usize,
    /// Length of the first stream frame sent (CONFIG followed it).
    pub first_frame_out: usize,
    /// That frame ended inside a message of the stream.
    pub first_frame_mid_message: bool,
    /// Every `CONFIG=` JSON, in order.
    pub configs: Vec<serde_json::Value>,
    /// `MESSAGE=` texts and any other text frame.
    pub messages: Vec<String>,
    /// `ABORT=` reason.
    pub abort: Option<String>,
    /// Close code the server sent (1005 for a close without a code).
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// The server's close (or the connection's end) came before ours.
    pub server_closed_first: bool,
    /// The connection ended without a close frame.
    pub eof_without_close: bool,
    /// Frames received but never handed to the helper because the server
    /// closed first (or the queue was full).
    pub dropped_frames: usize,
    /// How the helper exited.
    pub helper_exit: Option<String>,
    pub helper_killed: bool,
    /// The helper's stderr.
    pub helper_stderr: String,
    /// `PRAGMA integrity_check` of the pulled database (pull only).
    pub integrity: Option<String>,
}

impl StrictOutcome {
    /// The last CONFIG's value of `field`, as a string.
    pub fn config(&self, field: &str) -> Option<String> {
        self.configs.iter().rev().find_map(|c| match c.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        })
    }

    /// Panics with the whole outcome and where the server log is.
    #[track_caller]
    pub fn assert_ok(&self, what: &str, server_log: &Path) {
        let refused = self
            .http_status
            .map_or(String::new(), |s| format!(" (upgrade refused: HTTP {s})"));
        assert!(
            self.ok,
            "strict {what} failed{refused}: {self:#?}\n(server log: {})",
            server_log.display()
        );
    }
}

/// Which side the strict peer plays.
#[derive(Debug, Clone)]
pub enum Role {
    /// `/sapi/pull/`, `X-ReplicaVersion` (`""` latest, `"7"`, `"-2"`).
    Pull { version: String },
    /// `/sapi/push/`.
    Push,
}

/// One strict session.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// `ws://127.0.0.1:PORT`
    pub ws_url: &'a str,
    pub remote_path: &'a str,
    pub db: &'a Path,
    pub key: Option<&'a str>,
    /// Send KEYREQUEST after the first stream frame (no -sqlrsync file).
    pub keyrequest: bool,
    /// `X-ReplicaID` (from a -sqlrsync file), when known.
    pub replica_id: Option<&'a str>,
    pub role: Role,
    /// Send only this many bytes of the helper's first read as the first
    /// stream frame (then CONFIG, KEYREQUEST, and the rest of that read as
    /// the next frame): where the Go client's first frame ends depends on
    /// how its helper's writes fall, so a test can put the CONFIG inside a
    /// message. None: the whole read.
    pub cut_first: Option<usize>,
}

/// Pulls `remote_path` (`version`: `""` latest, `"7"`, `"-2"`) into `db`.
pub async fn pull(
    ws_url: &str,
    remote_path: &str,
    db: &Path,
    key: Option<&str>,
    version: &str,
    keyrequest: bool,
) -> StrictOutcome {
    session(Spec {
        ws_url,
        remote_path,
        db,
        key,
        keyrequest,
        replica_id: None,
        role: Role::Pull {
            version: version.to_string(),
        },
        cut_first: None,
    })
    .await
}

/// Pushes `db` to `remote_path`.
pub async fn push(
    ws_url: &str,
    remote_path: &str,
    db: &Path,
    key: Option<&str>,
    keyrequest: bool,
) -> StrictOutcome {
    session(Spec {
        ws_url,
        remote_path,
        db,
        key,
        keyrequest,
        replica_id: None,
        role: Role::Push,
        cut_first: None,
    })
    .await
}

/// The upgrade request, with the headers of PROTOCOL.md section 2 that the
/// Go client sends (and nothing announcing large frames).
fn request(spec: &Spec<'_>) -> Request {
    let endpoint = match spec.role {
        Role::Pull { .. } => "pull",
        Role::Push => "push",
    };
    let url = format!("{}/sapi/{endpoint}/{}", spec.ws_url, spec.remote_path);
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if let Some(k) = spec.key {
        h.insert("Authorization", k.parse().unwrap());
    }
    h.insert("X-ClientVersion", CLIENT_VERSION.parse().unwrap());
    match &spec.role {
        Role::Pull { version } => {
            h.insert("X-ReplicaVersion", version.parse().unwrap());
        }
        Role::Push => {
            let abs = std::path::absolute(spec.db).unwrap();
            h.insert("X-LocalHostname", "strict-peer".parse().unwrap());
            h.insert(
                "X-LocalAbsolutePath",
                abs.to_string_lossy().parse().unwrap(),
            );
        }
    }
    if let Some(id) = spec.replica_id {
        h.insert("X-ReplicaID", id.parse().unwrap());
    }
    req
}

/// What the socket reader, the helper feeder and the pump report.
#[derive(Default)]
struct Shared {
    out: StrictOutcome,
}

type SharedRef = Arc<Mutex<Shared>>;

fn note(shared: &SharedRef, f: impl FnOnce(&mut StrictOutcome)) {
    f(&mut shared.lock().unwrap().out)
}

fn first_error(o: &mut StrictOutcome, e: String) {
    if o.error.is_none() {
        o.error = Some(e);
    }
}

/// Runs one session to its end and judges it.
pub async fn session(spec: Spec<'_>) -> StrictOutcome {
    let ws = match tokio_tungstenite::connect_async(request(&spec)).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return StrictOutcome {
                http_status: Some(resp.status().as_u16()),
                error: Some(format!("HTTP {}: {body}", resp.status())),
                ..Default::default()
            };
        }
        Err(e) => {
            return StrictOutcome {
                error: Some(format!("connect: {e}")),
                ..Default::default()
            };
        }
    };
    let cmd = match spec.role {
        Role::Pull { .. } => HelperCommand::replica(spec.remote_path, spec.db),
        Role::Push => HelperCommand::origin(spec.db, spec.remote_path),
    };
    let mut helper = cmd
        .stderr(Stderr::Piped)
        .spawn()
        .expect("the helper starts");
    let stdin = helper.stdin.take().expect("piped stdin");
    let stdout = helper.stdout.take().expect("piped stdout");
    let mut stderr = helper.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let shared: SharedRef = Arc::default();
    // Set once the server closed or the connection failed: the Go client
    // checks it before it takes anything from its queue.
    let conn_error = Arc::new(AtomicBool::new(false));
    let we_closed = Arc::new(AtomicBool::new(false));
    let (sink, stream) = ws.split();
    let (qtx, qrx) = mpsc::channel::<Vec<u8>>(GO_QUEUE);
    let reader = tokio::spawn(read_socket(
        stream,
        qtx,
        shared.clone(),
        conn_error.clone(),
        we_closed.clone(),
    ));
    let feeder = tokio::spawn(feed_helper(qrx, stdin, shared.clone(), conn_error.clone()));
    let pump = tokio::spawn(pump_helper(
        stdout,
        sink,
        (spec.keyrequest, spec.cut_first),
        shared.clone(),
    ));

    let exit = helper.exit(SESSION_LIMIT).await;
    let sink = pump.await.expect("pump task");
    // The helper is gone: whatever the feeder still waits for is moot.
    let mut feeder = feeder;
    if tokio::time::timeout(Duration::from_millis(200), &mut feeder)
        .await
        .is_err()
    {
        feeder.abort();
    }
    if conn_error.load(Ordering::SeqCst) {
        // The server closed first: let the reader answer its close and see
        // the end of the connection.
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    } else {
        // As the Go client: Close(1000), then the connection is dropped.
        we_closed.store(true, Ordering::SeqCst);
        let mut sink = sink;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        reader.abort();
        let _ = reader.await;
        drop(sink);
    }
    let helper_stderr = tokio::time::timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();

    let mut out = std::mem::take(&mut shared.lock().unwrap().out);
    out.helper_exit = Some(format!("{:?}", exit.status));
    out.helper_killed = exit.killed;
    out.helper_stderr = helper_stderr;
    let clean = exit.success()
        && out.frames_over_limit == 0
        && !out.saw_end_early
        && out.dropped_frames == 0
        && out.abort.is_none()
        && out.error.is_none();
    out.ok = match spec.role {
        Role::Pull { .. } => {
            out.integrity = Some(integrity(spec.db));
            clean && out.integrity.as_deref() == Some("ok")
        }
        Role::Push => clean && out.close_code == Some(1000),
    };
    out
}

/// `PRAGMA integrity_check` of `db`, or why it could not run.
fn integrity(db: &Path) -> String {
    let c =
        match rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        {
            Ok(c) => c,
            Err(e) => return format!("cannot open: {e}"),
        };
    c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("integrity_check failed: {e}"))
}

/// Socket -> queue, as the Go client's read loop: counts and judges every
/// binary frame, keeps the text frames, and stops queueing at ORIGIN_END,
/// at the server's close or at a connection error.
async fn read_socket(
    mut stream: SplitStream<Ws>,
    qtx: mpsc::Sender<Vec<u8>>,
    shared: SharedRef,
    conn_error: Arc<AtomicBool>,
    we_closed: Arc<AtomicBool>,
) {
    let mut qtx = Some(qtx);
    let mut ended = false;
    let mut closed = false;
    while let Some(m) = stream.next().await {
        match m {
            Ok(Message::Binary(b)) => {
                let queue = binary_in(&b, &mut ended, &shared);
                if let (true, Some(tx)) = (queue, &qtx)
                    && let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(b.to_vec())
                {
                    note(&shared, |o| {
                        o.dropped_frames += 1;
                        first_error(o, "read queue full, dropping message".into());
                    });
                }
                if ended {
                    qtx = None;
                }
            }
            Ok(Message::Text(t)) => note(&shared, |o| text_in(o, t.as_str())),
            Ok(Message::Close(c)) => {
                closed = true;
                conn_error.store(true, Ordering::SeqCst);
                qtx = None;
                let first = !we_closed.load(Ordering::SeqCst);
                note(&shared, |o| {
                    o.close_code = Some(c.as_ref().map_or(1005, |c| u16::from(c.code)));
                    o.close_reason = c.as_ref().map(|c| c.reason.to_string());
                    o.server_closed_first |= first;
                });
            }
            Ok(_) => {}
            Err(e) => {
                // After our own close the connection may end any way.
                if !closed && !we_closed.load(Ordering::SeqCst) {
                    note(&shared, |o| {
                        first_error(o, format!("connection error: {e}"));
                    });
                }
                break;
            }
        }
    }
    conn_error.store(true, Ordering::SeqCst);
    if !closed && !we_closed.load(Ordering::SeqCst) {
        note(&shared, |o| {
            o.eof_without_close = true;
            o.server_closed_first = true;
        });
    }
}

/// Counts and judges one binary frame; true when it goes to the queue.
fn binary_in(b: &[u8], ended: &mut bool, shared: &SharedRef) -> bool {
    let mut s = shared.lock().unwrap();
    let o = &mut s.out;
    o.frames_in += 1;
    o.largest_frame_in = o.largest_frame_in.max(b.len());
    if b.len() > GO_BUFFER {
        o.frames_over_limit += 1;
        first_error(
            o,
            format!(
                "received data larger than buffer: got {}, buffer {GO_BUFFER} (frame {})",
                b.len(),
                o.frames_in
            ),
        );
    }
    if *ended {
        if b == [CTRL_NEWREPLICAVERSION] {
            o.newer_version = true;
        } else {
            o.saw_end_early = true;
            o.frames_after_end += 1;
        }
        return false;
    }
    if b.first() == Some(&ORIGIN_END) {
        *ended = true;
        o.saw_end = true;
    }
    !b.is_empty()
}

/// A server text frame: `CONFIG=`, `MESSAGE=`, `ABORT=` or anything else.
fn text_in(o: &mut StrictOutcome, t: &str) {
    if let Some(j) = t.strip_prefix("CONFIG=") {
        match serde_json::from_str(j) {
            Ok(v) => o.configs.push(v),
            Err(e) => first_error(o, format!("CONFIG is not JSON ({e}): {j}")),
        }
    } else if let Some(m) = t.strip_prefix("MESSAGE=") {
        o.messages.push(m.to_string());
    } else if let Some(a) = t.strip_prefix("ABORT=") {
        o.abort = Some(a.to_string());
        first_error(o, format!("ABORT={a}"));
    } else {
        o.messages.push(t.to_string());
    }
}

/// Queue -> helper stdin, as the Go client's Read: nothing more once the
/// connection has an error (what is queued then is dropped), EOF after an
/// oversized frame or after the frame taken for ORIGIN_END.
async fn feed_helper(
    mut qrx: mpsc::Receiver<Vec<u8>>,
    mut stdin: ChildStdin,
    shared: SharedRef,
    conn_error: Arc<AtomicBool>,
) {
    loop {
        if conn_error.load(Ordering::SeqCst) {
            let left = qrx.len();
            note(&shared, |o| o.dropped_frames += left);
            break;
        }
        let Some(f) = qrx.recv().await else { break };
        if conn_error.load(Ordering::SeqCst) {
            let left = 1 + qrx.len();
            note(&shared, |o| o.dropped_frames += left);
            break;
        }
        if f.len() > GO_BUFFER {
            break;
        }
        if stdin.write_all(&f).await.is_err() {
            break;
        }
        note(&shared, |o| o.frames_delivered += 1);
        if f[0] == ORIGIN_END {
            break;
        }
    }
    let _ = stdin.shutdown().await;
}

/// Helper stdout -> socket: one read (at most [`GO_BUFFER`] bytes) is one
/// binary frame; CONFIG (and KEYREQUEST) follow the first (cut at
/// `cut_first`). Returns the sink once the helper's stdout ended.
async fn pump_helper(
    mut stdout: ChildStdout,
    mut sink: Sink,
    (keyrequest, cut_first): (bool, Option<usize>),
    shared: SharedRef,
) -> Sink {
    let mut buf = vec![0u8; GO_BUFFER];
    let mut first = true;
    let mut broken = false;
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if broken {
            continue; // keep draining, so the helper never blocks on us
        }
        let mut frames = Vec::new();
        if first {
            first = false;
            let cut = cut_first.filter(|&c| c > 0 && c < n).unwrap_or(n);
            let mid = !ends_at_boundary(&buf[..cut]);
            note(&shared, |o| {
                o.first_frame_out = cut;
                o.first_frame_mid_message = mid;
            });
            frames.push(buf[..cut].to_vec());
            frames.push(vec![CTRL_CONFIG]);
            if keyrequest {
                frames.push(vec![CTRL_KEYREQUEST]);
            }
            if cut < n {
                frames.push(buf[cut..n].to_vec());
            }
        } else {
            frames.push(buf[..n].to_vec());
        }
        for f in frames {
            let len = f.len();
            if let Err(e) = sink.send(Message::Binary(f.into())).await {
                note(&shared, |o| first_error(o, format!("write: {e}")));
                broken = true;
                break;
            }
            note(&shared, |o| {
                o.frames_out += 1;
                o.largest_frame_out = o.largest_frame_out.max(len);
            });
        }
    }
    sink
}

/// Whether `b`, the start of a sqlite3_rsync stream (either side's),
/// ends where a message ends (PROTOCOL.md section 1).
fn ends_at_boundary(b: &[u8]) -> bool {
    let u32at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes(s.try_into().unwrap()) as usize)
    };
    let (mut at, mut page) = (0, None);
    while at < b.len() {
        let m = &b[at..];
        let len = match m[0] {
            0x41 => {
                page = m.get(2).map(|&k| 1usize << k);
                Some(7)
            }
            0x42 | 0x48 | 0x63 | 0x65 => Some(1),
            0x61 => Some(2),
            0x45 => Some(5),
            0x47 | 0x67 => Some(9),
            0x64 => Some(21),
            0x43 | 0x46 | 0x62 | 0x66 => u32at(at + 1).map(|n| 5 + n),
            0x44 => page.map(|p| 5 + p),
            _ => None,
        };
        match len {
            Some(n) if at + n <= b.len() => at += n,
            _ => return false,
        }
    }
    true
}

/// The Go client's `/sapi/subscribe/` side: SUBSCRIBE after connecting,
/// every text frame parsed as JSON, plain `PING` on demand, and its
/// reconnect rule: a close with 1000 or 1001 is final, any other close or a
/// dropped connection reconnects (backoff 100 ms doubling to 2 s) for at
/// most `give_up` without a connection.
pub struct Subscriber {
    state: Arc<Mutex<SubState>>,
    cmd: mpsc::UnboundedSender<SubCmd>,
}

/// What a [`Subscriber`] saw.
#[derive(Debug, Default, Clone)]
pub struct SubState {
    /// Every text frame that parsed as JSON, over all connections.
    pub messages: Vec<serde_json::Value>,
    /// Text frames that did not (the Go client warns about each).
    pub not_json: Vec<String>,
    /// One entry per connection that ended: the close code (1005 for a
    /// close without one), None when it dropped without a close.
    pub close_codes: Vec<Option<u16>>,
    /// Connections opened (upgrades that succeeded).
    pub connections: usize,
    /// Failed connection attempts and their errors.
    pub connect_errors: Vec<String>,
    /// The text frame that came first after each PING sent.
    pub ping_replies: Vec<String>,
    /// It will not reconnect (a final close, a stop, or it gave up).
    pub stopped: bool,
    /// Why it stopped.
    pub stop_reason: Option<String>,
}

enum SubCmd {
    Ping,
    Stop,
}

impl Subscriber {
    /// Starts subscribing to `ws_url/sapi/subscribe/<remote_path>` on the
    /// runtime `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        ws_url: &str,
        remote_path: &str,
        key: Option<&str>,
        replica_id: &str,
        give_up: Duration,
    ) -> Subscriber {
        let url = format!("{ws_url}/sapi/subscribe/{remote_path}");
        let state: Arc<Mutex<SubState>> = Arc::default();
        let (cmd, rx) = mpsc::unbounded_channel();
        let target = SubTarget {
            url,
            key: key.map(str::to_string),
            replica_id: replica_id.to_string(),
            give_up,
        };
        rt.spawn(subscribe_loop(target, state.clone(), rx));
        Subscriber { state, cmd }
    }

    /// A snapshot of what it saw.
    pub fn state(&self) -> SubState {
        self.state.lock().unwrap().clone()
    }

    /// Waits up to `limit` for `pred` to hold; the last snapshot either way.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&SubState) -> bool) -> (bool, SubState) {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.state();
            if pred(&s) {
                return (true, s);
            }
            if Instant::now() >= deadline {
                return (false, s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a JSON message of `type` whose `data.version` is `version`.
    pub fn wait_version(&self, kind: &str, version: &str, limit: Duration) -> (bool, SubState) {
        self.wait_for(limit, |s| {
            s.messages
                .iter()
                .any(|m| m["type"] == kind && m["data"]["version"] == version)
        })
    }

    /// Sends a plain `PING` text frame and waits up to `limit` for the next
    /// text frame: its text, or None.
    pub fn ping(&self, limit: Duration) -> Option<String> {
        let before = self.state().ping_replies.len();
        self.cmd.send(SubCmd::Ping).ok()?;
        let (got, s) = self.wait_for(limit, |s| s.ping_replies.len() > before);
        got.then(|| s.ping_replies[before].clone())
    }

    /// UNSUBSCRIBE and Close(1000), as the Go client's Close.
    pub fn stop(&self) {
        let _ = self.cmd.send(SubCmd::Stop);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SubTarget {
    url: String,
    key: Option<String>,
    replica_id: String,
    give_up: Duration,
}

impl SubTarget {
    fn request(&self) -> Request {
        let mut req = self.url.as_str().into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert(
            "Authorization",
            self.key.as_deref().unwrap_or("").parse().unwrap(),
        );
        if !self.replica_id.is_empty() {
            h.insert("X-ReplicaID", self.replica_id.parse().unwrap());
        }
        h.insert("X-ClientVersion", CLIENT_VERSION.parse().unwrap());
        h.insert("X-ClientID", "strict-peer:0".parse().unwrap());
        req
    }
}

fn sub_message(kind: &str, data: serde_json::Value) -> Message {
    let m = serde_json::json!({
        "type": kind,
        "data": data,
        "timestamp": chrono::Utc::now().to_rfc3339(),
    });
    Message::Text(m.to_string().into())
}

/// How one subscribed connection ended.
enum SubEnd {
    /// Closed with this code (or dropped: None); reconnect unless final.
    Ended(Option<u16>),
    /// We stopped.
    Stopped,
}

async fn subscribe_loop(
    t: SubTarget,
    state: Arc<Mutex<SubState>>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    let mut delay = Duration::from_millis(100);
    let mut since_connected = Instant::now();
    let stop = |why: String| {
        let mut s = state.lock().unwrap();
        s.stopped = true;
        s.stop_reason = Some(why);
    };
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(t.request()),
        )
        .await;
        let ws = match attempt {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                state.lock().unwrap().connect_errors.push(e.to_string());
                if since_connected.elapsed() > t.give_up {
                    return stop(format!("gave up reconnecting: {e}"));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                state
                    .lock()
                    .unwrap()
                    .connect_errors
                    .push("connect timed out".into());
                if since_connected.elapsed() > t.give_up {
                    return stop("gave up reconnecting: connect timed out".into());
                }
                continue;
            }
        };
        state.lock().unwrap().connections += 1;
        delay = Duration::from_millis(100);
        match subscribed(ws, &t, &state, &mut cmds).await {
            SubEnd::Stopped => return stop("stopped".into()),
            SubEnd::Ended(code) => {
                state.lock().unwrap().close_codes.push(code);
                if matches!(code, Some(1000) | Some(1001)) {
                    return stop(format!("final close {code:?}"));
                }
                since_connected = Instant::now();
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connection: SUBSCRIBE, then frames in and commands out until it ends.
async fn subscribed(
    mut ws: Ws,
    t: &SubTarget,
    state: &Mutex<SubState>,
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
) -> SubEnd {
    let hello = sub_message(
        "SUBSCRIBE",
        serde_json::json!({ "replicaID": t.replica_id }),
    );
    if ws.send(hello).await.is_err() {
        return SubEnd::Ended(None);
    }
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            c = cmds.recv() => match c {
                Some(SubCmd::Ping) => {
                    awaiting_pong = true;
                    if ws.send(Message::Text("PING".into())).await.is_err() {
                        return SubEnd::Ended(None);
                    }
                }
                Some(SubCmd::Stop) | None => {
                    let _ = ws.send(sub_message("UNSUBSCRIBE", serde_json::json!({}))).await;
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })).await;
                    return SubEnd::Stopped;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    let mut s = state.lock().unwrap();
                    if awaiting_pong {
                        awaiting_pong = false;
                        s.ping_replies.push(text.to_string());
                    }
                    match serde_json::from_str::<serde_json::Value>(text.as_str()) {
                        Ok(v) => s.messages.push(v),
                        Err(_) => s.not_json.push(text.to_string()),
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    return SubEnd::Ended(Some(c.map_or(1005, |c| u16::from(c.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return SubEnd::Ended(None),
            },
        }
    }
}
