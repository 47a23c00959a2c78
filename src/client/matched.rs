//! What a local database last matched on a replica: the version it was
//! after its last successful push or pull, that version's hash, and a cheap
//! fingerprint of the file as it was then.
//!
//! Two decisions need it, both about never overwriting what someone meant
//! to keep (see [`super::guard`]):
//! - a pull over an existing database goes ahead only when the database
//!   still is that version (nothing local would be lost);
//! - a push goes ahead only when the server's latest is still that version
//!   (nobody else pushed meanwhile), else their version would silently stop
//!   being the latest.
//!
//! It also lets a push of an unchanged database end after one CONFIG
//! exchange (see [`super::unchanged`]).
//!
//! One small JSON file per (replica path, local database), 0600 in a
//! 0700 directory under the state directory (`~/.local/state/sqlrsync/
//! matched/`; the local data directory where there is no state directory):
//! not the cache, since deleting it weakens the checks (the client then
//! asks for `--force` where it cannot prove a sync loses nothing). The
//! server's URL is not part of the key: one server is often reached by
//! several (a proxy, a new port); the server's `replicaID`, kept in the
//! record, tells whether a server holds the same replica.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Which sync left a database matching a version.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Push,
    Pull,
}

/// One local database's last match with one replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Matched {
    /// Server URL, normalized (`ws://host:port`), as it was reached.
    pub server: String,
    /// The server's id of the replica (`replicaID`), when it sent one.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Remote path of the replica (`namespace/…/name.db`).
    pub remote_path: String,
    /// Absolute path of the local database.
    pub local: String,
    /// The version the database then was (`committedVersionID`).
    pub version: Option<String>,
    /// Hex SHA-256 of that version's pages (the server's `versionHash`, or
    /// computed here for servers that send none).
    pub version_hash: Option<String>,
    /// [`super::unchanged::fingerprint`] of the file right after that sync.
    pub fingerprint: Option<String>,
    /// The hash of the version a later pull was about to commit when it
    /// last ran (written just before the commit is let through, cleared
    /// when that pull finished): a pull killed after its commit leaves the
    /// database that version, which is no local change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_hash: Option<String>,
    /// Push or pull.
    pub role: Role,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl Matched {
    /// A record of `local` matching `version` now.
    pub fn now(server: &str, remote_path: &str, local: &Path, role: Role) -> Matched {
        Matched {
            server: server.to_string(),
            replica_id: None,
            remote_path: remote_path.to_string(),
            local: local.to_string_lossy().into_owned(),
            version: None,
            version_hash: None,
            fingerprint: super::unchanged::fingerprint(local),
            pending_hash: None,
            role,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// `version 5 (pulled 2026-11-30T12:00:00Z)`, for messages.
    pub fn describe(&self) -> String {
        let what = match self.role {
            Role::Push => "pushed",
            Role::Pull => "pulled",
        };
        format!(
            "version {} ({what} {})",
            self.version.as_deref().unwrap_or("?"),
            self.at
        )
    }
}

/// The directory of the records.
fn dir() -> Option<PathBuf> {
    let base = dirs::state_dir().or_else(dirs::data_local_dir)?;
    Some(base.join("sqlrsync").join("matched"))
}

/// The record file of (replica path, local database) under `dir`.
fn path_in(dir: &Path, remote_path: &str, local: &Path) -> PathBuf {
    file_in(dir, remote_path, local, "json")
}

/// The file of (replica path, local database) under `dir` with extension
/// `ext`: the one naming rule of the per-database files (records here,
/// page digests in [`super::page_cache`]).
pub(crate) fn file_in(dir: &Path, remote_path: &str, local: &Path, ext: &str) -> PathBuf {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [remote_path.as_bytes(), local.as_os_str().as_encoded_bytes()] {
        h.update(part);
        h.update([0u8]);
    }
    dir.join(format!("{}.{ext}", hex::encode(&h.finalize()[..16])))
}

/// The last match of `local` with the replica `remote_path`, if any. A
/// record that cannot be read, or is of another pair (a hash collision, a
/// hand-made file), counts as none.
pub fn load(remote_path: &str, local: &Path) -> Option<Matched> {
    load_in(&dir()?, remote_path, local)
}

fn load_in(dir: &Path, remote_path: &str, local: &Path) -> Option<Matched> {
    if remote_path.is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(path_in(dir, remote_path, local)).ok()?;
    let m: Matched = serde_json::from_str(&text).ok()?;
    let same = m.remote_path == remote_path && m.local == local.to_string_lossy();
    same.then_some(m)
}

/// Notes, before a pull's commit is let through, the hash of the version
/// it commits (see [`Matched::pending_hash`]), keeping the rest of the
/// record (or starting one). An error stops the commit: without the note
/// a pull killed right after it would leave a copy the next pull refuses.
pub fn note_pending(
    server: &str,
    remote_path: &str,
    local: &Path,
    hash: &str,
) -> anyhow::Result<()> {
    let mut m = load(remote_path, local).unwrap_or_else(|| Matched {
        version: None,
        version_hash: None,
        fingerprint: None,
        ..Matched::now(server, remote_path, local, Role::Pull)
    });
    m.pending_hash = Some(hash.to_string());
    save(&m)
}

impl Matched {
    /// Whether a server that calls its replica `replica_id` may hold the
    /// version this record names: the same replica, or one of unknown id.
    pub fn same_replica(&self, replica_id: Option<&str>) -> bool {
        match (self.replica_id.as_deref(), replica_id) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

/// Keeps the record (0600, atomically). An error means the next sync
/// cannot prove what this one left, so the caller reports it.
pub fn save(m: &Matched) -> anyhow::Result<()> {
    let dir = dir().context("cannot find the state directory (is HOME set?)")?;
    save_in(&dir, m)
}

fn save_in(dir: &Path, m: &Matched) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = path_in(dir, &m.remote_path, Path::new(&m.local));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let json = serde_json::to_vec_pretty(m).expect("a record serialises");
    super::files::write_atomic(&path, &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_are_per_replica_and_private() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("matched");
        let db = home.path().join("a.db");
        std::fs::write(&db, b"x").unwrap();
        let mut m = Matched::now("ws://h:1", "ns/a.db", &db, Role::Push);
        m.version = Some("3".into());
        save_in(&dir, &m).unwrap();
        assert_eq!(load_in(&dir, "ns/a.db", &db), Some(m.clone()));
        assert_eq!(load_in(&dir, "ns/b.db", &db), None);
        assert_eq!(load_in(&dir, "ns/a.db", &home.path().join("b.db")), None);
        let file = path_in(&dir, "ns/a.db", &db);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(m.describe().starts_with("version 3 (pushed "));
        m.replica_id = Some("r1".into());
        assert!(m.same_replica(Some("r1")) && m.same_replica(None));
        assert!(!m.same_replica(Some("r2")));
    }
}
