//! Delta syncs: our extension (SERVER.md "Extensions", "Delta syncs") for
//! when both ends already know the version one of them holds.
//!
//! sqlite3_rsync finds the changed pages by hashing every page on both
//! ends, every time: on a 100 MB database that is most of a sync's second
//! even when one row changed. When the client keeps the XXH3-128 digest of
//! every page of the version it last matched (its page cache, see
//! `client::page_cache`) and that version is the one the other end starts
//! from, the changed pages are known from one cheap local read, and only
//! they travel:
//!
//! ```text
//! DELTA_BEGIN [0x56] base version u64 BE, base versionXxh3 16 bytes,
//!                    page size u32 BE, page count of the result u32 BE
//! DELTA_PAGE  [0x57] page number u32 BE, the page (page size bytes)
//! DELTA_END   [0x58] versionXxh3 of the result, 16 bytes
//! DELTA_DONE  [0x59] (server, after a delta push) version u64 BE,
//!                    its versionXxh3 (16 bytes) and versionHash (32)
//! ```
//!
//! Every page number above the base's page count up to the result's must
//! come; a result smaller than the base drops the pages past its count.
//! The receiver applies the pages to its copy of the base and keeps the
//! result only if its own versionXxh3 of it is the one in DELTA_END: a
//! stale cache, a lying peer or a damaged frame then stores nothing, and
//! the sender falls back to a full sqlite3_rsync sync.
//!
//! A push carries these frames in place of the sqlite3_rsync stream (only
//! to a server that answered [`super::headers::DELTA`]), without asking for
//! CONFIG first: the base it names is the version the client last
//! matched, so a server whose latest moved refuses it (and the client's
//! full push then finds the conflict). The server answers DELTA_DONE and
//! closes. A pull receives
//! them from a server that answered the client's
//! [`super::headers::DELTA_HAVE`] with [`super::headers::DELTA`].

use super::limits::{MAX_PAGE_SIZE_LOG2, MIN_PAGE_SIZE_LOG2};

/// First frame of a delta.
pub const DELTA_BEGIN: u8 = 0x56;
/// One page of a delta.
pub const DELTA_PAGE: u8 = 0x57;
/// Last frame of a delta.
pub const DELTA_END: u8 = 0x58;
/// The server's answer to a delta push it committed (or found unchanged).
pub const DELTA_DONE: u8 = 0x59;

/// The most page bytes a delta carries (either way): past this, a full sync is
/// cheaper to hold in memory on both ends and no slower.
pub const MAX_DELTA_BYTES: usize = 64 << 20;

/// One frame of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaFrame {
    Begin(DeltaBegin),
    Page {
        pgno: u32,
        data: Vec<u8>,
    },
    End {
        version_xxh3: [u8; 16],
    },
    /// The version a delta push made (or already was): its number,
    /// versionXxh3 and versionHash, in place of the MESSAGE and CONFIG
    /// texts a stream's push is answered with (a third of the bytes of a
    /// one-page push).
    Done {
        version: u64,
        version_xxh3: [u8; 16],
        version_hash: [u8; 32],
    },
}

/// What a delta starts from and what it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaBegin {
    /// The version the pages apply to.
    pub base_version: u64,
    /// That version's versionXxh3.
    pub base_xxh3: [u8; 16],
    /// Page size of both.
    pub page_size: u32,
    /// Pages of the result.
    pub page_count: u32,
}

/// Why a delta frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta frame 0x{0:02x} has the wrong length")]
    BadLength(u8),
    #[error("delta frame starts with 0x{0:02x}, not a delta frame")]
    NotDelta(u8),
    #[error("empty delta frame")]
    Empty,
    #[error("delta page size {0} is not a power of two from 512 to 65536")]
    BadPageSize(u32),
    #[error("delta result of 0 pages")]
    NoPages,
    #[error("delta page number 0")]
    PageZero,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

impl DeltaFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            DeltaFrame::Begin(b) => {
                let mut v = Vec::with_capacity(33);
                v.push(DELTA_BEGIN);
                v.extend_from_slice(&b.base_version.to_be_bytes());
                v.extend_from_slice(&b.base_xxh3);
                v.extend_from_slice(&b.page_size.to_be_bytes());
                v.extend_from_slice(&b.page_count.to_be_bytes());
                v
            }
            DeltaFrame::Page { pgno, data } => page_frame(*pgno, data),
            DeltaFrame::End { version_xxh3 } => {
                let mut v = Vec::with_capacity(17);
                v.push(DELTA_END);
                v.extend_from_slice(version_xxh3);
                v
            }
            DeltaFrame::Done {
                version,
                version_xxh3,
                version_hash,
            } => {
                let mut v = Vec::with_capacity(57);
                v.push(DELTA_DONE);
                v.extend_from_slice(&version.to_be_bytes());
                v.extend_from_slice(version_xxh3);
                v.extend_from_slice(version_hash);
                v
            }
        }
    }

    /// Parses one whole binary frame.
    pub fn parse(frame: &[u8]) -> Result<DeltaFrame, DeltaError> {
        let (&tag, rest) = frame.split_first().ok_or(DeltaError::Empty)?;
        match tag {
            DELTA_BEGIN => {
                if rest.len() != 32 {
                    return Err(DeltaError::BadLength(tag));
                }
                let page_size = be32(&rest[24..28]);
                let ok_size = page_size.is_power_of_two()
                    && (1u32 << MIN_PAGE_SIZE_LOG2..=1u32 << MAX_PAGE_SIZE_LOG2)
                        .contains(&page_size);
                if !ok_size {
                    return Err(DeltaError::BadPageSize(page_size));
                }
                let page_count = be32(&rest[28..32]);
                if page_count == 0 {
                    return Err(DeltaError::NoPages);
                }
                Ok(DeltaFrame::Begin(DeltaBegin {
                    base_version: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                    base_xxh3: rest[8..24].try_into().expect("16 bytes"),
                    page_size,
                    page_count,
                }))
            }
            DELTA_PAGE => {
                if rest.len() < 4 + (1 << MIN_PAGE_SIZE_LOG2) {
                    return Err(DeltaError::BadLength(tag));
                }
                let pgno = be32(&rest[..4]);
                if pgno == 0 {
                    return Err(DeltaError::PageZero);
                }
                Ok(DeltaFrame::Page {
                    pgno,
                    data: rest[4..].to_vec(),
                })
            }
            DELTA_END => <[u8; 16]>::try_from(rest)
                .map(|version_xxh3| DeltaFrame::End { version_xxh3 })
                .map_err(|_| DeltaError::BadLength(tag)),
            DELTA_DONE => {
                if rest.len() != 56 {
                    return Err(DeltaError::BadLength(tag));
                }
                Ok(DeltaFrame::Done {
                    version: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                    version_xxh3: rest[8..24].try_into().expect("16 bytes"),
                    version_hash: rest[24..56].try_into().expect("32 bytes"),
                })
            }
            other => Err(DeltaError::NotDelta(other)),
        }
    }
}

/// A DELTA_PAGE frame for `data` (without copying it into a [`DeltaFrame`]
/// first).
pub fn page_frame(pgno: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(DELTA_PAGE);
    v.extend_from_slice(&pgno.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A versionXxh3 in hex as the 16 bytes a delta frame carries.
pub fn xxh3_bytes(hex_text: &str) -> Option<[u8; 16]> {
    let v = hex::decode(hex_text).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let begin = DeltaFrame::Begin(DeltaBegin {
            base_version: 7,
            base_xxh3: [9; 16],
            page_size: 4096,
            page_count: 3,
        });
        let page = DeltaFrame::Page {
            pgno: 2,
            data: vec![1; 4096],
        };
        let end = DeltaFrame::End {
            version_xxh3: [5; 16],
        };
        let done = DeltaFrame::Done {
            version: 8,
            version_xxh3: [6; 16],
            version_hash: [7; 32],
        };
        for f in [&begin, &page, &end, &done] {
            assert_eq!(&DeltaFrame::parse(&f.encode()).unwrap(), f);
        }
        let mut bad = begin.encode();
        bad[25..29].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(DeltaFrame::parse(&bad), Err(DeltaError::BadPageSize(1000)));
        let mut zero = page.encode();
        zero[1..5].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(DeltaFrame::parse(&zero), Err(DeltaError::PageZero));
        assert_eq!(
            DeltaFrame::parse(&[DELTA_END, 1, 2]),
            Err(DeltaError::BadLength(DELTA_END))
        );
        assert_eq!(DeltaFrame::parse(&[0x41]), Err(DeltaError::NotDelta(0x41)));
        assert_eq!(xxh3_bytes(&hex::encode([3u8; 16])), Some([3; 16]));
        assert_eq!(xxh3_bytes("zz"), None);
    }
}
