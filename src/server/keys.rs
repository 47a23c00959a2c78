//! Keys: issued once in clear, stored only as SHA-256 hashes, checked in
//! constant time.
//!
//! PROTOCOL.md section 4: an Account Admin key may create, push and pull
//! every replica of its namespace; an Account Pull key may pull them; a
//! Replica Push / Replica Pull key may push / pull one replica.
//!
//! This is the key policy; the store ([`super::store::Meta`]) only keeps a
//! key's hash and its kind's name, and finds a key by hash.

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::store::Meta;
use super::store::meta::{NewKey, ReplicaRow, StoredKey};
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

    /// What the store records of it: its hash, never the key.
    pub fn record(&self) -> NewKey {
        NewKey {
            hash: hash_key(&self.key),
            kind: self.kind.as_str(),
            namespace: self.namespace.clone(),
            replica: self.replica,
        }
    }
}

/// Creates and stores a key; returns it in clear (the only time it exists so).
pub fn create(meta: &Meta, kind: KeyKind, namespace: &str, replica: Option<i64>) -> Result<String> {
    let k = PendingKey::new(kind, namespace, replica);
    meta.add_key(&k.record())?;
    Ok(k.key)
}

/// Looks a presented key up; None for unknown, malformed or revoked keys.
pub fn lookup(meta: &Meta, presented: &str) -> Result<Option<KeyRecord>> {
    if !wire::is_key_shaped(presented) {
        return Ok(None);
    }
    let wanted = hash_key(presented);
    let Some((key, stored)) = meta.find_key(&wanted)? else {
        return Ok(None);
    };
    // The index lookup already matched; compare again in constant time so
    // that no code path decides on a byte-by-byte comparison of secrets.
    if !bool::from(stored.as_slice().ct_eq(&wanted[..])) || key.revoked.is_some() {
        return Ok(None);
    }
    let Some(kind) = KeyKind::parse(&key.kind) else {
        return Ok(None);
    };
    Ok(Some(KeyRecord::from_stored(key, kind)))
}

impl KeyRecord {
    fn from_stored(k: StoredKey, kind: KeyKind) -> KeyRecord {
        KeyRecord {
            id: k.id,
            kind,
            namespace: k.namespace,
            replica: k.replica,
            created: k.created,
            revoked: k.revoked,
        }
    }
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

/// The keys of `namespace`, each with its replica's path (a kind this
/// release does not know shows as replica-pull).
pub fn list(meta: &Meta, namespace: &str) -> Result<Vec<(KeyRecord, Option<String>)>> {
    Ok(meta
        .keys_of(namespace)?
        .into_iter()
        .map(|(k, path)| {
            let kind = KeyKind::parse(&k.kind).unwrap_or(KeyKind::ReplicaPull);
            (KeyRecord::from_stored(k, kind), path)
        })
        .collect())
}

/// Revokes key `id` of `namespace`.
pub fn revoke(meta: &Meta, namespace: &str, id: i64) -> Result<()> {
    if !meta.revoke_key(namespace, id)? {
        bail!("no active key {id} in namespace {namespace}");
    }
    Ok(())
}

/// Finds the id of a key given in clear (for `keys revoke KEY`).
pub fn id_of(meta: &Meta, presented: &str) -> Result<Option<i64>> {
    Ok(meta.find_key(&hash_key(presented))?.map(|(k, _)| k.id))
}
