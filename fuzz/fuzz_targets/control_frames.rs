//! Fuzzes the parsers of sqlrsync's own frames: binary control frames from
//! clients and text frames from servers. Refusals are fine; panics are not,
//! and whatever parses must encode back to an equivalent frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sqlrsync::fuzzing::check_frames(data);
});
