//! The link: the one piece of code that carries a helper's stdio over a
//! framed socket, for the client, the server and the tests' driver.
//!
//! sqlite3_rsync speaks over a pipe; sqlrsync carries that stream in
//! websocket frames. Whoever runs a helper needs the same parts, and they
//! live here, each in its own file:
//!
//! - [`socket`]: the two websocket libraries (tokio-tungstenite on the
//!   client, axum on the server) behind [`SocketTx`]/[`SocketRx`] and one
//!   [`Frame`] enum;
//! - [`writer`]: the task that owns the sending half: one bounded queue
//!   ([`Out`]) so frames keep their order, keepalive Pings while nothing
//!   is queued, and the stall bound (a frame the socket does not take in
//!   time ends the writer);
//! - [`pump`]: helper stdout -> binary frames under a [`Framing`] policy,
//!   with control frames inserted only at message boundaries;
//! - [`inbound`]: the receiving side of a stream (what a driver does with
//!   the peer's stream bytes), with [`Feed`] as the plain helper feeder;
//! - [`drive`]: a whole helper session on the connecting side (client and
//!   tests): spawn, pump, writer, reader, the shutdown order, and a typed
//!   [`Outcome`];
//! - `reader`: the connecting side's reader of the peer's frames, with
//!   the control-frame rule ([`crate::wire::classify`]), handing stream
//!   frames that arrived together to the inbound at once.
//!
//! The server keeps its own per-endpoint loops (their frames are judged
//! by the pure state machines in `server::frames`), but they are built of
//! the same writer, pump, socket halves and [`crate::helper::HelperCommand`].
//!
//! Memory stays bounded whatever the database size: queues are a few
//! frames long and the parsers keep at most one page.

pub mod drive;
pub mod inbound;
pub mod pump;
mod reader;
pub mod socket;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use drive::{
    BadConfig, ConnectionLost, DriveCtx, DriveError, DriveSpec, Outcome, PeerEnd, drive,
    merge_config,
};
pub use inbound::{Feed, Inbound, InboundError};
pub use pump::{Controls, Framing, PumpCtx, PumpEnd, PumpError, pump};
pub use socket::{Frame, Socket, SocketError, SocketRx, SocketTx};
pub use writer::{KEEPALIVE_PING, Out, OutTx, Writer, WriterConfig, spawn_writer};

use crate::wire::Message;

/// Byte counts of one connection, shared by its tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// sqlite3_rsync stream bytes we sent.
    pub stream_out: AtomicU64,
    /// sqlite3_rsync stream bytes we received.
    pub stream_in: AtomicU64,
    /// Websocket bytes sent: frame headers (with mask when we are the
    /// client) and payloads of every data frame, control frames included.
    pub wire_out: AtomicU64,
    /// Websocket bytes received, counted the same way.
    pub wire_in: AtomicU64,
    /// Wire bytes of the peer's text frames (CONFIG, MESSAGE, ABORT): part
    /// of `wire_in`, but replies rather than framing of the stream.
    pub text_in: AtomicU64,
    /// Data frames (binary and text) sent and received.
    pub frames_out: AtomicU64,
    pub frames_in: AtomicU64,
    /// Payload bytes of the largest binary frame sent and received.
    pub largest_out: AtomicU64,
    pub largest_in: AtomicU64,
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

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one data frame of `payload` bytes, sent (`out`) or received.
    pub(crate) fn note_frame(&self, out: bool, payload: usize, binary: bool) {
        let (n, largest) = if out {
            (&self.frames_out, &self.largest_out)
        } else {
            (&self.frames_in, &self.largest_in)
        };
        n.fetch_add(1, Ordering::Relaxed);
        if binary {
            largest.fetch_max(payload as u64, Ordering::Relaxed);
        }
    }

    /// Counts what a stream message says about progress.
    pub(crate) fn note_message(&self, m: &Message<'_>) {
        match m {
            Message::OriginBegin {
                page_size,
                page_count,
                ..
            } => {
                self.page_count.store(*page_count as u64, Ordering::Relaxed);
                self.page_size.store(*page_size as u64, Ordering::Relaxed);
            }
            Message::OriginPage { .. } => {
                self.pages.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
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

/// What a link tells the user-facing side while it runs (the client's
/// progress bar); the server and the tests pass none.
pub trait Observer: Send + Sync {
    /// Stream progress changed (see [`Stats`]).
    fn progress(&self, stats: &Stats);
    /// A `MESSAGE=` from the server, to show the user: already made
    /// visible and cut (see [`crate::wire::shown_text`]).
    fn message(&self, text: &str);
    /// `n` more `MESSAGE=`s came than are shown (said once, at the end).
    fn messages_not_shown(&self, _n: u64) {}
    /// A helper stderr line in live mode.
    fn helper_line(&self, line: &str);
}

/// When a connection last moved a frame in either direction. The server
/// ends a session as idle (after `--idle-timeout`) only when neither side
/// sent anything: a pull client legitimately says nothing while the helper
/// sends pages, and a pusher waits while the helper hashes.
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

/// Resolves when the watch turns true (Ctrl-C); never if its sender is gone.
pub async fn wait_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
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
}
