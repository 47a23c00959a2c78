//! Every bound the wire puts on what a peer may send, in one place.
//!
//! A peer controls lengths, counts and sizes on the wire; each is bounded
//! here so that the parser ([`super::stream`]), the control frames
//! ([`super::control`]), the texts ([`super::texts`]) and the server's
//! session state machines (`server::frames`) refuse the same things.

use std::time::Duration;

/// Longest ORIGIN/REPLICA _MSG or _ERROR text accepted. sqlite3_rsync's own
/// messages are one line; anything near this bound is hostile.
pub const MAX_TEXT_LEN: u32 = 64 * 1024;

/// Most ORIGIN/REPLICA _MSG and _ERROR messages in one stream. sqlite3_rsync
/// sends a handful; an endless flood of them is hostile (each one is kept
/// for the report and printed by the helper).
pub const MAX_TEXT_MESSAGES: u32 = 1024;

/// Most ORIGIN_BEGIN messages in one stream: the first, plus one per
/// protocol renegotiation (REPLICA_BEGIN), which happens at most once or
/// twice. Each makes the replica side re-attach and hash its database.
pub const MAX_BEGINS: u32 = 4;

/// Smallest and largest SQLite page sizes, as powers of two.
pub const MIN_PAGE_SIZE_LOG2: u8 = 9;
pub const MAX_PAGE_SIZE_LOG2: u8 = 16;

/// Longest commit message, in bytes.
pub const MAX_COMMIT_MESSAGE: usize = 4096;

/// Longest `replicaID` or `committedVersionID` a client accepts.
pub const MAX_CONFIG_ID_LEN: usize = 256;
/// Longest `replicaPath` a client accepts.
pub const MAX_CONFIG_PATH_LEN: usize = 1024;

/// Longest server text (one `MESSAGE=`, an `ABORT=` reason) shown or kept
/// as it came: a note for a person is a line or two, and a longer one is
/// cut and marked (see `texts::shown_text`), so a server cannot make one
/// line of our output, or one entry of `--json`, megabytes long.
pub const MAX_SHOWN_TEXT: usize = 4096;

/// Most `MESSAGE=` texts of one sync shown and kept for `--json`; the rest
/// are counted ("N more messages not shown", `messagesNotShown`).
pub const MAX_SHOWN_MESSAGES: usize = 64;

/// Most bytes of `MESSAGE=` text (as shown) kept for one sync, whatever
/// their number: what a flood of messages can cost in memory and output.
pub const MAX_SHOWN_MESSAGE_BYTES: usize = 64 * 1024;

/// Most bytes of text frames (CONFIG, MESSAGE, ABORT and unknown kinds) a
/// server may send in one sync; past it the sync fails as a protocol
/// error. A real server sends a few KiB (a CONFIG or two, a note); text
/// frames are not the stream, and 16 MiB is four of the largest frames we
/// take ([`super::framing::CLIENT_MAX_FRAME`]), so a server that floods
/// us with text is stopped within a few frames, not after 200 of them.
pub const MAX_SERVER_TEXT_BYTES: u64 = 16 << 20;

/// Default `--max-db-size`: 64 GiB.
pub const DEFAULT_MAX_DB_BYTES: u64 = 64 << 30;

/// Control frames one session may send. A client sends CONFIG and
/// KEYREQUEST once and COMMITMESSAGE at most once; each is answered, so an
/// unbounded number would be an amplifier.
pub const MAX_CONTROL_FRAMES: u32 = 16;

/// Stream bytes that are not page contents (message headers, ORIGIN_DETAIL
/// and ORIGIN_READY rounds, texts, control frames; on a pull, every byte):
/// this many, plus [`OVERHEAD_PER_PAGE`] per page. sqlite3_rsync needs
/// about 30 bytes a page in its worst case (a hash per page, a detail
/// request per range, five bytes of header per page sent).
pub const OVERHEAD_BASE: u64 = 1 << 20;
/// See [`OVERHEAD_BASE`].
pub const OVERHEAD_PER_PAGE: u64 = 64;

/// How often a side that has nothing to send sends a websocket Ping: a
/// quarter of its idle timeout (so a peer with the same timeout never takes
/// our silence, e.g. a long hash or commit, for a dead connection), between
/// 0.1 s and 5 s (a few bytes every 5 s is nothing, and it keeps a peer's
/// idle timeout as short as 10 s safe). Both our client and our server do
/// this.
pub fn keepalive_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
