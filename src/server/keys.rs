//! Keys: issued once in clear, stored only as SHA-256 hashes, checked in
//! constant time.
//!
//! PROTOCOL.md section 4: an Account Admin key may create, push and pull
//! every replica of its namespace; an Account Pull key may pull them; a
//! Replica Push / Replica Pull key may push / pull one replica.

use anyhow::{Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::store::meta::{self, ReplicaRow};
use crate::wire;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Admin,
    AccountPull,
    ReplicaPush,
    ReplicaPull,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::AccountPull => "account-pull",
            KeyKind::ReplicaPush => "replica-push",
            KeyKind::ReplicaPull => "replica-pull",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        Some(match s {
            "admin" => KeyKind::Admin,
            "account-pull" => KeyKind::AccountPull,
            "replica-push" => KeyKind::ReplicaPush,
            "replica-pull" => KeyKind::ReplicaPull,
            _ => return None,
        })
    }
}

/// A key found in the store (never the key itself).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Row id, what `keys revoke` takes.
    pub id: i64,
    /// What it may do.
    pub kind: KeyKind,
    /// Namespace it belongs to.
    pub namespace: String,
    /// Replica row id for replica keys.
    pub replica: Option<i64>,
    /// Creation time.
    pub created: String,
    /// Revocation time, if revoked.
    pub revoked: Option<String>,
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key made for a session and sent to its client, stored only once the
/// session succeeded: a push that fails (or a pull that never finished)
/// must leave no working key behind.
#[derive(Debug, Clone)]
pub struct PendingKey {
    /// What it will allow.
    pub kind: KeyKind,
    /// Its namespace.
    pub namespace: String,
    /// Its replica (replica keys).
    pub replica: Option<i64>,
    /// The key in clear, as sent to the client.
    pub key: String,
}

impl PendingKey {
    /// A new random key, not stored yet.
    pub fn new(kind: KeyKind, namespace: &str, replica: Option<i64>) -> PendingKey {
        PendingKey {
            kind,
            namespace: namespace.to_string(),
            replica,
            key: wire::new_key(),
        }
    }

    /// Stores its hash (use inside the transaction that makes the session
    /// count).
    pub fn store(&self, c: &Connection) -> Result<()> {
        c.execute(
            "INSERT INTO keys(hash, kind, namespace, replica, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                &hash_key(&self.key)[..],
                self.kind.as_str(),
                self.namespace,
                self.replica,
                meta::now()
            ],
        )?;
        Ok(())
    }
}

/// Creates and stores a key; returns it in clear (the only time it exists so).
pub fn create(
    c: &Connection,
    kind: KeyKind,
    namespace: &str,
    replica: Option<i64>,
) -> Result<String> {
    let k = PendingKey::new(kind, namespace, replica);
    k.store(c)?;
    Ok(k.key)
}

/// Looks a presented key up; None for unknown, malformed or revoked keys.
pub fn lookup(c: &Connection, presented: &str) -> Result<Option<KeyRecord>> {
    if !wire::is_key_shaped(presented) {
        return Ok(None);
    }
    let wanted = hash_key(presented);
    let row = c
        .query_row(
            "SELECT id, hash, kind, namespace, replica, created, revoked FROM keys WHERE hash=?1",
            [&wanted[..]],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((id, stored, kind, namespace, replica, created, revoked)) = row else {
        return Ok(None);
    };
    // The index lookup already matched; compare again in constant time so
    // that no code path decides on a byte-by-byte comparison of secrets.
    if !bool::from(stored.as_slice().ct_eq(&wanted[..])) || revoked.is_some() {
        return Ok(None);
    }
    let Some(kind) = KeyKind::parse(&kind) else {
        return Ok(None);
    };
    Ok(Some(KeyRecord {
        id,
        kind,
        namespace,
        replica,
        created,
        revoked,
    }))
}

/// True when `key` may push to replica `r`.
pub fn may_push(key: &KeyRecord, r: &ReplicaRow) -> bool {
    match key.kind {
        KeyKind::Admin => key.namespace == r.namespace,
        KeyKind::ReplicaPush => key.replica == Some(r.id),
        _ => false,
    }
}

/// True when `key` may pull replica `r`.
pub fn may_pull(key: &KeyRecord, r: &ReplicaRow) -> bool {
    match key.kind {
        KeyKind::Admin | KeyKind::AccountPull => key.namespace == r.namespace,
        KeyKind::ReplicaPull | KeyKind::ReplicaPush => key.replica == Some(r.id),
    }
}

pub fn list(c: &Connection, namespace: &str) -> Result<Vec<(KeyRecord, Option<String>)>> {
    let mut st = c.prepare(
        "SELECT k.id, k.kind, k.namespace, k.replica, k.created, k.revoked, r.path
         FROM keys k LEFT JOIN replicas r ON r.id = k.replica WHERE k.namespace=?1 ORDER BY k.id",
    )?;
    let rows = st.query_map([namespace], |r| {
        Ok((
            KeyRecord {
                id: r.get(0)?,
                kind: KeyKind::parse(&r.get::<_, String>(1)?).unwrap_or(KeyKind::ReplicaPull),
                namespace: r.get(2)?,
                replica: r.get(3)?,
                created: r.get(4)?,
                revoked: r.get(5)?,
            },
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revokes key `id` of `namespace`.
pub fn revoke(c: &Connection, namespace: &str, id: i64) -> Result<()> {
    let n = c.execute(
        "UPDATE keys SET revoked=?3 WHERE id=?1 AND namespace=?2 AND revoked IS NULL",
        params![id, namespace, meta::now()],
    )?;
    if n == 0 {
        bail!("no active key {id} in namespace {namespace}");
    }
    Ok(())
}

/// Finds the id of a key given in clear (for `keys revoke KEY`).
pub fn id_of(c: &Connection, presented: &str) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT id FROM keys WHERE hash=?1",
        [&hash_key(presented)[..]],
        |r| r.get(0),
    )
    .optional()?)
}
