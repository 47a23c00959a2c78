//! The wire: the sqlite3_rsync byte stream and sqlrsync's own frames.
//!
//! [`StreamParser`] reads one direction of the sqlite3_rsync stream (as
//! written by tool/sqlite3_rsync.c; see shared/PROTOCOL.md section 1) in
//! chunks of any size. It finds message boundaries, which is what lets a
//! receiver tell sqlrsync control frames apart from stream data, counts pages
//! for progress, and learns which pages a sync changed and the final size,
//! without touching a database. It never trusts a length it was sent: text
//! lengths and page sizes are bounded, and page numbers are checked against
//! the announced page count.
//!
//! The rest of the module holds the control frames (CONFIG, KEYREQUEST,
//! COMMITMESSAGE, NEWREPLICAVERSION), the server's text frames, the version
//! references of `name@7` / `@latest-2`, the subscribe messages and the HTTP
//! header names, so that the client and the server share one definition.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Longest ORIGIN/REPLICA _MSG or _ERROR text accepted. sqlite3_rsync's own
/// messages are one line; anything near this bound is hostile.
pub const MAX_TEXT_LEN: u32 = 64 * 1024;

/// Most ORIGIN/REPLICA _MSG and _ERROR messages in one stream. sqlite3_rsync
/// sends a handful; an endless flood of them is hostile (each one is kept
/// for the report and printed by the helper).
pub const MAX_TEXT_MESSAGES: u32 = 1024;

/// Most ORIGIN_BEGIN messages in one stream: one, plus one per protocol
/// renegotiation (REPLICA_BEGIN).
pub const MAX_BEGINS: u32 = 8;

/// Smallest and largest SQLite page sizes, as powers of two.
pub const MIN_PAGE_SIZE_LOG2: u8 = 9;
pub const MAX_PAGE_SIZE_LOG2: u8 = 16;

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
            ORIGIN_BEGIN if self.direction == Direction::FromOrigin => {
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
                Message::OriginBegin {
                    protocol: m[1],
                    page_size,
                    page_count,
                }
            }
            ORIGIN_END if self.direction == Direction::FromOrigin => {
                self.ended = true;
                Message::OriginEnd
            }
            ORIGIN_ERROR if self.direction == Direction::FromOrigin => {
                Message::OriginError(&m[5..])
            }
            ORIGIN_PAGE if self.direction == Direction::FromOrigin => {
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
                Message::OriginPage {
                    pgno,
                    data: &m[5..],
                }
            }
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
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// What one sync did, learned from the ORIGIN's stream alone: enough for the
/// server to record a version and for the client to report progress.
#[derive(Debug, Default, Clone)]
pub struct OriginSummary {
    pub protocol: u8,
    pub page_size: u32,
    /// Pages in ORIGIN when the sync started (ORIGIN_BEGIN).
    pub page_count: u32,
    /// Pages sent, in the order sent.
    pub pages_sent: u64,
    /// Final page count from ORIGIN_TXN, once the origin committed.
    pub txn_page_count: Option<u32>,
    /// Errors the origin reported (ORIGIN_ERROR).
    pub errors: Vec<String>,
    /// Informational messages (ORIGIN_MSG).
    pub messages: Vec<String>,
    /// ORIGIN_END seen.
    pub ended: bool,
}

impl OriginSummary {
    /// Folds one message from the origin into the summary.
    pub fn observe(&mut self, msg: &Message<'_>) {
        match *msg {
            Message::OriginBegin {
                protocol,
                page_size,
                page_count,
            } => {
                self.protocol = protocol;
                self.page_size = page_size;
                self.page_count = page_count;
            }
            Message::OriginPage { .. } => self.pages_sent += 1,
            Message::OriginTxn { page_count } => self.txn_page_count = Some(page_count),
            Message::OriginError(t) => self.errors.push(String::from_utf8_lossy(t).into_owned()),
            Message::OriginMsg(t) => self.messages.push(String::from_utf8_lossy(t).into_owned()),
            Message::OriginEnd => self.ended = true,
            _ => {}
        }
    }

    /// True when the origin sent a complete, error-free sync.
    pub fn complete(&self) -> bool {
        self.ended && self.errors.is_empty() && self.txn_page_count.is_some()
    }
}

/// What the REPLICA side said: its errors decide whether a sync succeeded,
/// because the helper's `--replica` form always exits 0.
#[derive(Debug, Default, Clone)]
pub struct ReplicaSummary {
    pub errors: Vec<String>,
    pub messages: Vec<String>,
    pub hashes_sent: u64,
    pub ended: bool,
}

impl ReplicaSummary {
    pub fn observe(&mut self, msg: &Message<'_>) {
        match *msg {
            Message::ReplicaError(t) => self.errors.push(String::from_utf8_lossy(t).into_owned()),
            Message::ReplicaMsg(t) => self.messages.push(String::from_utf8_lossy(t).into_owned()),
            Message::ReplicaHash(_) => self.hashes_sent += 1,
            Message::ReplicaEnd => self.ended = true,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// sqlrsync control frames (PROTOCOL.md section 3).

/// Client asks for the CONFIG text frame.
pub const CTRL_CONFIG: u8 = 0x51;
/// Server tells a puller a newer version exists.
pub const CTRL_NEWREPLICAVERSION: u8 = 0x52;
/// Client asks for keys for this replica.
pub const CTRL_KEYREQUEST: u8 = 0x53;
/// Client sends the commit message of a push.
pub const CTRL_COMMITMESSAGE: u8 = 0x54;
/// Longest commit message, in bytes.
pub const MAX_COMMIT_MESSAGE: usize = 4096;

/// How often a side that has nothing to send sends a websocket Ping: a
/// quarter of its idle timeout (so a peer with the same timeout never takes
/// our silence, e.g. a long hash or commit, for a dead connection), between
/// 0.1 s and 5 s (a few bytes every 5 s is nothing, and it keeps a peer's
/// idle timeout as short as 10 s safe). Both our client and our server do
/// this.
pub fn keepalive_interval(idle: std::time::Duration) -> std::time::Duration {
    (idle / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    )
}

/// True for a first byte that only sqlrsync control frames use.
pub fn is_control_byte(b: u8) -> bool {
    (CTRL_CONFIG..=CTRL_COMMITMESSAGE).contains(&b)
}

/// A control frame sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientControl {
    Config,
    KeyRequest,
    CommitMessage(String),
}

/// Why a control frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control frame 0x{0:02x} is not one a client may send")]
    NotClientFrame(u8),
    #[error("control frame 0x{0:02x} has the wrong length")]
    BadLength(u8),
    #[error("commit message is longer than {MAX_COMMIT_MESSAGE} bytes")]
    CommitMessageTooLong,
    #[error("commit message is not UTF-8")]
    CommitMessageNotUtf8,
}

impl ClientControl {
    /// Parses a whole binary frame whose first byte passed [`is_control_byte`].
    pub fn parse(frame: &[u8]) -> Result<ClientControl, ControlError> {
        match frame {
            [CTRL_CONFIG] => Ok(ClientControl::Config),
            [CTRL_KEYREQUEST] => Ok(ClientControl::KeyRequest),
            [CTRL_COMMITMESSAGE, hi, lo, rest @ ..] => {
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                if len > MAX_COMMIT_MESSAGE {
                    return Err(ControlError::CommitMessageTooLong);
                }
                if rest.len() != len {
                    return Err(ControlError::BadLength(CTRL_COMMITMESSAGE));
                }
                String::from_utf8(rest.to_vec())
                    .map(ClientControl::CommitMessage)
                    .map_err(|_| ControlError::CommitMessageNotUtf8)
            }
            [b @ (CTRL_CONFIG | CTRL_KEYREQUEST | CTRL_COMMITMESSAGE), ..] => {
                Err(ControlError::BadLength(*b))
            }
            [b, ..] => Err(ControlError::NotClientFrame(*b)),
            [] => Err(ControlError::BadLength(0)),
        }
    }

    /// The frame's bytes. Commit messages longer than the limit are cut at a
    /// character boundary; callers validate first to tell the user.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientControl::Config => vec![CTRL_CONFIG],
            ClientControl::KeyRequest => vec![CTRL_KEYREQUEST],
            ClientControl::CommitMessage(m) => {
                let mut end = m.len().min(MAX_COMMIT_MESSAGE);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                let mut f = Vec::with_capacity(3 + end);
                f.push(CTRL_COMMITMESSAGE);
                f.extend_from_slice(&(end as u16).to_be_bytes());
                f.extend_from_slice(&m.as_bytes()[..end]);
                f
            }
        }
    }
}

/// The JSON of the server's `CONFIG=` text frame. Every field is optional;
/// unknown fields from other servers are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    #[serde(rename = "replicaID", default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_path: Option<String>,
    #[serde(
        rename = "committedVersionID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub committed_version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pull_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_push_key: Option<String>,
    /// Hex SHA-256 of the version's database bytes (our server only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_hash: Option<String>,
    /// Hex XXH3-128 of the same (our server only, for versions committed
    /// since it keeps one): the cheaper check of a pull, see
    /// [`VersionHasher`].
    #[serde(
        rename = "versionXxh3",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub version_xxh3: Option<String>,
}

/// Longest `replicaID` or `committedVersionID` a client accepts.
pub const MAX_CONFIG_ID_LEN: usize = 256;
/// Longest `replicaPath` a client accepts.
pub const MAX_CONFIG_PATH_LEN: usize = 1024;

impl ServerConfig {
    /// Checks what a client will store or act on: ids and the path are of
    /// sane length without control characters (they go into files and
    /// headers), a path is relative, keys look like keys, and a versionHash
    /// is 64 hex digits. `Err` names the first bad field, for one line.
    pub fn check(&self) -> Result<(), String> {
        let printable = |v: &str| !v.chars().any(char::is_control);
        let field = |name: &str, v: &Option<String>, max: usize| -> Result<(), String> {
            match v {
                Some(v) if v.len() > max => Err(format!("{name} is {} bytes long", v.len())),
                Some(v) if !printable(v) => Err(format!("{name} holds control characters")),
                _ => Ok(()),
            }
        };
        field("replicaID", &self.replica_id, MAX_CONFIG_ID_LEN)?;
        field(
            "committedVersionID",
            &self.committed_version_id,
            MAX_CONFIG_ID_LEN,
        )?;
        field("replicaPath", &self.replica_path, MAX_CONFIG_PATH_LEN)?;
        if let Some(p) = &self.replica_path
            && (p.starts_with('/') || p.starts_with('.'))
        {
            return Err(format!("replicaPath {p:?} is not a replica path"));
        }
        for (name, k) in [
            ("newPullKey", &self.new_pull_key),
            ("newPushKey", &self.new_push_key),
        ] {
            if let Some(k) = k
                && !is_key_shaped(k)
            {
                return Err(format!("{name} is not a key"));
            }
        }
        if let Some(h) = &self.version_hash
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("versionHash is not a SHA-256 in hex".into());
        }
        if let Some(h) = &self.version_xxh3
            && (h.len() != 32 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("versionXxh3 is not an XXH3-128 in hex".into());
        }
        Ok(())
    }
}

/// A text frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerText {
    Config(ServerConfig),
    Message(String),
    Abort(String),
}

impl ServerText {
    /// Parses `CONFIG={json}`, `MESSAGE=text` or `ABORT=reason`.
    pub fn parse(text: &str) -> Result<ServerText, String> {
        if let Some(json) = text.strip_prefix("CONFIG=") {
            serde_json::from_str(json)
                .map(ServerText::Config)
                .map_err(|e| {
                    format!("the server sent a bad CONFIG (not the JSON object expected): {e}")
                })
        } else if let Some(m) = text.strip_prefix("MESSAGE=") {
            Ok(ServerText::Message(m.to_string()))
        } else if let Some(m) = text.strip_prefix("ABORT=") {
            Ok(ServerText::Abort(m.to_string()))
        } else {
            let head: String = text.chars().take(40).collect();
            Err(format!("server sent an unknown text frame: {head:?}"))
        }
    }

    pub fn encode(&self) -> String {
        match self {
            ServerText::Config(c) => format!(
                "CONFIG={}",
                serde_json::to_string(c).expect("config serialises")
            ),
            ServerText::Message(m) => format!("MESSAGE={m}"),
            ServerText::Abort(m) => format!("ABORT={m}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Version hashes: what a pulling client checks its copy against.

/// Bytes of page 1 hashed as zeros by [`VersionHasher`]: journal mode
/// (18-19), file change counter (24-27), version-valid-for (92-95) and the
/// last writer's SQLite version (96-99).
pub const VERSION_HASH_MASKED_HEADER_BYTES: [usize; 14] =
    [18, 19, 24, 25, 26, 27, 92, 93, 94, 95, 96, 97, 98, 99];

/// Hashes a database version page by page. The `versionHash` is
/// SHA-256 over the concatenated SHA-256 digests of pages 1..N in order
/// ([`page_digest`]), with the header bytes of
/// [`VERSION_HASH_MASKED_HEADER_BYTES`] hashed as zeros: bytes 18 and 19
/// (WAL or rollback mode), because sqlite3_rsync itself keeps a WAL replica
/// in WAL mode whatever the origin is, and the change counters and writer
/// version, because every commit of a replica rewrites them. The server
/// sends the result in CONFIG as `versionHash`.
///
/// Why two levels rather than one SHA-256 over the whole file: the server
/// already keeps every page's SHA-256 (its dedup key), so it can hash a new
/// version by hashing only the pages that changed; and a client can hash
/// the pages of a 100 MB replica on several cores at once, which is what
/// makes verifying a pull cheap next to the pull itself.
///
/// Our server also sends `versionXxh3`: the same construction with XXH3-128
/// in place of SHA-256 ([`HashKind::Xxh3`]). It verifies the same thing (the
/// copy equals the version the server committed; the server that sends the
/// hash is trusted for the pages anyway), for about a tenth of the CPU time:
/// SHA-256 over every received page was a sixth of a 100 MB pull's CPU.
#[derive(Debug, Clone)]
pub struct VersionHasher {
    /// Running digest over the page digests.
    hasher: RunningHash,
    /// Next page number expected; pages must come in order.
    next_pgno: u32,
}

impl Default for VersionHasher {
    fn default() -> Self {
        VersionHasher::new()
    }
}

/// Which hash a [`VersionHasher`] and its page digests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashKind {
    /// `versionHash`: SHA-256 (the server's page index keys).
    #[default]
    Sha256,
    /// `versionXxh3`: XXH3-128.
    Xxh3,
}

#[derive(Clone)]
enum RunningHash {
    Sha256(sha2::Sha256),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl std::fmt::Debug for RunningHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunningHash::Sha256(_) => "Sha256",
            RunningHash::Xxh3(_) => "Xxh3",
        })
    }
}

/// Page 1's first 100 bytes with the bytes of
/// [`VERSION_HASH_MASKED_HEADER_BYTES`] zeroed, and how many of them there
/// are (a page shorter than 100 bytes only in tests).
fn masked_header(data: &[u8]) -> ([u8; 100], usize) {
    let head = data.len().min(100);
    let mut header = [0u8; 100];
    header[..head].copy_from_slice(&data[..head]);
    for i in VERSION_HASH_MASKED_HEADER_BYTES {
        header[i] = 0;
    }
    (header, head)
}

/// The digest of one page as a [`VersionHasher`] of `kind` counts it
/// (XXH3-128 digests fill the first 16 bytes).
pub fn page_digest_with(kind: HashKind, pgno: u32, data: &[u8]) -> [u8; 32] {
    match kind {
        HashKind::Sha256 => page_digest(pgno, data),
        HashKind::Xxh3 => {
            let d = if pgno != 1 {
                xxhash_rust::xxh3::xxh3_128(data)
            } else {
                let (header, head) = masked_header(data);
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&header[..head]);
                h.update(&data[head..]);
                h.digest128()
            };
            let mut out = [0u8; 32];
            out[..16].copy_from_slice(&d.to_be_bytes());
            out
        }
    }
}

/// SHA-256 digest of one page as [`VersionHasher`] counts it: the page's
/// bytes, except that page 1's masked header bytes count as zeros. For
/// every other page it is the plain SHA-256 of the page.
pub fn page_digest(pgno: u32, data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    if pgno != 1 {
        return sha2::Sha256::digest(data).into();
    }
    let mut h = sha2::Sha256::new();
    // Header fields that record who wrote last rather than what the
    // database holds: bytes 18-19 (journal mode), 24-27 (file change
    // counter), 92-95 (version-valid-for) and 96-99 (SQLite version of the
    // last writer). sqlite3_rsync's replica commits with its own SQLite,
    // which bumps these on every copy, so an exact copy never has them
    // equal to its origin.
    let (header, head) = masked_header(data);
    h.update(&header[..head]);
    h.update(&data[head..]);
    h.finalize().into()
}

impl VersionHasher {
    /// A `versionHash` (SHA-256) hasher.
    pub fn new() -> Self {
        VersionHasher::with_kind(HashKind::Sha256)
    }

    /// A hasher of `kind`.
    pub fn with_kind(kind: HashKind) -> Self {
        VersionHasher {
            hasher: match kind {
                HashKind::Sha256 => RunningHash::Sha256(Default::default()),
                HashKind::Xxh3 => RunningHash::Xxh3(Box::default()),
            },
            next_pgno: 1,
        }
    }

    /// The hash this hasher computes.
    pub fn kind(&self) -> HashKind {
        match self.hasher {
            RunningHash::Sha256(_) => HashKind::Sha256,
            RunningHash::Xxh3(_) => HashKind::Xxh3,
        }
    }

    /// Adds page `pgno`; panics on out-of-order use (a programming error).
    pub fn page(&mut self, pgno: u32, data: &[u8]) {
        self.digest(pgno, &page_digest_with(self.kind(), pgno, data));
    }

    /// Adds the [`page_digest_with`] of page `pgno` (same kind), computed
    /// elsewhere (another thread, or the server's page index); panics on
    /// out-of-order use.
    pub fn digest(&mut self, pgno: u32, digest: &[u8; 32]) {
        assert_eq!(
            pgno, self.next_pgno,
            "version hash pages must come in order"
        );
        self.next_pgno += 1;
        match &mut self.hasher {
            RunningHash::Sha256(h) => sha2::Digest::update(h, digest),
            RunningHash::Xxh3(h) => h.update(&digest[..16]),
        }
    }

    /// Lowercase hex digest.
    pub fn finish(self) -> String {
        match self.hasher {
            RunningHash::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            RunningHash::Xxh3(h) => hex::encode(h.digest128().to_be_bytes()),
        }
    }
}

// ---------------------------------------------------------------------------
// Version references: `name@7`, `@v7`, `@latest`, `@latest-2`.

/// Which version of a replica a pull asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionRef {
    #[default]
    Latest,
    /// `latest-N`: N versions before the latest (N > 0).
    BeforeLatest(u64),
    /// Version number N (N > 0).
    Exact(u64),
}

impl VersionRef {
    /// Parses the user's form after `@`: `latest`, `latest-N`, `N`, `vN`.
    pub fn parse_user(s: &str) -> Result<VersionRef, String> {
        let bad = || {
            format!(
                "invalid version @{s}: use @latest, @latest-N, @N or @vN with N a whole number above 0"
            )
        };
        if s == "latest" {
            return Ok(VersionRef::Latest);
        }
        if let Some(n) = s.strip_prefix("latest-") {
            return positive(n).map(VersionRef::BeforeLatest).ok_or_else(bad);
        }
        let n = s.strip_prefix('v').unwrap_or(s);
        positive(n).map(VersionRef::Exact).ok_or_else(bad)
    }

    /// Parses the `X-ReplicaVersion` header form: `""`, `-N`, `N`; the word
    /// `latest` is tolerated for clients that leave it in.
    pub fn parse_header(s: &str) -> Result<VersionRef, String> {
        let s = s.trim();
        let s = s.strip_prefix("latest").unwrap_or(s);
        if s.is_empty() {
            return Ok(VersionRef::Latest);
        }
        let bad = || format!("invalid X-ReplicaVersion {s:?}");
        if let Some(n) = s.strip_prefix('-') {
            return positive(n).map(VersionRef::BeforeLatest).ok_or_else(bad);
        }
        positive(s.strip_prefix('v').unwrap_or(s))
            .map(VersionRef::Exact)
            .ok_or_else(bad)
    }

    /// The `X-ReplicaVersion` header value.
    pub fn header_value(&self) -> String {
        match self {
            VersionRef::Latest => String::new(),
            VersionRef::BeforeLatest(n) => format!("-{n}"),
            VersionRef::Exact(n) => n.to_string(),
        }
    }

    /// Resolves against the newest version number; None when out of range.
    pub fn resolve(&self, latest: u64) -> Option<u64> {
        match *self {
            VersionRef::Latest => (latest > 0).then_some(latest),
            VersionRef::BeforeLatest(n) => latest.checked_sub(n).filter(|v| *v > 0),
            VersionRef::Exact(n) => (n <= latest).then_some(n),
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Latest => write!(f, "latest"),
            VersionRef::BeforeLatest(n) => write!(f, "latest-{n}"),
            VersionRef::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// A whole number above zero, digits only (no sign, no spaces).
fn positive(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n > 0)
}

// ---------------------------------------------------------------------------
// Subscribe messages (PROTOCOL.md section 5).

/// One text frame on `/sapi/subscribe/...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub timestamp: String,
}

impl SubscribeMessage {
    pub fn new(kind: &str, data: serde_json::Value) -> Self {
        SubscribeMessage {
            kind: kind.to_string(),
            data,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("subscribe message serialises")
    }
}

// ---------------------------------------------------------------------------
// HTTP upgrade headers (PROTOCOL.md section 2).

pub mod headers {
    pub const AUTHORIZATION: &str = "authorization";
    pub const CLIENT_VERSION: &str = "x-clientversion";
    pub const CLIENT_ID: &str = "x-clientid";
    pub const LOCAL_HOSTNAME: &str = "x-localhostname";
    pub const LOCAL_ABSOLUTE_PATH: &str = "x-localabsolutepath";
    pub const REPLICA_VERSION: &str = "x-replicaversion";
    pub const REPLICA_ID: &str = "x-replicaid";
    pub const VISIBILITY: &str = "x-visibility";
}

/// Who may read a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Private,
    Unlisted,
    Public,
}

impl Visibility {
    /// `X-Visibility` value: absent private, `1` unlisted, `2` public.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Visibility::Private => None,
            Visibility::Unlisted => Some("1"),
            Visibility::Public => Some("2"),
        }
    }

    pub fn from_header(v: Option<&str>) -> Result<Visibility, String> {
        match v.map(str::trim) {
            None | Some("") | Some("0") => Ok(Visibility::Private),
            Some("1") => Ok(Visibility::Unlisted),
            Some("2") => Ok(Visibility::Public),
            Some(other) => Err(format!("invalid X-Visibility {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Unlisted => "unlisted",
            Visibility::Public => "public",
        }
    }
}

// ---------------------------------------------------------------------------
// Keys (PROTOCOL.md section 4).

/// Length of the keys we issue (the protocol allows 20-25).
pub const KEY_LEN: usize = 24;

/// A new random key of `[A-Za-z0-9]`, from the OS's CSPRNG.
pub fn new_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..KEY_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// True for a string of the key alphabet and length.
pub fn is_key_shaped(s: &str) -> bool {
    (20..=25).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A key shown to a person: first and last two characters only.
pub fn mask_key(key: &str) -> String {
    if key.len() <= 6 {
        return "*".repeat(key.len());
    }
    format!(
        "{}{}{}",
        &key[..2],
        "*".repeat(key.len() - 4),
        &key[key.len() - 2..]
    )
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
    fn server_config_checks() {
        let good = ServerConfig {
            replica_id: Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into()),
            replica_path: Some("ns/host/it's $(x).db".into()),
            committed_version_id: Some("7".into()),
            new_pull_key: Some(new_key()),
            new_push_key: None,
            version_hash: Some("ab".repeat(32)),
            version_xxh3: Some("cd".repeat(16)),
        };
        assert_eq!(good.check(), Ok(()));
        let bad = |f: fn(&mut ServerConfig)| {
            let mut c = good.clone();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(bad(|c| c.replica_id = Some("x".repeat(300))).contains("replicaID"));
        assert!(bad(|c| c.replica_path = Some("ns/a\nb.db".into())).contains("control"));
        assert!(bad(|c| c.replica_path = Some("/etc/passwd".into())).contains("replicaPath"));
        assert!(bad(|c| c.new_pull_key = Some("$(touch x)".into())).contains("newPullKey"));
        assert!(bad(|c| c.version_hash = Some("zz".into())).contains("versionHash"));
        assert!(bad(|c| c.version_xxh3 = Some("ab".repeat(32))).contains("versionXxh3"));
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

    #[test]
    fn control_frames_round_trip() {
        for c in [
            ClientControl::Config,
            ClientControl::KeyRequest,
            ClientControl::CommitMessage("héllo".into()),
        ] {
            assert_eq!(ClientControl::parse(&c.encode()).unwrap(), c);
        }
        assert!(ClientControl::parse(&[CTRL_CONFIG, 1]).is_err());
        assert!(ClientControl::parse(&[CTRL_COMMITMESSAGE, 0, 5, b'a']).is_err());
        assert!(ClientControl::parse(&[CTRL_NEWREPLICAVERSION]).is_err());
        assert!(
            (0x41..=0x48)
                .chain(0x61..=0x67)
                .all(|b| !is_control_byte(b))
        );
    }

    #[test]
    fn version_refs() {
        assert_eq!(VersionRef::parse_user("latest"), Ok(VersionRef::Latest));
        assert_eq!(
            VersionRef::parse_user("latest-2"),
            Ok(VersionRef::BeforeLatest(2))
        );
        assert_eq!(VersionRef::parse_user("7"), Ok(VersionRef::Exact(7)));
        assert_eq!(VersionRef::parse_user("v7"), Ok(VersionRef::Exact(7)));
        for bad in [
            "latest+1", "0", "-1", "x", "latest-0", "v", "", "latest-", " 1", "1.0",
        ] {
            assert!(VersionRef::parse_user(bad).is_err(), "{bad}");
        }
        for v in [
            VersionRef::Latest,
            VersionRef::BeforeLatest(3),
            VersionRef::Exact(9),
        ] {
            assert_eq!(VersionRef::parse_header(&v.header_value()), Ok(v));
        }
        assert_eq!(VersionRef::BeforeLatest(2).resolve(5), Some(3));
        assert_eq!(VersionRef::BeforeLatest(5).resolve(5), None);
        assert_eq!(VersionRef::Exact(6).resolve(5), None);
        assert_eq!(VersionRef::Latest.resolve(0), None);
    }

    #[test]
    fn keys() {
        let k = new_key();
        assert!(is_key_shaped(&k));
        assert_ne!(k, new_key());
        assert_eq!(mask_key("abcdefghijklmnopqrst"), "ab****************st");
    }

    #[test]
    fn xxh3_version_hash_masks_the_same_bytes_and_sees_the_rest() {
        let hash = |pages: &[Vec<u8>]| {
            let mut h = VersionHasher::with_kind(HashKind::Xxh3);
            for (i, p) in pages.iter().enumerate() {
                h.page(i as u32 + 1, p);
            }
            h.finish()
        };
        let pages = vec![vec![7u8; 4096], vec![9u8; 4096]];
        let base = hash(&pages);
        assert_eq!(base.len(), 32);
        assert_ne!(base, {
            let mut h = VersionHasher::new();
            h.page(1, &pages[0]);
            h.page(2, &pages[1]);
            h.finish()
        });
        let mut counters = pages.clone();
        for i in VERSION_HASH_MASKED_HEADER_BYTES {
            counters[0][i] ^= 0x5a;
        }
        assert_eq!(hash(&counters), base);
        for (pg, at) in [(0, 100), (0, 17), (1, 3000)] {
            let mut changed = pages.clone();
            changed[pg][at] ^= 1;
            assert_ne!(hash(&changed), base, "page {} byte {at}", pg + 1);
        }
        // Digests taken elsewhere give the same result.
        let mut h = VersionHasher::with_kind(HashKind::Xxh3);
        h.digest(1, &page_digest_with(HashKind::Xxh3, 1, &pages[0]));
        h.digest(2, &page_digest_with(HashKind::Xxh3, 2, &pages[1]));
        assert_eq!(h.finish(), base);
    }

    #[test]
    fn version_hash_ignores_the_change_counters() {
        // Every commit of a replica rewrites the change counter and the
        // writer's SQLite version; an exact copy must hash the same.
        let mut page1 = vec![7u8; 4096];
        let mut h = VersionHasher::new();
        h.page(1, &page1);
        for i in [24, 27, 92, 95, 96, 99] {
            page1[i] ^= 0x5a;
        }
        let mut h2 = VersionHasher::new();
        h2.page(1, &page1);
        let masked = h2.finish();
        assert_eq!(h.finish(), masked);
        page1[100] ^= 1;
        let mut h3 = VersionHasher::new();
        h3.page(1, &page1);
        assert_ne!(h3.finish(), masked);
    }
}
