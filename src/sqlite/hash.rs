//! Version hashes: what a pulling client checks its copy against.

/// last writer's SQLite version (96-99).
pub const VERSION_HASH_MASKED_HEADER_BYTES: [usize; 14] =
    [18, 19, 24, 25, 26, 27, 92, 93, 94, 95, 96, 97, 98, 99];

/// Hashes a database version page by page. The `versionHash` is
/// SHA-256 over the concatenated SHA-256 digests of pages 1..N in order
/// ([`page_digest`]), with the header bytes of
/// [`VERSION_HASH_MASKED_HEADER_BYTES`] hashed as zeros: bytes 18 and 19
/// (WAL or rollback mode), because sqlite3_rsync itself keeps a WAL replica
/// in WAL mode whatever the origin is, and the change counters and writer
/// version, because every commit of a replica rewrites them. The server
/// sends the result in CONFIG as `versionHash`.
///
/// Why two levels rather than one SHA-256 over the whole file: the server
/// already keeps every page's SHA-256 (its dedup key), so it can hash a new
/// version by hashing only the pages that changed; and a client can hash
/// the pages of a 100 MB replica on several cores at once, which is what
/// makes verifying a pull cheap next to the pull itself.
///
/// Our server also sends `versionXxh3`: the same construction with XXH3-128
/// in place of SHA-256 ([`HashKind::Xxh3`]). It verifies the same thing (the
/// copy equals the version the server committed; the server that sends the
/// hash is trusted for the pages anyway), for about a tenth of the CPU time:
/// SHA-256 over every received page was a sixth of a 100 MB pull's CPU.
#[derive(Debug, Clone)]
pub struct VersionHasher {
    /// Running digest over the page digests.
    hasher: RunningHash,
    /// Next page number expected; pages must come in order.
    next_pgno: u32,
}

impl Default for VersionHasher {
    fn default() -> Self {
        VersionHasher::new()
    }
}

/// Which hash a [`VersionHasher`] and its page digests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashKind {
    /// `versionHash`: SHA-256 (the server's page index keys).
    #[default]
    Sha256,
    /// `versionXxh3`: XXH3-128.
    Xxh3,
}

#[derive(Clone)]
enum RunningHash {
    Sha256(sha2::Sha256),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl std::fmt::Debug for RunningHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunningHash::Sha256(_) => "Sha256",
            RunningHash::Xxh3(_) => "Xxh3",
        })
    }
}

/// Page 1's first 100 bytes with the bytes of
/// [`VERSION_HASH_MASKED_HEADER_BYTES`] zeroed, and how many of them there
/// are (a page shorter than 100 bytes only in tests).
fn masked_header(data: &[u8]) -> ([u8; 100], usize) {
    let head = data.len().min(100);
    let mut header = [0u8; 100];
    header[..head].copy_from_slice(&data[..head]);
    for i in VERSION_HASH_MASKED_HEADER_BYTES {
        header[i] = 0;
    }
    (header, head)
}

/// The digest of one page as a [`VersionHasher`] of `kind` counts it
/// (XXH3-128 digests fill the first 16 bytes).
pub fn page_digest_with(kind: HashKind, pgno: u32, data: &[u8]) -> [u8; 32] {
    match kind {
        HashKind::Sha256 => page_digest(pgno, data),
        HashKind::Xxh3 => {
            let d = if pgno != 1 {
                xxhash_rust::xxh3::xxh3_128(data)
            } else {
                let (header, head) = masked_header(data);
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&header[..head]);
                h.update(&data[head..]);
                h.digest128()
            };
            let mut out = [0u8; 32];
            out[..16].copy_from_slice(&d.to_be_bytes());
            out
        }
    }
}

/// SHA-256 digest of one page as [`VersionHasher`] counts it: the page's
/// bytes, except that page 1's masked header bytes count as zeros. For
/// every other page it is the plain SHA-256 of the page.
pub fn page_digest(pgno: u32, data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    if pgno != 1 {
        return sha2::Sha256::digest(data).into();
    }
    let mut h = sha2::Sha256::new();
    // Header fields that record who wrote last rather than what the
    // database holds: bytes 18-19 (journal mode), 24-27 (file change
    // counter), 92-95 (version-valid-for) and 96-99 (SQLite version of the
    // last writer). sqlite3_rsync's replica commits with its own SQLite,
    // which bumps these on every copy, so an exact copy never has them
    // equal to its origin.
    let (header, head) = masked_header(data);
    h.update(&header[..head]);
    h.update(&data[head..]);
    h.finalize().into()
}

impl VersionHasher {
    /// A `versionHash` (SHA-256) hasher.
    pub fn new() -> Self {
        VersionHasher::with_kind(HashKind::Sha256)
    }

    /// A hasher of `kind`.
    pub fn with_kind(kind: HashKind) -> Self {
        VersionHasher {
            hasher: match kind {
                HashKind::Sha256 => RunningHash::Sha256(Default::default()),
                HashKind::Xxh3 => RunningHash::Xxh3(Box::default()),
            },
            next_pgno: 1,
        }
    }

    /// The hash this hasher computes.
    pub fn kind(&self) -> HashKind {
        match self.hasher {
            RunningHash::Sha256(_) => HashKind::Sha256,
            RunningHash::Xxh3(_) => HashKind::Xxh3,
        }
    }

    /// Adds page `pgno`; panics on out-of-order use (a programming error).
    pub fn page(&mut self, pgno: u32, data: &[u8]) {
        self.digest(pgno, &page_digest_with(self.kind(), pgno, data));
    }

    /// Adds the [`page_digest_with`] of page `pgno` (same kind), computed
    /// elsewhere (another thread, or the server's page index); panics on
    /// out-of-order use.
    pub fn digest(&mut self, pgno: u32, digest: &[u8; 32]) {
        assert_eq!(
            pgno, self.next_pgno,
            "version hash pages must come in order"
        );
        self.next_pgno += 1;
        match &mut self.hasher {
            RunningHash::Sha256(h) => sha2::Digest::update(h, digest),
            RunningHash::Xxh3(h) => h.update(&digest[..16]),
        }
    }

    /// Lowercase hex digest.
    pub fn finish(self) -> String {
        match self.hasher {
            RunningHash::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            RunningHash::Xxh3(h) => hex::encode(h.digest128().to_be_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh3_version_hash_masks_the_same_bytes_and_sees_the_rest() {
        let hash = |pages: &[Vec<u8>]| {
            let mut h = VersionHasher::with_kind(HashKind::Xxh3);
            for (i, p) in pages.iter().enumerate() {
                h.page(i as u32 + 1, p);
            }
            h.finish()
        };
        let pages = vec![vec![7u8; 4096], vec![9u8; 4096]];
        let base = hash(&pages);
        assert_eq!(base.len(), 32);
        assert_ne!(base, {
            let mut h = VersionHasher::new();
            h.page(1, &pages[0]);
            h.page(2, &pages[1]);
            h.finish()
        });
        let mut counters = pages.clone();
        for i in VERSION_HASH_MASKED_HEADER_BYTES {
            counters[0][i] ^= 0x5a;
        }
        assert_eq!(hash(&counters), base);
        for (pg, at) in [(0, 100), (0, 17), (1, 3000)] {
            let mut changed = pages.clone();
            changed[pg][at] ^= 1;
            assert_ne!(hash(&changed), base, "page {} byte {at}", pg + 1);
        }
        // Digests taken elsewhere give the same result.
        let mut h = VersionHasher::with_kind(HashKind::Xxh3);
        h.digest(1, &page_digest_with(HashKind::Xxh3, 1, &pages[0]));
        h.digest(2, &page_digest_with(HashKind::Xxh3, 2, &pages[1]));
        assert_eq!(h.finish(), base);
    }

    #[test]
    fn version_hash_ignores_the_change_counters() {
        // Every commit of a replica rewrites the change counter and the
        // writer's SQLite version; an exact copy must hash the same.
        let mut page1 = vec![7u8; 4096];
        let mut h = VersionHasher::new();
        h.page(1, &page1);
        for i in [24, 27, 92, 95, 96, 99] {
            page1[i] ^= 0x5a;
        }
        let mut h2 = VersionHasher::new();
        h2.page(1, &page1);
        let masked = h2.finish();
        assert_eq!(h.finish(), masked);
        page1[100] ^= 1;
        let mut h3 = VersionHasher::new();
        h3.page(1, &page1);
        assert_ne!(h3.finish(), masked);
    }
}
