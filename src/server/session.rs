//! What push and pull sessions share: the socket writer task, the helper
//! process, and the way a session ends (normal close or ABORT).

use std::path::Path;
use std::process::Stdio;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

use crate::helper::Side;
use crate::protocol::{ServerConfig, ServerText};

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The peer broke the protocol.
pub const CLOSE_POLICY: u16 = 1008;
/// The server failed.
pub const CLOSE_INTERNAL: u16 = 1011;

/// Frames queued for the socket per session: small, so a slow client
/// holds back its helper (pipe backpressure) instead of server memory.
const OUT_QUEUE: usize = 8;

/// A push whose client sends nothing for this long is ended (a silent
/// pusher must not hold a replica's push lock forever). Generous, because
/// the client legitimately waits while our helper hashes a large staging
/// copy.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A session that has sent nothing for this long sends a websocket ping,
/// so that a client waiting while the server copies, hashes or commits a
/// large version knows it is alive (`sqlrsync --timeout`, default 120 s).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

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
pub fn spawn_writer(
    mut sink: SplitSink<WebSocket, Message>,
) -> (OutTx, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let task = tokio::spawn(async move {
        let idle = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(idle);
        loop {
            let out = tokio::select! {
                out = rx.recv() => out,
                _ = &mut idle => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                    continue;
                }
            };
            let Some(out) = out else { break };
            idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
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
        }
        let _ = sink.close().await;
    });
    (tx, task)
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
}

impl Abort {
    pub fn reason(&self) -> String {
        match self {
            Abort::Client(r) | Abort::Server(r) | Abort::Cut(r) => r.clone(),
            Abort::Shutdown => "the server is shutting down".into(),
        }
    }

    /// Sends ABORT and the matching close (unless the socket is gone).
    pub async fn send(&self, out: &OutTx) {
        let code = match self {
            Abort::Client(_) => CLOSE_POLICY,
            Abort::Server(_) => CLOSE_INTERNAL,
            Abort::Shutdown => CLOSE_GOING_AWAY,
            Abort::Cut(_) => return,
        };
        let reason = self.reason();
        let _ = out
            .send(Out::Text(ServerText::Abort(reason.clone()).encode()))
            .await;
        let _ = out.send(Out::Close(code, reason)).await;
    }
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
