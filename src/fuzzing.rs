//! Property checks shared by the fuzz targets (fuzz/) and the corpus replay
//! test (tests/it/fuzz_corpus.rs), so that CI re-runs every input the fuzzers
//! ever kept without needing a fuzzer.
#![doc(hidden)]

use crate::server::frames::{Frame, PullAction, PullFrames, PushAction, PushFrames, StreamLimits};
use crate::wire::{
    ClientControl, Direction, MAX_COMMIT_MESSAGE, OVERHEAD_BASE, ServerText, StreamParser,
    is_control_byte,
};

/// The first byte picks the direction and a chunk size; the rest is the
/// stream. Parsing it whole and parsing it in chunks must agree exactly.
pub fn check_stream(data: &[u8]) {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let direction = if head & 1 == 0 {
        Direction::FromOrigin
    } else {
        Direction::FromReplica
    };
    let chunk = 1 + (head >> 1) as usize;

    let mut whole = StreamParser::new(direction);
    let mut whole_msgs = Vec::new();
    let whole_result = whole.feed(stream, |m| whole_msgs.push(format!("{m:?}")));

    let mut split = StreamParser::new(direction);
    let mut split_msgs = Vec::new();
    let mut split_result = Ok(());
    for piece in stream.chunks(chunk) {
        split_result = split.feed(piece, |m| split_msgs.push(format!("{m:?}")));
        if split_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_msgs, split_msgs, "messages depend on chunking");
    assert_eq!(
        whole_result.is_ok(),
        split_result.is_ok(),
        "verdict depends on chunking"
    );
    if whole_result.is_ok() {
        assert_eq!(whole.bytes(), stream.len() as u64);
        assert_eq!(whole.at_boundary(), split.at_boundary());
    }
}

/// Client control frames and server text frames: parse, and whatever parses
/// must survive an encode/parse round trip.
pub fn check_frames(data: &[u8]) {
    if let Some(&first) = data.first()
        && is_control_byte(first)
        && let Ok(c) = ClientControl::parse(data)
    {
        assert_eq!(ClientControl::parse(&c.encode()), Ok(c.clone()));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = ServerText::parse(text)
    {
        assert_eq!(ServerText::parse(&t.encode()), Ok(t.clone()));
    }
}

/// The server's handling of client frames ([`crate::server::frames`]).
/// Layout: byte 0 picks push or pull (bit 0), the size limit (bits 1-2)
/// and the staging copy's page count for the final gap check (bits 3-7);
/// then frames, each a header byte (bit 7: text frame; bits 0-6 and the
/// next byte: length) and its bytes. Whatever the frames, the session's
/// logic must never panic, must hand the replica side exactly the stream
/// bytes it accepted, in order, and must keep every limit on every frame
/// it accepts.
pub fn check_server_frames(data: &[u8]) {
    let Some((&head, mut rest)) = data.split_first() else {
        return;
    };
    let limits = StreamLimits {
        max_db_bytes: [4096, 1 << 16, 1 << 20, 1 << 30][((head >> 1) & 3) as usize],
        max_prefix: 1024,
    };
    let mut frames: Vec<(bool, &[u8])> = Vec::new();
    while rest.len() >= 2 {
        let len = (((rest[0] & 0x7f) as usize) << 8 | rest[1] as usize).min(rest.len() - 2);
        frames.push((rest[0] & 0x80 != 0, &rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    if head & 1 == 0 {
        check_push_frames(limits, (head >> 3) as u32, &frames);
    } else {
        check_pull_frames(limits, &frames);
    }
}

/// A fuzzed frame as the session sees it.
fn as_frame<'a>(is_text: bool, bytes: &'a [u8], text: &'a str) -> Frame<'a> {
    if is_text {
        Frame::Text(text)
    } else {
        Frame::Binary(bytes)
    }
}

/// The push half of [`check_server_frames`]; `base` is the staging copy's
/// page count for the final gap check.
fn check_push_frames(limits: StreamLimits, base: u32, frames: &[(bool, &[u8])]) {
    let mut push = PushFrames::new(limits);
    // Stream bytes accepted so far, and what the replica side got.
    let mut accepted: Vec<u8> = Vec::new();
    let mut forwarded: Vec<u8> = Vec::new();
    let mut started = false;
    for &(is_text, bytes) in frames {
        let t = String::from_utf8_lossy(bytes);
        let Ok(action) = push.frame(as_frame(is_text, bytes, &t)) else {
            return;
        };
        assert!(!is_text, "a text frame was accepted on a push");
        match action {
            PushAction::Skip | PushAction::Control(_) => {
                assert!(bytes.is_empty() || is_control_byte(bytes[0]));
            }
            PushAction::Digest(_) => {
                assert!(push.ended(), "a digest before the stream ended");
            }
            PushAction::Buffered => {
                assert!(!started);
                accepted.extend_from_slice(bytes);
            }
            PushAction::Start {
                page_size,
                bytes: b,
            } => {
                assert!(!started, "started twice");
                started = true;
                assert!(page_size.is_power_of_two() && (512..=65536).contains(&page_size));
                accepted.extend_from_slice(bytes);
                forwarded.extend_from_slice(&b);
            }
            PushAction::Forward => {
                assert!(started, "forwarded before the replica side started");
                accepted.extend_from_slice(bytes);
                forwarded.extend_from_slice(bytes);
            }
        }
        if started {
            assert_eq!(forwarded, accepted, "the replica side got other bytes");
        }
        check_push_limits(&push, limits);
        if push.ended() {
            let page_size = push.summary().page_size.max(512);
            if let Some(p) = push.missing_page(base, page_size) {
                assert!(p > base && !push.sent_pages().contains(&p));
            }
            return;
        }
    }
}

/// What must hold after every frame a push session accepted.
fn check_push_limits(push: &PushFrames, limits: StreamLimits) {
    assert!(push.pages() <= push.max_pages() as u64);
    assert!(push.message().len() <= MAX_COMMIT_MESSAGE);
    let s = push.summary();
    assert!(s.page_size as u64 * s.page_count as u64 <= limits.max_db_bytes);
    assert!(
        push.sent_pages()
            .iter()
            .all(|p| *p >= 1 && *p <= push.max_pages())
    );
}

/// The pull half of [`check_server_frames`].
fn check_pull_frames(limits: StreamLimits, frames: &[(bool, &[u8])]) {
    let mut pull = PullFrames::new(limits, 8, 4096);
    assert!(pull.budget() >= OVERHEAD_BASE);
    for &(is_text, bytes) in frames {
        let t = String::from_utf8_lossy(bytes);
        let Ok(action) = pull.frame(as_frame(is_text, bytes, &t)) else {
            return;
        };
        assert!(!is_text, "a text frame was accepted on a pull");
        assert!(pull.received() <= pull.budget());
        if let PullAction::Control(c) = action {
            assert!(!matches!(c, ClientControl::CommitMessage(_)));
        }
    }
}
