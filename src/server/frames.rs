//! What a push or pull session does with each websocket frame a client
//! sends, as pure state machines (no I/O), so that the sessions and the
//! `server_frames` fuzz target run the very same code.
//!
//! A frame is a control frame (PROTOCOL.md section 3) only when it is a
//! whole binary frame that starts at a message boundary of the stream with
//! one of sqlrsync's bytes, or a one-byte CONFIG or KEYREQUEST right after
//! the client's first stream frame ([`ClientFrames`]: the clients that exist
//! send them there, even mid-message); every other binary frame is stream
//! bytes, which are parsed ([`StreamParser`]) and judged against [`StreamLimits`]. The
//! limits exist because a client controls how long a stream is: without
//! them a push could announce a database of any size, send the same valid
//! page forever, or repeat ORIGIN_BEGIN (each one restarts the replica's
//! hashing), and a pull client could send hashes forever.

use std::collections::BTreeSet;

use crate::ui::human_bytes;
use crate::wire::{
    ClientControl, ClientFrames, DEFAULT_MAX_DB_BYTES, Direction, FrameKind, MAX_CONTROL_FRAMES,
    Message, OVERHEAD_BASE, OVERHEAD_PER_PAGE, OriginSummary, StreamParser,
};

/// A websocket data frame from the client.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Binary(&'a [u8]),
    Text(&'a str),
}

/// Why a client's frame ends its session (sent as `ABORT=`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

/// Bounds on what one session's client may send.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Largest database a push may announce (page size x page count), and
    /// the scale of the hash traffic a pull client may send.
    pub max_db_bytes: u64,
    /// Largest stream prefix buffered before ORIGIN_BEGIN is complete.
    pub max_prefix: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_db_bytes: DEFAULT_MAX_DB_BYTES,
            max_prefix: 64 * 1024,
        }
    }
}

/// What the push session does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum PushAction {
    /// Nothing (an empty frame, or a commit message now stored).
    Skip,
    /// Answer CONFIG or KEYREQUEST.
    Control(ClientControl),
    /// Stream bytes kept until ORIGIN_BEGIN is complete.
    Buffered,
    /// ORIGIN_BEGIN is complete: start the replica side for this page size
    /// and give it these bytes (everything the stream held so far).
    Start { page_size: u32, bytes: Vec<u8> },
    /// Stream bytes for the running replica side: the frame as it is.
    Forward,
    /// The client's STREAMDIGEST (a verified push).
    Digest([u8; 16]),
}

/// The client side of a push, frame by frame.
#[derive(Debug)]
pub struct PushFrames {
    /// Bounds of this server.
    limits: StreamLimits,
    /// Finds message boundaries and checks the stream's own rules.
    parser: StreamParser,
    /// Tells control frames from stream bytes.
    kinds: ClientFrames,
    /// What the origin said: page size, final count, errors, end.
    summary: OriginSummary,
    /// Page numbers the stream carried (the commit checks only these).
    sent_pages: BTreeSet<u32>,
    /// Stream bytes before the replica side runs.
    prefix: Vec<u8>,
    /// True once [`PushAction::Start`] was returned.
    started: bool,
    /// True once the first message was seen (it must start a stream).
    first_seen: bool,
    /// The COMMITMESSAGE, if one came.
    message: Option<String>,
    /// Control frames so far ([`MAX_CONTROL_FRAMES`]).
    controls: u32,
    /// Pages, page bytes and the announced bound, judged per message.
    counts: Counts,
    /// Bytes of control frames so far (overhead too).
    control_bytes: u64,
    /// XXH3-128 of every stream byte, for a verified push.
    digest: StreamDigest,
}

/// The running XXH3-128 of a push's stream (a wrapper only to be `Debug`).
struct StreamDigest(xxhash_rust::xxh3::Xxh3);

impl std::fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamDigest")
    }
}

/// The running counts of a push stream that its limits are judged on.
#[derive(Debug, Default)]
struct Counts {
    /// Largest page count announced: the bound on pages sent.
    max_pages: u32,
    /// ORIGIN_PAGE messages so far.
    pages: u64,
    /// Bytes of page contents so far (the rest of the stream is overhead).
    page_bytes: u64,
    /// ORIGIN_TXN seen: a second one is refused.
    txn_seen: bool,
}

impl Counts {
    /// Counts one message and applies the limits; `Err` is the refusal.
    fn judge(&mut self, m: &Message<'_>, limits: StreamLimits) -> Result<(), String> {
        match *m {
            Message::OriginBegin {
                page_size,
                page_count,
                ..
            } => {
                // A repeated ORIGIN_BEGIN is bounded by the parser
                // (wire::limits::MAX_BEGINS).
                self.max_pages = self.max_pages.max(page_count);
                let size = page_size as u64 * page_count as u64;
                if size > limits.max_db_bytes {
                    return Err(format!(
                        "the database is {} ({page_count} pages of {page_size} bytes); this server accepts at most {}",
                        human_bytes(size),
                        human_bytes(limits.max_db_bytes)
                    ));
                }
            }
            Message::OriginPage { data, .. } => {
                self.pages += 1;
                self.page_bytes += data.len() as u64;
                if self.pages > self.max_pages as u64 {
                    return Err(format!(
                        "more pages than the {} the origin announced",
                        self.max_pages
                    ));
                }
            }
            Message::OriginTxn { page_count } => {
                let twice = self.txn_seen;
                self.txn_seen = true;
                // The real origin commits exactly the size it announced;
                // a larger one would make the replica grow a sparse file
                // the server then reads page by page.
                if page_count > self.max_pages {
                    return Err(format!(
                        "ORIGIN_TXN page count {page_count} exceeds the {} pages announced",
                        self.max_pages
                    ));
                }
                if twice {
                    return Err("ORIGIN_TXN sent twice".into());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PushFrames {
    pub fn new(limits: StreamLimits) -> Self {
        PushFrames {
            limits,
            parser: StreamParser::new(Direction::FromOrigin),
            kinds: ClientFrames::default(),
            summary: OriginSummary::default(),
            sent_pages: BTreeSet::new(),
            prefix: Vec::new(),
            started: false,
            first_seen: false,
            message: None,
            controls: 0,
            counts: Counts::default(),
            control_bytes: 0,
            digest: StreamDigest(xxhash_rust::xxh3::Xxh3::new()),
        }
    }

    /// Judges one frame. An error ends the session; the state is then
    /// unusable.
    pub fn frame(&mut self, frame: Frame<'_>) -> Result<PushAction, Refused> {
        let data = match frame {
            Frame::Text(_) => {
                return refused("unexpected text frame: a push stream is binary");
            }
            Frame::Binary(d) => d,
        };
        match self.kinds.classify(data, self.parser.at_boundary()) {
            FrameKind::Empty => return Ok(PushAction::Skip),
            FrameKind::Control(_) => return self.control(data),
            FrameKind::Stream => {}
        }
        if self.parser.ended() {
            return refused("data after ORIGIN_END");
        }
        self.stream(data)?;
        if self.started {
            return Ok(PushAction::Forward);
        }
        self.prefix.extend_from_slice(data);
        if let Some(page_size) = self.parser.page_size() {
            self.started = true;
            return Ok(PushAction::Start {
                page_size,
                bytes: std::mem::take(&mut self.prefix),
            });
        }
        if self.parser.ended() {
            // ORIGIN_ERROR / ORIGIN_END without ever beginning: an origin
            // that could not open its database says so this way.
            let why = self.summary.errors.first().cloned().unwrap_or_default();
            return refused(format!("the origin failed: {why}"));
        }
        if self.prefix.len() > self.limits.max_prefix {
            return refused("not a sqlite3_rsync stream: no ORIGIN_BEGIN");
        }
        Ok(PushAction::Buffered)
    }

    fn control(&mut self, data: &[u8]) -> Result<PushAction, Refused> {
        self.controls += 1;
        self.control_bytes += data.len() as u64;
        if self.controls > MAX_CONTROL_FRAMES {
            return refused(format!(
                "too many control frames (more than {MAX_CONTROL_FRAMES})"
            ));
        }
        match ClientControl::parse(data) {
            Ok(ClientControl::CommitMessage(m)) => {
                if self.started || !self.prefix.is_empty() {
                    return refused("COMMITMESSAGE must come before ORIGIN_BEGIN");
                }
                if self.message.is_some() {
                    return refused("COMMITMESSAGE sent twice");
                }
                self.message = Some(m);
                Ok(PushAction::Skip)
            }
            Ok(ClientControl::StreamDigest(d)) => {
                if !self.parser.ended() {
                    return refused("STREAMDIGEST before ORIGIN_END");
                }
                Ok(PushAction::Digest(d))
            }
            Ok(c) => Ok(PushAction::Control(c)),
            Err(e) => refused(format!("bad control frame: {e}")),
        }
    }

    /// Parses stream bytes and applies the limits to every message.
    fn stream(&mut self, data: &[u8]) -> Result<(), Refused> {
        self.digest.0.update(data);
        let limits = self.limits;
        let mut violation: Option<String> = None;
        let PushFrames {
            parser,
            summary,
            sent_pages,
            first_seen,
            counts,
            ..
        } = self;
        let result = parser.feed(data, |m| {
            if violation.is_some() {
                return;
            }
            if !*first_seen {
                *first_seen = true;
                // An origin that cannot open its database starts with
                // ORIGIN_ERROR (or a message) instead of ORIGIN_BEGIN.
                if !matches!(
                    m,
                    Message::OriginBegin { .. } | Message::OriginError(_) | Message::OriginMsg(_)
                ) {
                    violation =
                        Some("not a sqlite3_rsync stream: it must start with ORIGIN_BEGIN".into());
                    return;
                }
            }
            summary.observe(&m);
            if let Message::OriginPage { pgno, .. } = m {
                sent_pages.insert(pgno);
            }
            violation = counts.judge(&m, limits).err();
        });
        result.map_err(|e| Refused(format!("not a sqlite3_rsync stream: {e}")))?;
        if let Some(v) = violation {
            return refused(v);
        }
        let overhead = self.parser.bytes() - self.counts.page_bytes + self.control_bytes;
        let budget = OVERHEAD_BASE + OVERHEAD_PER_PAGE * self.counts.max_pages as u64;
        if overhead > budget {
            return refused(format!(
                "the stream carried more than {} besides page contents",
                human_bytes(budget)
            ));
        }
        Ok(())
    }

    /// After a complete stream: the first page of the committed database
    /// that neither the stream carried nor the staging copy (of
    /// `base_pages` pages) held. sqlite3_rsync's origin sends every page
    /// beyond the replica's size (except SQLite's lock-byte page), so a
    /// gap means a client that announces a large database, sends a few
    /// pages and commits the rest as zeros.
    pub fn missing_page(&self, base_pages: u32, page_size: u32) -> Option<u32> {
        let final_count = self.summary.txn_page_count? as u64;
        let lock_byte_page = (1u64 << 30) / page_size.max(1) as u64 + 1;
        let skip_lock = |n: u64| if n == lock_byte_page { n + 1 } else { n };
        // One pass over the sent pages beyond the base, in order: the
        // first number not there is the gap.
        let mut next = skip_lock(base_pages as u64 + 1);
        for &p in self.sent_pages.range(next.min(u32::MAX as u64) as u32..) {
            let p = p as u64;
            if next > final_count || p > next {
                break;
            }
            next = skip_lock(p + 1);
        }
        (next <= final_count).then_some(next as u32)
    }

    /// True once any stream byte came (control frames are not stream): a
    /// close before that is a client that had nothing to push.
    pub fn stream_begun(&self) -> bool {
        self.first_seen || self.started || !self.prefix.is_empty()
    }

    /// True once ORIGIN_END was seen: the session stops reading.
    pub fn ended(&self) -> bool {
        self.parser.ended()
    }

    /// What the origin said so far.
    pub fn summary(&self) -> &OriginSummary {
        &self.summary
    }

    /// Page numbers the stream carried.
    pub fn sent_pages(&self) -> &BTreeSet<u32> {
        &self.sent_pages
    }

    /// Takes the page numbers (for the commit).
    pub fn take_sent_pages(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.sent_pages)
    }

    /// The commit message ("" without one).
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }

    /// ORIGIN_PAGE messages so far.
    pub fn pages(&self) -> u64 {
        self.counts.pages
    }

    /// Largest page count announced.
    pub fn max_pages(&self) -> u32 {
        self.counts.max_pages
    }

    /// XXH3-128 of the stream received so far.
    pub fn stream_digest(&self) -> [u8; 16] {
        self.digest.0.digest128().to_be_bytes()
    }
}

/// What the pull session does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum PullAction {
    /// Nothing (an empty frame).
    Skip,
    /// Answer CONFIG or KEYREQUEST.
    Control(ClientControl),
    /// Stream bytes for the origin side: the frame as it is.
    Forward,
}

/// The client side of a pull (its REPLICA stream), frame by frame.
#[derive(Debug)]
pub struct PullFrames {
    /// Checks the REPLICA stream's own rules and finds boundaries.
    parser: StreamParser,
    /// Tells control frames from stream bytes.
    kinds: ClientFrames,
    /// Control frames so far ([`MAX_CONTROL_FRAMES`]).
    controls: u32,
    /// Bytes the client may send in all: the client's hashes describe its
    /// own database, which may be larger than the version pulled, so the
    /// bound scales with the largest database this server takes.
    budget: u64,
    /// Bytes received so far (stream and control frames).
    received: u64,
}

impl PullFrames {
    /// `version_pages` and `page_size` describe the version being pulled.
    pub fn new(limits: StreamLimits, version_pages: u32, page_size: u32) -> Self {
        let pages = (limits.max_db_bytes / page_size.max(512) as u64).max(version_pages as u64);
        PullFrames {
            parser: StreamParser::new(Direction::FromReplica),
            kinds: ClientFrames::default(),
            controls: 0,
            budget: OVERHEAD_BASE.saturating_add(OVERHEAD_PER_PAGE.saturating_mul(pages)),
            received: 0,
        }
    }

    /// Judges one frame. An error ends the session.
    pub fn frame(&mut self, frame: Frame<'_>) -> Result<PullAction, Refused> {
        let data = match frame {
            Frame::Text(_) => {
                return refused("unexpected text frame: a pull stream is binary");
            }
            Frame::Binary(d) => d,
        };
        let kind = self.kinds.classify(data, self.parser.at_boundary());
        if kind == FrameKind::Empty {
            return Ok(PullAction::Skip);
        }
        self.received += data.len() as u64;
        if self.received > self.budget {
            return refused(format!(
                "the replica side sent more than {}",
                human_bytes(self.budget)
            ));
        }
        if let FrameKind::Control(_) = kind {
            self.controls += 1;
            if self.controls > MAX_CONTROL_FRAMES {
                return refused(format!(
                    "too many control frames (more than {MAX_CONTROL_FRAMES})"
                ));
            }
            return match ClientControl::parse(data) {
                Ok(ClientControl::CommitMessage(_)) => refused("COMMITMESSAGE is for pushes"),
                Ok(ClientControl::StreamDigest(_)) => refused("STREAMDIGEST is for pushes"),
                Ok(c) => Ok(PullAction::Control(c)),
                Err(e) => refused(format!("bad control frame: {e}")),
            };
        }
        self.parser
            .feed(data, |_| {})
            .map_err(|e| Refused(format!("not a sqlite3_rsync stream: {e}")))?;
        Ok(PullAction::Forward)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The most the client may send.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(log2: u8, pages: u32) -> Vec<u8> {
        let mut v = vec![0x41, 2, log2];
        v.extend_from_slice(&pages.to_be_bytes());
        v
    }

    fn page(pgno: u32) -> Vec<u8> {
        let mut v = vec![0x44];
        v.extend_from_slice(&pgno.to_be_bytes());
        v.extend([0u8; 512]);
        v
    }

    fn small() -> StreamLimits {
        StreamLimits {
            max_db_bytes: 1 << 20,
            max_prefix: 1024,
        }
    }

    #[test]
    fn a_push_starts_once_begin_is_whole() {
        let mut p = PushFrames::new(small());
        let msg = ClientControl::CommitMessage("m".into()).encode();
        assert_eq!(p.frame(Frame::Binary(&msg)), Ok(PushAction::Skip));
        assert_eq!(p.frame(Frame::Binary(&[0x41])), Ok(PushAction::Buffered));
        assert_eq!(p.frame(Frame::Binary(&[2])), Ok(PushAction::Buffered));
        assert_eq!(
            p.frame(Frame::Binary(&[0x51])),
            Ok(PushAction::Buffered),
            "0x51 inside a message (not right after the first frame) is stream data"
        );
        assert_eq!(p.message(), "m");
        let err = PushFrames::new(small())
            .frame(Frame::Binary(&[0x41, 2, 0x51, 0, 0, 0, 1]))
            .unwrap_err();
        assert!(err.0.contains("page size"), "{err}");
        let mut p = PushFrames::new(small());
        assert_eq!(
            p.frame(Frame::Binary(&begin(9, 4)[..3])),
            Ok(PushAction::Buffered)
        );
        assert_eq!(
            p.frame(Frame::Binary(&begin(9, 4)[3..])),
            Ok(PushAction::Start {
                page_size: 512,
                bytes: begin(9, 4)
            })
        );
        assert_eq!(
            p.frame(Frame::Binary(&[0x51])),
            Ok(PushAction::Control(ClientControl::Config))
        );
        assert_eq!(p.frame(Frame::Binary(&page(4))), Ok(PushAction::Forward));
        assert!(p.frame(Frame::Binary(&msg)).is_err());
    }

    #[test]
    fn push_limits() {
        let refusal = |frames: &[Vec<u8>]| {
            let mut p = PushFrames::new(small());
            for f in frames {
                if let Err(e) = p.frame(Frame::Binary(f)) {
                    return e.0;
                }
            }
            String::new()
        };
        assert!(refusal(&[begin(16, 17)]).contains("at most 1.0 MiB"));
        let mut endless = vec![begin(9, 2)];
        endless.extend((0..3).map(|_| page(1)));
        assert!(refusal(&endless).contains("more pages"));
        let begins: Vec<_> = (0..5).map(|_| begin(9, 2)).collect();
        assert!(refusal(&begins).contains("ORIGIN_BEGIN"));
        assert!(refusal(&[begin(9, 2), vec![0x45, 0, 0, 0, 3]]).contains("ORIGIN_TXN"));
        assert!(
            refusal(&[begin(9, 2), vec![0x45, 0, 0, 0, 2, 0x45, 0, 0, 0, 2]]).contains("twice")
        );
        let controls: Vec<_> = (0..17).map(|_| vec![0x51]).collect();
        assert!(refusal(&controls).contains("control frames"));
        let mut msgs = vec![begin(9, 2)];
        let mut text = vec![0x46, 0, 0, 0xff, 0];
        text.extend([b'x'; 0xff00]);
        msgs.extend((0..20).map(|_| text.clone()));
        assert!(refusal(&msgs).contains("besides page contents"));
        assert!(refusal(&[vec![0x42]]).contains("must start with ORIGIN_BEGIN"));
        let mut long_msg = vec![0x46, 0, 0, 8, 0];
        long_msg.extend([b'x'; 2048]);
        assert!(refusal(&[long_msg]).contains("no ORIGIN_BEGIN"));
    }

    #[test]
    fn missing_pages() {
        let pushed = |pages: &[u32], final_count: u32| {
            let mut p = PushFrames::new(small());
            let mut s = begin(9, 2000);
            for &n in pages {
                s.extend(page(n));
            }
            s.push(0x45);
            s.extend(final_count.to_be_bytes());
            s.push(0x42);
            p.frame(Frame::Binary(&s)).unwrap();
            p
        };
        assert_eq!(pushed(&[3, 4, 5], 5).missing_page(2, 512), None);
        assert_eq!(pushed(&[3, 5], 5).missing_page(2, 512), Some(4));
        assert_eq!(pushed(&[3, 4], 6).missing_page(2, 512), Some(5));
        assert_eq!(pushed(&[], 2).missing_page(2, 512), None);
        assert_eq!(pushed(&[1, 2], 1000).missing_page(0, 512), Some(3));
        // The lock-byte page (at 1 GiB) is never sent: not a gap.
        let lock = (1u32 << 30) / 65536 + 1;
        let mut p = PushFrames::new(StreamLimits {
            max_db_bytes: 1 << 40,
            max_prefix: 1024,
        });
        let mut s = begin(16, lock + 1);
        for n in [lock - 1, lock + 1] {
            s.push(0x44);
            s.extend(n.to_be_bytes());
            s.extend(vec![0u8; 65536]);
        }
        s.push(0x45);
        s.extend((lock + 1).to_be_bytes());
        s.push(0x42);
        p.frame(Frame::Binary(&s)).unwrap();
        assert_eq!(p.missing_page(lock - 2, 65536), None);
    }

    #[test]
    fn pull_frames() {
        let mut p = PullFrames::new(small(), 4, 4096);
        assert_eq!(
            p.frame(Frame::Binary(&[0x53])),
            Ok(PullAction::Control(ClientControl::KeyRequest))
        );
        assert_eq!(p.frame(Frame::Binary(&[0x65])), Ok(PullAction::Forward));
        assert!(p.frame(Frame::Text("x")).is_err());
        let mut p = PullFrames::new(small(), 4, 4096);
        assert!(
            p.frame(Frame::Binary(
                &ClientControl::CommitMessage("x".into()).encode()
            ))
            .is_err()
        );
        let mut p = PullFrames::new(small(), 4, 4096);
        let hashes = [0x64u8; 21].repeat(10_000);
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = p.frame(Frame::Binary(&hashes)) {
                err = Some(e);
                break;
            }
        }
        assert!(err.unwrap().0.contains("sent more than"));
    }

    #[test]
    fn config_after_a_first_frame_that_ends_mid_message() {
        // An existing client's first frame is one pipe read: here it ends
        // inside a REPLICA_HASH; CONFIG and KEYREQUEST follow at once.
        let mut p = PullFrames::new(small(), 4, 4096);
        let mut first = vec![0x61, 2];
        first.extend_from_slice(&[0x64; 10]);
        assert_eq!(p.frame(Frame::Binary(&first)), Ok(PullAction::Forward));
        assert_eq!(
            p.frame(Frame::Binary(&[0x51])),
            Ok(PullAction::Control(ClientControl::Config))
        );
        assert_eq!(
            p.frame(Frame::Binary(&[0x53])),
            Ok(PullAction::Control(ClientControl::KeyRequest))
        );
        assert_eq!(p.frame(Frame::Binary(&[0x64; 11])), Ok(PullAction::Forward));
        // The same on a push, before ORIGIN_BEGIN is even whole.
        let mut f = PushFrames::new(small());
        assert_eq!(f.frame(Frame::Binary(&[0x41, 2])), Ok(PushAction::Buffered));
        assert_eq!(
            f.frame(Frame::Binary(&[0x51])),
            Ok(PushAction::Control(ClientControl::Config))
        );
        let rest = [9, 0, 0, 0, 4];
        assert!(matches!(
            f.frame(Frame::Binary(&rest)),
            Ok(PushAction::Start { page_size: 512, .. })
        ));
    }
}
