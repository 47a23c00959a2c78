//! Replays every input the fuzzers keep (fuzz/corpus/*) and the streams
//! recorded from real helper runs (fuzz/seeds/*) through the same
//! property checks the fuzz targets run, so CI guards against regressions
//! without a fuzzer. scripts/fuzz runs the fuzzers themselves.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(
            result.is_ok(),
            "corpus input {} fails its check",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn stream_parser_corpus_holds() {
    let n = replay("stream_parser", sqlrsync::fuzzing::check_stream);
    assert!(
        n >= 8,
        "the stream_parser corpus lost its seeds ({n} files)"
    );
}

#[test]
fn control_frames_corpus_holds() {
    let n = replay("control_frames", sqlrsync::fuzzing::check_frames);
    assert!(
        n >= 6,
        "the control_frames corpus lost its seeds ({n} files)"
    );
}

#[test]
fn real_streams_parse_to_the_end() {
    // The seeds recorded from real helper runs must parse cleanly: a parser
    // that refuses a real stream would break every sync.
    use sqlrsync::protocol::{Direction, StreamParser};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/stream_parser");
    let mut ended = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (head, stream) = data.split_first().unwrap();
        let dir = if head & 1 == 0 {
            Direction::FromOrigin
        } else {
            Direction::FromReplica
        };
        let mut p = StreamParser::new(dir);
        let result = p.feed(stream, |_| {});
        assert!(
            result.is_ok() && p.at_boundary(),
            "{}: {result:?}",
            path.display()
        );
        ended += 1;
    }
    assert!(ended >= 8, "only {ended} recorded streams found");
}
