//! Admission: who may open which session, decided before the websocket
//! upgrade, in one place.
//!
//! A websocket handler parses its request, asks here, and runs its session
//! with what it is given; every refusal is a [`Refusal`], the HTTP
//! response to send (PROTOCOL.md section 2: status and a short plain-text
//! body). The order
//! of the checks is part of the contract the tests hold: a connection slot
//! first (503), then the key (401), then the path (400), then access (403
//! for a push; 404 for a read, so that private replicas and unknown paths
//! look the same to outsiders). Before any of it, a request with a key from
//! an address that sent wrong keys waits its turn (or gets 429) in
//! [`super::throttle`], which reads the outcome of the key check from
//! these statuses.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, Uri};

use super::app::{AppState, Refusal, remote_path};
use super::keys::{self, KeyKind, KeyRecord};
use super::limits::{Budget, Permit};
use super::names;
use super::store::prune::VersionPruned;
use super::store::{ReplicaRow, VersionRow};
use crate::wire::{VersionRef, Visibility, headers};

/// The Authorization header's value when there is one to look up (text,
/// not blank); a request without one is anonymous.
pub fn authorization(h: &HeaderMap) -> Option<&str> {
    h.get(headers::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The key in the Authorization header, looked up; Err(401) for a key that
/// is given but unknown or revoked (logged, in summary, by
/// [`super::throttle`]).
pub fn presented_key(st: &AppState, h: &HeaderMap) -> Result<Option<KeyRecord>, Refusal> {
    let Some(raw) = authorization(h) else {
        return Ok(None);
    };
    // Tolerate a scheme word some proxies or clients add.
    let raw = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .unwrap_or(raw)
        .trim();
    match keys::lookup(st.store.meta(), raw) {
        Ok(Some(k)) => {
            note_use(st, &k);
            Ok(Some(k))
        }
        Ok(None) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked key",
        )),
        Err(e) => Err(Refusal::internal(e)),
    }
}

/// Records when `key` was last used, off the request's path, when the
/// record is older than a minute ([`keys::use_is_stale`]).
fn note_use(st: &AppState, key: &KeyRecord) {
    if !keys::use_is_stale(key) {
        return;
    }
    let (store, key) = (st.store.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = keys::note_use(store.meta(), &key) {
            tracing::warn!(error = %format!("{e:#}"), key_id = key.id, "could not record a key's use");
        }
    });
}

/// An admitted push.
pub struct Pusher {
    /// Connection-limit permit, held for the session's life.
    pub permit: Permit,
    /// The key that authorised the push.
    pub key: KeyRecord,
    /// The replica (created by this request if it was new).
    pub replica: ReplicaRow,
}

/// Admits `/sapi/push[/<path>]` from `peer`: a slot, a key, a path (named
/// from the client's headers when none is given), a visibility, and the
/// right to push to the replica, or to create it (which this does).
pub fn admit_push(
    st: &AppState,
    uri: &Uri,
    h: &HeaderMap,
    peer: SocketAddr,
) -> Result<Pusher, Refusal> {
    let permit = st.session_permit(Budget::Sync, peer)?;
    let Some(key) = presented_key(st, h)? else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "a key is required to push",
        ));
    };
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let raw = uri
        .path()
        .trim_start_matches("/sapi/push")
        .trim_start_matches('/');
    let path = if raw.is_empty() {
        // No path: name it namespace/host/file from the key's namespace.
        if key.kind != KeyKind::Admin {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "an account admin key is needed to push a new replica without a path",
            ));
        }
        names::default_push_path(
            &key.namespace,
            header(headers::LOCAL_HOSTNAME),
            header(headers::LOCAL_ABSOLUTE_PATH),
        )
    } else {
        remote_path(uri.path(), "/sapi/push/")?.to_string()
    };
    let visibility = Visibility::from_header(header(headers::VISIBILITY))
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
    // One lookup and one decision, whether the replica exists or not: a
    // key that may not push here must not learn which (same status, body
    // and work on both paths).
    let existing = st.store.meta().replica(&path).map_err(Refusal::internal)?;
    let allowed = match &existing {
        Some(r) => keys::may_push(&key, r),
        None => may_create(&key, &path),
    };
    if !allowed {
        tracing::warn!(path = %path, key_id = key.id, "refused push: key does not allow it");
        return Err(push_refused());
    }
    let replica = match existing {
        Some(r) => r,
        None => create_replica(st, &key, &path, visibility)?,
    };
    Ok(Pusher {
        permit,
        key,
        replica,
    })
}

/// The one refusal of a push with a real key that may not push to the
/// path: for a replica it may not push and for one that does not exist
/// alike, so that a private replica cannot be told from an absent one.
fn push_refused() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "key does not allow pushing to this path",
    )
}

/// True when `key` may create a replica at `path`: its namespace's
/// Account Admin key.
fn may_create(key: &KeyRecord, path: &str) -> bool {
    let namespace = path.split('/').next().unwrap_or_default();
    key.kind == KeyKind::Admin && key.namespace == namespace
}

/// Creates replica `path` for a first push, if `key` is its namespace's
/// Account Admin key.
fn create_replica(
    st: &AppState,
    key: &KeyRecord,
    path: &str,
    visibility: Visibility,
) -> Result<ReplicaRow, Refusal> {
    let namespace = path.split('/').next().unwrap_or_default();
    if !may_create(key, path) {
        return Err(push_refused());
    }
    let r = st
        .store
        .meta()
        .create_replica(namespace, path, visibility.as_str())
        .map_err(Refusal::internal)?;
    tracing::info!(path = %r.path, visibility = r.visibility, "created replica");
    Ok(r)
}

/// Who may read `r` with `key` (None: anonymous). Private replicas and
/// unknown paths must look the same to outsiders, so callers answer 404
/// for both.
pub fn may_read(r: &ReplicaRow, key: Option<&KeyRecord>) -> bool {
    match key {
        Some(k) => keys::may_pull(k, r) || r.visibility != Visibility::Private.as_str(),
        None => r.visibility != Visibility::Private.as_str(),
    }
}

/// What a read-side session (pull or subscribe) holds once admitted.
pub struct Reader {
    /// Connection-limit permit, held for the session's life.
    pub permit: Permit,
    /// The key presented, if any (a pull may ask to issue a pull key).
    pub key: Option<KeyRecord>,
    /// The replica the key may read.
    pub replica: ReplicaRow,
}

/// Admits a read-side upgrade from `peer`: a slot of `budget`, a valid
/// path under `prefix`, a known key if one was presented, and read access
/// to the replica.
pub fn admit_reader(
    st: &AppState,
    uri: &Uri,
    h: &HeaderMap,
    prefix: &str,
    (budget, peer): (Budget, SocketAddr),
) -> Result<Reader, Refusal> {
    let permit = st.session_permit(budget, peer)?;
    let path = remote_path(uri.path(), prefix)?.to_string();
    let key = presented_key(st, h)?;
    let replica = authorise_read(st, &path, key.as_ref())?;
    Ok(Reader {
        permit,
        key,
        replica,
    })
}

/// The replica at `path` if `key` may read it; 404 otherwise.
pub fn authorise_read(
    st: &AppState,
    path: &str,
    key: Option<&KeyRecord>,
) -> Result<ReplicaRow, Refusal> {
    match st.store.meta().replica(path) {
        Ok(Some(r)) if may_read(&r, key) => Ok(r),
        Ok(_) => {
            tracing::warn!(path, "refused read: unknown, private or wrong key");
            Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "no such replica (or no access to it)",
            ))
        }
        Err(e) => Err(Refusal::internal(e)),
    }
}

/// Admits `/sapi/pull/<path>`: a reader, and the version `X-ReplicaVersion`
/// names (the latest when absent), which must exist.
pub fn admit_pull(
    st: &AppState,
    uri: &Uri,
    h: &HeaderMap,
    peer: SocketAddr,
) -> Result<(Reader, VersionRow), Refusal> {
    let reader = admit_reader(st, uri, h, "/sapi/pull/", (Budget::Sync, peer))?;
    let vref = VersionRef::parse_header(
        h.get(headers::REPLICA_VERSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )
    .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
    let latest = st
        .store
        .replica_state(&reader.replica)
        .latest()
        .map_or(0, |f| f.number);
    let Some(number) = vref.resolve(latest) else {
        let msg = if latest == 0 {
            "the replica has no versions yet".to_string()
        } else {
            format!("no version {vref} (latest is {latest})")
        };
        return Err(Refusal::new(StatusCode::NOT_FOUND, msg));
    };
    match st.store.meta().version(&reader.replica, number) {
        Ok(Some(v)) => match VersionPruned::of(&v) {
            // Not a 404: the number is real, and stays taken.
            Some(pruned) => Err(Refusal::new(StatusCode::GONE, pruned.to_string())),
            None => Ok((reader, v)),
        },
        Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "no such version")),
        Err(e) => Err(Refusal::internal(e)),
    }
}
