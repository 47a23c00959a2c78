//! Holding a pull's commit until the stream is complete and verified.
//!
//! It lives in `client` because it is part of the pull's sink
//! ([`super::apply::PullSink`]): only a pull that writes a local database
//! has a commit to hold; the link that carries the stream knows nothing of
//! it.
//!
//! The REPLICA helper commits the moment ORIGIN_TXN reaches it. On a pull
//! the sink therefore holds the stream back from the start of ORIGIN_TXN
//! until ORIGIN_END has arrived: a connection cut (or a server that stalls,
//! aborts or breaks the protocol) between the two then leaves the local
//! database exactly as it was, because the helper never sees the commit.
//!
//! When the server announced a `versionHash` before the pages came (our
//! server sends CONFIG first), the pages of the sync are also kept in an
//! anonymous temp file next to the local database, and at ORIGIN_END the
//! hash of the database *as it will be after the commit* is computed: the
//! local database's current pages with the received ones put in, cut to the
//! ORIGIN_TXN size. Only if it matches is the commit let through, so a
//! version that does not match its hash never replaces the local copy. The
//! cost is one read of the database (the check after the commit that it
//! replaces cost the same) and temp space for the changed pages only.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use crate::sqlite::VersionHasher;
use crate::wire::Message;

/// Most bytes held back after ORIGIN_TXN: sqlite3_rsync sends ORIGIN_END
/// right after it, so anything long here is a hostile stream.
/// How every refusal of a version that does not match its hash begins
/// (the verdict tells such a refusal from other failures by it).
pub const VERIFICATION_FAILED: &str = "VERIFICATION FAILED";

pub const MAX_HELD: usize = 64 * 1024;

/// What the gate needs to know about the local database, decided before
/// the sync starts.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The local database the helper writes.
    pub replica: PathBuf,
    /// It existed before the pull (a new file that fails verification is
    /// removed instead, so its pages need not be kept).
    pub existed: bool,
    /// It was in WAL mode before the pull (its current pages are then read
    /// through SQLite, which sees the WAL; otherwise straight from the file).
    pub wal: bool,
}

/// The received pages of one sync, in an anonymous temp file.
struct PageSpool {
    /// Unnamed temp file (gone when closed, even after a crash).
    file: File,
    /// Page size of the sync.
    page_size: u32,
    /// Page number -> offset in `file`.
    index: HashMap<u32, u64>,
    /// Bytes written to `file`.
    len: u64,
}

impl PageSpool {
    fn new(dir: &Path, page_size: u32) -> std::io::Result<PageSpool> {
        Ok(PageSpool {
            file: tempfile::tempfile_in(dir)?,
            page_size,
            index: HashMap::new(),
            len: 0,
        })
    }

    fn put(&mut self, pgno: u32, data: &[u8]) -> std::io::Result<()> {
        let at = *self.index.entry(pgno).or_insert(self.len);
        self.file.write_all_at(data, at)?;
        if at == self.len {
            self.len += data.len() as u64;
        }
        Ok(())
    }

    fn get(&self, pgno: u32, buf: &mut [u8]) -> std::io::Result<bool> {
        match self.index.get(&pgno) {
            Some(at) => self.file.read_exact_at(buf, *at).map(|_| true),
            None => Ok(false),
        }
    }
}

/// Per-pull state of the gate, fed by the pull's sink.
pub struct CommitGate {
    /// The local database.
    cfg: GateConfig,
    /// Pages of this sync, kept when a versionHash was known at ORIGIN_BEGIN.
    spool: Option<PageSpool>,
    /// Why spooling stopped (a full temp disk): verification then happens
    /// after the commit instead, as without a gate.
    spool_error: Option<String>,
    /// Stream offset where ORIGIN_TXN starts, once seen.
    txn_start: Option<u64>,
    /// Final page count from ORIGIN_TXN.
    txn_page_count: u32,
    /// ORIGIN_END seen.
    ended: bool,
    /// Bytes held back (from ORIGIN_TXN on).
    held: Vec<u8>,
    /// The held bytes went to the helper.
    released: bool,
}

/// What to do with a chunk that passed through the gate.
pub struct Split<'a> {
    /// Give these to the helper now.
    pub now: &'a [u8],
    /// The stream is complete: decide with [`CommitGate::decide`].
    pub complete: bool,
}

impl CommitGate {
    pub fn new(cfg: GateConfig) -> CommitGate {
        CommitGate {
            cfg,
            spool: None,
            spool_error: None,
            txn_start: None,
            txn_page_count: 0,
            ended: false,
            held: Vec::new(),
            released: false,
        }
    }

    /// Follows one message of the origin's stream. `end` is the stream
    /// offset just past it; `hash_known` says whether the server has sent a
    /// versionHash by now.
    pub fn observe(&mut self, m: &Message<'_>, end: u64, hash_known: bool) {
        match m {
            Message::OriginBegin { page_size, .. } => {
                // A renegotiated sync starts over.
                self.spool = None;
                if hash_known && self.cfg.existed && self.spool_error.is_none() {
                    match PageSpool::new(&crate::sqlite::parent_dir(&self.cfg.replica), *page_size)
                    {
                        Ok(s) => self.spool = Some(s),
                        Err(e) => self.spool_error = Some(e.to_string()),
                    }
                }
            }
            Message::OriginPage { pgno, data } => {
                if let Some(s) = self.spool.as_mut()
                    && let Err(e) = s.put(*pgno, data)
                {
                    tracing::debug!("cannot keep pages for verification: {e}");
                    self.spool_error = Some(e.to_string());
                    self.spool = None;
                }
            }
            Message::OriginTxn { page_count } if self.txn_start.is_none() => {
                self.txn_start = Some(end - m.wire_len() as u64);
                self.txn_page_count = *page_count;
            }
            Message::OriginEnd => self.ended = true,
            _ => {}
        }
    }

    /// Splits a chunk that started at stream offset `start` (after it was
    /// parsed): what goes to the helper now; the rest is held. Err when a
    /// hostile stream keeps going after ORIGIN_TXN.
    pub fn split<'a>(&mut self, data: &'a [u8], start: u64) -> Result<Split<'a>, String> {
        if self.released {
            return Ok(Split {
                now: data,
                complete: false,
            });
        }
        let now = match self.txn_start {
            None => data,
            Some(t) => {
                let cut = (t.saturating_sub(start) as usize).min(data.len());
                self.held.extend_from_slice(&data[cut..]);
                &data[..cut]
            }
        };
        if self.held.len() > MAX_HELD {
            return Err("the server kept sending after ORIGIN_TXN".into());
        }
        Ok(Split {
            now,
            complete: self.ended,
        })
    }

    /// At ORIGIN_END: takes the held bytes (and the kept pages) out as a
    /// [`Check`] to run, off the async threads, against `expected`.
    pub fn finish(&mut self, expected: Option<String>) -> Check {
        self.released = true;
        Check {
            cfg: self.cfg.clone(),
            held: std::mem::take(&mut self.held),
            spool: self.spool.take(),
            txn_page_count: self.txn_page_count,
            expected,
        }
    }
}

/// The decision at ORIGIN_END, made away from the socket reader because it
/// reads the whole database.
pub struct Check {
    /// The local database.
    cfg: GateConfig,
    /// ORIGIN_TXN and ORIGIN_END, held back.
    held: Vec<u8>,
    /// The received pages, when kept.
    spool: Option<PageSpool>,
    /// Final page count from ORIGIN_TXN.
    txn_page_count: u32,
    /// The server's versionHash, when it sent one.
    expected: Option<String>,
}

impl Check {
    /// Ok((held bytes, verified)) to give to the helper; Err(one line) when
    /// the database-to-be does not match the versionHash (the commit is
    /// dropped, so the helper rolls back).
    pub fn run(self) -> Result<(Vec<u8>, bool), String> {
        let (Some(spool), Some(want)) = (self.spool, self.expected) else {
            return Ok((self.held, false));
        };
        let got = prospective_hash(&self.cfg, &spool, self.txn_page_count)
            .map_err(|e| format!("cannot verify the pulled version: {e:#}"))?;
        if got.eq_ignore_ascii_case(&want) {
            Ok((self.held, true))
        } else {
            Err(format!(
                "{VERIFICATION_FAILED}: the version the server sent does not match its versionHash \
                 ({} expected, {} received); it was not applied",
                &want[..want.len().min(16)],
                &got[..16]
            ))
        }
    }
}

/// The versionHash the local database will have once the held commit goes
/// through: its current pages with the received ones put in, pages 1..N of
/// the ORIGIN_TXN size N. Pages neither sent nor present read as zeros, as
/// they would in the file.
fn prospective_hash(
    cfg: &GateConfig,
    spool: &PageSpool,
    page_count: u32,
) -> anyhow::Result<String> {
    let ps = spool.page_size as usize;
    let mut hasher = VersionHasher::new();
    let mut buf = vec![0u8; ps];
    if cfg.wal {
        // The helper holds the write lock, but WAL readers see the last
        // committed state, which is what the commit builds on.
        let c = Connection::open_with_flags(
            &cfg.replica,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.execute_batch("BEGIN")?;
        let mut st = c.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = st.query([])?;
        let mut next = 1u32;
        while next <= page_count {
            let Some(row) = rows.next()? else { break };
            let pgno: u32 = row.get(0)?;
            while next < pgno && next <= page_count {
                fill(spool, next, &mut buf, None)?;
                hasher.page(next, &buf);
                next += 1;
            }
            if next == pgno && next <= page_count {
                let data = row.get_ref(1)?.as_blob()?;
                fill(spool, next, &mut buf, Some(data))?;
                hasher.page(next, &buf);
                next += 1;
            }
        }
        for pgno in next..=page_count {
            fill(spool, pgno, &mut buf, None)?;
            hasher.page(pgno, &buf);
        }
    } else {
        // Rollback mode: the helper writes only the pages it was sent, so
        // every other page of the file is still the old one, whatever the
        // helper's cache has spilled.
        let f = File::open(&cfg.replica)
            .with_context(|| format!("opening {}", cfg.replica.display()))?;
        for pgno in 1..=page_count {
            if !spool.get(pgno, &mut buf)? {
                read_page_or_zeros(&f, (pgno as u64 - 1) * ps as u64, &mut buf)?;
            }
            hasher.page(pgno, &buf);
        }
    }
    Ok(hasher.finish())
}

/// `buf` = the received page `pgno`, else `current` (zeros when None).
fn fill(
    spool: &PageSpool,
    pgno: u32,
    buf: &mut [u8],
    current: Option<&[u8]>,
) -> std::io::Result<()> {
    if spool.get(pgno, buf)? {
        return Ok(());
    }
    match current {
        Some(d) if d.len() == buf.len() => buf.copy_from_slice(d),
        _ => buf.fill(0),
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `at`; what lies past the end reads as zeros.
fn read_page_or_zeros(f: &File, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    buf.fill(0);
    let mut done = 0;
    let mut r = ReadAt { f, at };
    while done < buf.len() {
        let n = r.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(())
}

/// `Read` over a file from an offset, without moving a shared cursor.
struct ReadAt<'a> {
    f: &'a File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prospective_hash_is_the_hash_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<200)
             INSERT INTO t SELECT randomblob(500) FROM s;",
        )
        .unwrap();
        drop(c);
        let before = std::fs::read(&db).unwrap();
        let ps = 4096usize;
        let pages = (before.len() / ps) as u32;
        // The "new version": page 3 changed, one page added.
        let mut after = before.clone();
        after[2 * ps..3 * ps].fill(9);
        after.extend(std::iter::repeat_n(5u8, ps));
        let mut spool = PageSpool::new(dir.path(), ps as u32).unwrap();
        spool.put(3, &after[2 * ps..3 * ps]).unwrap();
        spool.put(pages + 1, &after[pages as usize * ps..]).unwrap();
        let cfg = GateConfig {
            replica: db.clone(),
            existed: true,
            wal: false,
        };
        let got = prospective_hash(&cfg, &spool, pages + 1).unwrap();
        let mut h = VersionHasher::new();
        for (i, p) in after.chunks(ps).enumerate() {
            h.page(i as u32 + 1, p);
        }
        assert_eq!(got, h.finish());
        // A smaller final size cuts the tail off.
        let got = prospective_hash(&cfg, &spool, 2).unwrap();
        let mut h = VersionHasher::new();
        h.page(1, &before[..ps]);
        h.page(2, &before[ps..2 * ps]);
        assert_eq!(got, h.finish());
        // WAL mode reads the same through SQLite.
        let c = Connection::open(&db).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        drop(c);
        let wal = GateConfig { wal: true, ..cfg };
        let now = std::fs::read(&db).unwrap();
        let mut h = VersionHasher::new();
        for (i, p) in now.chunks(ps).enumerate() {
            let mut p = p.to_vec();
            if i == 2 {
                p.fill(9);
            }
            h.page(i as u32 + 1, &p);
        }
        h.page(pages + 1, &after[pages as usize * ps..]);
        assert_eq!(
            prospective_hash(&wal, &spool, pages + 1).unwrap(),
            h.finish()
        );
    }
}
