//! Builders of sqlite3_rsync stream messages (PROTOCOL.md section 1) and of
//! the websocket frames that carry them, for the tests that play one side of
//! a session by hand: a hostile client against the real server, or the fake
//! server against the real client.
//!
//! Only whole, well-formed messages are built here; a test that sends a
//! truncated or garbled one cuts or edits what these return.

use sqlrsync::wire::{self as proto, ClientControl};
use tokio_tungstenite::tungstenite::Message;

/// ORIGIN_BEGIN: protocol 2, pages of 2^`log2` bytes, `pages` pages.
pub fn begin(log2: u8, pages: u32) -> Vec<u8> {
    let mut v = vec![proto::ORIGIN_BEGIN, 2, log2];
    v.extend_from_slice(&pages.to_be_bytes());
    v
}

/// ORIGIN_PAGE `pgno` of `size` bytes, every one `fill`.
pub fn page(pgno: u32, size: usize, fill: u8) -> Vec<u8> {
    page_of(pgno, &vec![fill; size])
}

/// ORIGIN_PAGE `pgno` holding `bytes`.
pub fn page_of(pgno: u32, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![proto::ORIGIN_PAGE];
    v.extend_from_slice(&pgno.to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// ORIGIN_TXN: commit, the database now `pages` pages long.
pub fn txn(pages: u32) -> Vec<u8> {
    let mut v = vec![proto::ORIGIN_TXN];
    v.extend_from_slice(&pages.to_be_bytes());
    v
}

/// ORIGIN_END.
pub fn end() -> Vec<u8> {
    vec![proto::ORIGIN_END]
}

/// ORIGIN_MSG carrying `text`.
pub fn origin_msg(text: &[u8]) -> Vec<u8> {
    let mut v = vec![proto::ORIGIN_MSG];
    v.extend_from_slice(&(text.len() as u32).to_be_bytes());
    v.extend_from_slice(text);
    v
}

/// Stream bytes as one binary websocket frame.
pub fn bin(b: Vec<u8>) -> Message {
    Message::Binary(b.into())
}

/// A client control frame (CONFIG, KEYREQUEST, COMMITMESSAGE).
pub fn ctrl(c: ClientControl) -> Message {
    Message::Binary(c.encode().into())
}

/// REPLICA_HASH: one page's 20-byte hash, from the replica's side.
pub fn replica_hash(hash: &[u8; 20]) -> Vec<u8> {
    let mut v = vec![proto::REPLICA_HASH];
    v.extend_from_slice(hash);
    v
}

/// REPLICA_READY: the replica sent all its hashes.
pub fn replica_ready() -> Vec<u8> {
    vec![proto::REPLICA_READY]
}
