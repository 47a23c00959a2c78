//! Every page's digest of a database, and the pages that differ from a
//! known version: what a delta sync ([`crate::wire::delta`]) sends instead
//! of running sqlite3_rsync.
//!
//! Pages are read through `sqlite_dbpage`, so a WAL database's newest pages
//! count, inside one read transaction (or the caller's write transaction,
//! which then sees its own changes): one consistent snapshot. Digests are
//! XXH3-128 as the versionXxh3 counts them ([`page_digest_with`]), so the
//! versionXxh3 of the snapshot comes from them at no extra cost.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::hash::{HashKind, VersionHasher, page_digest_with};

/// One page's XXH3-128 digest as the versionXxh3 counts it.
pub type PageDigest = [u8; 16];

/// The digest of page `pgno` holding `data`.
pub fn digest(pgno: u32, data: &[u8]) -> PageDigest {
    page_digest_with(HashKind::Xxh3, pgno, data)[..16]
        .try_into()
        .expect("16 bytes")
}

/// The versionXxh3 (hex) of a version whose pages have `digests`, in order.
pub fn version_xxh3(digests: &[PageDigest]) -> String {
    let mut h = VersionHasher::with_kind(HashKind::Xxh3);
    let mut wide = [0u8; 32];
    for (i, d) in digests.iter().enumerate() {
        wide[..16].copy_from_slice(d);
        h.digest(i as u32 + 1, &wide);
    }
    h.finish()
}

/// A database read page by page against a known version.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Its page size.
    pub page_size: u32,
    /// Every page's digest, in order.
    pub digests: Vec<PageDigest>,
    /// (page number, bytes) of every page whose digest differs from the
    /// known version's or that the known version lacks; empty when
    /// [`Snapshot::too_big`].
    pub changed: Vec<(u32, Vec<u8>)>,
    /// The changed pages came to more than the limit: they were not kept.
    pub too_big: bool,
}

impl Snapshot {
    /// The versionXxh3 of the snapshot.
    pub fn version_xxh3(&self) -> String {
        version_xxh3(&self.digests)
    }
}

/// Reads the database at `path` (read-only, one read transaction) and
/// keeps the pages that differ from `known` (a version of page size
/// `known_page_size`), up to `max_changed` bytes of them.
pub fn snapshot(
    path: &Path,
    known: &[PageDigest],
    known_page_size: u32,
    max_changed: usize,
) -> anyhow::Result<Snapshot> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.execute_batch("BEGIN")?;
    let snap = read(&c, known, known_page_size, max_changed);
    let _ = c.execute_batch("COMMIT");
    snap
}

/// [`snapshot`] on an open connection, inside the caller's transaction.
pub fn read(
    c: &Connection,
    known: &[PageDigest],
    known_page_size: u32,
    max_changed: usize,
) -> anyhow::Result<Snapshot> {
    let page_size: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let same_size = page_size == known_page_size;
    let mut snap = Snapshot {
        page_size,
        ..Snapshot::default()
    };
    let mut kept = 0usize;
    let mut st = c.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let pgno: u32 = r.get(0)?;
        let data = r.get_ref(1)?.as_blob()?;
        anyhow::ensure!(
            pgno as usize == snap.digests.len() + 1,
            "sqlite_dbpage skipped from page {} to {pgno}",
            snap.digests.len()
        );
        let d = digest(pgno, data);
        let differs = !same_size || known.get(pgno as usize - 1) != Some(&d);
        if differs && !snap.too_big {
            kept += data.len();
            if kept > max_changed {
                snap.too_big = true;
                snap.changed = Vec::new();
            } else {
                snap.changed.push((pgno, data.to_vec()));
            }
        }
        snap.digests.push(d);
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, rows: u32) -> std::path::PathBuf {
        let p = dir.join("t.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(x)")
            .unwrap();
        for _ in 0..rows {
            c.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
        }
        p
    }

    fn xxh3_of(p: &Path) -> String {
        let none = crate::sqlite::ReceivedPages::new(HashKind::Xxh3);
        crate::sqlite::version_hash_with(p, &none).unwrap()
    }

    #[test]
    fn finds_the_changed_pages_and_the_version_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = db(dir.path(), 20);
        let first = snapshot(&p, &[], 4096, usize::MAX).unwrap();
        assert_eq!(first.changed.len(), first.digests.len());
        assert_eq!(first.version_xxh3(), xxh3_of(&p));
        let same = snapshot(&p, &first.digests, 4096, usize::MAX).unwrap();
        assert!(same.changed.is_empty());
        db(dir.path(), 1);
        let next = snapshot(&p, &first.digests, 4096, usize::MAX).unwrap();
        assert!(!next.changed.is_empty() && next.changed.len() < 5);
        assert_eq!(next.version_xxh3(), xxh3_of(&p));
        let capped = snapshot(&p, &[], 4096, 8192).unwrap();
        assert!(capped.too_big && capped.changed.is_empty());
        assert_eq!(capped.digests, next.digests);
    }
}
