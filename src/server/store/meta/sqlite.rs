//! The SQLite backend of [`MetaBackend`]: `DATA_DIR/meta.db`.
//!
//! SQLite in WAL mode so the web pages read while a commit writes; every
//! version commit is one transaction, which is what makes it atomic. This
//! file and its maintenance half ([`super::sqlite_maintenance`]: retention,
//! prune, compaction, replica deletion) are the only places in the server
//! that hold SQL (besides putting a pushed database file back in rollback
//! mode, [`crate::server::store::disk`]).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite_maintenance as maint;
use super::{
    DeletedReplica, Expectation, InFlight, LatestSnapshot, MetaBackend, NamespaceRow, NewKey,
    NewVersion, PackRewrite, PruneWrite, Pruned, Renamed, ReplicaRow, StoreTotals, StoredKey,
    VersionDelta, VersionRow, now,
};
use crate::server::store::pages::{BlobLocation, BlobPosition, PageHash};

/// Schema, created on first open. `replicas.latest_sums` is the SHA-256 of
/// every page of the latest version (32 bytes per page), the checksum of the
/// materialised latest file; `versions.back_delta` lists, for a version older
/// than the latest, the pages in which it differs from the next version as
/// (pgno u32 big-endian, page hash) records. `replicas.latest_xxh3` is the
/// XXH3-128 of every page of the latest version (16 bytes per page), from
/// which a commit computes `versions.version_xxh3` by hashing only the
/// pages that changed (both are added to older stores by [`open`]).
/// `keys.minted_by` is the id of the key whose session minted a key
/// (revoking it revokes what it minted), `keys.minted_on` that session's
/// kind (`push`, `pull`), `keys.minted_for` a digest of whom a pull's key
/// was minted for (client id and local path), `keys.label` the operator's note, and
/// `keys.last_used` when the key last opened a session (kept to the
/// minute); all five are added to older stores by [`open`], where their
/// keys keep NULL (made before keys were tied to their minter).
/// `versions_created` finds a point in time ([`version_at`]) without
/// reading a long history.
/// `expectations` holds the replicas' expected push intervals (dead-man
/// notifications), by replica id and uid (a row id a removed replica
/// leaves may be reused; its interval must not pass to the new replica):
/// `since` when it was set, `last_push` the last push
/// session a server saw succeed, `notified` `'overdue'` while an overdue
/// notice is out for the current silence (NULL otherwise), so that a
/// restart does not send it again, and `notified_last_push` the last push
/// that notice named (a push since is one that differs).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS namespaces(
  name TEXT PRIMARY KEY,
  created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys(
  id INTEGER PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  namespace TEXT NOT NULL,
  replica INTEGER,
  created TEXT NOT NULL,
  revoked TEXT,
  minted_by INTEGER,
  minted_on TEXT,
  minted_for TEXT,
  label TEXT,
  last_used TEXT
);
CREATE TABLE IF NOT EXISTS replicas(
  id INTEGER PRIMARY KEY,
  uid TEXT NOT NULL UNIQUE,
  namespace TEXT NOT NULL,
  path TEXT NOT NULL UNIQUE,
  visibility TEXT NOT NULL,
  created TEXT NOT NULL,
  latest INTEGER NOT NULL DEFAULT 0,
  latest_sums BLOB,
  latest_xxh3 BLOB
);
CREATE TABLE IF NOT EXISTS versions(
  replica INTEGER NOT NULL,
  number INTEGER NOT NULL,
  created TEXT NOT NULL,
  page_size INTEGER NOT NULL,
  page_count INTEGER NOT NULL,
  changed_pages INTEGER NOT NULL,
  message TEXT NOT NULL DEFAULT '',
  version_hash TEXT NOT NULL,
  back_delta BLOB,
  version_xxh3 TEXT,
  PRIMARY KEY(replica, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs(
  hash BLOB PRIMARY KEY,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored_len INTEGER NOT NULL,
  compressed INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits_in_flight(
  id INTEGER PRIMARY KEY,
  replica INTEGER NOT NULL,
  number INTEGER NOT NULL,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_created ON versions(replica, created);
CREATE TABLE IF NOT EXISTS retention(
  scope TEXT PRIMARY KEY,
  policy TEXT NOT NULL,
  set_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retired_packs(
  pack INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS deleted_replicas(
  uid TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS maintenance(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS expectations(
  replica INTEGER PRIMARY KEY,
  uid TEXT NOT NULL,
  every_ms INTEGER NOT NULL,
  since TEXT NOT NULL,
  last_push TEXT,
  notified TEXT,
  notified_at TEXT,
  notified_last_push TEXT
);
";

/// The metadata in one SQLite database.
pub struct SqliteMeta {
    /// The connection (short statements and commit transactions).
    c: Connection,
}

impl SqliteMeta {
    /// Opens (creating) the database at `path`, adding what an older
    /// release's schema lacks.
    pub fn open(path: &Path) -> Result<SqliteMeta> {
        Ok(SqliteMeta { c: open(path)? })
    }

    /// True when there is a database at `path`.
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }
}

fn open(path: &Path) -> Result<Connection> {
    let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    c.execute_batch(SCHEMA)?;
    add_column(&c, "replicas", "latest_xxh3", "BLOB")?;
    add_column(&c, "versions", "version_xxh3", "TEXT")?;
    add_column(&c, "versions", "pruned", "TEXT")?;
    add_column(&c, "versions", "pruned_reason", "TEXT")?;
    for (column, decl) in [
        ("minted_by", "INTEGER"),
        ("minted_on", "TEXT"),
        ("minted_for", "TEXT"),
        ("label", "TEXT"),
        ("last_used", "TEXT"),
    ] {
        add_column(&c, "keys", column, decl)?;
    }
    // After the columns: revocation follows minted_by down the tree.
    c.execute_batch("CREATE INDEX IF NOT EXISTS keys_minted_by ON keys(minted_by)")?;
    Ok(c)
}

/// Adds a column a store made by an older release lacks (`CREATE TABLE IF
/// NOT EXISTS` leaves its tables as they were).
fn add_column(c: &Connection, table: &str, column: &str, decl: &str) -> Result<()> {
    let has: bool = c.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name=?1"),
        [column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
            .with_context(|| format!("adding {table}.{column} to an older store"))?;
    }
    Ok(())
}

const REPLICA_COLS: &str = "id, uid, namespace, path, visibility, created, latest";

fn replica_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReplicaRow> {
    Ok(ReplicaRow {
        id: r.get(0)?,
        uid: r.get(1)?,
        namespace: r.get(2)?,
        path: r.get(3)?,
        visibility: r.get(4)?,
        created: r.get(5)?,
        latest: r.get::<_, i64>(6)? as u64,
    })
}

fn replica_by_path(c: &Connection, path: &str) -> Result<Option<ReplicaRow>> {
    Ok(c.query_row(
        &format!("SELECT {REPLICA_COLS} FROM replicas WHERE path=?1"),
        [path],
        replica_row,
    )
    .optional()?)
}

fn replica_by_id(c: &Connection, id: i64) -> Result<Option<ReplicaRow>> {
    Ok(c.query_row(
        &format!("SELECT {REPLICA_COLS} FROM replicas WHERE id=?1"),
        [id],
        replica_row,
    )
    .optional()?)
}

fn replicas_of(c: &Connection, namespace: &str) -> Result<Vec<ReplicaRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {REPLICA_COLS} FROM replicas WHERE namespace=?1 ORDER BY path"
    ))?;
    let rows = st.query_map([namespace], replica_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn all_replicas(c: &Connection) -> Result<Vec<ReplicaRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {REPLICA_COLS} FROM replicas ORDER BY path"
    ))?;
    let rows = st.query_map([], replica_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Creates the replica unless it exists (a concurrent first push may win);
/// returns the row either way.
fn create_replica(
    c: &Connection,
    namespace: &str,
    path: &str,
    visibility: &str,
) -> Result<ReplicaRow> {
    c.execute(
        "INSERT OR IGNORE INTO replicas(uid, namespace, path, visibility, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![uuid::Uuid::new_v4().to_string(), namespace, path, visibility, now()],
    )?;
    replica_by_path(c, path)?.context("replica vanished after creation")
}

fn namespace_exists(c: &Connection, name: &str) -> Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM namespaces WHERE name=?1", [name], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

const VERSION_COLS: &str = "number, created, page_size, page_count, changed_pages, message, \
     version_hash, version_xxh3, pruned, pruned_reason";

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        number: r.get::<_, i64>(0)? as u64,
        created: r.get(1)?,
        page_size: r.get(2)?,
        page_count: r.get(3)?,
        changed_pages: r.get(4)?,
        message: r.get(5)?,
        version_hash: r.get(6)?,
        version_xxh3: r.get(7)?,
        pruned: match r.get::<_, Option<String>>(8)? {
            Some(at) => Some(Pruned {
                at,
                reason: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
            }),
            None => None,
        },
    })
}

fn version(c: &Connection, replica: i64, number: u64) -> Result<Option<VersionRow>> {
    Ok(c.query_row(
        &format!("SELECT {VERSION_COLS} FROM versions WHERE replica=?1 AND number=?2"),
        params![replica, number as i64],
        version_row,
    )
    .optional()?)
}

/// Versions of a replica, newest first.
fn versions(c: &Connection, replica: i64) -> Result<Vec<VersionRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {VERSION_COLS} FROM versions WHERE replica=?1 ORDER BY number DESC"
    ))?;
    let rows = st.query_map([replica], version_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn back_delta(c: &Connection, replica: i64, number: u64) -> Result<Vec<(u32, PageHash)>> {
    let blob: Option<Vec<u8>> = c.query_row(
        "SELECT back_delta FROM versions WHERE replica=?1 AND number=?2",
        params![replica, number as i64],
        |r| r.get(0),
    )?;
    decode_delta(&blob.unwrap_or_default())
}

/// A version's row and back delta, read together.
fn version_and_delta(c: &Connection, replica: i64, number: u64) -> Result<Option<VersionDelta>> {
    let found = c
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS}, back_delta FROM versions WHERE replica=?1 AND number=?2"
        ))?
        .query_row(params![replica, number as i64], |r| {
            // After the VERSION_COLS, which version_row reads.
            Ok((version_row(r)?, r.get::<_, Option<Vec<u8>>>(10)?))
        })
        .optional()?;
    found
        .map(|(row, blob)| Ok((row, decode_delta(&blob.unwrap_or_default())?)))
        .transpose()
}

pub(super) fn encode_delta(entries: &[(u32, PageHash)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 36);
    for (pgno, h) in entries {
        v.extend_from_slice(&pgno.to_be_bytes());
        v.extend_from_slice(h);
    }
    v
}

pub(super) fn decode_delta(b: &[u8]) -> Result<Vec<(u32, PageHash)>> {
    anyhow::ensure!(
        b.len().is_multiple_of(36),
        "damaged version delta ({} bytes)",
        b.len()
    );
    Ok(b.chunks_exact(36)
        .map(|c| {
            let pgno = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let mut h = [0u8; 32];
            h.copy_from_slice(&c[4..]);
            (pgno, h)
        })
        .collect())
}

fn latest_sums(c: &Connection, replica: i64) -> Result<Vec<PageHash>> {
    latest_digests(c, replica, "latest_sums", "damaged page checksums")
}

/// `replicas.latest_xxh3`: the latest version's page digests (16 bytes
/// each), empty when the store has none yet.
fn latest_xxh3(c: &Connection, replica: i64) -> Result<Vec<[u8; 16]>> {
    latest_digests(c, replica, "latest_xxh3", "damaged page digests")
}

/// A replica's per-page digests of `N` bytes each, kept concatenated in
/// `column` (one of this file's own column names, never input).
fn latest_digests<const N: usize>(
    c: &Connection,
    replica: i64,
    column: &'static str,
    damaged: &'static str,
) -> Result<Vec<[u8; N]>> {
    let b: Option<Vec<u8>> = c.query_row(
        &format!("SELECT {column} FROM replicas WHERE id=?1"),
        [replica],
        |r| r.get(0),
    )?;
    let b = b.unwrap_or_default();
    anyhow::ensure!(b.len().is_multiple_of(N), "{damaged}");
    Ok(b.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks of N bytes"))
        .collect())
}

/// Where each page of `hashes` is, in their order. Looked up in hash
/// order, so the index is walked once from one end to the other instead of
/// at random: a rebuild of a large version asks for tens of thousands.
fn blobs(c: &Connection, hashes: &[PageHash]) -> Result<Vec<Option<BlobLocation>>> {
    let mut order: Vec<usize> = (0..hashes.len()).collect();
    order.sort_unstable_by_key(|&i| hashes[i]);
    let mut found = vec![None; hashes.len()];
    let mut st = c.prepare_cached(BLOB_BY_HASH)?;
    for i in order {
        found[i] = st.query_row([&hashes[i][..]], blob_location).optional()?;
    }
    Ok(found)
}

const BLOB_BY_HASH: &str = "SELECT pack, offset, stored_len, compressed FROM blobs WHERE hash=?1";

fn blob_location(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobLocation> {
    Ok(BlobLocation {
        pack: r.get(0)?,
        offset: r.get::<_, i64>(1)? as u64,
        stored_len: r.get(2)?,
        compressed: r.get(3)?,
    })
}

fn blob(c: &Connection, hash: &PageHash) -> Result<Option<BlobLocation>> {
    // Cached: a commit looks up every page it stores.
    Ok(
        c.prepare_cached("SELECT pack, offset, stored_len, compressed FROM blobs WHERE hash=?1")?
            .query_row([&hash[..]], |r| {
                Ok(BlobLocation {
                    pack: r.get(0)?,
                    offset: r.get::<_, i64>(1)? as u64,
                    stored_len: r.get(2)?,
                    compressed: r.get(3)?,
                })
            })
            .optional()?,
    )
}

/// End of the last indexed blob of a pack.
fn pack_end(c: &Connection, pack: u32) -> Result<u64> {
    let end: Option<i64> = c.query_row(
        "SELECT max(offset + stored_len) FROM blobs WHERE pack=?1",
        [pack],
        |r| r.get(0),
    )?;
    Ok(end.unwrap_or(0) as u64)
}

/// The end of the referenced bytes of every pack that has any.
fn pack_ends(c: &Connection) -> Result<Vec<(u32, u64)>> {
    let mut st =
        c.prepare("SELECT pack, max(offset + stored_len) FROM blobs GROUP BY pack ORDER BY pack")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn begin_commit(c: &Connection, replica: i64, number: u64, start: BlobPosition) -> Result<i64> {
    c.execute(
        "INSERT INTO commits_in_flight(replica, number, pack, offset) VALUES (?1, ?2, ?3, ?4)",
        params![replica, number as i64, start.pack, start.offset as i64],
    )?;
    Ok(c.last_insert_rowid())
}

fn commits_in_flight(c: &Connection) -> Result<Vec<InFlight>> {
    let mut st = c.prepare("SELECT id, replica, number, pack, offset FROM commits_in_flight")?;
    let rows = st.query_map([], |r| {
        Ok(InFlight {
            id: r.get(0)?,
            replica: r.get(1)?,
            number: r.get::<_, i64>(2)? as u64,
            start: BlobPosition {
                pack: r.get(3)?,
                offset: r.get::<_, i64>(4)? as u64,
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes replica `id` when it has no version and no key.
fn remove_replica_if_empty(c: &Connection, id: i64) -> Result<bool> {
    let n = c.execute(
        "DELETE FROM replicas WHERE id=?1 AND latest=0
           AND NOT EXISTS (SELECT 1 FROM versions WHERE replica=?1)
           AND NOT EXISTS (SELECT 1 FROM keys WHERE replica=?1)",
        [id],
    )?;
    Ok(n == 1)
}

fn all_blobs(c: &Connection) -> Result<Vec<(PageHash, BlobLocation)>> {
    let mut st = c.prepare("SELECT hash, pack, offset, stored_len, compressed FROM blobs")?;
    let rows = st.query_map([], |r| {
        let h: Vec<u8> = r.get(0)?;
        let mut hash = [0u8; 32];
        if h.len() == 32 {
            hash.copy_from_slice(&h);
        }
        Ok((
            hash,
            BlobLocation {
                pack: r.get(1)?,
                offset: r.get::<_, i64>(2)? as u64,
                stored_len: r.get(3)?,
                compressed: r.get(4)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One version's metadata transaction: its pages' index rows, the back
/// delta of its predecessor, its row, the replica's new latest with its
/// checksums, and the push's keys. Then the WAL is checkpointed.
fn commit_version(c: &mut Connection, v: &NewVersion<'_>) -> Result<()> {
    let row = v.row;
    let number = row.number;
    let tx = c.transaction()?;
    // The commit point also ends the record that it was in flight.
    if let Some(id) = v.in_flight {
        tx.execute("DELETE FROM commits_in_flight WHERE id=?1", [id])?;
    }
    {
        let mut ins = tx.prepare(
            "INSERT OR IGNORE INTO blobs(hash, pack, offset, stored_len, compressed) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (h, loc) in v.blobs {
            ins.execute(params![
                &h[..],
                loc.pack,
                loc.offset as i64,
                loc.stored_len,
                loc.compressed
            ])?;
        }
    }
    if number > 1 {
        tx.execute(
            "UPDATE versions SET back_delta=?3 WHERE replica=?1 AND number=?2",
            params![v.replica, (number - 1) as i64, encode_delta(v.back_delta)],
        )?;
    }
    tx.execute(
        "INSERT INTO versions(replica, number, created, page_size, page_count, changed_pages, message, version_hash, version_xxh3)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            v.replica,
            number as i64,
            row.created,
            row.page_size,
            row.page_count,
            row.changed_pages,
            row.message,
            row.version_hash,
            row.version_xxh3
        ],
    )?;
    let sums_blob: Vec<u8> = v.sums.iter().flatten().copied().collect();
    let xxh3_blob: Vec<u8> = v.xxh3.iter().flatten().copied().collect();
    let n = tx.execute(
        "UPDATE replicas SET latest=?2, latest_sums=?3, latest_xxh3=?5 WHERE id=?1 AND latest=?4",
        params![
            v.replica,
            number as i64,
            sums_blob,
            (number - 1) as i64,
            xxh3_blob
        ],
    )?;
    ensure!(n == 1, "the replica changed under a serialised push");
    insert_keys(&tx, v.keys)?;
    tx.commit()?;
    // Keep the metadata WAL from growing between idle periods; a busy
    // reader just makes this a no-op.
    let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(())
}

/// The latest version of replica `id`, its row and checksums, in one read
/// transaction.
fn latest_snapshot(c: &mut Connection, id: i64) -> Result<LatestSnapshot> {
    let tx = c.transaction()?;
    let latest = replica_by_id(&tx, id)?
        .context("replica row missing")?
        .latest;
    let row = version(&tx, id, latest)?;
    let sums = latest_sums(&tx, id)?;
    tx.commit()?;
    Ok(LatestSnapshot { latest, row, sums })
}

fn insert_keys(c: &Connection, keys: &[NewKey]) -> Result<()> {
    for k in keys {
        c.execute(
            "INSERT INTO keys(hash, kind, namespace, replica, created, minted_by, minted_on, minted_for, label)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &k.hash[..],
                k.kind,
                k.namespace,
                k.replica,
                now(),
                k.minted_by,
                k.minted_on,
                k.minted_for,
                k.label
            ],
        )?;
    }
    Ok(())
}

/// Inserts `k` after revoking the active, never used keys it replaces:
/// same kind, replica, minter, kind of session and destination. Keys
/// without a minter replace nothing.
fn replace_minted_key(c: &mut Connection, k: &NewKey) -> Result<()> {
    let tx = c.transaction()?;
    if k.minted_by.is_some() {
        tx.execute(
            "UPDATE keys SET revoked=?1 WHERE (revoked IS NULL OR revoked > ?1) AND last_used IS NULL
               AND kind=?2 AND replica IS ?3
               AND minted_by=?4 AND minted_on IS ?5 AND minted_for IS ?6",
            params![
                now(),
                k.kind,
                k.replica,
                k.minted_by,
                k.minted_on,
                k.minted_for
            ],
        )?;
    }
    insert_keys(&tx, std::slice::from_ref(k))?;
    tx.commit()?;
    Ok(())
}

/// Revokes the active keys minted before key `id` with the same kind,
/// replica, minter, kind of session and destination (none when `id` was
/// not minted).
fn supersede_minted(c: &Connection, id: i64) -> Result<usize> {
    Ok(c.execute(
        "UPDATE keys SET revoked=?2 WHERE (revoked IS NULL OR revoked > ?2) AND id < ?1 AND id IN (
           SELECT o.id FROM keys o JOIN keys n ON n.id = ?1
            WHERE n.minted_by IS NOT NULL AND o.minted_by = n.minted_by
              AND o.kind = n.kind AND o.replica IS n.replica
              AND o.minted_on IS n.minted_on AND o.minted_for IS n.minted_for)",
        params![id, now()],
    )?)
}

fn touch_key(c: &Connection, id: i64, at: &str) -> Result<()> {
    c.execute("UPDATE keys SET last_used=?2 WHERE id=?1", params![id, at])?;
    Ok(())
}

/// A transaction that reads before it writes, begun IMMEDIATE: a deferred
/// one would take its read snapshot first and then fail at once with
/// "database is locked" (no busy wait in WAL mode) if the server wrote in
/// between, which it does whenever a key is used (`touch_key`).
fn write_transaction(c: &mut Connection) -> Result<rusqlite::Transaction<'_>> {
    Ok(c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
}

fn create_namespace(c: &mut Connection, name: &str, admin: &NewKey) -> Result<bool> {
    let tx = write_transaction(c)?;
    if namespace_exists(&tx, name)? {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO namespaces(name, created) VALUES (?1, ?2)",
        params![name, now()],
    )?;
    insert_keys(&tx, std::slice::from_ref(admin))?;
    tx.commit()?;
    Ok(true)
}

/// One read of the counts `/metrics` shows; the latest pages are each
/// replica's latest version row, found by primary key.
fn totals(c: &Connection) -> Result<StoreTotals> {
    let n = |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(c.query_row(
        "SELECT (SELECT count(*) FROM replicas), \
         (SELECT count(*) FROM versions WHERE pruned IS NULL), \
         (SELECT coalesce(sum(v.page_count), 0) FROM replicas r \
            JOIN versions v ON v.replica = r.id AND v.number = r.latest), \
         (SELECT count(*) FROM blobs)",
        [],
        |r| {
            Ok(StoreTotals {
                replicas: n(r, 0)?,
                versions: n(r, 1)?,
                latest_pages: n(r, 2)?,
                pack_pages: n(r, 3)?,
            })
        },
    )?)
}

fn namespaces(c: &Connection) -> Result<Vec<NamespaceRow>> {
    let mut st = c.prepare(
        "SELECT n.name, n.created, (SELECT count(*) FROM replicas r WHERE r.namespace=n.name) FROM namespaces n ORDER BY n.name",
    )?;
    let rows = st.query_map([], |r| {
        Ok(NamespaceRow {
            name: r.get(0)?,
            created: r.get(1)?,
            replicas: r.get::<_, i64>(2)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

const KEY_COLS: &str = "k.id, k.kind, k.namespace, k.replica, k.created, k.revoked, k.minted_by, k.minted_on, k.label, k.last_used";

fn stored_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        id: r.get(0)?,
        kind: r.get(1)?,
        namespace: r.get(2)?,
        replica: r.get(3)?,
        created: r.get(4)?,
        revoked: r.get(5)?,
        minted_by: r.get(6)?,
        minted_on: r.get(7)?,
        label: r.get(8)?,
        last_used: r.get(9)?,
    })
}

fn key_by_hash(c: &Connection, hash: &[u8; 32]) -> Result<Option<(StoredKey, Vec<u8>)>> {
    // Cached: every keyed session asks.
    Ok(c.prepare_cached(&format!(
        "SELECT {KEY_COLS}, k.hash FROM keys k WHERE k.hash=?1"
    ))?
    .query_row([&hash[..]], |r| {
        Ok((stored_key(r)?, r.get::<_, Vec<u8>>(10)?))
    })
    .optional()?)
}

fn keys_of(c: &Connection, namespace: &str) -> Result<Vec<(StoredKey, Option<String>)>> {
    let mut st = c.prepare(&format!(
        "SELECT {KEY_COLS}, r.path
         FROM keys k LEFT JOIN replicas r ON r.id = k.replica WHERE k.namespace=?1 ORDER BY k.id"
    ))?;
    let rows = st.query_map([namespace], |r| {
        Ok((stored_key(r)?, r.get::<_, Option<String>>(10)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revokes active key `id` and, in the same transaction, every active key
/// minted from it, following `minted_by` down (revoked keys on the way
/// are followed too: what they minted must not outlive them either).
fn revoke_key(c: &mut Connection, namespace: &str, id: i64) -> Result<usize> {
    let tx = write_transaction(c)?;
    let active = tx
        .query_row(
            "SELECT 1 FROM keys WHERE id=?1 AND namespace=?2 AND (revoked IS NULL OR revoked > ?3)",
            params![id, namespace, now()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !active {
        return Ok(0);
    }
    let n = tx.execute(
        "WITH RECURSIVE tree(id) AS (
           SELECT ?1
           UNION SELECT k.id FROM keys k JOIN tree t ON k.minted_by = t.id
         )
         UPDATE keys SET revoked=?2 WHERE (revoked IS NULL OR revoked > ?2) AND id IN (SELECT id FROM tree)",
        params![id, now()],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Makes active key `id` stop working at `at` (a revocation in the
/// future; never later than one already set); false when there is no
/// such active key.
fn expire_key(c: &Connection, namespace: &str, id: i64, at: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE keys SET revoked=?3 WHERE id=?1 AND namespace=?2
           AND (revoked IS NULL OR (revoked > ?3 AND revoked > ?4))",
        params![id, namespace, at, now()],
    )? > 0)
}

impl MetaBackend for SqliteMeta {
    fn all_replicas(&self) -> Result<Vec<ReplicaRow>> {
        all_replicas(&self.c)
    }
    fn replica_by_path(&self, path: &str) -> Result<Option<ReplicaRow>> {
        replica_by_path(&self.c, path)
    }
    fn replica_by_id(&self, id: i64) -> Result<Option<ReplicaRow>> {
        replica_by_id(&self.c, id)
    }
    fn replicas_of(&self, namespace: &str) -> Result<Vec<ReplicaRow>> {
        replicas_of(&self.c, namespace)
    }
    fn create_replica(
        &mut self,
        namespace: &str,
        path: &str,
        visibility: &str,
    ) -> Result<ReplicaRow> {
        create_replica(&self.c, namespace, path, visibility)
    }
    fn remove_replica_if_empty(&mut self, id: i64) -> Result<bool> {
        remove_replica_if_empty(&self.c, id)
    }
    fn set_visibility(&mut self, id: i64, visibility: &str) -> Result<()> {
        self.c.execute(
            "UPDATE replicas SET visibility=?2 WHERE id=?1",
            rusqlite::params![id, visibility],
        )?;
        Ok(())
    }
    fn version(&self, replica: i64, number: u64) -> Result<Option<VersionRow>> {
        version(&self.c, replica, number)
    }
    fn versions(&self, replica: i64) -> Result<Vec<VersionRow>> {
        versions(&self.c, replica)
    }
    fn back_delta(&self, replica: i64, number: u64) -> Result<Vec<(u32, PageHash)>> {
        back_delta(&self.c, replica, number)
    }
    fn latest_sums(&self, replica: i64) -> Result<Vec<PageHash>> {
        latest_sums(&self.c, replica)
    }
    fn latest_xxh3(&self, replica: i64) -> Result<Vec<[u8; 16]>> {
        latest_xxh3(&self.c, replica)
    }
    fn latest_snapshot(&mut self, replica: i64) -> Result<LatestSnapshot> {
        latest_snapshot(&mut self.c, replica)
    }
    fn commit_version(&mut self, v: &NewVersion<'_>) -> Result<()> {
        commit_version(&mut self.c, v)
    }
    fn blob(&self, hash: &PageHash) -> Result<Option<BlobLocation>> {
        blob(&self.c, hash)
    }
    fn all_blobs(&self) -> Result<Vec<(PageHash, BlobLocation)>> {
        all_blobs(&self.c)
    }
    fn pack_end(&self, pack: u32) -> Result<u64> {
        pack_end(&self.c, pack)
    }
    fn pack_ends(&self) -> Result<Vec<(u32, u64)>> {
        pack_ends(&self.c)
    }
    fn begin_commit(&mut self, replica: i64, number: u64, start: BlobPosition) -> Result<i64> {
        begin_commit(&self.c, replica, number, start)
    }
    fn end_commit(&mut self, id: i64) -> Result<()> {
        self.c
            .execute("DELETE FROM commits_in_flight WHERE id=?1", [id])?;
        Ok(())
    }
    fn commits_in_flight(&self) -> Result<Vec<InFlight>> {
        commits_in_flight(&self.c)
    }
    fn namespace_exists(&self, name: &str) -> Result<bool> {
        namespace_exists(&self.c, name)
    }
    fn create_namespace(&mut self, name: &str, admin: &NewKey) -> Result<bool> {
        create_namespace(&mut self.c, name, admin)
    }
    fn namespaces(&self) -> Result<Vec<NamespaceRow>> {
        namespaces(&self.c)
    }
    fn totals(&self) -> Result<StoreTotals> {
        totals(&self.c)
    }
    fn add_keys(&mut self, keys: &[NewKey]) -> Result<()> {
        let tx = self.c.transaction()?;
        insert_keys(&tx, keys)?;
        tx.commit()?;
        Ok(())
    }
    fn replace_minted_key(&mut self, key: &NewKey) -> Result<()> {
        replace_minted_key(&mut self.c, key)
    }
    fn touch_key(&mut self, id: i64, at: &str) -> Result<()> {
        touch_key(&self.c, id, at)
    }
    fn supersede_minted(&mut self, id: i64) -> Result<usize> {
        supersede_minted(&self.c, id)
    }
    fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<(StoredKey, Vec<u8>)>> {
        key_by_hash(&self.c, hash)
    }
    fn keys_of(&self, namespace: &str) -> Result<Vec<(StoredKey, Option<String>)>> {
        keys_of(&self.c, namespace)
    }
    fn expire_key(&mut self, namespace: &str, id: i64, at: &str) -> Result<bool> {
        expire_key(&self.c, namespace, id, at)
    }
    fn revoke_key(&mut self, namespace: &str, id: i64) -> Result<usize> {
        revoke_key(&mut self.c, namespace, id)
    }
    fn version_at(&self, replica: i64, at: &str) -> Result<Option<VersionRow>> {
        version_at(&self.c, replica, at)
    }
    fn versions_page(
        &self,
        replica: i64,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>> {
        versions_page(&self.c, replica, before, limit)
    }
    fn version_count(&self, replica: i64) -> Result<u64> {
        Ok(self.c.query_row(
            "SELECT count(*) FROM versions WHERE replica=?1",
            [replica],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
    fn rename_replica(&mut self, id: i64, from: &str, to: &str) -> Result<Renamed> {
        rename_replica(&mut self.c, id, from, to)
    }
    fn retention(&self, scope: &str) -> Result<Option<String>> {
        maint::retention(&self.c, scope)
    }
    fn set_retention(&mut self, scope: &str, policy: Option<&str>) -> Result<()> {
        maint::set_retention(&self.c, scope, policy)
    }
    fn retentions(&self) -> Result<Vec<(String, String)>> {
        maint::retentions(&self.c)
    }
    fn prune_versions(&mut self, p: &PruneWrite<'_>) -> Result<()> {
        maint::prune_versions(&mut self.c, p)
    }
    fn for_each_delta(
        &self,
        f: &mut dyn FnMut(i64, u64, Vec<(u32, PageHash)>) -> Result<()>,
    ) -> Result<()> {
        maint::for_each_delta(&self.c, f)
    }
    fn blobs_in_pack(&self, pack: u32) -> Result<Vec<(PageHash, BlobLocation)>> {
        maint::blobs_in_pack(&self.c, pack)
    }
    fn rewrite_pack(&mut self, w: &PackRewrite<'_>) -> Result<()> {
        maint::rewrite_pack(&mut self.c, w)
    }
    fn retired_packs(&self) -> Result<Vec<u32>> {
        maint::retired_packs(&self.c)
    }
    fn forget_retired_pack(&mut self, pack: u32) -> Result<()> {
        maint::forget_retired_pack(&self.c, pack)
    }
    fn maintenance_generation(&self) -> Result<u64> {
        maint::generation(&self.c)
    }
    fn delete_replica(&mut self, id: i64) -> Result<DeletedReplica> {
        maint::delete_replica(&mut self.c, id)
    }
    fn deleted_replicas(&self) -> Result<Vec<String>> {
        maint::deleted_replicas(&self.c)
    }
    fn forget_deleted_replica(&mut self, uid: &str) -> Result<()> {
        maint::forget_deleted_replica(&self.c, uid)
    }
    fn vacuum(&mut self) -> Result<()> {
        self.c.execute_batch("VACUUM")?;
        let _ = self
            .c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(())
    }
    fn copy_to(
        &mut self,
        dest: &Path,
        hold: &mut dyn FnMut(&dyn MetaBackend) -> Result<()>,
    ) -> Result<()> {
        self.c.execute_batch("BEGIN DEFERRED")?;
        let copied = (|| {
            // The first read starts the snapshot that `hold` and the
            // backup both see: the backup API uses the source connection's
            // open read transaction instead of starting its own.
            self.c
                .query_row("SELECT count(*) FROM replicas", [], |_| Ok(()))?;
            hold(&*self)?;
            copy_database(&self.c, dest)
        })();
        let _ = self.c.execute_batch("COMMIT");
        copied
    }
    fn set_expectation(&mut self, replica: i64, every: Option<std::time::Duration>) -> Result<()> {
        set_expectation(&mut self.c, replica, every)
    }
    fn expectations(&self) -> Result<Vec<Expectation>> {
        expectations(&self.c)
    }
    fn note_push(&mut self, replica: i64, at: &str) -> Result<()> {
        self.c.execute(
            "UPDATE expectations SET last_push=?2 WHERE replica=?1",
            params![replica, at],
        )?;
        Ok(())
    }
    fn set_notified(
        &mut self,
        replica: i64,
        overdue: bool,
        last_push: Option<&str>,
        at: &str,
    ) -> Result<()> {
        self.c.execute(
            "UPDATE expectations SET notified=?2, notified_at=?3, notified_last_push=?4 WHERE replica=?1",
            params![replica, overdue.then_some("overdue"), at, last_push],
        )?;
        Ok(())
    }
    fn blobs(&self, hashes: &[PageHash]) -> Result<Vec<Option<BlobLocation>>> {
        blobs(&self.c, hashes)
    }
    fn version_and_delta(&self, replica: i64, number: u64) -> Result<Option<VersionDelta>> {
        version_and_delta(&self.c, replica, number)
    }
}

/// The last version committed at or before `at`, by the `versions_created`
/// index. This WHERE clause is the one place that decides which versions a
/// point in time may name: kept ones (a pruned version is passed over for
/// the kept one before it).
fn version_at(c: &Connection, replica: i64, at: &str) -> Result<Option<VersionRow>> {
    Ok(c.query_row(
        &format!(
            "SELECT {VERSION_COLS} FROM versions WHERE replica=?1 AND created<=?2
               AND pruned IS NULL
             ORDER BY created DESC, number DESC LIMIT 1"
        ),
        params![replica, at],
        version_row,
    )
    .optional()?)
}

/// One page of a replica's versions, newest first, by the primary key.
fn versions_page(
    c: &Connection,
    replica: i64,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<VersionRow>> {
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let mut st = c.prepare(&format!(
        "SELECT {VERSION_COLS} FROM versions WHERE replica=?1 AND number<?2
         ORDER BY number DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(params![replica, before, limit], version_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves a replica to a new path in one (immediate) transaction, so a
/// running server's next lookup sees either the old path or the new one.
fn rename_replica(c: &mut Connection, id: i64, from: &str, to: &str) -> Result<Renamed> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if replica_by_path(&tx, to)?.is_some() {
        return Ok(Renamed::Exists);
    }
    let n = tx.execute(
        "UPDATE replicas SET path=?3 WHERE id=?1 AND path=?2",
        params![id, from, to],
    )?;
    if n == 0 {
        return Ok(Renamed::Gone);
    }
    tx.commit()?;
    Ok(Renamed::Done)
}

/// The whole database of `c` into the new file `dest`, in one step of the
/// online backup API (so in one read transaction of `c`: a step at a time
/// would start over whenever the server wrote in between).
fn copy_database(c: &Connection, dest: &Path) -> Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let mut out = Connection::open(dest).with_context(|| format!("creating {}", dest.display()))?;
    let step = Backup::new(c, &mut out)?.step(-1)?;
    ensure!(
        matches!(step, StepResult::Done),
        "the metadata copy did not complete ({step:?})"
    );
    Ok(())
}

fn set_expectation(
    c: &mut Connection,
    replica: i64,
    every: Option<std::time::Duration>,
) -> Result<()> {
    let tx = write_transaction(c)?;
    // A row left by a removed replica whose id was reused is not this one's.
    tx.execute(
        "DELETE FROM expectations WHERE replica=?1
           AND (?2 OR uid IS NOT (SELECT uid FROM replicas WHERE id=?1))",
        params![replica, every.is_none()],
    )?;
    if let Some(d) = every {
        tx.execute(
            "INSERT INTO expectations(replica, uid, every_ms, since)
               SELECT id, uid, ?2, ?3 FROM replicas WHERE id=?1
             ON CONFLICT(replica) DO UPDATE SET every_ms=excluded.every_ms",
            params![replica, d.as_millis().min(i64::MAX as u128) as i64, now()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Every expectation with its replica's path and latest commit time.
fn expectations(c: &Connection) -> Result<Vec<Expectation>> {
    let mut st = c.prepare(
        "SELECT e.replica, r.path, e.every_ms, e.since, e.last_push, v.created, e.notified,
                e.notified_last_push
         FROM expectations e JOIN replicas r ON r.id = e.replica AND r.uid = e.uid
         LEFT JOIN versions v ON v.replica = r.id AND v.number = r.latest
         ORDER BY r.path",
    )?;
    let rows = st.query_map([], |r| {
        let seen: Option<String> = r.get(4)?;
        let committed: Option<String> = r.get(5)?;
        Ok(Expectation {
            replica: r.get(0)?,
            path: r.get(1)?,
            every: std::time::Duration::from_millis(r.get::<_, i64>(2)?.max(0) as u64),
            since: r.get(3)?,
            // Both are `now()` strings (RFC 3339, UTC, milliseconds): the
            // later sorts last.
            last_push: seen.into_iter().chain(committed).max(),
            overdue_sent: r.get::<_, Option<String>>(6)?.is_some(),
            overdue_last_push: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_store_gains_the_xxh3_columns_and_keeps_its_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            // The schema before XXH3 digests were kept.
            let c = Connection::open(&path).unwrap();
            let old = SCHEMA
                .replace(",\n  latest_xxh3 BLOB", "")
                .replace("\n  version_xxh3 TEXT,", "");
            assert!(!old.contains("xxh3"));
            c.execute_batch(&old).unwrap();
            c.execute(
                "INSERT INTO versions(replica, number, created, page_size, page_count, changed_pages, version_hash)
                 VALUES (1, 1, 'then', 4096, 2, 2, 'abc')",
                [],
            )
            .unwrap();
        }
        let c = open(&path).unwrap();
        let v = version(&c, 1, 1).unwrap().unwrap();
        assert_eq!((v.version_hash.as_str(), v.version_xxh3), ("abc", None));
        assert!(latest_xxh3(&c, 1).is_err(), "no such replica row");
        drop(c);
        // Opening again finds the columns there.
        let c = open(&path).unwrap();
        assert_eq!(version(&c, 1, 1).unwrap().unwrap().page_count, 2);
    }

    #[test]
    fn an_older_store_gains_the_key_columns_and_its_keys_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            // The keys table before keys were tied to their minter.
            let c = Connection::open(&path).unwrap();
            let old = SCHEMA.replace(
                ",\n  minted_by INTEGER,\n  minted_on TEXT,\n  minted_for TEXT,\n  label TEXT,\n  last_used TEXT",
                "",
            );
            assert!(!old.contains("minted_by") && !old.contains("last_used"));
            c.execute_batch(&old).unwrap();
            c.execute(
                "INSERT INTO keys(hash, kind, namespace, replica, created) VALUES (?1, 'admin', 'ns', NULL, 'then')",
                [&[4u8; 32][..]],
            )
            .unwrap();
        }
        let mut c = open(&path).unwrap();
        let (k, _) = key_by_hash(&c, &[4; 32]).unwrap().unwrap();
        assert_eq!(
            (k.kind.as_str(), k.minted_by, k.label, k.last_used),
            ("admin", None, None, None)
        );
        // New keys minted by the old one are revoked with it.
        let minted = NewKey {
            hash: [5; 32],
            kind: "replica-pull",
            namespace: "ns".into(),
            replica: Some(1),
            minted_by: Some(k.id),
            minted_on: Some("pull"),
            minted_for: None,
            label: None,
        };
        replace_minted_key(&mut c, &minted).unwrap();
        touch_key(&c, k.id, "2030-01-01T00:00:00.000Z").unwrap();
        let listed = keys_of(&c, "ns").unwrap();
        assert_eq!(
            listed[0].0.last_used.as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );
        assert_eq!(listed[1].0.minted_on.as_deref(), Some("pull"));
        assert_eq!(revoke_key(&mut c, "ns", k.id).unwrap(), 2);
        drop(c);
        // Opening again finds the columns and the index there.
        let c = open(&path).unwrap();
        let indexed: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name='keys_minted_by'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1);
        assert!(
            key_by_hash(&c, &[5; 32])
                .unwrap()
                .unwrap()
                .0
                .revoked
                .is_some()
        );
    }

    /// Long: one story, each step working on the keys the step before left
    /// (replacement, supersession on use, then revocation down the tree).
    #[test]
    fn a_minted_key_replaces_only_its_own_kind_minter_replica_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("meta.db")).unwrap();
        let key = |h: u8, kind: &'static str, replica, by, on| NewKey {
            hash: [h; 32],
            kind,
            namespace: "ns".into(),
            replica,
            minted_by: by,
            minted_on: on,
            minted_for: None,
            label: None,
        };
        insert_keys(&c, &[key(1, "admin", None, None, None)]).unwrap();
        insert_keys(&c, &[key(2, "admin", None, None, None)]).unwrap();
        let live = |c: &Connection, h: u8| {
            key_by_hash(c, &[h; 32])
                .unwrap()
                .unwrap()
                .0
                .revoked
                .is_none()
        };
        for (h, kind, replica, by, on) in [
            (10, "replica-pull", Some(7), Some(1), Some("pull")),
            (11, "replica-pull", Some(7), Some(1), Some("push")),
            (12, "replica-push", Some(7), Some(1), Some("push")),
            (13, "replica-pull", Some(8), Some(1), Some("pull")),
            (14, "replica-pull", Some(7), Some(2), Some("pull")),
        ] {
            replace_minted_key(&mut c, &key(h, kind, replica, by, on)).unwrap();
        }
        let elsewhere = NewKey {
            minted_for: Some("another copy".into()),
            ..key(15, "replica-pull", Some(7), Some(1), Some("pull"))
        };
        replace_minted_key(&mut c, &elsewhere).unwrap();
        replace_minted_key(
            &mut c,
            &key(20, "replica-pull", Some(7), Some(1), Some("pull")),
        )
        .unwrap();
        assert!(!live(&c, 10), "the key it replaces");
        for h in [11, 12, 13, 14, 15, 20, 1, 2] {
            assert!(live(&c, h), "key {h} was revoked");
        }
        // Revoking a minter revokes down the tree, and nothing else.
        let id = |c: &Connection, h: u8| key_by_hash(c, &[h; 32]).unwrap().unwrap().0.id;
        // A key in use survives the next mint, until the new one is used.
        let in_use = id(&c, 20);
        touch_key(&c, in_use, "2030-01-01T00:00:00.000Z").unwrap();
        replace_minted_key(
            &mut c,
            &key(21, "replica-pull", Some(7), Some(1), Some("pull")),
        )
        .unwrap();
        assert!(live(&c, 20), "minting revoked a key in use");
        assert_eq!(supersede_minted(&c, id(&c, 21)).unwrap(), 1);
        assert!(!live(&c, 20) && live(&c, 21) && live(&c, 15));
        assert_eq!(supersede_minted(&c, id(&c, 2)).unwrap(), 0, "not minted");
        let push_key = id(&c, 12);
        insert_keys(
            &c,
            &[key(
                30,
                "replica-pull",
                Some(7),
                Some(push_key),
                Some("push"),
            )],
        )
        .unwrap();
        assert_eq!(
            {
                let admin = id(&c, 1);
                revoke_key(&mut c, "ns", admin).unwrap()
            },
            7
        );
        assert!(!live(&c, 30), "minted by a key the revoked one minted");
        assert!(live(&c, 14) && live(&c, 2));
        assert_eq!(
            {
                let other = id(&c, 2);
                revoke_key(&mut c, "other", other).unwrap()
            },
            0,
            "another namespace"
        );
    }
}
