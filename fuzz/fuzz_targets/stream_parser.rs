//! Fuzzes the sqlite3_rsync stream parser: any bytes, in any chunking, must
//! either parse or be refused with an error; never a panic, never a message
//! sequence that depends on how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sqlrsync::fuzzing::check_stream(data));
