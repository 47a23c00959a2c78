//! Helper stdout -> binary frames.
//!
//! What is ready on the helper's stdout is read into frames of at most
//! [`Framing::max_frame`] bytes and queued for the writer. A
//! [`StreamParser`] follows the stream as it goes, for three reasons: the
//! summaries (did the helper report an error, did the stream end), the
//! progress counts, and the one rule for our own control frames
//! (PROTOCOL.md section 3): they go out only where a message of the stream
//! ends, so the receiver's [`crate::wire::classify`] tells them apart.
//! Output that is not a sqlite3_rsync stream stops the pump (its own
//! helper wrote something nobody can follow), so no control frame ever
//! lands inside a message.
//!
//! How bytes are cut into frames is the [`Framing`] policy, a value chosen
//! by the caller, not code in each caller.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::writer::{Out, OutTx};
use super::{Observer, Stats};
use crate::wire::{Direction, OriginSummary, ReplicaSummary, StreamError, StreamParser};

/// How the helper's output is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Largest binary frame sent (with `whole_messages`, a single message
    /// larger than this still goes whole, in a frame of its own).
    pub max_frame: usize,
    /// Gather what is already in the pipe into one frame (one read that
    /// may wait, then more only while data is there); otherwise each read
    /// of the pipe is one frame.
    pub coalesce: bool,
    /// Every frame starts at a message boundary and holds whole messages
    /// (a message read in part waits for its rest). Then our control
    /// frames may follow any frame.
    pub whole_messages: bool,
    /// Messages (by their first byte) sent in a frame of their own; only
    /// with `whole_messages`.
    pub alone: &'static [u8],
}

impl Framing {
    /// The client's policy: frames up to 64 KiB, gathered from what is
    /// ready, so a page stream travels in few large frames.
    pub const CLIENT: Framing = Framing {
        max_frame: 64 * 1024,
        coalesce: true,
        whole_messages: false,
        alone: &[],
    };
    /// The server's policy (pull pages, push replica hashes): one frame
    /// per read of the pipe, up to 64 KiB.
    pub const SERVER: Framing = Framing {
        max_frame: 64 * 1024,
        coalesce: false,
        whole_messages: false,
        alone: &[],
    };

    /// Bytes read from the pipe at a time.
    fn read_size(&self) -> usize {
        if self.whole_messages {
            self.max_frame.max(64 * 1024)
        } else {
            self.max_frame
        }
    }
}

/// Our control frames and where they go in the stream.
#[derive(Default)]
pub struct Controls {
    /// Before any stream data (COMMITMESSAGE).
    pub before: Vec<Vec<u8>>,
    /// At the first message boundary after the first stream frame (CONFIG,
    /// KEYREQUEST).
    pub after_first: Vec<Vec<u8>>,
    /// Once the stream ended (a boundary by definition): called once, its
    /// frames are sent then (NEWREPLICAVERSION).
    pub at_end: Option<Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>>,
}

impl Controls {
    /// The control frames due at a message boundary: those that follow the
    /// first stream frame once it went out, and the end's once the stream
    /// ended. Each is handed out once.
    fn due(&mut self, sent_first: bool, ended: bool) -> Vec<Vec<u8>> {
        let mut now = Vec::new();
        if sent_first {
            now.append(&mut self.after_first);
        }
        if ended && let Some(f) = self.at_end.take() {
            now.extend(f());
        }
        now
    }
}

/// Why the pump stopped before the helper's EOF.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("cannot read the helper's output: {0}")]
    Read(std::io::Error),
    #[error("the helper's output is not a sqlite3_rsync stream: {0}")]
    Stream(StreamError),
}

/// What the pump saw.
#[derive(Debug, Default)]
pub struct PumpEnd {
    pub origin: OriginSummary,
    pub replica: ReplicaSummary,
    pub error: Option<PumpError>,
    /// Every frame was queued (the writer was there to take it).
    pub all_queued: bool,
}

/// Where the pump reports, and what it does when the writer is gone.
pub struct PumpCtx {
    pub stats: Arc<Stats>,
    pub observer: Option<Arc<dyn Observer>>,
    /// Keep reading (and following) the helper's output to its end after
    /// the writer went away: the client, whose verdict reads the whole
    /// stream and whose helper must never block on a full pipe. Otherwise
    /// the pump ends with the writer, and the session learns from that.
    pub keep_reading: bool,
}

/// Runs the pump until the helper's stdout ends (or per [`PumpCtx`]).
pub async fn pump<R: AsyncRead + Unpin>(
    mut stdout: R,
    direction: Direction,
    framing: Framing,
    mut controls: Controls,
    out: OutTx,
    ctx: PumpCtx,
) -> PumpEnd {
    let mut parser = StreamParser::new(direction);
    let mut res = PumpEnd::default();
    let mut q = Queue {
        out,
        open: true,
        all_queued: true,
    };
    for f in std::mem::take(&mut controls.before) {
        q.send(f).await;
    }
    let mut sent_first = false;
    let mut framer = Framer::new(framing);
    loop {
        if !q.open && !ctx.keep_reading {
            break;
        }
        let mut buf = Vec::with_capacity(framing.read_size());
        let eof = match read_frame(&mut stdout, &mut buf, framing.coalesce).await {
            Ok(eof) => eof,
            Err(e) => {
                res.error = Some(PumpError::Read(e));
                break;
            }
        };
        if !buf.is_empty() {
            let n = buf.len();
            let parsed = parser.feed(&buf, |m| {
                ctx.stats.note_message(&m);
                res.origin.observe(&m);
                res.replica.observe(&m);
                framer.message(m.wire_len());
            });
            if let Err(e) = parsed {
                res.error = Some(PumpError::Stream(e));
                break;
            }
            Stats::add(&ctx.stats.stream_out, n as u64);
            if let Some(o) = &ctx.observer {
                o.progress(&ctx.stats);
            }
            for f in framer.frames(buf, eof) {
                q.send(f).await;
            }
            sent_first = true;
        }
        if framing.whole_messages || parser.at_boundary() {
            for f in controls.due(sent_first, parser.ended()) {
                q.send(f).await;
            }
        }
        if eof {
            break;
        }
    }
    res.all_queued = q.all_queued;
    // Keep draining so a helper that still writes never blocks on a full
    // pipe while it winds down.
    if ctx.keep_reading {
        let mut sink = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
    res
}

/// Cuts what was read into frames per [`Framing`].
struct Framer {
    framing: Framing,
    /// Read but not sent (starts at a message boundary).
    pending: Vec<u8>,
    /// Messages completed in `pending`: (start, end).
    spans: Vec<(usize, usize)>,
    /// Where the next message starts in `pending`.
    cursor: usize,
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        Framer {
            framing,
            pending: Vec::new(),
            spans: Vec::new(),
            cursor: 0,
        }
    }

    /// The parser completed a message of `len` bytes.
    fn message(&mut self, len: usize) {
        if self.framing.whole_messages {
            self.spans.push((self.cursor, self.cursor + len));
            self.cursor += len;
        }
    }

    /// The frames to send now for `buf`, just read (and parsed).
    fn frames(&mut self, buf: Vec<u8>, eof: bool) -> Vec<Vec<u8>> {
        if !self.framing.whole_messages {
            return vec![buf];
        }
        self.pending.extend_from_slice(&buf);
        let max = self.framing.max_frame;
        let mut frames = Vec::new();
        let mut start = 0;
        for &(s, e) in &self.spans {
            let alone = self.framing.alone.contains(&self.pending[s]);
            if s > start && (alone || e - start > max) {
                frames.push(self.pending[start..s].to_vec());
                start = s;
            }
            if alone {
                frames.push(self.pending[s..e].to_vec());
                start = e;
            }
        }
        let done = self.cursor;
        if done > start {
            frames.push(self.pending[start..done].to_vec());
        }
        self.spans.clear();
        self.pending.drain(..done);
        self.cursor = 0;
        if eof && !self.pending.is_empty() {
            // A message cut short by the helper's end: sent as it is, for
            // the peer's parser to refuse.
            frames.push(std::mem::take(&mut self.pending));
        }
        frames
    }
}

/// The writer's queue as the pump sees it.
struct Queue {
    out: OutTx,
    /// The writer is still there.
    open: bool,
    /// Every frame so far was queued.
    all_queued: bool,
}

impl Queue {
    async fn send(&mut self, frame: Vec<u8>) {
        if self.open && self.out.send(Out::binary(frame)).await.is_ok() {
            return;
        }
        self.open = false;
        self.all_queued = false;
    }
}

/// Reads one frame's worth into `buf` (empty, with the frame size as
/// capacity). Returns true at EOF.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    coalesce: bool,
) -> std::io::Result<bool> {
    use futures_util::FutureExt;
    let max = buf.capacity();
    if r.read_buf(buf).await? == 0 {
        return Ok(true);
    }
    if !coalesce {
        return Ok(false);
    }
    while buf.len() < max {
        // Never past the frame size: read_buf would grow the Vec.
        let mut limited = (&mut *r).take((max - buf.len()) as u64);
        match limited.read_buf(buf).now_or_never() {
            Some(Ok(0)) => return Ok(true),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameKind, classify};
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn coalesces_what_is_ready() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        for _ in 0..10 {
            a.write_all(&[7u8; 10_000]).await.unwrap();
        }
        let max = Framing::CLIENT.max_frame;
        let mut buf = Vec::with_capacity(max);
        let eof = read_frame(&mut b, &mut buf, true).await.unwrap();
        assert_eq!((buf.len(), eof), (max, false));
        let mut buf = Vec::with_capacity(max);
        let eof = read_frame(&mut b, &mut buf, true).await.unwrap();
        assert_eq!((buf.len(), eof), (100_000 - max, false));
        drop(a);
        let mut buf = Vec::with_capacity(max);
        let eof = read_frame(&mut b, &mut buf, true).await.unwrap();
        assert_eq!((buf.len(), eof), (0, true));
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
            if self.polls.is_multiple_of(3) {
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
    async fn whole_message_framing_starts_every_frame_at_a_boundary() {
        let stream = origin_stream(20);
        let framing = Framing {
            max_frame: 4101,
            coalesce: true,
            whole_messages: true,
            alone: &[0x42],
        };
        let reader = Trickle {
            data: stream.clone(),
            pos: 0,
            step: 0,
            polls: 0,
        };
        let (tx, mut rx) = mpsc::channel::<Out>(1024);
        let ctx = PumpCtx {
            stats: Arc::new(Stats::default()),
            observer: None,
            keep_reading: true,
        };
        let controls = Controls {
            after_first: vec![crate::wire::ClientControl::Config.encode()],
            ..Default::default()
        };
        let res = pump(reader, Direction::FromOrigin, framing, controls, tx, ctx).await;
        assert!(res.error.is_none() && res.origin.complete());
        let mut p = StreamParser::new(Direction::FromOrigin);
        let (mut data, mut frames) = (Vec::new(), Vec::new());
        while let Ok(Out::Binary(f)) = rx.try_recv() {
            assert!(p.at_boundary(), "a frame starts mid-message");
            if let FrameKind::Control(_) = classify(&f, true) {
                continue;
            }
            assert!(f.len() <= 4101, "frame of {}", f.len());
            p.feed(&f, |_| {}).unwrap();
            data.extend_from_slice(&f);
            frames.push(f);
        }
        assert_eq!(data, stream);
        assert_eq!(&frames.last().unwrap()[..], &[0x42], "ORIGIN_END alone");
    }

    #[tokio::test]
    async fn control_frames_only_at_message_boundaries() {
        use crate::wire::ClientControl;
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
        let controls = Controls {
            before: before.clone(),
            after_first: after.clone(),
            at_end: Some(Box::new(|| vec![vec![crate::wire::CTRL_NEWREPLICAVERSION]])),
        };
        let ctx = PumpCtx {
            stats: Arc::new(Stats::default()),
            observer: None,
            keep_reading: true,
        };
        let res = pump(
            reader,
            Direction::FromOrigin,
            Framing::CLIENT,
            controls,
            tx,
            ctx,
        )
        .await;
        assert!(res.error.is_none(), "{:?}", res.error);
        assert!(res.origin.complete());
        assert!(res.all_queued);

        let mut data = Vec::new();
        let mut controls = Vec::new();
        let mut stream_frames = 0;
        while let Ok(Out::Binary(f)) = rx.try_recv() {
            assert!(
                !f.is_empty() && f.len() <= Framing::CLIENT.max_frame,
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
        assert_eq!(controls.len(), 4, "{controls:?}");
        assert_eq!((controls[0].0, &controls[0].1), (0, &before[0]));
        assert!(controls[1].0 > 0, "CONFIG after the first stream frame");
        assert_eq!(controls[1].1, after[0]);
        assert_eq!(controls[2].1, after[1]);
        assert_eq!(
            controls[3],
            (stream.len(), vec![crate::wire::CTRL_NEWREPLICAVERSION])
        );
    }
}
