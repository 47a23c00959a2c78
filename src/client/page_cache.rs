//! The page digests of the version a local database last matched: what
//! lets the next push or pull be a delta ([`crate::wire::delta`]).
//!
//! One file per (replica path, local database), named like its match
//! record ([`super::matched`]), under the cache directory
//! (`~/.cache/sqlrsync/pages/`, 0700, files 0600). It is a cache in the
//! strict sense: nothing is decided on it alone. A delta built on a stale
//! or damaged entry produces a result whose versionXxh3 is not the one the
//! sender hashed, the receiver stores nothing, and the next sync is a full
//! one. Losing it costs one full sync.
//!
//! Format: `SQLRPG1\n`, the replica id's length (u16 BE) and bytes, the
//! version number (u64 BE), its versionXxh3 (16 bytes), the page size and
//! page count (u32 BE each), then 16 bytes per page.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sqlite::pages::PageDigest;

const MAGIC: &[u8; 8] = b"SQLRPG1\n";

/// The most pages an entry may hold (a 4 TiB database of 4 KiB pages):
/// a larger count is a damaged file, not read.
const MAX_PAGES: u32 = 1 << 30;

/// The digests of one version of a replica, as a local database held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCache {
    /// The server's id of the replica.
    pub replica_id: String,
    /// The version number.
    pub version: u64,
    /// Its versionXxh3.
    pub version_xxh3: [u8; 16],
    /// Its page size.
    pub page_size: u32,
    /// Every page's digest.
    pub digests: Vec<PageDigest>,
}

impl PageCache {
    /// An entry for `version` of `replica_id` whose pages have `digests`;
    /// `None` when they do not make `version_xxh3` (the database changed
    /// after the sync, or the server's hash is not the version's).
    pub fn checked(
        replica_id: &str,
        version: u64,
        version_xxh3: &str,
        page_size: u32,
        digests: Vec<PageDigest>,
    ) -> Option<PageCache> {
        if crate::sqlite::pages::version_xxh3(&digests) != version_xxh3 {
            return None;
        }
        Some(PageCache {
            replica_id: replica_id.to_string(),
            version,
            version_xxh3: crate::wire::delta::xxh3_bytes(version_xxh3)?,
            page_size,
            digests,
        })
    }

    /// The versionXxh3 in hex.
    pub fn xxh3_hex(&self) -> String {
        hex::encode(self.version_xxh3)
    }

    fn encode(&self) -> Vec<u8> {
        let id = self.replica_id.as_bytes();
        let mut v = Vec::with_capacity(64 + id.len() + 16 * self.digests.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&(id.len() as u16).to_be_bytes());
        v.extend_from_slice(id);
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.version_xxh3);
        v.extend_from_slice(&self.page_size.to_be_bytes());
        v.extend_from_slice(&(self.digests.len() as u32).to_be_bytes());
        for d in &self.digests {
            v.extend_from_slice(d);
        }
        v
    }

    fn decode(b: &[u8]) -> Option<PageCache> {
        let rest = b.strip_prefix(MAGIC)?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let (id, rest) = rest.split_at_checked(u16::from_be_bytes(*len) as usize)?;
        let (version, rest) = rest.split_first_chunk::<8>()?;
        let (xxh3, rest) = rest.split_first_chunk::<16>()?;
        let (size, rest) = rest.split_first_chunk::<4>()?;
        let (count, rest) = rest.split_first_chunk::<4>()?;
        let count = u32::from_be_bytes(*count);
        if count > MAX_PAGES || rest.len() != count as usize * 16 {
            return None;
        }
        Some(PageCache {
            replica_id: String::from_utf8(id.to_vec()).ok()?,
            version: u64::from_be_bytes(*version),
            version_xxh3: *xxh3,
            page_size: u32::from_be_bytes(*size),
            digests: rest
                .chunks_exact(16)
                .map(|c| c.try_into().expect("16 bytes"))
                .collect(),
        })
    }
}

/// The directory of the entries.
fn dir() -> Option<PathBuf> {
    Some(dirs::cache_dir()?.join("sqlrsync").join("pages"))
}

/// The entry of `local` for the replica `remote_path` and `replica_id`, if
/// there is a readable one.
pub fn load(remote_path: &str, local: &Path, replica_id: &str) -> Option<PageCache> {
    let path = super::matched::file_in(&dir()?, remote_path, local, "pages");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut b = Vec::new();
    f.take(64 + 1024 + 16 * MAX_PAGES as u64)
        .read_to_end(&mut b)
        .ok()?;
    PageCache::decode(&b).filter(|c| c.replica_id == replica_id)
}

/// Keeps `entry` for `local` and `remote_path`. Not synced: a lost or torn
/// entry only costs one full sync.
pub fn save(remote_path: &str, local: &Path, entry: &PageCache) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = dir().ok_or_else(|| anyhow::anyhow!("no cache directory (is HOME set?)"))?;
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pages-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)?;
    tmp.write_all(&entry.encode())?;
    tmp.persist(super::matched::file_in(&dir, remote_path, local, "pages"))
        .map_err(|e| e.error)?;
    Ok(())
}

/// Drops the entry of `local` for `remote_path` (after a delta it built
/// was refused, or a sync that leaves no known version).
pub fn forget(remote_path: &str, local: &Path) {
    if let Some(d) = dir() {
        let _ = std::fs::remove_file(super::matched::file_in(&d, remote_path, local, "pages"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_reads_as_none() {
        let digests = vec![[1u8; 16], [2u8; 16]];
        let x = crate::sqlite::pages::version_xxh3(&digests);
        let e = PageCache::checked("rid", 4, &x, 4096, digests.clone()).unwrap();
        assert_eq!(PageCache::decode(&e.encode()), Some(e.clone()));
        assert!(PageCache::checked("rid", 4, &x, 4096, vec![[1u8; 16]]).is_none());
        let b = e.encode();
        assert_eq!(PageCache::decode(&b[..b.len() - 1]), None);
        assert_eq!(PageCache::decode(b"SQLRPG0\n"), None);
    }
}
