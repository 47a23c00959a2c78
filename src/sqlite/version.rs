//! The `versionHash` (or `versionXxh3`) of a database file: what a pull
//! checks its copy against and what the unchanged check compares.
//!
//! Pages are read inside one read transaction; rollback-journal files are
//! read directly and hashed on several threads, WAL databases through
//! `sqlite_dbpage`. A pull hands over the digests it took as pages arrived
//! ([`ReceivedPages`]), so only the pages it did not receive are read.

use std::fs::File;
use std::io;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::hash::{HashKind, VersionHasher, page_digest_with};

/// The `versionHash` of the database at `path` as SQLite reads it (WAL
/// content included), see [`VersionHasher`].
///
/// Everything happens inside one read transaction, so the pages are one
/// consistent snapshot. A database in rollback-journal mode (what a pull
/// leaves unless the replica was WAL) is then read straight from the file,
/// its pages hashed on every core: the SHARED lock the transaction holds
/// keeps writers out of the file, and without a WAL the file's bytes are
/// exactly what SQLite would return. A WAL database goes through
/// `sqlite_dbpage`, because its newest pages may live in the WAL.
pub fn version_hash(path: &Path) -> anyhow::Result<String> {
    version_hash_with(path, &ReceivedPages::default())
}

/// Digests of the pages a pull received in the stream, taken as they
/// passed (see [`version_hash_with`]). Memory is capped: past
/// [`ReceivedPages::MAX`] pages the digests are dropped and the whole file
/// is read instead, so a huge database costs time, never memory.
#[derive(Debug, Default)]
pub struct ReceivedPages {
    /// (page number, [`page_digest_with`] of `kind`) in
    /// arrival order; a later copy of a page replaces an earlier one when
    /// looked up.
    digests: Vec<(u32, [u8; 32])>,
    /// The hash the digests are of, and so the one that verifies the pull.
    kind: HashKind,
    /// Too many pages to keep: verify by reading everything.
    overflow: bool,
}

impl ReceivedPages {
    /// At most this many digests (about 9 MiB) are kept.
    pub const MAX: usize = 256 * 1024;

    /// Notes one ORIGIN_PAGE.
    pub fn add(&mut self, pgno: u32, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.digests.len() >= Self::MAX {
            self.overflow = true;
            self.digests = Vec::new();
            return;
        }
        self.digests
            .push((pgno, page_digest_with(self.kind, pgno, data)));
    }

    /// Digests that say nothing: verification reads every page.
    pub(super) fn overflowed(kind: HashKind) -> ReceivedPages {
        ReceivedPages {
            digests: Vec::new(),
            overflow: true,
            kind,
        }
    }

    /// No digests yet, to be taken with `kind`.
    pub fn new(kind: HashKind) -> ReceivedPages {
        ReceivedPages {
            kind,
            ..Default::default()
        }
    }

    /// The hash the digests are of.
    pub fn kind(&self) -> HashKind {
        self.kind
    }

    /// Page number -> digest, the last copy of each page winning.
    fn by_page(&self, page_count: u32) -> Vec<Option<[u8; 32]>> {
        let mut v = vec![None; page_count as usize];
        if !self.overflow {
            for (pgno, d) in &self.digests {
                if *pgno >= 1 && *pgno <= page_count {
                    v[*pgno as usize - 1] = Some(*d);
                }
            }
        }
        v
    }
}

/// The `versionHash` of the database at `path` after a pull, using the
/// digests of the pages the pull wrote as they arrived (`received`) and
/// reading the rest from the file, in one read transaction. Page 1 is
/// always read back, since SQLite rewrites its header when it commits.
///
/// What this proves: the pages the server sent are the version's pages,
/// and every page the sync kept from the old replica is too. It does not
/// read back what the helper wrote for the received pages; that is
/// SQLite's own write path, committed in one transaction. An initial pull
/// then verifies for the cost of hashing as it goes, instead of reading
/// the whole new file back afterwards.
pub fn version_hash_with(path: &Path, received: &ReceivedPages) -> anyhow::Result<String> {
    let kind = received.kind;
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.execute_batch("BEGIN")?;
    c.query_row("SELECT 1 FROM sqlite_dbpage WHERE pgno = 1", [], |_| Ok(()))?;
    let page_size: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let mut known = received.by_page(page_count);
    if let Some(first) = known.first_mut() {
        *first = None;
    }
    let hash = if mode.eq_ignore_ascii_case("wal") {
        // Through SQLite, which sees the WAL: one scan, hashing only the
        // pages not already known.
        let mut hasher = VersionHasher::with_kind(kind);
        let mut st = c.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let pgno: u32 = r.get(0)?;
            match known.get(pgno as usize - 1).copied().flatten() {
                Some(d) => hasher.digest(pgno, &d),
                None => hasher.page(pgno, r.get_ref(1)?.as_blob()?),
            }
        }
        hasher.finish()
    } else {
        digest_file_pages(kind, path, page_size, page_count, known)?
    };
    c.execute_batch("COMMIT")?;
    Ok(hash)
}

/// The `versionHash` of pages 1..`page_count` of the file at `path`, read
/// directly and hashed on up to four threads. The caller makes sure the
/// file does not change meanwhile.
pub fn hash_file_pages(path: &Path, page_size: u32, page_count: u32) -> anyhow::Result<String> {
    digest_file_pages(
        HashKind::Sha256,
        path,
        page_size,
        page_count,
        vec![None; page_count as usize],
    )
}

/// The versionXxh3 of a file's first `page_count` pages (the same
/// construction with XXH3-128, see [`hash_file_pages`]).
pub fn xxh3_file_pages(path: &Path, page_size: u32, page_count: u32) -> anyhow::Result<String> {
    digest_file_pages(
        HashKind::Xxh3,
        path,
        page_size,
        page_count,
        vec![None; page_count as usize],
    )
}

/// Like [`hash_file_pages`], taking the digests already `known` (indexed by
/// page number - 1) and reading only the 1 MiB stretches that hold some
/// page still unknown.
fn digest_file_pages(
    kind: HashKind,
    path: &Path,
    page_size: u32,
    page_count: u32,
    mut known: Vec<Option<[u8; 32]>>,
) -> anyhow::Result<String> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let need = page_size as u64 * page_count as u64;
    let have = file.metadata()?.len();
    anyhow::ensure!(
        have >= need,
        "{} is {have} bytes, shorter than its {page_count} pages of {page_size}",
        path.display()
    );
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    // Contiguous slices, one per thread; each reads 1 MiB at a time.
    let per = (page_count as usize).div_ceil(threads).max(1);
    let batch = ((1 << 20) / page_size as usize).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut jobs = Vec::new();
        for (t, out) in known.chunks_mut(per).enumerate() {
            let file = &file;
            jobs.push(scope.spawn(move || -> io::Result<()> {
                let first = (t * per) as u64; // zero-based page index
                let mut buf = vec![0u8; batch * page_size as usize];
                for (b, outs) in out.chunks_mut(batch).enumerate() {
                    if outs.iter().all(Option::is_some) {
                        continue;
                    }
                    let start = first + (b * batch) as u64;
                    let bytes = &mut buf[..outs.len() * page_size as usize];
                    file.read_exact_at(bytes, start * page_size as u64)?;
                    for (k, (d, page)) in outs
                        .iter_mut()
                        .zip(bytes.chunks_exact(page_size as usize))
                        .enumerate()
                    {
                        if d.is_none() {
                            let pgno = (start + k as u64 + 1) as u32;
                            *d = Some(page_digest_with(kind, pgno, page));
                        }
                    }
                }
                Ok(())
            }));
        }
        for j in jobs {
            j.join().expect("hashing thread panicked")?;
        }
        Ok(())
    })?;
    let mut hasher = VersionHasher::with_kind(kind);
    for (i, d) in known.iter().enumerate() {
        hasher.digest(i as u32 + 1, d.as_ref().expect("every page digested"));
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::file::{FileState, Header, inspect};

    #[test]
    fn version_hash_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let h1 = version_hash(&a).unwrap();
        let b = dir.path().join("b.db");
        std::fs::copy(&a, &b).unwrap();
        assert_eq!(version_hash(&b).unwrap(), h1);
        let c = Connection::open(&b).unwrap();
        c.execute_batch("INSERT INTO t VALUES (2);").unwrap();
        assert_ne!(version_hash(&b).unwrap(), h1);
        assert!(matches!(
            inspect(&a).unwrap(),
            FileState::Database(Header {
                page_size: 4096,
                ..
            })
        ));
    }

    #[test]
    fn version_hash_reads_wal_and_rollback_files_alike() {
        // The direct multi-threaded read (rollback mode) and the
        // sqlite_dbpage read (WAL mode, pages still in the WAL) must agree
        // on equal content, across many pages and thread boundaries.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch(
            "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<3000) INSERT INTO t SELECT zeroblob(900) || i FROM s;",
        )
        .unwrap();
        drop(c);
        let b = dir.path().join("b.db");
        std::fs::copy(&a, &b).unwrap();
        let wal = Connection::open(&b).unwrap();
        wal.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
            .unwrap();
        assert_eq!(version_hash(&a).unwrap(), version_hash(&b).unwrap());
        let change = "UPDATE t SET x = zeroblob(900) || 'changed' WHERE rowid % 97 = 0;";
        Connection::open(&a).unwrap().execute_batch(change).unwrap();
        wal.execute_batch(change).unwrap();
        assert!(dir.path().join("b.db-wal").metadata().unwrap().len() > 0);
        let (ha, hb) = (version_hash(&a).unwrap(), version_hash(&b).unwrap());
        assert_eq!(ha, hb);
        // And the direct read sees a change on the last page.
        let n: u32 = Connection::open(&a)
            .unwrap()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"x", n as u64 * 4096 - 1).unwrap();
        assert_ne!(version_hash(&a).unwrap(), ha);
    }

    #[test]
    fn received_digests_stand_in_for_reading_those_pages() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch(
            "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<2000) INSERT INTO t SELECT zeroblob(900) || i FROM s;",
        )
        .unwrap();
        drop(c);
        let full = version_hash(&a).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        let pages: Vec<&[u8]> = bytes.chunks(4096).collect();
        // Every page received as it is: the same hash, file unread but page 1.
        let mut all = ReceivedPages::default();
        for (i, p) in pages.iter().enumerate() {
            all.add(i as u32 + 1, p);
        }
        assert_eq!(version_hash_with(&a, &all).unwrap(), full);
        // Some received: the same hash.
        let mut some = ReceivedPages::default();
        for i in (0..pages.len()).step_by(7) {
            some.add(i as u32 + 1, pages[i]);
        }
        assert_eq!(version_hash_with(&a, &some).unwrap(), full);
        // A received page that differs from the version: a different hash
        // (the digests are really used) ...
        let mut wrong = ReceivedPages::default();
        wrong.add(5, &vec![0u8; 4096]);
        assert_ne!(version_hash_with(&a, &wrong).unwrap(), full);
        // ... except page 1, which is always read back.
        let mut p1 = ReceivedPages::default();
        p1.add(1, &vec![0u8; 4096]);
        assert_eq!(version_hash_with(&a, &p1).unwrap(), full);
        // Pages beyond the final count (truncated away) are ignored.
        let mut beyond = ReceivedPages::default();
        beyond.add(pages.len() as u32 + 3, &vec![1u8; 4096]);
        assert_eq!(version_hash_with(&a, &beyond).unwrap(), full);
    }

    #[test]
    fn version_hash_ignores_the_journal_mode_bytes() {
        // sqlite3_rsync may flip page 1's journal-mode bytes on a WAL replica.
        let mut page1 = vec![7u8; 4096];
        let mut h = VersionHasher::new();
        h.page(1, &page1);
        page1[18] = 2;
        page1[19] = 2;
        let mut h2 = VersionHasher::new();
        h2.page(1, &page1);
        assert_eq!(h.finish(), h2.finish());
    }
}
