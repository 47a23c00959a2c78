//! Property checks shared by the fuzz targets (fuzz/) and the corpus replay
//! test (tests/fuzz_corpus.rs), so that CI re-runs every input the fuzzers
//! ever kept without needing a fuzzer.
#![doc(hidden)]

use crate::protocol::{ClientControl, Direction, ServerText, StreamParser, is_control_byte};

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
