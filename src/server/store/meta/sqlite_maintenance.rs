//! The maintenance half of the SQLite metadata: retention policies, prunes,
//! compaction's pack rewrites and replica deletion.
//!
//! Kept apart from [`super::sqlite`] (sessions' reads and commits) because
//! these statements have one rule of their own: each change that makes
//! stored pages unreferenced, or moves them, is one transaction that also
//! raises the maintenance generation, so that a reader in another process
//! (`verify` next to a live server) can tell a page that went away under
//! it from a page that is damaged.

use anyhow::{Context, Result, ensure};
use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite::{decode_delta, encode_delta};
use super::{DeletedReplica, PackRewrite, PruneWrite, now};
use crate::server::store::pages::{BlobLocation, PageHash};

pub(super) fn retention(c: &Connection, scope: &str) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT policy FROM retention WHERE scope=?1",
        [scope],
        |r| r.get(0),
    )
    .optional()?)
}

pub(super) fn set_retention(c: &Connection, scope: &str, policy: Option<&str>) -> Result<()> {
    match policy {
        Some(p) => c.execute(
            "INSERT INTO retention(scope, policy, set_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(scope) DO UPDATE SET policy=?2, set_at=?3",
            params![scope, p, now()],
        )?,
        None => c.execute("DELETE FROM retention WHERE scope=?1", [scope])?,
    };
    Ok(())
}

pub(super) fn retentions(c: &Connection) -> Result<Vec<(String, String)>> {
    let mut st = c.prepare("SELECT scope, policy FROM retention ORDER BY scope")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Raises the maintenance generation (inside the caller's transaction).
fn bump(c: &Connection) -> Result<()> {
    c.execute(
        "INSERT INTO maintenance(id, generation) VALUES (1, 1)
         ON CONFLICT(id) DO UPDATE SET generation = generation + 1",
        [],
    )?;
    Ok(())
}

pub(super) fn generation(c: &Connection) -> Result<u64> {
    let g: Option<i64> = c
        .query_row("SELECT generation FROM maintenance WHERE id=1", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(g.unwrap_or(0) as u64)
}

/// One replica's prune: every version marked and every merged delta
/// written, or nothing (a version that is the latest, or pruned already,
/// refuses the whole).
pub(super) fn prune_versions(c: &mut Connection, p: &PruneWrite<'_>) -> Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let latest: i64 = tx
        .query_row(
            "SELECT latest FROM replicas WHERE id=?1",
            [p.replica],
            |r| r.get(0),
        )
        .optional()?
        .context("the replica is gone")?;
    for &n in p.pruned {
        ensure!((n as i64) < latest, "version {n} is the latest");
        let changed = tx.execute(
            "UPDATE versions SET pruned=?3, pruned_reason=?4, back_delta=NULL
             WHERE replica=?1 AND number=?2 AND pruned IS NULL",
            params![p.replica, n as i64, p.at, p.reason],
        )?;
        ensure!(changed == 1, "version {n} is gone or pruned already");
    }
    for (n, delta) in p.merged {
        let changed = tx.execute(
            "UPDATE versions SET back_delta=?3 WHERE replica=?1 AND number=?2 AND pruned IS NULL",
            params![p.replica, *n as i64, encode_delta(delta)],
        )?;
        ensure!(changed == 1, "version {n}, kept, is gone or pruned");
    }
    bump(&tx)?;
    tx.commit()?;
    Ok(())
}

pub(super) fn for_each_delta(
    c: &Connection,
    f: &mut dyn FnMut(i64, u64, Vec<(u32, PageHash)>) -> Result<()>,
) -> Result<()> {
    let mut st =
        c.prepare("SELECT replica, number, back_delta FROM versions WHERE back_delta IS NOT NULL")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let blob: Vec<u8> = r.get(2)?;
        f(r.get(0)?, r.get::<_, i64>(1)? as u64, decode_delta(&blob)?)?;
    }
    Ok(())
}

pub(super) fn blobs_in_pack(c: &Connection, pack: u32) -> Result<Vec<(PageHash, BlobLocation)>> {
    let mut st = c.prepare(
        "SELECT hash, offset, stored_len, compressed FROM blobs WHERE pack=?1 ORDER BY offset",
    )?;
    let rows = st.query_map([pack], |r| {
        let h: Vec<u8> = r.get(0)?;
        Ok((
            h,
            BlobLocation {
                pack,
                offset: r.get::<_, i64>(1)? as u64,
                stored_len: r.get(2)?,
                compressed: r.get(3)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (h, loc) = row?;
        let hash: PageHash = h.as_slice().try_into().context("damaged page index row")?;
        out.push((hash, loc));
    }
    Ok(out)
}

/// A rewritten pack's one transaction: moved rows, the rest of the pack's
/// rows dropped, the pack retired, the compaction's record ended.
pub(super) fn rewrite_pack(c: &mut Connection, w: &PackRewrite<'_>) -> Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut up = tx.prepare(
            "UPDATE blobs SET pack=?2, offset=?3, stored_len=?4, compressed=?5
             WHERE hash=?1 AND pack=?6",
        )?;
        for (h, loc) in w.moved {
            let n = up.execute(params![
                &h[..],
                loc.pack,
                loc.offset as i64,
                loc.stored_len,
                loc.compressed,
                w.pack
            ])?;
            ensure!(n == 1, "a page moved out of pack {} meanwhile", w.pack);
        }
    }
    tx.execute("DELETE FROM blobs WHERE pack=?1", [w.pack])?;
    tx.execute(
        "INSERT OR IGNORE INTO retired_packs(pack) VALUES (?1)",
        [w.pack],
    )?;
    tx.execute("DELETE FROM commits_in_flight WHERE id=?1", [w.in_flight])?;
    bump(&tx)?;
    tx.commit()?;
    let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(())
}

pub(super) fn retired_packs(c: &Connection) -> Result<Vec<u32>> {
    let mut st = c.prepare("SELECT pack FROM retired_packs ORDER BY pack")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn forget_retired_pack(c: &Connection, pack: u32) -> Result<()> {
    c.execute("DELETE FROM retired_packs WHERE pack=?1", [pack])?;
    Ok(())
}

/// Replica `id` and everything that names it, in one transaction.
pub(super) fn delete_replica(c: &mut Connection, id: i64) -> Result<DeletedReplica> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (path, uid): (String, String) = tx
        .query_row("SELECT path, uid FROM replicas WHERE id=?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .context("no such replica")?;
    // Its folder is garbage now; recovery may remove it if we die first.
    tx.execute(
        "INSERT OR IGNORE INTO deleted_replicas(uid) VALUES (?1)",
        [&uid],
    )?;
    let versions = tx.execute("DELETE FROM versions WHERE replica=?1", [id])? as u64;
    let keys = tx.execute("DELETE FROM keys WHERE replica=?1", [id])? as u64;
    tx.execute("DELETE FROM retention WHERE scope=?1", [&path])?;
    tx.execute("DELETE FROM replicas WHERE id=?1", [id])?;
    bump(&tx)?;
    tx.commit()?;
    Ok(DeletedReplica { versions, keys })
}

pub(super) fn deleted_replicas(c: &Connection) -> Result<Vec<String>> {
    let mut st = c.prepare("SELECT uid FROM deleted_replicas ORDER BY uid")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn forget_deleted_replica(c: &Connection, uid: &str) -> Result<()> {
    c.execute("DELETE FROM deleted_replicas WHERE uid=?1", [uid])?;
    Ok(())
}
