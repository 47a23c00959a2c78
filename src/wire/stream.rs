//! The sqlite3_rsync byte stream: its message types and a parser.
//!
//! [`StreamParser`] reads one direction of the stream (as written by
//! tool/sqlite3_rsync.c; see shared/PROTOCOL.md section 1) in chunks of any
//! size. It finds message boundaries, which is what lets a receiver tell
//! sqlrsync control frames apart from stream data ([`super::control`]),
//! counts pages for progress, and learns which pages a sync changed and the
//! final size, without touching a database. It never trusts a length it was
//! sent: text lengths and page sizes are bounded ([`super::limits`]), and
//! page numbers are checked against the announced page count.

use super::limits::{
    MAX_BEGINS, MAX_PAGE_SIZE_LOG2, MAX_TEXT_LEN, MAX_TEXT_MESSAGES, MIN_PAGE_SIZE_LOG2,
};

// ---------------------------------------------------------------------------
// sqlite3_rsync message types (tool/sqlite3_rsync.c).

pub const ORIGIN_BEGIN: u8 = 0x41;
pub const ORIGIN_END: u8 = 0x42;
pub const ORIGIN_ERROR: u8 = 0x43;
pub const ORIGIN_PAGE: u8 = 0x44;
pub const ORIGIN_TXN: u8 = 0x45;
pub const ORIGIN_MSG: u8 = 0x46;
pub const ORIGIN_DETAIL: u8 = 0x47;
pub const ORIGIN_READY: u8 = 0x48;
pub const REPLICA_BEGIN: u8 = 0x61;
pub const REPLICA_ERROR: u8 = 0x62;
pub const REPLICA_END: u8 = 0x63;
pub const REPLICA_HASH: u8 = 0x64;
pub const REPLICA_READY: u8 = 0x65;
pub const REPLICA_MSG: u8 = 0x66;
pub const REPLICA_CONFIG: u8 = 0x67;

/// Length of a REPLICA_HASH digest.
pub const HASH_LEN: usize = 20;

/// Which program wrote the stream being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written by the ORIGIN side (pages flow this way).
    FromOrigin,
    /// Written by the REPLICA side (hashes flow this way).
    FromReplica,
}

/// One whole message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    OriginBegin {
        protocol: u8,
        page_size: u32,
        page_count: u32,
    },
    OriginEnd,
    OriginError(&'a [u8]),
    OriginPage {
        pgno: u32,
        data: &'a [u8],
    },
    OriginTxn {
        page_count: u32,
    },
    OriginMsg(&'a [u8]),
    OriginDetail {
        first: u32,
        count: u32,
    },
    OriginReady,
    ReplicaBegin {
        protocol: u8,
    },
    ReplicaError(&'a [u8]),
    ReplicaEnd,
    ReplicaHash(&'a [u8]),
    ReplicaReady,
    ReplicaMsg(&'a [u8]),
    ReplicaConfig {
        first: u32,
        count: u32,
    },
}

impl Message<'_> {
    /// Bytes this message takes in the stream, type byte included.
    pub fn wire_len(&self) -> usize {
        match self {
            Message::OriginBegin { .. } => 7,
            Message::OriginEnd
            | Message::OriginReady
            | Message::ReplicaEnd
            | Message::ReplicaReady => 1,
            Message::OriginError(t)
            | Message::OriginMsg(t)
            | Message::ReplicaError(t)
            | Message::ReplicaMsg(t) => 5 + t.len(),
            Message::OriginPage { data, .. } => 5 + data.len(),
            Message::OriginTxn { .. } => 5,
            Message::OriginDetail { .. } | Message::ReplicaConfig { .. } => 9,
            Message::ReplicaBegin { .. } => 2,
            Message::ReplicaHash(h) => 1 + h.len(),
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("byte 0x{byte:02x} at offset {offset} is not a sqlite3_rsync message type")]
    UnknownType { byte: u8, offset: u64 },
    #[error("page size 2^{0} is not a valid SQLite page size")]
    BadPageSize(u8),
    #[error("a page arrived before ORIGIN_BEGIN announced the page size")]
    PageBeforeBegin,
    #[error("page {pgno} is outside the announced {page_count} pages")]
    PageOutOfRange { pgno: u32, page_count: u32 },
    #[error("message text of {0} bytes exceeds the limit")]
    TextTooLong(u32),
    #[error("data after the end of the stream")]
    DataAfterEnd,
    #[error("more pages than the {page_count} announced by ORIGIN_BEGIN")]
    TooManyPages { page_count: u32 },
    #[error("more than {MAX_TEXT_MESSAGES} text messages")]
    TooManyMessages,
    #[error("more than {MAX_BEGINS} ORIGIN_BEGIN messages")]
    TooManyBegins,
}

/// Incremental parser for one direction of the sqlite3_rsync stream.
///
/// Feed it chunks as they arrive; it calls back with every whole message and
/// keeps a partial one (at most one page plus its header) until the rest
/// arrives.
#[derive(Debug)]
pub struct StreamParser {
    direction: Direction,
    /// Bytes of a message whose end has not arrived yet.
    pending: Vec<u8>,
    /// Page size from the last ORIGIN_BEGIN; pages cannot be sized before it.
    page_size: Option<u32>,
    /// Page count from the last ORIGIN_BEGIN, the bound for page numbers.
    page_count: u32,
    /// Bytes consumed so far, for error offsets and byte counts.
    offset: u64,
    /// Set by ORIGIN_END / REPLICA_END: nothing may follow.
    ended: bool,
    /// ORIGIN_PAGEs since the last ORIGIN_BEGIN. sqlite3_rsync sends each
    /// page at most once per sync, so more than the announced page count
    /// is an endless (hostile) stream; stopping it bounds what a peer can
    /// make the receiver write.
    pages_since_begin: u64,
    /// _MSG and _ERROR messages so far (bounded by [`MAX_TEXT_MESSAGES`]).
    text_messages: u32,
    /// ORIGIN_BEGIN messages so far (bounded by [`MAX_BEGINS`]).
    begins: u32,
}

impl StreamParser {
    pub fn new(direction: Direction) -> Self {
        StreamParser {
            direction,
            pending: Vec::new(),
            page_size: None,
            page_count: 0,
            offset: 0,
            ended: false,
            pages_since_begin: 0,
            text_messages: 0,
            begins: 0,
        }
    }

    /// True between messages: a whole frame starting here is a control frame
    /// if its first byte is one of sqlrsync's (0x51-0x54).
    pub fn at_boundary(&self) -> bool {
        self.pending.is_empty()
    }

    /// True once the END message of this direction was seen.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Page size announced by ORIGIN_BEGIN (origin direction only).
    pub fn page_size(&self) -> Option<u32> {
        self.page_size
    }

    /// Page count announced by ORIGIN_BEGIN (origin direction only).
    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.offset + self.pending.len() as u64
    }

    /// Bytes of the whole messages emitted so far: where the next message
    /// starts in the stream. With [`Message::wire_len`] a caller can tell
    /// where in its chunk each message lies.
    pub fn consumed(&self) -> u64 {
        self.offset
    }

    /// Parses `data`, calling `on_message` for every message completed by it.
    /// An error leaves the parser unusable: the stream is not sqlite3_rsync.
    pub fn feed<F>(&mut self, mut data: &[u8], mut on_message: F) -> Result<(), StreamError>
    where
        F: FnMut(Message<'_>),
    {
        while !data.is_empty() {
            if self.ended {
                return Err(StreamError::DataAfterEnd);
            }
            if self.pending.is_empty() {
                // Fast path: whole messages straight from the caller's buffer.
                let need = self.required_len(data)?;
                if data.len() >= need {
                    let (msg, rest) = data.split_at(need);
                    self.emit(msg, &mut on_message)?;
                    data = rest;
                    continue;
                }
                self.pending.extend_from_slice(data);
                return Ok(());
            }
            // Slow path: complete the pending message a header field at a time.
            let need = self.required_len(&self.pending)?;
            let take = (need - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == self.required_len(&self.pending)? {
                let msg = std::mem::take(&mut self.pending);
                self.emit(&msg, &mut on_message)?;
                // Keep the allocation for the next partial message.
                self.pending = msg;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Total length of the message starting at `buf[0]`, or, while its
    /// header is incomplete, the length of that header (more than `buf.len()`).
    fn required_len(&self, buf: &[u8]) -> Result<usize, StreamError> {
        let ty = buf[0];
        let text = |buf: &[u8]| -> Result<usize, StreamError> {
            if buf.len() < 5 {
                return Ok(5);
            }
            let n = be32(&buf[1..5]);
            if n > MAX_TEXT_LEN {
                return Err(StreamError::TextTooLong(n));
            }
            Ok(5 + n as usize)
        };
        let unknown = || StreamError::UnknownType {
            byte: ty,
            offset: self.offset,
        };
        Ok(match self.direction {
            Direction::FromOrigin => match ty {
                ORIGIN_BEGIN => 7,
                ORIGIN_END | ORIGIN_READY => 1,
                ORIGIN_ERROR | ORIGIN_MSG => text(buf)?,
                ORIGIN_PAGE => 5 + self.page_size.ok_or(StreamError::PageBeforeBegin)? as usize,
                ORIGIN_TXN => 5,
                ORIGIN_DETAIL => 9,
                _ => return Err(unknown()),
            },
            Direction::FromReplica => match ty {
                REPLICA_BEGIN => 2,
                REPLICA_END | REPLICA_READY => 1,
                REPLICA_ERROR | REPLICA_MSG => text(buf)?,
                REPLICA_HASH => 1 + HASH_LEN,
                REPLICA_CONFIG => 9,
                _ => return Err(unknown()),
            },
        })
    }

    fn emit<F>(&mut self, m: &[u8], on_message: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(Message<'_>),
    {
        if matches!(
            m[0],
            ORIGIN_MSG | ORIGIN_ERROR | REPLICA_MSG | REPLICA_ERROR
        ) {
            self.text_messages += 1;
            if self.text_messages > MAX_TEXT_MESSAGES {
                return Err(StreamError::TooManyMessages);
            }
        }
        let msg = match m[0] {
            ORIGIN_BEGIN if self.direction == Direction::FromOrigin => self.begin(m)?,
            ORIGIN_END if self.direction == Direction::FromOrigin => {
                self.ended = true;
                Message::OriginEnd
            }
            ORIGIN_ERROR if self.direction == Direction::FromOrigin => {
                Message::OriginError(&m[5..])
            }
            ORIGIN_PAGE if self.direction == Direction::FromOrigin => self.page(m)?,
            ORIGIN_TXN if self.direction == Direction::FromOrigin => Message::OriginTxn {
                page_count: be32(&m[1..5]),
            },
            ORIGIN_MSG if self.direction == Direction::FromOrigin => Message::OriginMsg(&m[5..]),
            ORIGIN_DETAIL if self.direction == Direction::FromOrigin => Message::OriginDetail {
                first: be32(&m[1..5]),
                count: be32(&m[5..9]),
            },
            ORIGIN_READY if self.direction == Direction::FromOrigin => Message::OriginReady,
            REPLICA_BEGIN => Message::ReplicaBegin { protocol: m[1] },
            REPLICA_ERROR => Message::ReplicaError(&m[5..]),
            REPLICA_END => {
                self.ended = true;
                Message::ReplicaEnd
            }
            REPLICA_HASH => Message::ReplicaHash(&m[1..]),
            REPLICA_READY => Message::ReplicaReady,
            REPLICA_MSG => Message::ReplicaMsg(&m[5..]),
            REPLICA_CONFIG => Message::ReplicaConfig {
                first: be32(&m[1..5]),
                count: be32(&m[5..9]),
            },
            byte => {
                return Err(StreamError::UnknownType {
                    byte,
                    offset: self.offset,
                });
            }
        };
        self.offset += m.len() as u64;
        on_message(msg);
        Ok(())
    }
    /// ORIGIN_BEGIN: a (re)start of the sync, bounded by [`MAX_BEGINS`].
    fn begin<'m>(&mut self, m: &'m [u8]) -> Result<Message<'m>, StreamError> {
        self.begins += 1;
        if self.begins > MAX_BEGINS {
            return Err(StreamError::TooManyBegins);
        }
        self.pages_since_begin = 0;
        let log2 = m[2];
        if !(MIN_PAGE_SIZE_LOG2..=MAX_PAGE_SIZE_LOG2).contains(&log2) {
            return Err(StreamError::BadPageSize(log2));
        }
        let page_size = 1u32 << log2;
        let page_count = be32(&m[3..7]);
        self.page_size = Some(page_size);
        self.page_count = page_count;
        Ok(Message::OriginBegin {
            protocol: m[1],
            page_size,
            page_count,
        })
    }

    /// ORIGIN_PAGE: a page within the announced count, and no more pages
    /// since the last ORIGIN_BEGIN than that count.
    fn page<'m>(&mut self, m: &'m [u8]) -> Result<Message<'m>, StreamError> {
        let pgno = be32(&m[1..5]);
        if pgno == 0 || pgno > self.page_count {
            return Err(StreamError::PageOutOfRange {
                pgno,
                page_count: self.page_count,
            });
        }
        self.pages_since_begin += 1;
        if self.pages_since_begin > self.page_count as u64 {
            return Err(StreamError::TooManyPages {
                page_count: self.page_count,
            });
        }
        Ok(Message::OriginPage {
            pgno,
            data: &m[5..],
        })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_stream(page_size_log2: u8, pages: &[(u32, u8)]) -> Vec<u8> {
        let p = 1usize << page_size_log2;
        let mut s = vec![ORIGIN_BEGIN, 2, page_size_log2, 0, 0, 0, 10];
        for &(pgno, fill) in pages {
            s.push(ORIGIN_PAGE);
            s.extend_from_slice(&pgno.to_be_bytes());
            s.extend(std::iter::repeat_n(fill, p));
        }
        s.push(ORIGIN_TXN);
        s.extend_from_slice(&10u32.to_be_bytes());
        s.push(ORIGIN_END);
        s
    }

    fn collect(parser: &mut StreamParser, chunks: &[&[u8]]) -> Result<Vec<String>, StreamError> {
        let mut out = Vec::new();
        for c in chunks {
            parser.feed(c, |m| out.push(format!("{m:?}")))?;
        }
        Ok(out)
    }

    #[test]
    fn same_messages_whatever_the_chunking() {
        let s = origin_stream(9, &[(1, 7), (3, 9)]);
        let whole = collect(&mut StreamParser::new(Direction::FromOrigin), &[&s]).unwrap();
        assert_eq!(whole.len(), 5);
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        let mut p = StreamParser::new(Direction::FromOrigin);
        assert_eq!(collect(&mut p, &bytes).unwrap(), whole);
        assert!(p.at_boundary() && p.ended());
        for split in [3, 6, 7, 100, 600] {
            let (a, b) = s.split_at(split);
            assert_eq!(
                collect(&mut StreamParser::new(Direction::FromOrigin), &[a, b]).unwrap(),
                whole
            );
        }
    }

    #[test]
    fn refuses_hostile_streams() {
        let mut p = StreamParser::new(Direction::FromOrigin);
        assert!(matches!(
            p.feed(&[0x00], |_| {}),
            Err(StreamError::UnknownType { .. })
        ));
        let mut p = StreamParser::new(Direction::FromOrigin);
        assert_eq!(
            p.feed(&[ORIGIN_BEGIN, 2, 17, 0, 0, 0, 1], |_| {}),
            Err(StreamError::BadPageSize(17))
        );
        let mut p = StreamParser::new(Direction::FromOrigin);
        assert_eq!(
            p.feed(&[ORIGIN_BEGIN, 2, 0, 0, 0, 0, 1], |_| {}),
            Err(StreamError::BadPageSize(0))
        );
        let mut p = StreamParser::new(Direction::FromOrigin);
        assert_eq!(
            p.feed(&[ORIGIN_PAGE, 0, 0, 0, 1], |_| {}),
            Err(StreamError::PageBeforeBegin)
        );
        let mut p = StreamParser::new(Direction::FromOrigin);
        let mut s = vec![ORIGIN_BEGIN, 2, 9, 0, 0, 0, 1, ORIGIN_PAGE, 0, 0, 0, 2];
        s.extend(std::iter::repeat_n(0, 512));
        assert_eq!(
            p.feed(&s, |_| {}),
            Err(StreamError::PageOutOfRange {
                pgno: 2,
                page_count: 1
            })
        );
        let mut p = StreamParser::new(Direction::FromReplica);
        assert_eq!(
            p.feed(&[REPLICA_MSG, 0xff, 0, 0, 0], |_| {}),
            Err(StreamError::TextTooLong(0xff000000))
        );
        let mut p = StreamParser::new(Direction::FromReplica);
        assert_eq!(
            p.feed(&[REPLICA_END, REPLICA_READY], |_| {}),
            Err(StreamError::DataAfterEnd)
        );
        let mut p = StreamParser::new(Direction::FromReplica);
        assert!(matches!(
            p.feed(&[ORIGIN_BEGIN], |_| {}),
            Err(StreamError::UnknownType { .. })
        ));
        // An endless stream of valid pages: stopped after the announced count.
        let mut p = StreamParser::new(Direction::FromOrigin);
        p.feed(&[ORIGIN_BEGIN, 2, 9, 0, 0, 0, 2], |_| {}).unwrap();
        let page = |n: u8| {
            let mut v = vec![ORIGIN_PAGE, 0, 0, 0, n];
            v.extend(std::iter::repeat_n(0, 512));
            v
        };
        p.feed(&page(1), |_| {}).unwrap();
        p.feed(&page(2), |_| {}).unwrap();
        assert_eq!(
            p.feed(&page(1), |_| {}),
            Err(StreamError::TooManyPages { page_count: 2 })
        );
        // A renegotiation starts the count again.
        let mut p = StreamParser::new(Direction::FromOrigin);
        let begin = [ORIGIN_BEGIN, 2, 9, 0, 0, 0, 1];
        p.feed(&begin, |_| {}).unwrap();
        p.feed(&page(1), |_| {}).unwrap();
        p.feed(&begin, |_| {}).unwrap();
        p.feed(&page(1), |_| {}).unwrap();
        for _ in 2..MAX_BEGINS {
            p.feed(&begin, |_| {}).unwrap();
        }
        assert_eq!(p.feed(&begin, |_| {}), Err(StreamError::TooManyBegins));
        // An endless stream of messages.
        let mut p = StreamParser::new(Direction::FromOrigin);
        let msg = [ORIGIN_MSG, 0, 0, 0, 1, b'x'];
        for _ in 0..MAX_TEXT_MESSAGES {
            p.feed(&msg, |_| {}).unwrap();
        }
        assert_eq!(p.feed(&msg, |_| {}), Err(StreamError::TooManyMessages));
    }

    #[test]
    fn wire_len_matches_the_stream() {
        let s = origin_stream(9, &[(1, 7), (2, 8)]);
        let mut p = StreamParser::new(Direction::FromOrigin);
        let mut total = 0;
        p.feed(&s, |m| total += m.wire_len()).unwrap();
        assert_eq!(total as u64, p.consumed());
        assert_eq!(p.consumed(), s.len() as u64);
    }
}
