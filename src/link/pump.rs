//! Helper stdout -> binary frames.
//!
//! What is ready on the helper's stdout is read, followed by a
//! [`StreamParser`], and cut into frames under a [`Framing`] policy. The
//! parser is there for four reasons: the summaries (did the helper report
//! an error, did the stream end), the progress counts, the cuts (every
//! frame starts at a message boundary and holds whole messages, as the
//! clients that exist for sqlrsync.com need: PROTOCOL.md section 3), and
//! the one rule for our own control frames: they go out only where a
//! message of the stream ends, so the receiver's [`crate::wire::classify`]
//! tells them apart. Since every frame ends at a boundary, a control frame
//! may follow any frame. Output that is not a sqlite3_rsync stream stops
//! the pump (its own helper wrote something nobody can follow), so no
//! control frame ever lands inside a message.
//!
//! How large the frames are is the [`Framing`] value the caller chose for
//! its peer ([`Framing::for_peer`]), not code in each caller. Frames are
//! split off the read buffer without copying.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::writer::{Out, OutTx};
use super::{Observer, Stats};
use crate::wire::{
    COMPAT_MAX_FRAME, Direction, ORIGIN_END, OriginSummary, ReplicaSummary, StreamError,
    StreamParser, is_control_byte,
};

/// How the helper's output is cut into frames. Every frame starts at a
/// message boundary and holds whole messages; a message larger than a
/// frame goes in pieces of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Largest binary frame sent.
    pub max_frame: usize,
    /// Messages (by their first byte) sent in a frame of their own.
    pub alone: &'static [u8],
}

impl Framing {
    /// For a peer that did not offer larger frames (PROTOCOL.md section 3):
    /// at most 4101 bytes, ORIGIN_END alone. NEWREPLICAVERSION is a
    /// control frame, alone anyway.
    pub const COMPAT: Framing = Framing {
        max_frame: COMPAT_MAX_FRAME,
        alone: &[ORIGIN_END],
    };
    /// Between peers that agreed on large frames (SERVER.md "Extensions"):
    /// up to 16 KiB of whole messages gathered from what is ready. Fewer
    /// frames than 4101 bytes, and still small enough that the receiver's
    /// helper starts on each page soon: 64 KiB frames made a 100 MB pull
    /// 15% slower than 16 KiB ones (`scripts/bench-remote`).
    pub const LARGE: Framing = Framing {
        max_frame: 16 * 1024,
        alone: &[ORIGIN_END],
    };

    /// The policy for a peer that offered frames of up to `offer` bytes
    /// (see [`crate::wire::offered_max_frame`]), or none.
    pub fn for_peer(offer: Option<usize>) -> Framing {
        match offer {
            Some(n) if n > COMPAT_MAX_FRAME => Framing {
                max_frame: n.min(Framing::LARGE.max_frame),
                ..Framing::LARGE
            },
            _ => Framing::COMPAT,
        }
    }

    /// Bytes read from the pipe at a time.
    fn read_size(&self) -> usize {
        self.max_frame.max(64 * 1024)
    }
}

/// Our control frames and where they go in the stream.
#[derive(Default)]
pub struct Controls {
    /// Before any stream data (COMMITMESSAGE).
    pub before: Vec<Vec<u8>>,
    /// Right after the first stream frame (CONFIG, KEYREQUEST).
    pub after_first: Vec<Vec<u8>>,
    /// Once the stream ended (a boundary by definition): called once, its
    /// frames are sent then (NEWREPLICAVERSION).
    pub at_end: Option<Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>>,
    /// After the stream's end, send STREAMDIGEST: the XXH3-128 of every
    /// stream byte sent (a verified push, SERVER.md "Extensions").
    pub digest_at_end: bool,
}

impl Controls {
    /// The control frames due now: those that follow the first stream
    /// frame once it went out, and the end's once the stream ended. Each
    /// is handed out once.
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
        q.send(Bytes::from(f)).await;
    }
    let mut sent_first = false;
    let mut framer = Framer::new(framing);
    let mut digest = controls.digest_at_end.then(xxhash_rust::xxh3::Xxh3::new);
    loop {
        if !q.open && !ctx.keep_reading {
            break;
        }
        let before = framer.pending.len();
        let eof = match read_more(&mut stdout, &mut framer.pending, framing.read_size()).await {
            Ok(eof) => eof,
            Err(e) => {
                res.error = Some(PumpError::Read(e));
                break;
            }
        };
        let n = framer.pending.len() - before;
        if n > 0 {
            let lens = &mut framer.lens;
            let parsed = parser.feed(&framer.pending[before..], |m| {
                ctx.stats.note_message(&m);
                res.origin.observe(&m);
                res.replica.observe(&m);
                lens.push(m.wire_len());
            });
            if let Err(e) = parsed {
                res.error = Some(PumpError::Stream(e));
                break;
            }
            if let Some(d) = digest.as_mut() {
                d.update(&framer.pending[before..]);
            }
            Stats::add(&ctx.stats.stream_out, n as u64);
            if let Some(o) = &ctx.observer {
                o.progress(&ctx.stats);
            }
        }
        for f in framer.cut(eof) {
            q.send(f).await;
            sent_first = true;
        }
        for f in controls.due(sent_first, parser.ended()) {
            q.send(Bytes::from(f)).await;
        }
        if parser.ended()
            && let Some(d) = digest.take()
        {
            let sum = d.digest128().to_be_bytes();
            q.send(Bytes::from(
                crate::wire::ClientControl::StreamDigest(sum).encode(),
            ))
            .await;
        }
        if eof {
            break;
        }
    }
    res.all_queued = q.all_queued;
    if ctx.keep_reading {
        drain(&mut stdout).await;
    }
    res
}

/// Reads the helper's output to its end, so a helper that still writes
/// never blocks on a full pipe while it winds down.
async fn drain<R: AsyncRead + Unpin>(stdout: &mut R) {
    let mut sink = [0u8; 8192];
    while let Ok(n) = stdout.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Cuts what was read into frames per [`Framing`].
struct Framer {
    framing: Framing,
    /// Read but not sent; starts at a message boundary.
    pending: BytesMut,
    /// Lengths of the messages completed in `pending`, in order.
    lens: Vec<usize>,
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        Framer {
            framing,
            pending: BytesMut::new(),
            lens: Vec::new(),
        }
    }

    /// Splits the frames due off `pending`: every completed message, in
    /// frames of whole messages of at most `max_frame` bytes; a message in
    /// `alone`, or larger than a frame, in frames of its own. What follows
    /// the last complete message waits for its rest, unless the helper's
    /// output ended (`eof`): a message cut short is then sent as it is,
    /// for the peer's parser to refuse.
    fn cut(&mut self, eof: bool) -> Vec<Bytes> {
        let max = self.framing.max_frame;
        let mut sizes = Vec::new();
        let (mut frame_start, mut pos) = (0, 0);
        for &len in &self.lens {
            let (s, e) = (pos, pos + len);
            pos = e;
            let alone = self.framing.alone.contains(&self.pending[s]);
            if s > frame_start && (alone || e - frame_start > max) {
                sizes.push(s - frame_start);
                frame_start = s;
            }
            if alone || len > max {
                pieces(&self.pending[s..e], max, &mut sizes);
                frame_start = e;
            }
        }
        if pos > frame_start {
            sizes.push(pos - frame_start);
        }
        self.lens.clear();
        let mut frames: Vec<Bytes> = sizes
            .into_iter()
            .map(|n| self.pending.split_to(n).freeze())
            .collect();
        if eof && !self.pending.is_empty() {
            frames.push(self.pending.split().freeze());
        }
        frames
    }
}

/// The frame sizes for one message: pieces of at most `max` bytes. A piece
/// after the first never starts with a byte a strict receiver takes for a
/// frame of its own (ORIGIN_END, a control byte): the cut moves back.
fn pieces(msg: &[u8], max: usize, sizes: &mut Vec<usize>) {
    let mut at = 0;
    while at < msg.len() {
        let mut end = (at + max).min(msg.len());
        while end < msg.len()
            && end > at + 1
            && (msg[end] == ORIGIN_END || is_control_byte(msg[end]))
        {
            end -= 1;
        }
        sizes.push(end - at);
        at = end;
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
    async fn send(&mut self, frame: Bytes) {
        if self.open && self.out.send(Out::binary(frame)).await.is_ok() {
            return;
        }
        self.open = false;
        self.all_queued = false;
    }
}

/// Reads into `buf`: one read that may wait, then more while data is
/// ready, `max` bytes at most in all. Returns true at EOF.
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<bool> {
    use futures_util::FutureExt;
    buf.reserve(max);
    let mut got = (&mut *r).take(max as u64).read_buf(buf).await?;
    if got == 0 {
        return Ok(true);
    }
    while got < max {
        // Never past `max`: read_buf would read all the spare capacity.
        let mut limited = (&mut *r).take((max - got) as u64);
        match limited.read_buf(buf).now_or_never() {
            Some(Ok(0)) => return Ok(true),
            Some(Ok(n)) => got += n,
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
    async fn reads_what_is_ready_up_to_the_limit() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        for _ in 0..10 {
            a.write_all(&[7u8; 10_000]).await.unwrap();
        }
        let max = 64 * 1024;
        let mut buf = BytesMut::new();
        let eof = read_more(&mut b, &mut buf, max).await.unwrap();
        assert_eq!((buf.len(), eof), (max, false));
        let mut buf = BytesMut::new();
        let eof = read_more(&mut b, &mut buf, max).await.unwrap();
        assert_eq!((buf.len(), eof), (100_000 - max, false));
        drop(a);
        let mut buf = BytesMut::new();
        let eof = read_more(&mut b, &mut buf, max).await.unwrap();
        assert_eq!((buf.len(), eof), (0, true));
    }

    /// An ORIGIN stream as the helper writes it: BEGIN, `pages` pages of
    /// 4 KiB, TXN, END.
    fn origin_stream(pages: u32) -> Vec<u8> {
        origin_stream_of(pages, 12, |p, _| (p % 251) as u8)
    }

    /// The same with pages of `2^log2` bytes whose byte `i` of page `p`
    /// is `fill(p, i)`.
    fn origin_stream_of(pages: u32, log2: u8, fill: impl Fn(u32, usize) -> u8) -> Vec<u8> {
        let mut s = vec![0x41, 2, log2];
        s.extend_from_slice(&pages.to_be_bytes());
        for p in 1..=pages {
            s.push(0x44);
            s.extend_from_slice(&p.to_be_bytes());
            s.extend((0..1usize << log2).map(|i| fill(p, i)));
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

    /// Pumps `stream` through a trickling pipe under `framing`; the
    /// frames sent, in order.
    async fn frames_of(stream: &[u8], framing: Framing, controls: Controls) -> Vec<Bytes> {
        let reader = Trickle {
            data: stream.to_vec(),
            pos: 0,
            step: 0,
            polls: 0,
        };
        let (tx, mut rx) = mpsc::channel::<Out>(1 << 16);
        let ctx = PumpCtx {
            stats: Arc::new(Stats::default()),
            observer: None,
            keep_reading: true,
        };
        let res = pump(reader, Direction::FromOrigin, framing, controls, tx, ctx).await;
        assert!(res.error.is_none(), "{:?}", res.error);
        assert!(res.origin.complete() && res.all_queued);
        let mut frames = Vec::new();
        while let Ok(Out::Binary(f)) = rx.try_recv() {
            frames.push(f);
        }
        frames
    }

    /// Checks what a strict client needs of `frames` (PROTOCOL.md section
    /// 3) and returns the stream they carry.
    fn strictly_framed(frames: &[Bytes], max: usize) -> Vec<u8> {
        let mut p = StreamParser::new(Direction::FromOrigin);
        let mut data = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            if p.at_boundary()
                && let FrameKind::Control(_) = classify(f, true)
            {
                continue;
            }
            assert!(f.len() <= max, "frame {i} of {}", f.len());
            let last = i + 1 == frames.len();
            assert!(
                f[0] != 0x42 || (last && f.len() == 1),
                "frame {i} looks like ORIGIN_END"
            );
            p.feed(f, |_| {}).unwrap();
            data.extend_from_slice(f);
        }
        data
    }

    #[tokio::test]
    async fn compatible_framing_starts_every_frame_at_a_boundary() {
        let stream = origin_stream(20);
        let controls = Controls {
            after_first: vec![crate::wire::ClientControl::Config.encode()],
            ..Default::default()
        };
        let frames = frames_of(&stream, Framing::COMPAT, controls).await;
        let mut p = StreamParser::new(Direction::FromOrigin);
        for f in &frames {
            assert!(p.at_boundary(), "a frame starts mid-message");
            if let FrameKind::Stream = classify(f, true) {
                p.feed(f, |_| {}).unwrap();
            }
        }
        assert_eq!(strictly_framed(&frames, 4101), stream);
        assert_eq!(&frames.last().unwrap()[..], &[0x42], "ORIGIN_END alone");
    }

    #[tokio::test]
    async fn pages_larger_than_a_frame_go_in_pieces_that_never_look_like_an_end() {
        // 64 KiB pages full of 0x42 and control bytes, where cuts would go.
        let fill = |p: u32, i: usize| [0x42, 0x51, 0x52, 0x53, 0x54, p as u8][i % 6];
        let stream = origin_stream_of(5, 16, fill);
        let frames = frames_of(&stream, Framing::COMPAT, Controls::default()).await;
        assert_eq!(strictly_framed(&frames, 4101), stream);
        assert!(frames.len() > 5 * 16, "{} frames", frames.len());
        let large = frames_of(&stream, Framing::LARGE, Controls::default()).await;
        assert_eq!(strictly_framed(&large, Framing::LARGE.max_frame), stream);
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
            digest_at_end: false,
        };
        let ctx = PumpCtx {
            stats: Arc::new(Stats::default()),
            observer: None,
            keep_reading: true,
        };
        let res = pump(
            reader,
            Direction::FromOrigin,
            Framing::LARGE,
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
                !f.is_empty() && f.len() <= Framing::LARGE.max_frame,
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
