//! What push and pull sessions share: the client's connection as a link
//! ([`Session`]: the link's writer on the sending half, the receiving
//! half, the idle clock), the helper started for a session, and the way a
//! session ends (normal close or ABORT).
//!
//! The moving parts (writer with keepalive and stall bound, stdout pump,
//! socket adapter) are the link's ([`crate::link`]); what is here is the
//! server's use of them: its queue size, its timeouts and close codes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use futures_util::stream::SplitStream;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::WeakSender;

use crate::helper::{Helper, HelperCommand, SpawnError};
use crate::link::{
    Frame, Out, OutTx, Socket, SocketError, SocketRx, Stats, Writer, WriterConfig, spawn_writer,
};
use crate::wire::{ServerConfig, ServerText, keepalive_interval};

pub use crate::link::Activity;

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Service restart: how subscribers are closed at shutdown, because the
/// clients that exist take 1000 and 1001 as final and reconnect after
/// anything else (PROTOCOL.md section 5).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
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

/// What the websocket library may hold for a client beyond its write
/// buffer (our frames are at most 16 KiB, see [`crate::link::Framing`]).
/// Without a bound, a client that sends pings and never reads the pongs
/// makes the library queue every pong in memory: 71 MB became 564 MB on
/// one connection. At the bound the library drops pongs, and the session's
/// next frame (its keepalive Ping, at most 5 s later) fails, which ends
/// the session ([`Rx::recv`]).
const WRITE_BUFFER: usize = 128 * 1024;
const WRITE_BUFFER_MAX: usize = WRITE_BUFFER + 256 * 1024;

/// A push or pull upgrade with the session's frame limits and a bounded
/// write buffer.
pub fn bounded_upgrade(ws: WebSocketUpgrade, max_frame: usize) -> WebSocketUpgrade {
    ws.max_frame_size(max_frame)
        .max_message_size(max_frame)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER_MAX)
}

/// The receiving half of a client's socket, which ends once the session's
/// writer has: the writer gives up on a client that does not read (a
/// frame stalled, or the write buffer is full), and a session reading
/// only pings from such a client would otherwise go on forever, since
/// pings count as activity.
pub struct Rx {
    /// The socket's receiving half.
    inner: SplitStream<WebSocket>,
    /// The writer's queue, not kept open by us: it closes when the writer
    /// ends.
    writer: WeakSender<Out>,
    /// The session's byte counts (`wire_in` is counted here).
    stats: Arc<Stats>,
}

impl Rx {
    /// The client's next frame; an error once the writer is gone.
    pub async fn recv(&mut self) -> Option<Result<Frame, SocketError>> {
        let f = self.next().await;
        if let Some(Ok(n)) = f.as_ref().map(|r| r.as_ref().map(Frame::data_len))
            && let Some(n) = n
        {
            Stats::add(&self.stats.wire_in, crate::link::frame_len(n, true));
        }
        f
    }

    async fn next(&mut self) -> Option<Result<Frame, SocketError>> {
        let Some(out) = self.writer.upgrade() else {
            return self.inner.recv().await;
        };
        // The writer's end first: a flood of pings is always ready.
        tokio::select! {
            biased;
            _ = out.closed() => Some(Err(SocketError::Failed(
                "the client stopped reading; dropping its connection".into(),
            ))),
            f = self.inner.recv() => f,
        }
    }
}

/// A client's connection for one push or pull session.
pub struct Session {
    /// The client's frames.
    pub rx: Rx,
    /// The queue of the link's writer: stream bytes, then CONFIG, then the
    /// close, in order.
    pub out: OutTx,
    /// When a frame last moved either way (the writer touches it too).
    pub activity: Activity,
    writer: Writer,
    /// Websocket bytes each way (for [`super::metrics`]).
    stats: Arc<Stats>,
}

impl Session {
    /// Starts the writer on `socket`: a Ping while nothing is queued for
    /// the keepalive interval, and a frame the client has not taken
    /// within [`stall_limit`] ends it (see [`crate::link::writer`]).
    pub fn open(socket: WebSocket, idle: Duration) -> Session {
        let (sink, rx) = socket.split_halves();
        let activity = Activity::new();
        let cfg = WriterConfig {
            queue: OUT_QUEUE,
            keepalive: keepalive_interval(idle),
            stall: Some(stall_limit(idle)),
            masked: false,
        };
        let stats = Arc::new(Stats::default());
        let (out, writer) = spawn_writer(sink, cfg, stats.clone(), Some(activity.clone()));
        Session {
            rx: Rx {
                inner: rx,
                writer: out.downgrade(),
                stats: stats.clone(),
            },
            out,
            activity,
            writer,
            stats,
        }
    }

    /// Ends the session: lets the writer send what is queued (a client
    /// that reads nothing would block it forever, holding the socket, so
    /// it is then stopped), then completes the closing handshake. Returns
    /// the websocket bytes received and sent, counted in frame headers and payloads.
    pub async fn finish(self) -> (u64, u64) {
        let bytes = self.stats.clone();
        let Session {
            mut rx,
            out,
            writer,
            ..
        } = self;
        drop(out);
        if writer.finish(FAREWELL_TIMEOUT).await.is_none() {
            tracing::warn!("the client stopped reading; dropping its connection");
        }
        drain_until_closed(&mut rx.inner).await;
        (Stats::get(&bytes.wire_in), Stats::get(&bytes.wire_out))
    }
}

/// The client's next frame. Anything but a Pong counts as activity: a Pong
/// is the websocket library answering our keepalive, not the client doing
/// anything, so a client stuck mid-stream that still pongs still times
/// out. Its own Pings do count.
pub async fn recv(rx: &mut Rx, activity: &Activity) -> Option<Result<Frame, SocketError>> {
    let frame = rx.recv().await;
    if !matches!(frame, Some(Ok(Frame::Pong(_)))) {
        activity.touch();
    }
    frame
}

/// How long one frame may wait for the client to take it: the idle
/// timeout, but never under 10 s, because a slow client that keeps reading
/// (a thin link) takes a frame in many small pieces.
pub fn stall_limit(idle: Duration) -> Duration {
    idle.max(Duration::from_secs(10))
}

/// Completes the closing handshake after our close frame went out: reads
/// (and drops) what the client still sends until its close frame or EOF.
/// Dropping a socket with unread input makes the kernel answer with a TCP
/// reset, which can destroy the last frames (and the close) before the
/// client has read them.
async fn drain_until_closed(rx: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = rx.recv().await {
            if matches!(m, Frame::Close(..)) {
                break;
            }
        }
    })
    .await;
}

/// Why a session stopped early.
///
/// What a client is told (`ABORT=`, the close reason) never names a
/// server path, a pack offset or the store's own error text: a failure of
/// ours carries a generic text for the client and its detail for our log
/// ([`Abort::server`], [`Abort::rejected`]).
#[derive(Debug)]
pub enum Abort {
    /// The client broke the protocol or is not allowed: ABORT=reason, 1008.
    /// The reason speaks of the client's own stream only.
    Client(String),
    /// Our replica side refused what the client sent: ABORT=public, 1008;
    /// the helper's words (which may name our files) only in the log.
    Rejected { public: String, detail: String },
    /// The server failed: ABORT=public, 1011; the detail only in the log.
    Server { public: String, detail: String },
    /// The server is shutting down: ABORT=reason, 1001.
    Shutdown,
    /// The connection is gone: nothing to send.
    Cut(String),
    /// The client sent a frame larger than the limit: ABORT=reason, 1009.
    TooBig(String),
}

impl Abort {
    /// A failure of ours: `public` is what the client reads, `detail`
    /// (paths, offsets, the store's error) goes to the log only.
    pub fn server(public: impl Into<String>, detail: impl std::fmt::Display) -> Abort {
        Abort::Server {
            public: public.into(),
            detail: detail.to_string(),
        }
    }

    /// Our replica side refused the client's stream: `public` for the
    /// client, `detail` (the helper's own words) for the log.
    pub fn rejected(public: impl Into<String>, detail: impl std::fmt::Display) -> Abort {
        Abort::Rejected {
            public: public.into(),
            detail: detail.to_string(),
        }
    }

    /// The whole reason, for our log.
    pub fn reason(&self) -> String {
        match self {
            Abort::Server { public, detail } | Abort::Rejected { public, detail } => {
                if detail.is_empty() {
                    public.clone()
                } else {
                    format!("{public}: {detail}")
                }
            }
            _ => self.public(),
        }
    }

    /// What the client is told.
    fn public(&self) -> String {
        match self {
            Abort::Client(r) | Abort::Cut(r) | Abort::TooBig(r) => r.clone(),
            Abort::Server { public, .. } | Abort::Rejected { public, .. } => public.clone(),
            Abort::Shutdown => "the server is shutting down".into(),
        }
    }

    /// Sends ABORT and the matching close (unless the socket is gone). A
    /// client that reads nothing cannot hold the session here: queuing
    /// gives up after a few seconds.
    pub async fn send(&self, out: &OutTx) {
        let code = match self {
            Abort::Client(_) | Abort::Rejected { .. } => CLOSE_POLICY,
            Abort::Server { .. } => CLOSE_INTERNAL,
            Abort::Shutdown => CLOSE_GOING_AWAY,
            Abort::TooBig(_) => CLOSE_TOO_BIG,
            Abort::Cut(_) => return,
        };
        let reason = self.public();
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
    pub fn from_read_error(e: SocketError, max_frame: usize) -> Abort {
        match e {
            SocketError::TooBig(_) => Abort::TooBig(format!(
                "frame larger than this server's limit of {max_frame} bytes"
            )),
            SocketError::Failed(inner) => Abort::Cut(format!("connection failed: {inner}")),
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

/// A server file as the helper is given it: its folder (the helper's
/// working directory) and its bare name, so that nothing the helper
/// writes into the stream names a server path.
pub fn split_file(path: &std::path::Path) -> (&std::path::Path, &std::path::Path) {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => (dir, std::path::Path::new(name)),
        _ => (std::path::Path::new("."), path),
    }
}

/// Starts the helper for a session; its own diagnostics go to our log,
/// line by line.
pub fn spawn_helper(cmd: &HelperCommand) -> Result<Helper, Abort> {
    let mut h = cmd.spawn().map_err(|e| {
        let why = match e {
            SpawnError::Extract(e) => format!("{e:#}"),
            SpawnError::Spawn { source, .. } => source.to_string(),
        };
        Abort::server("the server could not start its sync helper", why)
    })?;
    if let Some(err) = h.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::warn!(helper = %l, "helper stderr");
            }
        });
    }
    Ok(h)
}
