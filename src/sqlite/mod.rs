//! SQLite files as sqlrsync sees them, without the helper.
//!
//! - [`header`]: the 100-byte header, decoded once (pure);
//! - [`file`]: what is at a path, and SQLite's own facts about it, read-only
//!   and without leaving files behind;
//! - [`paths`]: symbolic links, creatability, writability, I/O reasons;
//! - [`compare`]: whether two databases already hold the same pages;
//! - [`hash`]: the versionHash construction (pure);
//! - [`version`]: the versionHash of a file, reading what was not received;
//! - [`digest`]: page digests of a pull on a thread of their own;
//! - [`pages`]: every page's digest, and the pages a delta sync sends.

pub mod compare;
pub mod digest;
pub mod file;
pub mod hash;
pub mod header;
pub mod pages;
pub mod paths;
pub mod version;

pub use compare::same_pages;
pub use digest::PageDigester;
pub use file::{DbFileError, Facts, FileState, Header, facts, inspect};
pub use hash::{
    HashKind, VERSION_HASH_MASKED_HEADER_BYTES, VersionHasher, page_digest, page_digest_with,
};
pub use header::MAGIC;
pub use paths::{
    can_create_in, io_reason, link_note, parent_dir, resolve_links, same_file, writable,
};
pub use version::{
    ReceivedPages, hash_file_pages, version_hash, version_hash_with, xxh3_file_pages,
};
