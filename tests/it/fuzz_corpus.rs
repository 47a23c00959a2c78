//! Replays every input the fuzzers keep (fuzz/corpus/*) and the streams
//! recorded from real helper runs (fuzz/seeds/*) through the same
//! property checks the fuzz targets run, so CI guards against regressions
//! without a fuzzer. scripts/fuzz runs the fuzzers themselves.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    replay_dir("fuzz/corpus", target, check)
}

fn replay_dir(base: &str, target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(base)
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
    use sqlrsync::wire::{Direction, StreamParser};
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

#[test]
fn server_frames_corpus_holds() {
    let n = replay("server_frames", sqlrsync::fuzzing::check_server_frames);
    assert!(
        n >= 10,
        "the server_frames corpus lost its inputs ({n} files)"
    );
    let n = replay_dir(
        "fuzz/seeds",
        "server_frames",
        sqlrsync::fuzzing::check_server_frames,
    );
    assert!(n >= 20, "the server_frames seeds are gone ({n} files)");
}

#[test]
fn real_sessions_pass_the_server_frame_checks() {
    // The seeds recorded from real helper runs (fuzz/seeds/server_frames/
    // real-*: the stream in frames, with a commit message, CONFIG and
    // KEYREQUEST like our client sends) must be accepted whole: limits
    // that refused a real session would break every push.
    use sqlrsync::server::frames::{Frame, PullFrames, PushFrames, StreamLimits};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/server_frames");
    let (mut pushes, mut pulls) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("real-")
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let (head, mut rest) = data.split_first().unwrap();
        let mut frames = Vec::new();
        while rest.len() >= 2 {
            let len = ((rest[0] & 0x7f) as usize) << 8 | rest[1] as usize;
            frames.push(&rest[2..2 + len]);
            rest = &rest[2 + len..];
        }
        let limits = StreamLimits::default();
        if head & 1 == 0 {
            let mut p = PushFrames::new(limits);
            for f in frames {
                p.frame(Frame::Binary(f))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            assert!(p.ended() && p.summary().complete(), "{}", path.display());
            assert_eq!(p.message(), "hello");
            pushes += 1;
        } else {
            let mut p = PullFrames::new(limits, 100, 4096);
            for f in frames {
                p.frame(Frame::Binary(f))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            pulls += 1;
        }
    }
    assert!(pushes >= 6 && pulls >= 3, "{pushes} pushes, {pulls} pulls");
}
