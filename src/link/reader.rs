//! The connecting side's reader: the peer's frames until its side ends.
//!
//! Binary frames go through the control-frame rule ([`classify`]): the
//! peer's control frames are noted, stream bytes go to the [`Inbound`].
//! Text frames (CONFIG, MESSAGE, ABORT) are acted on, and bounded: a
//! MESSAGE or ABORT reason is taken in as it will be shown
//! ([`shown_text`]: visible, cut at 4 KiB), at most a few dozen messages
//! are kept ([`ShownMessages`]), and a server that sends more than
//! [`MAX_SERVER_TEXT_BYTES`] of text in one sync is a protocol error. What
//! else the reader learnt (every CONFIG, the messages, NEWREPLICAVERSION)
//! comes back in [`Received`].
//!
//! Stream frames that have already arrived behind one another are handed
//! over together (up to [`GATHER`] bytes): a peer that sends frames of at
//! most 4101 bytes (PROTOCOL.md section 3) would otherwise cost the
//! inbound one helper write, one digest hand-off and one wake-up per page.
//! Only frames that cannot be control frames are gathered (their first
//! byte is not one of ours, so [`classify`] says stream whatever the
//! boundary); any other frame is kept for the next turn and classified
//! once what came before it was parsed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::sync::watch;

use super::drive::{ConnectionLost, DriveCtx, PeerEnd};
use super::inbound::{Inbound, InboundError};
use super::socket::{Frame, SocketError, SocketRx};
use super::{Stats, frame_len, wait_true};
use crate::wire::{
    CTRL_NEWREPLICAVERSION, FrameKind, MAX_CONFIG_ID_LEN, MAX_SERVER_TEXT_BYTES, ServerConfig,
    ServerText, ShownMessages, classify, is_control_byte, shown_text,
};

/// Most stream bytes handed to the inbound at once.
const GATHER: usize = 64 * 1024;

/// What the reader collected besides the stream.
#[derive(Default)]
pub(super) struct Received {
    /// Every CONFIG that passed its check, in order.
    pub configs: Vec<ServerConfig>,
    /// The MESSAGE texts, as shown.
    pub messages: ShownMessages,
    pub newer_version: bool,
    /// Bytes of text frames so far (bounded by [`MAX_SERVER_TEXT_BYTES`]).
    pub text_bytes: u64,
    /// On a push, why the first CONFIG that failed its check failed.
    pub bad_config: Option<String>,
    /// The `committedVersionID` of the last CONFIG that named a sane one,
    /// checked or not (for the verdict on a push with a bad CONFIG).
    pub last_version: Option<String>,
}

/// How the reader ended: the peer's end, the inbound back, what it got.
pub(super) type ReaderDone<I> = (PeerEnd, I, Received);

/// A frame as the socket returned it.
type Next = Option<Result<Frame, SocketError>>;

/// Reads the peer's frames until its side ends.
pub(super) struct Reader<R, I> {
    pub stream: R,
    pub inbound: I,
    pub ctx: DriveCtx,
    /// Stop reading (Ctrl-C, or no close reply in time).
    pub cancel: watch::Receiver<bool>,
    /// Turns true at the first CONFIG.
    pub config_seen: watch::Sender<bool>,
    pub idle: Duration,
    /// Our side is the ORIGIN (a push). A CONFIG that fails its check then
    /// does not end the session at once: the server may send it after it
    /// committed, and reading on to its close lets the verdict say so.
    /// Nothing of that CONFIG is used either way.
    pub push: bool,
    pub got: Received,
    /// A frame read while gathering, not handled yet.
    pub ahead: Option<Next>,
}

impl<R: SocketRx, I: Inbound> Reader<R, I> {
    /// Reads, then closes the inbound (the helper's stdin: its EOF).
    pub async fn run(mut self) -> ReaderDone<I> {
        let end = self.read().await;
        self.inbound.close().await;
        if self.got.messages.not_shown > 0
            && let Some(o) = &self.ctx.observer
        {
            o.messages_not_shown(self.got.messages.not_shown);
        }
        (end, self.inbound, self.got)
    }

    async fn read(&mut self) -> PeerEnd {
        // Anything the peer sends keeps the session alive, its keepalive
        // Pings included, except Pongs: those are its websocket library
        // answering our own pings, which it does even when stuck.
        let mut deadline = tokio::time::Instant::now() + self.idle;
        loop {
            let frame = match self.ahead.take() {
                Some(f) => f,
                None => tokio::select! {
                    m = tokio::time::timeout_at(deadline, self.stream.recv()) => match m {
                        Ok(m) => m,
                        Err(_) => return PeerEnd::Lost(ConnectionLost::Stalled(self.idle)),
                    },
                    _ = wait_true(&mut self.cancel) => return PeerEnd::Cancelled,
                },
            };
            if !matches!(frame, Some(Ok(Frame::Pong(_)))) {
                deadline = tokio::time::Instant::now() + self.idle;
            }
            let end = match frame {
                None => Some(PeerEnd::Lost(ConnectionLost::Ended)),
                Some(Err(SocketError::TooBig(e) | SocketError::Failed(e))) => {
                    Some(PeerEnd::Lost(ConnectionLost::Failed(e)))
                }
                Some(Ok(Frame::Binary(b))) => self.binary(b).await,
                Some(Ok(Frame::Text(t))) => self.text(&t),
                Some(Ok(Frame::Close(code, reason))) => {
                    Some(PeerEnd::Closed(code, shown_text(&reason)))
                }
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => None,
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// A binary frame: the peer's control frame, or stream bytes for the
    /// inbound. Some(end) when the session ends here.
    async fn binary(&mut self, data: Bytes) -> Option<PeerEnd> {
        self.count(&data);
        match classify(&data, self.inbound.at_boundary()) {
            FrameKind::Empty => None,
            FrameKind::Control(byte) => {
                if byte == CTRL_NEWREPLICAVERSION && data.len() == 1 {
                    self.got.newer_version = true;
                } else {
                    // Debug, not warn: a newer server's frame is no reason
                    // for a second line on the user's terminal.
                    tracing::debug!(byte, len = data.len(), "ignoring an unknown control frame");
                }
                None
            }
            FrameKind::Stream => {
                let data = self.gather(data);
                match self.inbound.stream(data).await {
                    Ok(()) => None,
                    Err(e @ InboundError::Protocol(_)) => Some(PeerEnd::Protocol(e.to_string())),
                    Err(InboundError::Refused(why)) => Some(PeerEnd::Refused(why)),
                }
            }
        }
    }

    /// `first` and the stream frames already behind it, up to [`GATHER`]
    /// bytes; the first other frame is kept in `ahead`.
    fn gather(&mut self, first: Bytes) -> Bytes {
        let mut all: Option<BytesMut> = None;
        while first.len() + all.as_ref().map_or(0, |a| a.len()) < GATHER {
            let Some(next) = self.stream.recv().now_or_never() else {
                break;
            };
            let b = match next {
                Some(Ok(Frame::Binary(b)))
                    if b.first().is_some_and(|c| !is_control_byte(*c))
                        && first.len() + all.as_ref().map_or(0, |a| a.len()) + b.len()
                            <= GATHER =>
                {
                    b
                }
                other => {
                    self.ahead = Some(other);
                    break;
                }
            };
            self.count(&b);
            all.get_or_insert_with(|| {
                let mut a = BytesMut::with_capacity(GATHER);
                a.extend_from_slice(&first);
                a
            })
            .extend_from_slice(&b);
        }
        all.map_or(first, BytesMut::freeze)
    }

    /// Counts a binary frame received.
    fn count(&self, data: &[u8]) {
        Stats::add(&self.ctx.stats.wire_in, frame_len(data.len(), false));
        self.ctx.stats.note_frame(false, data.len(), true);
    }

    /// A text frame: CONFIG, MESSAGE or ABORT.
    fn text(&mut self, t: &str) -> Option<PeerEnd> {
        let wire = frame_len(t.len(), false);
        Stats::add(&self.ctx.stats.wire_in, wire);
        Stats::add(&self.ctx.stats.text_in, wire);
        self.ctx.stats.note_frame(false, t.len(), false);
        self.got.text_bytes += t.len() as u64;
        if self.got.text_bytes > MAX_SERVER_TEXT_BYTES {
            return Some(PeerEnd::Protocol(format!(
                "the server sent more than {} MiB of text frames (CONFIG, MESSAGE) in one sync",
                MAX_SERVER_TEXT_BYTES >> 20
            )));
        }
        match ServerText::parse(t) {
            Ok(ServerText::Config(c)) => self.config(c),
            Ok(ServerText::Message(m)) => {
                if let Some(shown) = self.got.messages.take(&m)
                    && let Some(o) = &self.ctx.observer
                {
                    o.message(shown);
                }
                None
            }
            Ok(ServerText::Abort(reason)) => Some(PeerEnd::Aborted(shown_text(&reason))),
            Err(e) if t.starts_with("CONFIG=") => Some(PeerEnd::Protocol(shown_text(&e))),
            // Unknown kinds of text frame may come from newer servers: not
            // an error.
            Err(e) => {
                tracing::debug!("{e}");
                None
            }
        }
    }

    /// A CONFIG: kept when it passes its check. What we will store or act
    /// on must be sane; a server that sends otherwise is not trusted with
    /// the rest either (on a push, see [`Reader::push`]).
    fn config(&mut self, c: ServerConfig) -> Option<PeerEnd> {
        if let Some(v) = c
            .committed_version_id
            .as_ref()
            .filter(|v| v.len() <= MAX_CONFIG_ID_LEN)
        {
            self.got.last_version = Some(crate::wire::visible(v).into_owned());
        }
        if let Err(e) = c.check() {
            if !self.push {
                return Some(PeerEnd::Protocol(format!(
                    "the server sent a bad CONFIG: {e}"
                )));
            }
            self.got.bad_config.get_or_insert(e);
            return None;
        }
        self.inbound.config(&c);
        self.got.configs.push(c);
        let _ = self.config_seen.send(true);
        None
    }
}
