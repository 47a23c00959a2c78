//! What push and pull sessions share: the socket writer task, the helper
//! process, the idle clock, and the way a session ends (normal close or
//! ABORT).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

use crate::helper::Side;
use crate::wire::{ServerConfig, ServerText};

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The peer broke the protocol.
pub const CLOSE_POLICY: u16 = 1008;
/// The server failed.
pub const CLOSE_INTERNAL: u16 = 1011;
/// A frame was larger than the server takes.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Frames queued for the socket per session: small, so a slow client
/// holds back its helper (pipe backpressure) instead of server memory.
const OUT_QUEUE: usize = 8;

/// How long queuing the last frames of a session (ABORT, close) may wait
/// for a client that reads nothing before the session gives up on it.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// When a session last moved a frame in either direction. A session is
/// idle (and ended after `--idle-timeout`) only when neither side sent
/// anything: a pull client legitimately says nothing while our helper
/// sends pages, and a pusher waits while our helper hashes.
#[derive(Debug, Clone)]
pub struct Activity {
    /// The clock's zero.
    start: Instant,
    /// Milliseconds after `start` of the last frame.
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records a frame now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last frame.
    pub fn idle_for(&self) -> Duration {
        let ms = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once nothing moved for `limit`: checked a few times per
    /// `limit`, so the cut comes at most a quarter late.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep((limit - idle).max(limit / 4)).await;
        }
    }
}

/// A frame for the writer task.
#[derive(Debug)]
pub enum Out {
    Binary(Vec<u8>),
    Text(String),
    Close(u16, String),
}

/// Sender side of the writer task; cheap to clone.
pub type OutTx = mpsc::Sender<Out>;

/// Owns the socket's sending half: every task that talks to the client goes
/// through this one queue, so frames keep their order (stream bytes, then
/// CONFIG, then the close).
///
/// While nothing is queued for `keepalive`, it sends a Ping, so the client
/// can tell a busy server (hashing, committing) from a dead connection.
pub fn spawn_writer(
    mut sink: SplitSink<WebSocket, Message>,
    activity: Activity,
    keepalive: Duration,
    stall: Duration,
) -> (OutTx, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let task = tokio::spawn(async move {
        // A frame the socket has not taken within `stall` (the idle
        // timeout) means a client that stopped reading: give up, which
        // drops the queue, so the tasks feeding it (the helper's pump) fail
        // instead of waiting on it forever with the session's staging file,
        // push lock and slot.
        let mut sink = StallGuard {
            sink: &mut sink,
            stall,
        };
        loop {
            let out = match tokio::time::timeout(keepalive, rx.recv()).await {
                Ok(Some(out)) => out,
                Ok(None) => break,
                Err(_) => {
                    // Not activity: our own pings must not keep a session
                    // with a vanished client alive.
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let (msg, last) = match out {
                Out::Binary(b) => (Message::Binary(b.into()), false),
                Out::Text(t) => (Message::Text(t.into()), false),
                Out::Close(code, reason) => (
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.chars().take(100).collect::<String>().into(),
                    })),
                    true,
                ),
            };
            if sink.send(msg).await.is_err() || last {
                break;
            }
            activity.touch();
        }
        let _ = tokio::time::timeout(stall, sink.sink.close()).await;
    });
    (tx, task)
}

/// How long one frame may wait for the client to take it: the idle
/// timeout, but never under 10 s, because a slow client that keeps reading
/// (a thin link) takes a 64 KiB frame in many small pieces.
pub fn stall_limit(idle: Duration) -> Duration {
    idle.max(Duration::from_secs(10))
}

/// The socket's sending half with every send bounded (see [`spawn_writer`]).
struct StallGuard<'a> {
    sink: &'a mut SplitSink<WebSocket, Message>,
    stall: Duration,
}

impl StallGuard<'_> {
    /// Sends `msg`; an error when the socket failed or did not take it
    /// within the stall bound.
    async fn send(&mut self, msg: Message) -> Result<(), ()> {
        match tokio::time::timeout(self.stall, self.sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(()),
            Err(_) => {
                tracing::warn!("the client has not read for too long; dropping its connection");
                Err(())
            }
        }
    }
}

/// Waits for the writer to send what is queued; a client that reads
/// nothing would block it forever, holding the socket, so it is then
/// stopped.
pub async fn finish_writer(writer: tokio::task::JoinHandle<()>) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(FAREWELL_TIMEOUT, writer)
        .await
        .is_err()
    {
        tracing::warn!("the client stopped reading; dropping its connection");
        abort.abort();
    }
}

/// Completes the closing handshake after our close frame went out: reads
/// (and drops) what the client still sends until its close frame or EOF.
/// Dropping a socket with unread input makes the kernel answer with a TCP
/// reset, which can destroy the last frames (and the close) before the
/// client has read them.
pub async fn drain_until_closed(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Why a session stopped early.
#[derive(Debug)]
pub enum Abort {
    /// The client broke the protocol or is not allowed: ABORT=reason, 1008.
    Client(String),
    /// The server failed: ABORT=reason, 1011.
    Server(String),
    /// The server is shutting down: ABORT=reason, 1001.
    Shutdown,
    /// The connection is gone: nothing to send.
    Cut(String),
    /// The client sent a frame larger than the limit: ABORT=reason, 1009.
    TooBig(String),
}

impl Abort {
    pub fn reason(&self) -> String {
        match self {
            Abort::Client(r) | Abort::Server(r) | Abort::Cut(r) | Abort::TooBig(r) => r.clone(),
            Abort::Shutdown => "the server is shutting down".into(),
        }
    }

    /// Sends ABORT and the matching close (unless the socket is gone). A
    /// client that reads nothing cannot hold the session here: queuing
    /// gives up after a few seconds.
    pub async fn send(&self, out: &OutTx) {
        let code = match self {
            Abort::Client(_) => CLOSE_POLICY,
            Abort::Server(_) => CLOSE_INTERNAL,
            Abort::Shutdown => CLOSE_GOING_AWAY,
            Abort::TooBig(_) => CLOSE_TOO_BIG,
            Abort::Cut(_) => return,
        };
        let reason = self.reason();
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
            let _ = out
                .send(Out::Text(ServerText::Abort(reason.clone()).encode()))
                .await;
            let _ = out.send(Out::Close(code, reason)).await;
        })
        .await;
    }

    /// The abort for a frame the websocket layer could not read: too large
    /// (1009, with a reason), or a broken connection.
    pub fn from_read_error(e: axum::Error, max_frame: usize) -> Abort {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let inner = e.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => Abort::TooBig(format!(
                "frame larger than this server's limit of {max_frame} bytes"
            )),
            _ => Abort::Cut(format!("connection failed: {inner}")),
        }
    }
}

/// Queues a frame for the client unless the client has stopped reading
/// for [`FAREWELL_TIMEOUT`] (then the session ends on its own clock).
pub async fn send_out(out: &OutTx, frame: Out) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, out.send(frame)).await;
}

pub fn config_text(cfg: ServerConfig) -> Out {
    Out::Text(ServerText::Config(cfg).encode())
}

/// The embedded helper, running one side of sqlite3_rsync on stdio.
pub struct HelperProcess {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
}

impl HelperProcess {
    /// `HELPER --origin DB NAME` or `HELPER --replica NAME DB`.
    pub fn spawn(side: Side, db: &Path, peer_name: &str) -> anyhow::Result<HelperProcess> {
        let exe = crate::helper::path()?;
        let mut cmd = Command::new(exe);
        cmd.arg(side.flag());
        match side {
            Side::Origin => cmd.arg(db).arg(peer_name),
            Side::Replica => cmd.arg(peer_name).arg(db),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        if let Some(i) = &child.stdin {
            crate::helper::widen_pipe(i);
        }
        if let Some(o) = &child.stdout {
            crate::helper::widen_pipe(o);
        }
        if let Some(err) = child.stderr.take() {
            // The helper's own diagnostics go to our log, line by line.
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::warn!(helper = %l, "helper stderr");
                }
            });
        }
        Ok(HelperProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
        })
    }
}
