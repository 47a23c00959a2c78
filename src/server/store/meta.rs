//! The metadata database (`DATA_DIR/meta.db`): namespaces, hashed keys,
//! replicas, versions and the page index.
//!
//! SQLite in WAL mode so the web pages read while a commit writes; every
//! version commit is one transaction, which is what makes it atomic.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use super::packs::{BlobLocation, PageHash};

/// Schema, created on first open. `replicas.latest_sums` is the SHA-256 of
/// every page of the latest version (32 bytes per page), the checksum of the
/// materialised latest file; `versions.back_delta` lists, for a version older
/// than the latest, the pages in which it differs from the next version as
/// (pgno u32 big-endian, page hash) records. `replicas.latest_xxh3` is the
/// XXH3-128 of every page of the latest version (16 bytes per page), from
/// which a commit computes `versions.version_xxh3` by hashing only the
/// pages that changed (both are added to older stores by [`open`]).
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
  revoked TEXT
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
";

pub fn open(path: &Path) -> Result<Connection> {
    let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    c.execute_batch(SCHEMA)?;
    add_column(&c, "replicas", "latest_xxh3", "BLOB")?;
    add_column(&c, "versions", "version_xxh3", "TEXT")?;
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

/// A replica row.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// Internal row id (keys and versions refer to it).
    pub id: i64,
    /// Public replica id sent as `replicaID`.
    pub uid: String,
    /// Namespace, the first part of the path.
    pub namespace: String,
    /// Full remote path `namespace/…/name.db`.
    pub path: String,
    /// `private`, `unlisted` or `public`.
    pub visibility: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Newest version number; 0 before the first commit.
    pub latest: u64,
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

pub fn replica_by_path(c: &Connection, path: &str) -> Result<Option<ReplicaRow>> {
    Ok(c.query_row(
        &format!("SELECT {REPLICA_COLS} FROM replicas WHERE path=?1"),
        [path],
        replica_row,
    )
    .optional()?)
}

pub fn replica_by_id(c: &Connection, id: i64) -> Result<Option<ReplicaRow>> {
    Ok(c.query_row(
        &format!("SELECT {REPLICA_COLS} FROM replicas WHERE id=?1"),
        [id],
        replica_row,
    )
    .optional()?)
}

pub fn replicas_of(c: &Connection, namespace: &str) -> Result<Vec<ReplicaRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {REPLICA_COLS} FROM replicas WHERE namespace=?1 ORDER BY path"
    ))?;
    let rows = st.query_map([namespace], replica_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn all_replicas(c: &Connection) -> Result<Vec<ReplicaRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {REPLICA_COLS} FROM replicas ORDER BY path"
    ))?;
    let rows = st.query_map([], replica_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Creates the replica unless it exists (a concurrent first push may win);
/// returns the row either way.
pub fn create_replica(
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

pub fn namespace_exists(c: &Connection, name: &str) -> Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM namespaces WHERE name=?1", [name], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// One version row.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Version number, from 1.
    pub number: u64,
    /// Commit time (RFC 3339).
    pub created: String,
    /// Page size of this version.
    pub page_size: u32,
    /// Pages in this version.
    pub page_count: u32,
    /// Pages the push that made it changed.
    pub changed_pages: u32,
    /// Commit message (may be empty).
    pub message: String,
    /// `versionHash` (see sqlite::VersionHasher).
    pub version_hash: String,
    /// `versionXxh3`; None for versions committed before the store kept it.
    pub version_xxh3: Option<String>,
}

impl VersionRow {
    pub fn size(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }
}

const VERSION_COLS: &str =
    "number, created, page_size, page_count, changed_pages, message, version_hash, version_xxh3";

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
    })
}

pub fn version(c: &Connection, replica: i64, number: u64) -> Result<Option<VersionRow>> {
    Ok(c.query_row(
        &format!("SELECT {VERSION_COLS} FROM versions WHERE replica=?1 AND number=?2"),
        params![replica, number as i64],
        version_row,
    )
    .optional()?)
}

/// Versions of a replica, newest first.
pub fn versions(c: &Connection, replica: i64) -> Result<Vec<VersionRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {VERSION_COLS} FROM versions WHERE replica=?1 ORDER BY number DESC"
    ))?;
    let rows = st.query_map([replica], version_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn back_delta(c: &Connection, replica: i64, number: u64) -> Result<Vec<(u32, PageHash)>> {
    let blob: Option<Vec<u8>> = c.query_row(
        "SELECT back_delta FROM versions WHERE replica=?1 AND number=?2",
        params![replica, number as i64],
        |r| r.get(0),
    )?;
    decode_delta(&blob.unwrap_or_default())
}

pub fn encode_delta(entries: &[(u32, PageHash)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 36);
    for (pgno, h) in entries {
        v.extend_from_slice(&pgno.to_be_bytes());
        v.extend_from_slice(h);
    }
    v
}

pub fn decode_delta(b: &[u8]) -> Result<Vec<(u32, PageHash)>> {
    anyhow::ensure!(
        b.len() % 36 == 0,
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

pub fn latest_sums(c: &Connection, replica: i64) -> Result<Vec<PageHash>> {
    let b: Option<Vec<u8>> = c.query_row(
        "SELECT latest_sums FROM replicas WHERE id=?1",
        [replica],
        |r| r.get(0),
    )?;
    let b = b.unwrap_or_default();
    anyhow::ensure!(b.len() % 32 == 0, "damaged page checksums");
    Ok(b.chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// `replicas.latest_xxh3`: the latest version's page digests (16 bytes
/// each), empty when the store has none yet.
pub fn latest_xxh3(c: &Connection, replica: i64) -> Result<Vec<[u8; 16]>> {
    let b: Option<Vec<u8>> = c.query_row(
        "SELECT latest_xxh3 FROM replicas WHERE id=?1",
        [replica],
        |r| r.get(0),
    )?;
    let b = b.unwrap_or_default();
    anyhow::ensure!(b.len() % 16 == 0, "damaged page digests");
    Ok(b.chunks_exact(16)
        .map(|c| {
            let mut h = [0u8; 16];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

pub fn blob(c: &Connection, hash: &PageHash) -> Result<Option<BlobLocation>> {
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
pub fn pack_end(c: &Connection, pack: u32) -> Result<u64> {
    let end: Option<i64> = c.query_row(
        "SELECT max(offset + stored_len) FROM blobs WHERE pack=?1",
        [pack],
        |r| r.get(0),
    )?;
    Ok(end.unwrap_or(0) as u64)
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
}
