//! The 100-byte SQLite database header, decoded once (pure: no I/O).
//!
//! Every place that needs the page size, the journal mode or the change
//! counter (inspecting bad input, the server's staging file, the unchanged
//! check's fingerprint) asks [`decode`], so the rules (1 means 65536, the
//! page count is valid only when the change counters agree) live here.

/// The 16-byte magic at the start of every SQLite database.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Bytes of the database header.
pub const HEADER_LEN: usize = 100;

/// The header fields sqlrsync uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes per page (512..=65536, a power of two).
    pub page_size: u32,
    /// In-header page count, when the header says it is valid (bytes
    /// 28..32, trusted only when the change counter equals
    /// version-valid-for).
    pub page_count: Option<u32>,
    /// Read/write versions 2: WAL mode.
    pub wal: bool,
    /// The file change counter (bytes 24..28).
    pub change_counter: u32,
    /// The in-header page count (bytes 28..32), valid or not.
    pub raw_page_count: u32,
}

/// Why 100 bytes are not an SQLite header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not an SQLite database")]
    NotADatabase,
    #[error("only {0} bytes, shorter than a database header")]
    Short(usize),
    #[error("invalid page size {0} in the header")]
    BadPageSize(u32),
}

/// Decodes the start of a database file (`head` may be shorter than 100
/// bytes: a short file).
pub fn decode(head: &[u8]) -> Result<Decoded, HeaderError> {
    if head.len() < MAGIC.len() || &head[..16] != MAGIC {
        return Err(HeaderError::NotADatabase);
    }
    if head.len() < HEADER_LEN {
        return Err(HeaderError::Short(head.len()));
    }
    let raw = u16::from_be_bytes([head[16], head[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(HeaderError::BadPageSize(raw));
    }
    let be = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let change_counter = be(24);
    let count = be(28);
    let valid_for = be(92);
    Ok(Decoded {
        page_size,
        page_count: (count > 0 && change_counter == valid_for).then_some(count),
        wal: head[18] == 2 && head[19] == 2,
        change_counter,
        raw_page_count: count,
    })
}

/// True when page 1 says rollback-journal (DELETE-style) mode: read and
/// write versions both 1.
pub fn is_rollback(head: &[u8]) -> bool {
    head.len() >= 20 && head[18] == 1 && head[19] == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses() {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        h[18] = 2;
        h[19] = 2;
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&3u32.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        let d = decode(&h).unwrap();
        assert_eq!((d.page_size, d.page_count, d.wal), (65536, Some(3), true));
        h[92] = 1;
        assert_eq!(decode(&h).unwrap().page_count, None);
        assert_eq!(decode(&h[..50]), Err(HeaderError::Short(50)));
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(decode(&h), Err(HeaderError::BadPageSize(1000)));
        h[0] = b'X';
        assert_eq!(decode(&h), Err(HeaderError::NotADatabase));
    }
}
