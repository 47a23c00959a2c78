//! The receiving side of a stream: what a driver does with the stream
//! bytes the peer sends (after the control-frame rule took out our
//! peer's control frames).
//!
//! [`Inbound`] is the seam (an "injector" in libsql-replication's sense):
//! the link reads frames and hands stream bytes to it; [`Feed`] is the
//! plain one (follow the stream, count it, write it to the helper's
//! stdin), and the client's pull wraps it with its commit gate, page
//! digests and write-behind (`client::apply::PullSink`).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;

use super::{Observer, Stats};
use crate::wire::{
    Direction, Message, OriginSummary, ReplicaSummary, ServerConfig, StreamError, StreamParser,
};

/// Why an [`Inbound`] stopped taking the peer's stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InboundError {
    /// The peer's stream is not sqlite3_rsync (or breaks its own rules).
    #[error("the server sent a stream that is not sqlite3_rsync: {0}")]
    Protocol(String),
    /// The stream is well formed but refused (a version that does not
    /// match its versionHash): the line to show.
    #[error("{0}")]
    Refused(String),
}

/// What the link hands the peer's stream to.
pub trait Inbound: Send + 'static {
    /// The stream is at a message boundary (for [`crate::wire::classify`]).
    fn at_boundary(&self) -> bool;
    /// A CONFIG from the peer (already checked).
    fn config(&mut self, _config: &ServerConfig) {}
    /// Stream bytes from the peer, in order.
    fn stream(&mut self, data: Bytes) -> impl Future<Output = Result<(), InboundError>> + Send;
    /// The peer's side ended (or we stopped reading): close the helper's
    /// input, which is its EOF.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// The summaries of the stream received.
    fn feed(&self) -> &Feed;
}

/// Follows the peer's stream, counts it and writes it to the helper.
pub struct Feed {
    parser: StreamParser,
    /// The ORIGIN's stream, when the peer runs it.
    pub origin: OriginSummary,
    /// The REPLICA's stream, when the peer runs it.
    pub replica: ReplicaSummary,
    /// Gone once the helper stopped reading (it finished or died, which
    /// the driver learns from its exit).
    stdin: Option<ChildStdin>,
    stats: Arc<Stats>,
    observer: Option<Arc<dyn Observer>>,
    logged_end: bool,
}

impl Feed {
    pub fn new(
        direction: Direction,
        stdin: Option<ChildStdin>,
        stats: Arc<Stats>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Feed {
        Feed {
            parser: StreamParser::new(direction),
            origin: OriginSummary::default(),
            replica: ReplicaSummary::default(),
            stdin,
            stats,
            observer,
            logged_end: false,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.parser.at_boundary()
    }

    /// Stream offset of the first byte of the next chunk.
    pub fn offset(&self) -> u64 {
        self.parser.bytes()
    }

    /// Parses a chunk, observing every message; `each` also sees each
    /// message with the stream offset just past it.
    pub fn parse(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(&Message<'_>, u64),
    ) -> Result<(), StreamError> {
        let mut end = self.parser.consumed();
        let (origin, replica, stats) = (&mut self.origin, &mut self.replica, &self.stats);
        self.parser.feed(data, |m| {
            end += m.wire_len() as u64;
            stats.note_message(&m);
            origin.observe(&m);
            replica.observe(&m);
            each(&m, end);
        })?;
        Stats::add(&self.stats.stream_in, data.len() as u64);
        if let Some(o) = &self.observer {
            o.progress(&self.stats);
        }
        if self.parser.ended() && !self.logged_end {
            self.logged_end = true;
            tracing::debug!("stream complete");
        }
        Ok(())
    }

    /// Writes stream bytes to the helper.
    pub async fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some(w) = self.stdin.as_mut()
            && w.write_all(data).await.is_err()
        {
            self.stdin = None;
        }
    }

    /// Closes the helper's input.
    pub async fn shutdown(&mut self) {
        if let Some(mut w) = self.stdin.take() {
            let _ = w.shutdown().await;
        }
    }
}

impl Inbound for Feed {
    fn at_boundary(&self) -> bool {
        Feed::at_boundary(self)
    }

    async fn stream(&mut self, data: Bytes) -> Result<(), InboundError> {
        self.parse(&data, |_, _| {})
            .map_err(|e| InboundError::Protocol(e.to_string()))?;
        self.write(&data).await;
        Ok(())
    }

    async fn close(&mut self) {
        self.shutdown().await;
    }

    fn feed(&self) -> &Feed {
        self
    }
}
