//! Fuzzes the server's handling of client frames on push and pull
//! sessions (src/server/frames.rs): arbitrary sequences of binary and text
//! frames of any size. Refusals are fine; panics, bytes lost or reordered
//! on their way to the replica side, and limits not kept are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sqlrsync::fuzzing::check_server_frames(data));
