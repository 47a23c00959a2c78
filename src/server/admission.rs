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
//! look the same to outsiders).

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, Uri};

use super::app::{AppState, Refusal, remote_path};
use super::keys::{self, KeyKind, KeyRecord};
use super::limits::{Budget, Permit};
use super::names;
use super::store::{ReplicaRow, VersionRow};
use crate::wire::{VersionRef, Visibility, headers};

/// The key in the Authorization header, looked up; Err(401) for a key that
/// is given but unknown or revoked.
pub fn presented_key(st: &AppState, h: &HeaderMap) -> Result<Option<KeyRecord>, Refusal> {
    let Some(raw) = h
        .get(headers::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    // Tolerate a scheme word some proxies or clients add.
    let raw = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .unwrap_or(raw)
        .trim();
    match keys::lookup(st.store.meta(), raw) {
        Ok(Some(k)) => Ok(Some(k)),
        Ok(None) => {
            tracing::warn!("refused an unknown or revoked key");
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unknown or revoked key",
            ))
        }
        Err(e) => Err(Refusal::internal(e)),
    }
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
    let replica = match st.store.meta().replica(&path).map_err(Refusal::internal)? {
        Some(r) if keys::may_push(&key, &r) => r,
        Some(_) => {
            tracing::warn!(path = %path, key_id = key.id, "refused push: key does not allow it");
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "key does not allow push to this replica",
            ));
        }
        None => create_replica(st, &key, &path, visibility)?,
    };
    Ok(Pusher {
        permit,
        key,
        replica,
    })
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
    if !(key.kind == KeyKind::Admin && key.namespace == namespace) {
        tracing::warn!(path = %path, key_id = key.id, "refused push: cannot create replica");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "key does not allow creating replicas in this namespace",
        ));
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
        Ok(Some(v)) => Ok((reader, v)),
        Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "no such version")),
        Err(e) => Err(Refusal::internal(e)),
    }
}
