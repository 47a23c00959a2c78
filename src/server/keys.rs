//! Keys: issued once in clear, stored only as SHA-256 hashes, checked in
//! constant time.
//!
//! PROTOCOL.md section 4: an Account Admin key may create, push and pull
//! every replica of its namespace; an Account Pull key may pull them; a
//! Replica Push / Replica Pull key may push / pull one replica.
//!
//! This is the key policy; the store ([`super::store::Meta`]) only keeps a
//! key's hash and its kind's name, and finds a key by hash.
//!
//! Keys the server mints on KEYREQUEST are tied to the key whose session
//! asked (`minted_by`): revoking a key revokes what it minted, so a key
//! handed out under some authority never outlives it. On a pull only the
//! namespace's Account Admin key mints (a Replica Pull key, replacing the
//! one it minted for that replica before): any other key that may pull
//! already is the key the puller keeps, and minting for it would turn a
//! short-lived or revocable key into a permanent one.

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
    /// The key whose session minted this one.
    pub minted_by: Option<i64>,
    /// The kind of session that minted it (`push`, `pull`).
    pub minted_on: Option<String>,
    /// The operator's note (`keys create --label`).
    pub label: Option<String>,
    /// When it last opened a session, to the minute.
    pub last_used: Option<String>,
}

/// The kind of session a key was minted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintedOn {
    Push,
    Pull,
}

impl MintedOn {
    fn as_str(self) -> &'static str {
        match self {
            MintedOn::Push => "push",
            MintedOn::Pull => "pull",
        }
    }
}

/// How often a key's `last_used` is written at most: a key opening many
/// sessions costs one small write a minute, not one per session.
const LAST_USED_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Longest label `keys create --label` takes.
pub const MAX_LABEL: usize = 200;

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
    /// The key whose session minted it, and that session's kind.
    pub minted: Option<(i64, MintedOn)>,
    /// Whom it was minted for ([`destination`]), on a pull.
    pub minted_for: Option<String>,
    /// The operator's note.
    pub label: Option<String>,
}

impl PendingKey {
    /// A new random key, not stored yet.
    pub fn new(kind: KeyKind, namespace: &str, replica: Option<i64>) -> PendingKey {
        PendingKey {
            kind,
            namespace: namespace.to_string(),
            replica,
            key: wire::new_key(),
            minted: None,
            minted_for: None,
            label: None,
        }
    }

    /// A key for replica `r` minted in a session authorised by `by`, tied
    /// to it (revoked with it).
    pub fn minted(kind: KeyKind, r: &ReplicaRow, by: &KeyRecord, on: MintedOn) -> PendingKey {
        PendingKey {
            minted: Some((by.id, on)),
            ..PendingKey::new(kind, &r.namespace, Some(r.id))
        }
    }

    /// What the store records of it: its hash, never the key.
    pub fn record(&self) -> NewKey {
        NewKey {
            hash: hash_key(&self.key),
            kind: self.kind.as_str(),
            namespace: self.namespace.clone(),
            replica: self.replica,
            minted_by: self.minted.map(|(id, _)| id),
            minted_on: self.minted.map(|(_, on)| on.as_str()),
            minted_for: self.minted_for.clone(),
            label: self.label.clone(),
        }
    }
}

/// Creates and stores a key with an optional label; returns it in clear
/// (the only time it exists so).
pub fn create(
    meta: &Meta,
    kind: KeyKind,
    namespace: &str,
    replica: Option<i64>,
    label: Option<&str>,
) -> Result<String> {
    if let Some(l) = label {
        check_label(l)?;
    }
    let k = PendingKey {
        label: label.map(str::to_string),
        ..PendingKey::new(kind, namespace, replica)
    };
    meta.add_key(&k.record())?;
    Ok(k.key)
}

/// A label is shown in a tab-separated listing: one line of printable
/// text, not too long.
fn check_label(l: &str) -> Result<()> {
    if l.trim().is_empty() || l.chars().count() > MAX_LABEL || l.chars().any(char::is_control) {
        bail!(
            "--label must be 1 to {MAX_LABEL} characters without tabs, newlines or other control characters"
        );
    }
    Ok(())
}

/// Whom a pull's minted key is for: a digest of the client's id
/// (`X-ClientID`) and the local database (`X-LocalAbsolutePath`, which our
/// client sends with a KEYREQUEST), either possibly absent. A new key for
/// the same destination replaces the one before (the client lost it or
/// never kept it); copies elsewhere keep theirs. Only a digest is stored:
/// the server needs to compare them, not to know the paths.
pub fn destination(client_id: Option<&str>, local_path: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(client_id.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(local_path.unwrap_or("").as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// True when `key`, which opened a pull of `r`, may have a Replica Pull key
/// minted on KEYREQUEST: only the namespace's Account Admin key. Every
/// other key that may pull is a key the puller has already (and keeps),
/// and a key of another namespace that may pull a public replica has no
/// say over it.
pub fn mints_on_pull(key: &KeyRecord, r: &ReplicaRow) -> bool {
    key.kind == KeyKind::Admin && key.namespace == r.namespace
}

/// True when `key`'s last use is not recorded to the minute: the lookup
/// read the time already, so a key opening many sessions costs one small
/// write a minute ([`note_use`]), not one per session.
pub fn use_is_stale(key: &KeyRecord) -> bool {
    let now = chrono::Utc::now();
    key.last_used
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|t| now.signed_duration_since(t) >= LAST_USED_RESOLUTION)
}

/// Records that `key` opened a session now. The first use of a pull key
/// minted on a pull revokes the keys minted before it for the same copy:
/// the client has the new key, so the old ones are superseded. (Minting
/// itself revokes only the never-used ones: a client whose pull failed
/// after the server stored a new key never got it, and keeps using the
/// old one.)
pub fn note_use(meta: &Meta, key: &KeyRecord) -> Result<()> {
    if key.last_used.is_none() && key.minted_on.as_deref() == Some(MintedOn::Pull.as_str()) {
        let n = meta.supersede_minted(key.id)?;
        if n > 0 {
            tracing::info!(
                key_id = key.id,
                superseded = n,
                "a new pull key was used; revoked the ones it replaced"
            );
        }
    }
    meta.touch_key(key.id, &crate::server::store::meta::now())
}

/// A revocation time that has come (a later one is an expiry still ahead).
pub fn revoked_by_now(revoked: &Option<String>) -> bool {
    revoked
        .as_deref()
        .is_some_and(|t| t <= crate::server::store::meta::now().as_str())
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
    if !bool::from(stored.as_slice().ct_eq(&wanted[..])) || revoked_by_now(&key.revoked) {
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
            minted_by: k.minted_by,
            minted_on: k.minted_on,
            label: k.label,
            last_used: k.last_used,
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

/// Revokes key `id` of `namespace` and every key minted from it; how many
/// keys that was.
pub fn revoke(meta: &Meta, namespace: &str, id: i64) -> Result<usize> {
    match meta.revoke_key(namespace, id)? {
        0 => bail!("no active key {id} in namespace {namespace}"),
        n => Ok(n),
    }
}

/// Makes key `id` stop working after `after` (`keys create --expires`, the
/// grace of `keys rotate`).
pub fn expire(meta: &Meta, namespace: &str, id: i64, after: std::time::Duration) -> Result<String> {
    let at = chrono::Utc::now()
        + chrono::Duration::from_std(after)
            .map_err(|_| anyhow::anyhow!("the duration is too long"))?;
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if !meta.expire_key(namespace, id, &at)? {
        bail!("no active key {id} in namespace {namespace}");
    }
    Ok(at)
}

/// Finds the id of a key given in clear (for `keys revoke KEY`).
pub fn id_of(meta: &Meta, presented: &str) -> Result<Option<i64>> {
    Ok(meta.find_key(&hash_key(presented))?.map(|(k, _)| k.id))
}
