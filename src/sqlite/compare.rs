//! Whether two databases already hold the same pages, so a LOCAL sync has
//! nothing to send.

use std::path::Path;

use rusqlite::Connection;

use super::file::open_without_traces;

/// True when REPLICA holds exactly ORIGIN's pages right now, so a sync
/// would change nothing. Page 1's bookkeeping bytes that every commit
/// rewrites (change counter 24..28, version-valid-for and SQLite version
/// 92..100) are not content and are ignored; so are the journal-mode bytes
/// 18..20 when REPLICA is in WAL mode, which sqlite3_rsync keeps anyway.
/// Each side is read in one read transaction.
///
/// Comparing bytes costs a fraction of what sqlite3_rsync's hashing of
/// every page on both sides costs, and stops at the first difference; any
/// doubt (an error, a lock) answers false and the real sync decides. If
/// ORIGIN changes while it is read, "same" still means REPLICA is the
/// consistent snapshot a sync a moment earlier would have made.
pub fn same_pages(origin: &Path, replica: &Path) -> bool {
    fn compare(origin: &Path, replica: &Path) -> rusqlite::Result<bool> {
        let o = open_without_traces(origin).0?;
        let r = open_without_traces(replica).0?;
        for c in [&o, &r] {
            c.busy_timeout(std::time::Duration::from_millis(500))?;
            c.execute_batch("BEGIN")?;
        }
        let shape = |c: &Connection| -> rusqlite::Result<(u32, u32)> {
            Ok((
                c.query_row("PRAGMA page_size", [], |r| r.get(0))?,
                c.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            ))
        };
        if shape(&o)? != shape(&r)? {
            return Ok(false);
        }
        // No ORDER BY: the table yields pages in page order by itself, and
        // asking for an order could make SQLite read every page into a
        // sorter before the first comparison. The page numbers are compared
        // anyway, so an unexpected order can only answer "not the same".
        let sql = "SELECT pgno, data FROM sqlite_dbpage";
        let (mut so, mut sr) = (o.prepare(sql)?, r.prepare(sql)?);
        let (mut ro, mut rr) = (so.query([])?, sr.query([])?);
        loop {
            match (ro.next()?, rr.next()?) {
                (None, None) => return Ok(true),
                (Some(a), Some(b)) => {
                    let pgno: u32 = a.get(0)?;
                    if pgno != b.get::<_, u32>(0)? {
                        return Ok(false);
                    }
                    let (x, y) = (a.get_ref(1)?.as_blob()?, b.get_ref(1)?.as_blob()?);
                    let equal = if pgno == 1 && x.len() >= 100 && y.len() == x.len() {
                        // Bytes 18-19 (journal mode) must match too, unless
                        // the replica is in WAL mode: sqlite3_rsync keeps a WAL
                        // replica in WAL mode whatever the origin is, but would
                        // switch a rollback replica of a WAL origin to WAL.
                        x[..18] == y[..18]
                            && (x[18..20] == y[18..20] || y[18] == 2)
                            && x[20..24] == y[20..24]
                            && x[28..92] == y[28..92]
                            && x[100..] == y[100..]
                    } else {
                        x == y
                    };
                    if !equal {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
    }
    compare(origin, replica).unwrap_or(false)
}
