//! The task that owns a socket's sending half.
//!
//! Every task that talks to the peer goes through its one bounded queue, so
//! frames keep their order (stream bytes, control frames, CONFIG, the
//! close) and a slow peer holds back the helper (pipe backpressure) instead
//! of growing memory. While nothing is queued for the keepalive interval
//! it sends a Ping, so the peer can tell a busy side (hashing, committing)
//! from a dead connection; our own Pings are not activity.
//!
//! With a stall bound, a frame the socket has not taken within it means a
//! peer that stopped reading: the writer gives up, which drops the queue,
//! so the tasks feeding it fail instead of waiting on it forever (on the
//! server, with the session's staging file, push lock and slot).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::socket::{Frame, SocketTx};
use super::{Activity, Stats, frame_len};

/// The payload of our keepalive Pings: 125 bytes, the most a control
/// frame may carry, so also more than any Pong the peer's Pings make the
/// websocket library queue. A peer that floods Pings and reads nothing
/// fills the library's write buffer (bounded by the server) with Pongs
/// until the next Pong no longer fits; our Ping, as large as the largest
/// Pong, no longer fits then either, and its send fails at once instead of
/// waiting for the stall bound. 125 bytes a keepalive interval cost nothing.
pub static KEEPALIVE_PING: [u8; 125] = [b'.'; 125];

/// A frame for the writer.
#[derive(Debug)]
pub enum Out {
    Binary(Bytes),
    Text(String),
    /// Close code and reason; the writer ends after sending it.
    Close(u16, String),
}

impl Out {
    /// A binary frame from a buffer (no copy).
    pub fn binary(b: impl Into<Bytes>) -> Out {
        Out::Binary(b.into())
    }
}

/// Sender side of the writer; cheap to clone.
pub type OutTx = mpsc::Sender<Out>;

/// How a writer behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Frames queued at most.
    pub queue: usize,
    /// Ping after this long with nothing queued.
    pub keepalive: Duration,
    /// Give up on a frame the socket has not taken within this long.
    pub stall: Option<Duration>,
    /// We are the client: our frames are masked (for the byte counts).
    pub masked: bool,
}

/// The running writer.
pub struct Writer {
    task: JoinHandle<bool>,
}

/// Starts the writer on `sink`. Each data frame it sends is counted in
/// `stats.wire_out` and, when given, touches `activity`.
pub fn spawn_writer<T: SocketTx>(
    sink: T,
    cfg: WriterConfig,
    stats: Arc<Stats>,
    activity: Option<Activity>,
) -> (OutTx, Writer) {
    let (tx, rx) = mpsc::channel::<Out>(cfg.queue);
    let task = tokio::spawn(write_loop(sink, rx, cfg, stats, activity));
    (tx, Writer { task })
}

impl Writer {
    /// Waits up to `grace` for the writer to send what is queued (every
    /// sender must be dropped for it to end). Some(true) when every frame
    /// it was given went to the socket; None when it did not finish in
    /// time (a peer that reads nothing): it is then stopped.
    pub async fn finish(self, grace: Duration) -> Option<bool> {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(grace, self.task).await {
            Ok(r) => Some(r.unwrap_or(false)),
            Err(_) => {
                abort.abort();
                None
            }
        }
    }
}

/// The writer's loop; true when every frame it took was sent.
async fn write_loop<T: SocketTx>(
    mut sink: T,
    mut rx: mpsc::Receiver<Out>,
    cfg: WriterConfig,
    stats: Arc<Stats>,
    activity: Option<Activity>,
) -> bool {
    let mut all_sent = true;
    // A send failed: the socket is broken, or its peer reads nothing (the
    // write buffer is full, or a frame stalled). A close would wait on the
    // same peer; the queue must close now instead, so the tasks feeding it
    // (and a session reading only the peer's pings) end.
    let mut failed = false;
    loop {
        let out = match tokio::time::timeout(cfg.keepalive, rx.recv()).await {
            Ok(Some(out)) => out,
            Ok(None) => break,
            Err(_) => {
                // Not activity: our own pings must not keep a connection
                // with a vanished peer alive.
                if send(
                    &mut sink,
                    Frame::Ping(Bytes::from_static(&KEEPALIVE_PING)),
                    true,
                    cfg.stall,
                )
                .await
                .is_err()
                {
                    failed = true;
                    break;
                }
                continue;
            }
        };
        let (frame, last) = match out {
            Out::Binary(b) => (Frame::Binary(b), false),
            Out::Text(t) => (Frame::Text(t), false),
            Out::Close(code, reason) => {
                (Frame::Close(code, reason.chars().take(100).collect()), true)
            }
        };
        let len = frame.data_len();
        let binary = matches!(frame, Frame::Binary(_));
        // More already queued: the next send flushes this one too.
        let flush = last || rx.is_empty();
        if send(&mut sink, frame, flush, cfg.stall).await.is_err() {
            all_sent = last && all_sent;
            failed = true;
            break;
        }
        if last {
            break;
        }
        if let Some(n) = len {
            Stats::add(&stats.wire_out, frame_len(n, cfg.masked));
            stats.note_frame(true, n, binary);
        }
        if let Some(a) = &activity {
            a.touch();
        }
    }
    match cfg.stall {
        _ if failed => {}
        Some(s) => {
            let _ = tokio::time::timeout(s, sink.close()).await;
        }
        None => sink.close().await,
    }
    all_sent
}

/// Sends one frame (see [`SocketTx::send_frame`]), within the stall bound
/// when there is one.
async fn send<T: SocketTx>(
    sink: &mut T,
    frame: Frame,
    flush: bool,
    stall: Option<Duration>,
) -> Result<(), ()> {
    let Some(stall) = stall else {
        return sink.send_frame(frame, flush).await.map_err(|_| ());
    };
    match tokio::time::timeout(stall, sink.send_frame(frame, flush)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tracing::warn!("the client has not read for too long; dropping its connection");
            Err(())
        }
    }
}
