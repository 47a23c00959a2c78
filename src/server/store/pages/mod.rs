//! Page storage: where the bytes of older versions' pages live, behind one
//! small trait.
//!
//! The store keeps each page of an older version once, under the SHA-256 of
//! its bytes; the metadata (see [`super::meta`]) records where each page
//! went as a [`BlobLocation`]. This module says what the store asks of the
//! place the bytes go, so that another backend (an object store) is a new
//! file beside [`packs`] rather than an edit of the version logic, as
//! Litestream puts each of its replica backends behind `ReplicaClient`.
//!
//! The operations are exactly the ones a commit, a rebuild, `verify` and
//! compaction use: append a page, make the appends durable, read a page
//! back, give back what a failed commit appended, and copy live pages out
//! of a pack before deleting it; and a [`PageReader`], which reads many
//! pages without the store's lock (a rebuild reads thousands on several
//! threads). Cutting unreferenced tails at start-up
//! belongs to opening a backend ([`packs::PackStore::open`]), since only the
//! backend knows how its files are laid out.

pub mod packs;

use anyhow::Result;
use sha2::{Digest, Sha256};

pub use packs::{PackReader, PackStore};

/// SHA-256 of a page: its address and checksum.
pub type PageHash = [u8; 32];

/// The SHA-256 address of a page's bytes.
pub fn page_hash(data: &[u8]) -> PageHash {
    Sha256::digest(data).into()
}

/// Where one stored page lives (the metadata's index row for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack file number.
    pub pack: u32,
    /// Byte offset in the pack.
    pub offset: u64,
    /// Bytes stored (compressed or not).
    pub stored_len: u32,
    /// True when the stored bytes are zstd-compressed.
    pub compressed: bool,
}

/// Where the next append will go: what a commit notes before appending, so
/// that it can give its bytes back ([`PageStore::cut_back`]) if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobPosition {
    /// Pack file number.
    pub pack: u32,
    /// Byte offset in the pack.
    pub offset: u64,
}

/// What the store needs from the place page bytes are kept. Appends are
/// serialised by the caller (one commit at a time holds the store's lock).
pub trait PageStore: Send {
    /// Appends `data` (not yet durable) and says where it went.
    fn append(&mut self, data: &[u8]) -> Result<BlobLocation>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> Result<()>;
    /// Reads and checks the page stored at `loc` under `hash`.
    fn read(&self, hash: &PageHash, loc: &BlobLocation) -> Result<Vec<u8>>;
    /// Where the next append goes.
    fn end(&self) -> BlobPosition;
    /// Drops the bytes appended since `start` when nothing was appended
    /// after them (`expected_end` is still the end), returning whether it
    /// did. Unreferenced bytes are harmless (start-up cuts them) but hold
    /// space, which matters most when a commit failed because the disk is
    /// full.
    fn cut_back(&mut self, start: BlobPosition, expected_end: BlobPosition) -> bool;
    /// Ends appends to the current pack (when it holds anything), so that
    /// compaction may rewrite it: the next append starts a new one.
    fn seal(&mut self) -> Result<()>;
    /// Appends the page stored at `loc` under `hash` again, as stored (no
    /// recompression), after checking it: compaction's copy.
    fn copy(&mut self, hash: &PageHash, loc: &BlobLocation) -> Result<BlobLocation>;
    /// Deletes pack `pack`, which compaction retired: nothing refers to it.
    fn remove_pack(&mut self, pack: u32) -> Result<()>;
    /// A reader of stored pages for one thread, usable without this
    /// store's lock (reads never touch what appends change).
    fn reader(&self) -> Box<dyn PageReader>;
}

/// Reads stored pages one after another, keeping what makes the next read
/// cheap (open files, a decompression context) between them.
pub trait PageReader: Send {
    /// Reads the page stored at `loc` under `hash` into `out`, which must
    /// be exactly the page's length, and checks it against `hash`.
    fn read_into(&mut self, hash: &PageHash, loc: &BlobLocation, out: &mut [u8]) -> Result<()>;
}
