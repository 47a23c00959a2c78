//! Carrying the helper's stdin/stdout over a websocket (client side).
//!
//! The embedded sqlite3_rsync runs as ORIGIN (push) or REPLICA (pull) on
//! its stdin/stdout. Three tasks move the bytes, websocat style, one
//! direction each:
//!
//! - helper stdout -> binary frames: whatever is ready is coalesced into
//!   frames of at most [`MAX_FRAME`]; our control frames (COMMITMESSAGE,
//!   CONFIG, KEYREQUEST) go out only between messages of this stream, which
//!   a [`StreamParser`] tracks;
//! - binary frames -> helper stdin, through a second parser so that the
//!   server's control frames are told apart from stream data; text frames
//!   (CONFIG, MESSAGE, ABORT) are acted on;
//! - helper stderr -> the user.
//!
//! EOF crosses over: the socket's end closes the helper's stdin, and the
//! helper's stdout EOF (the replica finished, on a pull) makes us close the
//! socket normally. The helper's `--origin`/`--replica` forms always exit 0,
//! so the verdict comes from the streams ([`OriginSummary`],
//! [`ReplicaSummary`]), the server's close and the exit status together;
//! [`Outcome`] carries all of them to the caller.
//!
//! Memory stays bounded whatever the database size: at most a few frames
//! are in flight (a small channel) and the parsers keep at most one page;
//! an endless stream is a protocol error once it exceeds what it announced
//! (see [`StreamParser`]).
//!
//! On a pull, the [`CommitGate`] holds ORIGIN_TXN back until the stream is
//! complete (and, when the server sent a versionHash, verified), so a pull
//! that fails in any way leaves the local database untouched. A server that
//! goes silent is given up on after the idle timeout (`--idle-timeout`): no
//! frame from it (its keepalive Pings count, Pongs to ours do not) for that
//! long.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::commit_gate::{CommitGate, GateConfig};
use crate::helper::Side;
use crate::wire::{
    CTRL_NEWREPLICAVERSION, Direction, FrameKind, Message, OriginSummary, ReplicaSummary,
    ServerConfig, ServerText, StreamParser, classify, keepalive_interval,
};

/// Largest binary frame we send: what is ready on the helper's stdout is
/// gathered up to this size.
pub const MAX_FRAME: usize = 64 * 1024;

/// Frames queued between the stdout task and the socket writer; bounds
/// memory to a few frames.
const QUEUE: usize = 4;

/// How long the helper may take to exit once its input closed.
const HELPER_EXIT_GRACE: Duration = Duration::from_secs(20);

/// How long to wait for the server's CONFIG answer after a pull finished.
const CONFIG_GRACE: Duration = Duration::from_secs(10);

/// How long to wait for the server's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What to run and what to send around it.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which side the helper plays (decides the parsers' directions).
    pub side: Side,
    /// Arguments of the helper (`--origin DB NAME --protocol 2` ...).
    pub args: Vec<OsString>,
    /// Control frames sent before any stream data (COMMITMESSAGE).
    pub before_stream: Vec<Vec<u8>>,
    /// Control frames sent at the first message boundary after the first
    /// stream frame (CONFIG, KEYREQUEST).
    pub after_first: Vec<Vec<u8>>,
    /// Wait (briefly) for a CONFIG text frame before closing a finished
    /// pull, because it carries the keys and the version hash.
    pub want_config: bool,
    /// Print the helper's stderr as it comes (-vv); otherwise it is
    /// collected and reported with the result.
    pub live_stderr: bool,
    /// Keep the digest of every page received (a pull that will be
    /// verified): see [`crate::sqlite::version_hash_with`].
    pub digest_received: bool,
    /// Give up when the server sends nothing (not even a keepalive) for
    /// this long: a stalled connection must not hang the sync forever. We
    /// send a Ping ourselves whenever we have been quiet for a quarter of
    /// it, which any live server answers.
    pub idle_timeout: Duration,
    /// On a pull: hold the commit until the stream is complete and
    /// verified (see [`CommitGate`]).
    pub commit_gate: Option<GateConfig>,
    /// On a pull: the database the helper writes, whose writeback we start
    /// as pages arrive (see [`crate::write_behind`]).
    pub write_behind: Option<PathBuf>,
}

/// Byte counts of one connection, shared by the tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// sqlite3_rsync stream bytes we sent.
    pub stream_out: AtomicU64,
    /// sqlite3_rsync stream bytes we received.
    pub stream_in: AtomicU64,
    /// Websocket bytes sent: frame headers (with mask) and payloads of every
    /// frame, control and text frames included.
    pub wire_out: AtomicU64,
    /// Websocket bytes received, counted the same way.
    pub wire_in: AtomicU64,
    /// Wire bytes of the server's text frames (CONFIG, MESSAGE, ABORT):
    /// part of `wire_in`, but replies rather than framing of the stream.
    pub text_in: AtomicU64,
    /// Pages carried (ORIGIN_PAGE, whichever way they flow).
    pub pages: AtomicU64,
    /// Page count announced by ORIGIN_BEGIN (progress total).
    pub page_count: AtomicU64,
    /// Page size announced by ORIGIN_BEGIN.
    pub page_size: AtomicU64,
}

impl Stats {
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Bytes a websocket frame with `payload` bytes takes on the wire.
pub fn frame_len(payload: usize, masked: bool) -> u64 {
    let ext = if payload < 126 {
        0
    } else if payload <= 0xffff {
        2
    } else {
        8
    };
    (2 + ext + if masked { 4 } else { 0 } + payload) as u64
}

/// Something the bridge tells its caller while it runs.
pub trait Observer: Send + Sync {
    /// Stream progress changed (see [`Stats`]).
    fn progress(&self, stats: &Stats);
    /// A `MESSAGE=` from the server, to show the user.
    fn message(&self, text: &str);
    /// A helper stderr line in live mode.
    fn helper_line(&self, line: &str);
}

/// How a bridged sync ended; the caller turns it into a verdict.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The ORIGIN's stream, whoever ran it.
    pub origin: OriginSummary,
    /// The REPLICA's stream, whoever ran it.
    pub replica: ReplicaSummary,
    /// Every CONFIG the server sent, merged (later fields win).
    pub config: Option<ServerConfig>,
    /// `MESSAGE=` texts, in order (already shown through the observer).
    pub messages: Vec<String>,
    /// `ABORT=` reason.
    pub abort: Option<String>,
    /// Close code and reason the server sent, if it closed.
    pub close: Option<(u16, String)>,
    /// The connection broke (error, or ended without a close frame).
    pub connection_error: Option<String>,
    /// The server's stream was not sqlite3_rsync.
    pub protocol_error: Option<String>,
    /// The helper's exit status (None when it had to be killed).
    pub helper_status: Option<ExitStatus>,
    /// The helper's stderr lines (when not live).
    pub helper_stderr: Vec<String>,
    /// The helper was killed after not exiting in time.
    pub helper_killed: bool,
    /// Ctrl-C stopped the sync.
    pub interrupted: bool,
    /// Every frame we queued was handed to the socket. False: what the
    /// server received was cut short (so a push cannot have been stored).
    pub stream_sent: bool,
    /// The server said a newer version exists (NEWREPLICAVERSION).
    pub newer_version: bool,
    /// Digests of the pages received, when [`Spec::digest_received`].
    pub received: Option<crate::sqlite::ReceivedPages>,
    /// The commit gate refused the version (it does not match its
    /// versionHash); the local database was not touched.
    pub verify_failure: Option<String>,
    /// The commit gate checked the version against its versionHash before
    /// letting the commit through.
    pub pre_verified: bool,
}

/// State the reader task shares with the coordinator.
#[derive(Default)]
struct Shared {
    /// Merged CONFIG.
    config: Option<ServerConfig>,
    /// MESSAGE texts.
    messages: Vec<String>,
    /// NEWREPLICAVERSION seen.
    newer_version: bool,
}

/// What goes to the socket writer.
enum Out {
    Frame(WsMessage),
    Close(CloseCode, String),
}

/// Runs the helper per `spec` over `ws` until the sync ends, the server
/// stops it, or `interrupt` fires (Ctrl-C).
pub async fn run<S>(
    ws: WebSocketStream<S>,
    spec: Spec,
    stats: Arc<Stats>,
    observer: Arc<dyn Observer>,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let helper = crate::helper::path()?;
    let mut child = spawn_helper(helper, &spec.args)?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    let (out_dir, in_dir) = match spec.side {
        Side::Origin => (Direction::FromOrigin, Direction::FromReplica),
        Side::Replica => (Direction::FromReplica, Direction::FromOrigin),
    };
    let (ws_tx, ws_rx) = ws.split();
    let (tx, rx) = mpsc::channel::<Out>(QUEUE);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let config_seen = Arc::new(Notify::new());
    let (cancel_tx, cancel_rx) = watch::channel(false);

    let writer = tokio::spawn(write_socket(
        ws_tx,
        rx,
        stats.clone(),
        keepalive_interval(spec.idle_timeout),
    ));
    let gate = match spec.side {
        Side::Replica => spec.commit_gate.clone().map(CommitGate::new),
        Side::Origin => None,
    };
    let reader = tokio::spawn(read_socket(
        ws_rx,
        stdin,
        StreamParser::new(in_dir),
        gate,
        stats.clone(),
        observer.clone(),
        shared.clone(),
        config_seen.clone(),
        cancel_rx,
        spec.digest_received,
        spec.write_behind
            .clone()
            .map(crate::write_behind::WriteBehind::start),
        spec.idle_timeout,
    ));
    let mut pump = tokio::spawn(pump_stdout(
        stdout,
        StreamParser::new(out_dir),
        tx.clone(),
        spec.before_stream.clone(),
        spec.after_first.clone(),
        stats.clone(),
        observer.clone(),
    ));
    let live = spec.live_stderr;
    let obs = observer.clone();
    let stderr_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut kept = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if live {
                obs.helper_line(&line);
            } else if kept.len() < 64 {
                kept.push(line);
            }
        }
        kept
    });

    let mut out = Outcome::default();
    let mut reader = reader;
    let mut reader_done: Option<ReaderResult> = None;
    let mut pump_done: Option<PumpResult> = None;

    // Phase 1: wait for the first of: helper stdout EOF, socket end, Ctrl-C.
    tokio::select! {
        r = &mut pump => pump_done = Some(r?),
        r = &mut reader => reader_done = Some(r?),
        _ = wait_true(&mut interrupt) => {
            out.interrupted = true;
        }
    }

    if out.interrupted {
        // Close the helper's input so an unfinished replica rolls back,
        // then tell the server.
        let _ = cancel_tx.send(true);
        let _ = tx
            .send(Out::Close(CloseCode::Normal, "interrupted".into()))
            .await;
    }

    // Phase 2: the helper's stdout must end (it exits once its input ends).
    if pump_done.is_none() {
        match tokio::time::timeout(HELPER_EXIT_GRACE, &mut pump).await {
            Ok(r) => pump_done = Some(r?),
            Err(_) => {
                let _ = child.start_kill();
                out.helper_killed = true;
                pump_done = Some(pump.await?);
            }
        }
    }
    let pump_result = pump_done.expect("pump finished");
    tracing::debug!("helper output ended");
    out.helper_status = match tokio::time::timeout(HELPER_EXIT_GRACE, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            out.helper_killed = true;
            child.wait().await.ok()
        }
    };
    tracing::debug!(status = ?out.helper_status, "helper exited");

    // Phase 3: the socket. On a pull that finished, wait for CONFIG, then
    // close normally; on anything that went wrong, close with an error.
    if reader_done.is_none() {
        let in_ok = !out.interrupted && pump_result.error.is_none() && helper_ok(&out);
        if in_ok && spec.want_config && shared.lock().await.config.is_none() {
            let waited = tokio::time::timeout(CONFIG_GRACE, async {
                tokio::select! {
                    _ = config_seen.notified() => None,
                    r = &mut reader => Some(r),
                }
            })
            .await;
            if let Ok(Some(r)) = waited {
                reader_done = Some(r?);
            }
        }
        if reader_done.is_none() {
            let (code, why) = if in_ok {
                (CloseCode::Normal, "done".to_string())
            } else {
                (
                    CloseCode::Error,
                    "the sync failed on the client".to_string(),
                )
            };
            let _ = tx.send(Out::Close(code, why)).await;
            match tokio::time::timeout(CLOSE_GRACE, &mut reader).await {
                Ok(r) => reader_done = Some(r?),
                Err(_) => {
                    let _ = cancel_tx.send(true);
                    reader_done = Some(reader.await?);
                }
            }
        }
    }
    drop(tx);
    out.stream_sent = matches!(
        tokio::time::timeout(CLOSE_GRACE, writer).await,
        Ok(Ok(true))
    );
    let rr = reader_done.expect("reader finished");
    tracing::debug!("socket done");
    out.helper_stderr = stderr_task.await.unwrap_or_default();

    // Assemble: summaries from whichever side ran ORIGIN.
    match spec.side {
        Side::Origin => {
            out.origin = pump_result.origin;
            out.replica = rr.replica;
        }
        Side::Replica => {
            out.origin = rr.origin;
            out.replica = pump_result.replica;
        }
    }
    if out.connection_error.is_none() {
        out.connection_error = rr.connection_error.or(pump_result.error);
    }
    out.abort = rr.abort;
    out.received = rr.received;
    out.close = rr.close;
    out.protocol_error = rr.protocol_error;
    out.verify_failure = rr.verify_failure;
    out.pre_verified = rr.pre_verified;
    let sh = std::mem::take(&mut *shared.lock().await);
    out.config = sh.config;
    out.messages = sh.messages;
    out.newer_version = sh.newer_version;
    Ok(out)
}

fn helper_ok(out: &Outcome) -> bool {
    out.helper_status.is_some_and(|s| s.success()) && !out.helper_killed
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            // Sender gone: never fires.
            std::future::pending::<()>().await;
        }
    }
}

fn spawn_helper(helper: &Path, args: &[OsString]) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(helper);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own process group: Ctrl-C reaches us, not the helper, so we can
    // close its input and let an unfinished replica roll back cleanly.
    cmd.process_group(0);
    tracing::debug!(?helper, ?args, "starting helper");
    let child = cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start the sqlite3_rsync helper {}: {e}",
            helper.display()
        )
    })?;
    if let Some(i) = &child.stdin {
        crate::helper::widen_pipe(i);
    }
    if let Some(o) = &child.stdout {
        crate::helper::widen_pipe(o);
    }
    Ok(child)
}

/// What the stdout pump saw.
struct PumpResult {
    origin: OriginSummary,
    replica: ReplicaSummary,
    error: Option<String>,
}

/// Helper stdout -> binary frames, with our control frames at boundaries.
async fn pump_stdout<R: AsyncRead + Unpin>(
    mut stdout: R,
    mut parser: StreamParser,
    tx: mpsc::Sender<Out>,
    before: Vec<Vec<u8>>,
    mut after_first: Vec<Vec<u8>>,
    stats: Arc<Stats>,
    observer: Arc<dyn Observer>,
) -> PumpResult {
    let mut res = PumpResult {
        origin: OriginSummary::default(),
        replica: ReplicaSummary::default(),
        error: None,
    };
    let mut socket_open = true;
    for f in before {
        socket_open &= tx
            .send(Out::Frame(WsMessage::Binary(f.into())))
            .await
            .is_ok();
    }
    let mut sent_first = false;
    loop {
        let mut buf = vec![0u8; MAX_FRAME];
        let (n, eof) = match read_coalesced(&mut stdout, &mut buf).await {
            Ok(x) => x,
            Err(e) => {
                res.error = Some(format!("cannot read the helper's output: {e}"));
                break;
            }
        };
        if n > 0 {
            buf.truncate(n);
            let parsed = parser.feed(&buf, |m| {
                note_message(&m, &stats);
                res.origin.observe(&m);
                res.replica.observe(&m);
            });
            if let Err(e) = parsed {
                // Our own helper wrote something we cannot follow: stop, so
                // no control frame is ever sent in the middle of a message.
                res.error = Some(format!(
                    "the helper's output is not a sqlite3_rsync stream: {e}"
                ));
                break;
            }
            stats.stream_out.fetch_add(n as u64, Ordering::Relaxed);
            observer.progress(&stats);
            if socket_open {
                socket_open = tx
                    .send(Out::Frame(WsMessage::Binary(buf.into())))
                    .await
                    .is_ok();
            }
            sent_first = true;
        }
        if sent_first && !after_first.is_empty() && parser.at_boundary() {
            for f in std::mem::take(&mut after_first) {
                if socket_open {
                    socket_open = tx
                        .send(Out::Frame(WsMessage::Binary(f.into())))
                        .await
                        .is_ok();
                }
            }
        }
        if eof {
            break;
        }
    }
    // Keep draining so a helper that still writes never blocks on a full
    // pipe while it winds down.
    let mut sink = [0u8; 8192];
    while let Ok(n) = stdout.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
    res
}

/// Reads what is ready, up to `buf.len()`: one read that may wait, then
/// more reads only while data is already there. Returns (bytes, eof).
async fn read_coalesced<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<(usize, bool)> {
    let mut n = r.read(buf).await?;
    if n == 0 {
        return Ok((0, true));
    }
    while n < buf.len() {
        match r.read(&mut buf[n..]).now_or_never() {
            Some(Ok(0)) => return Ok((n, true)),
            Some(Ok(k)) => n += k,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok((n, false))
}

fn note_message(m: &Message<'_>, stats: &Stats) {
    match m {
        Message::OriginBegin {
            page_size,
            page_count,
            ..
        } => {
            stats
                .page_count
                .store(*page_count as u64, Ordering::Relaxed);
            stats.page_size.store(*page_size as u64, Ordering::Relaxed);
        }
        Message::OriginPage { .. } => {
            stats.pages.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Owns the socket's sending half; after a close (or a send error) it keeps
/// draining the queue so the stdout pump never blocks. While nothing is
/// queued for `keepalive` it sends a Ping: the server answers (and our
/// server counts it as a sign of life while our helper is busy hashing).
/// Returns true when every frame queued was handed to the socket: false
/// means the peer got a stream cut short.
async fn write_socket<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, WsMessage>,
    mut rx: mpsc::Receiver<Out>,
    stats: Arc<Stats>,
    keepalive: Duration,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut open = true;
    let mut all_sent = true;
    loop {
        let item = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                if open && sink.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    open = false;
                }
                continue;
            }
        };
        if !open {
            if matches!(item, Out::Frame(_)) {
                all_sent = false;
            }
            continue;
        }
        match item {
            Out::Frame(m) => {
                let len = match &m {
                    WsMessage::Binary(b) => b.len(),
                    WsMessage::Text(t) => t.len(),
                    _ => 0,
                };
                if sink.send(m).await.is_err() {
                    open = false;
                    all_sent = false;
                } else {
                    stats
                        .wire_out
                        .fetch_add(frame_len(len, true), Ordering::Relaxed);
                }
            }
            Out::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
                open = false;
            }
        }
    }
    let _ = sink.close().await;
    all_sent
}

/// What the socket reader saw.
#[derive(Default)]
struct ReaderResult {
    origin: OriginSummary,
    replica: ReplicaSummary,
    abort: Option<String>,
    close: Option<(u16, String)>,
    connection_error: Option<String>,
    protocol_error: Option<String>,
    received: Option<crate::sqlite::ReceivedPages>,
    verify_failure: Option<String>,
    pre_verified: bool,
}

/// Binary frames -> helper stdin; text frames acted on. Returns when the
/// socket ends, the server aborts, or `cancel` fires; the helper's stdin is
/// dropped on return, which is its EOF.
#[allow(clippy::too_many_arguments)]
async fn read_socket<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    stdin: tokio::process::ChildStdin,
    mut parser: StreamParser,
    mut gate: Option<CommitGate>,
    stats: Arc<Stats>,
    observer: Arc<dyn Observer>,
    shared: Arc<Mutex<Shared>>,
    config_seen: Arc<Notify>,
    mut cancel: watch::Receiver<bool>,
    digest_received: bool,
    mut write_behind: Option<crate::write_behind::WriteBehind>,
    idle: Duration,
) -> ReaderResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut res = ReaderResult::default();
    let mut stdin = Some(stdin);
    // The versionHash the server announced so far (for the commit gate).
    let mut expected_hash: Option<String> = None;
    // Anything the server sends keeps the sync alive, its keepalive Pings
    // included, except Pongs: those are its websocket library answering our
    // own pings, which it does even when the server itself is stuck.
    let mut deadline = tokio::time::Instant::now() + idle;
    // Takes the received pages' digests off this task (see PageDigester).
    let mut digester: Option<crate::sqlite::PageDigester> = None;
    let mut logged_end = false;
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, stream.next()) => match m {
                Ok(m) => m,
                Err(_) => {
                    res.connection_error = Some(format!(
                        "no data from the server: it sent nothing for {}s (the connection stalled)",
                        idle.as_secs_f64()
                    ));
                    break;
                }
            },
            _ = wait_true(&mut cancel) => break,
        };
        if !matches!(msg, Some(Ok(WsMessage::Pong(_)))) {
            deadline = tokio::time::Instant::now() + idle;
        }
        let msg = match msg {
            None => {
                res.connection_error =
                    Some("the server ended the connection without closing it".into());
                break;
            }
            Some(Err(e)) => {
                res.connection_error = Some(format!("connection lost: {e}"));
                break;
            }
            Some(Ok(m)) => m,
        };
        match msg {
            WsMessage::Binary(data) => {
                stats
                    .wire_in
                    .fetch_add(frame_len(data.len(), false), Ordering::Relaxed);
                match classify(&data, parser.at_boundary()) {
                    FrameKind::Empty => continue,
                    FrameKind::Stream => {}
                    FrameKind::Control(_) => {
                        if data[0] == CTRL_NEWREPLICAVERSION && data.len() == 1 {
                            shared.lock().await.newer_version = true;
                        } else {
                            // Debug, not warn: a newer server's frame is no
                            // reason for a second line on the user's terminal.
                            tracing::debug!(
                                byte = data[0],
                                len = data.len(),
                                "ignoring an unknown control frame"
                            );
                        }
                        continue;
                    }
                }
                let start = parser.bytes();
                let mut end = parser.consumed();
                let hash_known = expected_hash.is_some();
                let fed = parser.feed(&data, |m| {
                    end += m.wire_len() as u64;
                    note_message(&m, &stats);
                    if let (Message::OriginPage { pgno, data: page }, Some(d)) =
                        (&m, digester.as_mut())
                    {
                        d.add(*pgno, &data, page);
                    }
                    res.origin.observe(&m);
                    res.replica.observe(&m);
                    if let Some(g) = gate.as_mut() {
                        g.observe(&m, end, hash_known);
                    }
                });
                if let Err(e) = fed {
                    // Stop feeding the helper: it would only be confused,
                    // and without ORIGIN_TXN it rolls back.
                    res.protocol_error = Some(format!(
                        "the server sent a stream that is not sqlite3_rsync: {e}"
                    ));
                    break;
                }
                stats
                    .stream_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                observer.progress(&stats);
                let (now, complete) = match gate.as_mut().map(|g| g.split(&data, start)) {
                    None => (&data[..], false),
                    Some(Ok(split)) => (split.now, split.complete),
                    Some(Err(e)) => {
                        res.protocol_error = Some(format!(
                            "the server sent a stream that is not sqlite3_rsync: {e}"
                        ));
                        break;
                    }
                };
                if let Some(d) = digester.as_mut() {
                    d.flush().await;
                }
                feed_helper(&mut stdin, now).await;
                if let Some(w) = write_behind.as_mut() {
                    w.wrote(now.len());
                }
                if parser.ended() && !logged_end {
                    logged_end = true;
                    tracing::debug!("stream complete");
                }
                if complete && let Some(g) = gate.as_mut() {
                    // ORIGIN_END is in: let the commit through only for a
                    // version that matches its versionHash.
                    let check = g.finish(expected_hash.clone());
                    match tokio::task::spawn_blocking(move || check.run()).await {
                        Ok(Ok((held, verified))) => {
                            res.pre_verified = verified;
                            feed_helper(&mut stdin, &held).await;
                        }
                        Ok(Err(why)) => {
                            res.verify_failure = Some(why);
                            break;
                        }
                        Err(e) => {
                            res.verify_failure = Some(format!("verification task failed: {e}"));
                            break;
                        }
                    }
                }
            }
            WsMessage::Text(t) => {
                stats
                    .wire_in
                    .fetch_add(frame_len(t.len(), false), Ordering::Relaxed);
                stats
                    .text_in
                    .fetch_add(frame_len(t.len(), false), Ordering::Relaxed);
                match ServerText::parse(t.as_str()) {
                    Ok(ServerText::Config(c)) => {
                        // What we will store or act on must be sane; a
                        // server that sends otherwise is not trusted with
                        // the rest of the sync either.
                        if let Err(e) = c.check() {
                            res.protocol_error = Some(format!("the server sent a bad CONFIG: {e}"));
                            break;
                        }
                        if c.version_hash.is_some() {
                            expected_hash = c.version_hash.clone();
                        }
                        // Digest pages only once there is a hash to check
                        // them against; pages before that are read back.
                        if digest_received && c.version_hash.is_some() && digester.is_none() {
                            // The cheaper hash when the server gave it.
                            let kind = if c.version_xxh3.is_some() {
                                crate::sqlite::HashKind::Xxh3
                            } else {
                                crate::sqlite::HashKind::Sha256
                            };
                            match crate::sqlite::PageDigester::start(kind) {
                                Ok(d) => digester = Some(d),
                                Err(e) => tracing::debug!(
                                    "no digest thread ({e}): the pull is verified by reading it back"
                                ),
                            }
                        }
                        let mut sh = shared.lock().await;
                        sh.config = Some(merge_config(sh.config.take(), c));
                        drop(sh);
                        config_seen.notify_one();
                    }
                    Ok(ServerText::Message(m)) => {
                        observer.message(&m);
                        shared.lock().await.messages.push(m);
                    }
                    Ok(ServerText::Abort(reason)) => {
                        res.abort = Some(reason);
                        break;
                    }
                    Err(e) if t.as_str().starts_with("CONFIG=") => {
                        res.protocol_error = Some(crate::cli::one_line(&e));
                        break;
                    }
                    // Unknown kinds of text frame may come from newer
                    // servers: not an error.
                    Err(e) => tracing::debug!("{e}"),
                }
            }
            WsMessage::Close(frame) => {
                res.close = Some(match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                });
                break;
            }
            _ => {}
        }
    }
    if let Some(mut w) = stdin.take() {
        let _ = w.shutdown().await;
    }
    if let Some(d) = digester {
        res.received = Some(d.finish().await);
    }
    res
}

/// Writes stream bytes to the helper; a failure means it stopped reading
/// (it finished or died), which the coordinator learns from its exit.
async fn feed_helper(stdin: &mut Option<tokio::process::ChildStdin>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if let Some(w) = stdin.as_mut()
        && w.write_all(data).await.is_err()
    {
        *stdin = None;
    }
}

/// Later CONFIG fields win; fields a later frame omits are kept.
fn merge_config(old: Option<ServerConfig>, new: ServerConfig) -> ServerConfig {
    let Some(old) = old else { return new };
    ServerConfig {
        replica_id: new.replica_id.or(old.replica_id),
        replica_path: new.replica_path.or(old.replica_path),
        committed_version_id: new.committed_version_id.or(old.committed_version_id),
        new_pull_key: new.new_pull_key.or(old.new_pull_key),
        new_push_key: new.new_push_key.or(old.new_push_key),
        // The two hashes of one version go together.
        version_xxh3: if new.version_hash.is_some() {
            new.version_xxh3
        } else {
            old.version_xxh3
        },
        version_hash: new.version_hash.or(old.version_hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(1, true), 7);
        assert_eq!(frame_len(125, false), 127);
        assert_eq!(frame_len(126, false), 130);
        assert_eq!(frame_len(65536, true), 65536 + 14);
    }

    #[tokio::test]
    async fn coalesces_what_is_ready() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        for _ in 0..10 {
            a.write_all(&[7u8; 10_000]).await.unwrap();
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let (n, eof) = read_coalesced(&mut b, &mut buf).await.unwrap();
        assert_eq!((n, eof), (MAX_FRAME, false));
        let (n, eof) = read_coalesced(&mut b, &mut buf).await.unwrap();
        assert_eq!((n, eof), (100_000 - MAX_FRAME, false));
        drop(a);
        let (n, eof) = read_coalesced(&mut b, &mut buf).await.unwrap();
        assert_eq!((n, eof), (0, true));
    }

    /// An ORIGIN stream as the helper writes it: BEGIN, `pages` pages of
    /// 4 KiB, TXN, END.
    fn origin_stream(pages: u32) -> Vec<u8> {
        let mut s = vec![0x41, 2, 12];
        s.extend_from_slice(&pages.to_be_bytes());
        for p in 1..=pages {
            s.push(0x44);
            s.extend_from_slice(&p.to_be_bytes());
            s.extend(std::iter::repeat_n((p % 251) as u8, 4096));
        }
        s.push(0x45);
        s.extend_from_slice(&pages.to_be_bytes());
        s.push(0x42);
        s
    }

    /// A pipe that hands out the stream in uneven pieces and is now and
    /// then "empty" (Pending), like a helper writing while we read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        polls: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.polls += 1;
            if self.polls % 3 == 0 {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            // Piece sizes cycle through awkward values: 1 byte, a header,
            // less than a page, more than a frame.
            const SIZES: [usize; 7] = [1, 5, 4101, 3, 70_000, 9, 12_345];
            self.step += 1;
            let want = SIZES[self.step % SIZES.len()];
            let n = want.min(buf.remaining()).min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn control_frames_only_at_message_boundaries() {
        use crate::wire::ClientControl;
        struct Quiet;
        impl Observer for Quiet {
            fn progress(&self, _: &Stats) {}
            fn message(&self, _: &str) {}
            fn helper_line(&self, _: &str) {}
        }
        let stream = origin_stream(60);
        let reader = Trickle {
            data: stream.clone(),
            pos: 0,
            step: 0,
            polls: 0,
        };
        let before = vec![ClientControl::CommitMessage("m".into()).encode()];
        let after = vec![
            ClientControl::Config.encode(),
            ClientControl::KeyRequest.encode(),
        ];
        let (tx, mut rx) = mpsc::channel::<Out>(1024);
        let res = pump_stdout(
            reader,
            StreamParser::new(Direction::FromOrigin),
            tx,
            before.clone(),
            after.clone(),
            Arc::new(Stats::default()),
            Arc::new(Quiet),
        )
        .await;
        assert!(res.error.is_none(), "{:?}", res.error);
        assert!(res.origin.complete());

        let mut data = Vec::new();
        let mut controls = Vec::new();
        let mut stream_frames = 0;
        while let Ok(Out::Frame(WsMessage::Binary(f))) = rx.try_recv() {
            assert!(
                !f.is_empty() && f.len() <= MAX_FRAME,
                "frame of {}",
                f.len()
            );
            let mut p = StreamParser::new(Direction::FromOrigin);
            p.feed(&data, |_| {}).unwrap();
            if let FrameKind::Control(_) = classify(&f, p.at_boundary()) {
                // Where a receiver tracking boundaries would see it.
                controls.push((data.len(), f.to_vec()));
            } else {
                data.extend_from_slice(&f);
                stream_frames += 1;
            }
        }
        assert_eq!(data, stream, "the stream arrives whole and in order");
        assert!(stream_frames > 3, "{stream_frames} frames");
        assert_eq!(controls.len(), 3, "{controls:?}");
        assert_eq!((controls[0].0, &controls[0].1), (0, &before[0]));
        assert!(controls[1].0 > 0, "CONFIG after the first stream frame");
        assert_eq!(controls[1].1, after[0]);
        assert_eq!(controls[2].1, after[1]);
    }
}
